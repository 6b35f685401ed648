"""Loading and committing state.json, the run's single source of truth.

Every commit rewrites the whole document atomically (fsio.write_bytes_atomic) with a
checksum over its content, so a torn or hand-edited ledger is detected on load and refused
with a clear message instead of being silently "repaired". Each shard transition is its own
commit, so a crash loses at most the step in flight.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson

from batchpipe import crash, fsio
from batchpipe.errors import LedgerError
from batchpipe.ledger import transitions
from batchpipe.ledger.migrations import SCHEMA_VERSION, migrate
from batchpipe.ledger.model import FileRef, RunState, Shard, ShardState
from batchpipe.paths import RunPaths


def _checksum(body: dict[str, Any]) -> str:
    # Canonical form: sorted keys, compact. Changing it changes every checksum.
    return "sha256:" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def encode(state: RunState) -> bytes:
    body = {"schema_version": SCHEMA_VERSION, **state.to_dict()}
    doc = {**body, "checksum": _checksum(body)}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def decode(raw: bytes, path: Path) -> RunState:
    hint = "run `batchpipe recover` to check the run; do not edit state.json by hand"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LedgerError(f"{path} is not valid JSON (truncated or damaged)", hint=hint) from None
    if not isinstance(doc, dict):
        raise LedgerError(f"{path} is not a batchpipe ledger", hint=hint)
    stored = doc.pop("checksum", None)
    intact = stored == _checksum(doc)  # the checksum covers the document as written, before any migration
    doc = migrate(doc, path)
    if not intact:
        raise LedgerError(f"{path} has a wrong checksum: it was changed outside batchpipe or damaged", hint=hint)
    try:
        return RunState.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"{path} does not match schema {SCHEMA_VERSION}: {exc}", hint=hint) from None


class Ledger:
    """A run's ledger in memory, committed to disk after every change."""

    def __init__(self, paths: RunPaths, state: RunState) -> None:
        self.paths = paths
        self.state = state

    @classmethod
    def load(cls, paths: RunPaths) -> Ledger:
        try:
            raw = paths.state.read_bytes()
        except FileNotFoundError:
            raise LedgerError(f"{paths.state} is missing", hint="is this a batchpipe run directory?") from None
        return cls(paths, decode(raw, paths.state))

    @property
    def run(self):  # noqa: ANN201 - the Run record
        return self.state.run

    @property
    def shards(self) -> list[Shard]:
        return self.state.shards

    def commit(self, event: dict[str, Any] | None = None) -> None:
        """Write the ledger durably; then log `event` (the log follows the ledger, never leads it)."""
        data = encode(self.state)
        crash.point("ledger:before_commit")
        fsio.write_bytes_atomic(self.paths.state, data)
        crash.point("ledger:after_commit")
        if event is not None:
            self.log(event)

    def log(self, event: dict[str, Any]) -> None:
        """Append one event to events.jsonl. Never put a secret in an event."""
        line = orjson.dumps({"ts": round(time.time(), 3), **event})
        fsio.append_line(self.paths.events, line)

    def advance(self, shard: Shard, dst: ShardState, **changes: Any) -> None:
        """Move `shard` to `dst` (if the table allows it), apply `changes`, and commit."""
        transitions.check(shard, dst)
        src = shard.state
        for name, value in changes.items():
            if not hasattr(shard, name):
                raise AttributeError(name)
            setattr(shard, name, value)
        shard.state = dst
        self.commit({"event": "transition", "shard": shard.id, "from": src.value, "to": dst.value})

    def file_ref(self, path: Path, size: int, sha256: str) -> FileRef:
        return FileRef(path=str(path.relative_to(self.paths.root)), bytes=size, sha256=sha256)

    def verify(self, ref: FileRef) -> Path:
        """Check that a file the ledger names is there, whole and unchanged; return its path."""
        path = self.paths.root / ref.path
        hint = f"run `batchpipe recover {self.paths.run_id}` to see what can be done"
        if not path.is_file():
            raise LedgerError(f"{path} is named in the ledger but missing", hint=hint)
        size, digest = fsio.sha256_file(path)
        if (size, digest) != (ref.bytes, ref.sha256):
            raise LedgerError(f"{path} has changed since batchpipe wrote it (size or sha256 differ)", hint=hint)
        return path
