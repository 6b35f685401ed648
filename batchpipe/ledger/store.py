"""Loading and committing state.json, the run's single source of truth.

Every commit rewrites the whole document atomically (fsio.write_bytes_atomic) with a
checksum over its content, so a torn or hand-edited ledger is detected on load and refused
with a clear message instead of being silently "repaired". Each shard transition is its own
commit, so a crash loses at most the step in flight.

Before each commit replaces state.json, the version it replaces is kept as state.json.prev
(atomically, fsynced). Restoring it (`recover` does, see restore_previous) is the same as a
crash just before the last commit, which every step is built to survive.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

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
    # orjson walks the dataclasses itself, about 8 times faster than dataclasses.asdict (a commit
    # of a 1,000-shard run spent 33 ms in asdict); loaded back as plain data, the document is the
    # same, byte for byte, as state.to_dict() gives.
    body = orjson.loads(orjson.dumps({"schema_version": SCHEMA_VERSION, "run": state.run, "shards": state.shards}))
    doc = {**body, "checksum": _checksum(body)}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


class LedgerDamaged(LedgerError):
    """state.json is truncated, damaged or edited by hand (not merely from a newer batchpipe)."""


def decode(raw: bytes, path: Path) -> RunState:
    hint = "run `batchpipe recover` to check the run; do not edit state.json by hand"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LedgerDamaged(f"{path} is not valid JSON (truncated or damaged)", hint=hint) from None
    if not isinstance(doc, dict):
        raise LedgerDamaged(f"{path} is not a batchpipe ledger", hint=hint)
    stored = doc.pop("checksum", None)
    intact = stored == _checksum(doc)  # the checksum covers the document as written, before any migration
    doc = migrate(doc, path)
    if not intact:
        raise LedgerDamaged(f"{path} has a wrong checksum: it was changed outside batchpipe or damaged", hint=hint)
    try:
        return RunState.from_dict(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LedgerDamaged(f"{path} does not match schema {SCHEMA_VERSION}: {exc}", hint=hint) from None


def _previous(paths: RunPaths) -> tuple[bytes, RunState] | None:
    """The good copy kept before the last commit, if there is one."""
    try:
        raw = paths.state_prev.read_bytes()
        return raw, decode(raw, paths.state_prev)
    except (OSError, LedgerError):
        return None


def damage_hint(paths: RunPaths) -> str:
    """What a person can do about a damaged state.json: say what `recover` can and cannot do."""
    if _previous(paths) is not None:
        return (
            f"run `batchpipe recover {paths.run_id}`: it restores the last good copy (state.json.prev, one "
            f"step older) and reconciles it with the provider. Do not edit state.json by hand"
        )
    return (
        f"there is no good earlier copy ({paths.state_prev.name}) to restore, so `batchpipe recover` cannot "
        f"repair it: put back a backup of state.json, or create the job again as a new run "
        f"(`batchpipe create CONFIG --run NEW_ID`)"
    )


def restore_previous(paths: RunPaths) -> str:
    """Replace a damaged (or missing) state.json with state.json.prev; return what was done.

    The damaged file is kept beside it (state.json.damaged) for a person to look at. Raises
    LedgerError, saying what cannot be done, when there is no good copy to restore.
    """
    previous = _previous(paths)
    if previous is None:
        raise LedgerError(
            f"{paths.state} is damaged and there is no good earlier copy ({paths.state_prev.name}) to restore",
            hint=damage_hint(paths),
        )
    raw, state = previous
    kept = ""
    if paths.state.exists():
        damaged = paths.root / "state.json.damaged"
        fsio.write_bytes_atomic(damaged, paths.state.read_bytes())
        kept = f"; the damaged file is kept as {damaged.name}"
    fsio.write_bytes_atomic(paths.state, raw)
    merged = sum(s.state == ShardState.MERGED for s in state.shards)
    return (
        f"state.json was damaged: restored the last good copy from {paths.state_prev.name} (one commit older: "
        f"{len(state.shards)} shard(s), {merged} merged){kept}"
    )


# The config_sha256 of every ledger this process has read or made: each is the sha256 of a config
# snapshot that `create` validated before it wrote it. A snapshot with one of these shas is read
# without validating it again (ops/common.py run_config), which spares `status` and `process` the
# models (pydantic); a snapshot changed since create has another sha and is validated as before.
_created_configs: set[str] = set()


def created_config(sha256: str) -> bool:
    """Is `sha256` that of a config snapshot as `create` wrote it, for a ledger read in this process?"""
    return sha256 in _created_configs


class Ledger:
    """A run's ledger in memory, committed to disk after every change (or, for a change its caller
    can redo after a crash, with the next commit: see advance)."""

    def __init__(self, paths: RunPaths, state: RunState, raw: bytes | None = None) -> None:
        self.paths = paths
        self.state = state
        _created_configs.add(state.run.config_sha256)
        self._raw = raw  # state.json as loaded or last committed: what the next commit keeps as .prev
        self._unlogged: list[dict[str, Any]] = []  # events of changes the next commit writes (see advance)

    @classmethod
    def load(cls, paths: RunPaths) -> Ledger:
        try:
            raw = paths.state.read_bytes()
        except FileNotFoundError:
            hint = damage_hint(paths) if paths.state_prev.exists() else "is this a batchpipe run directory?"
            raise LedgerError(f"{paths.state} is missing", hint=hint) from None
        try:
            return cls(paths, decode(raw, paths.state), raw)
        except LedgerDamaged as exc:
            raise LedgerDamaged(exc.message, hint=damage_hint(paths)) from None

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
        if self._raw is not None and self._raw != data:
            fsio.write_bytes_atomic(self.paths.state_prev, self._raw)  # the last good copy, before it is replaced
        fsio.write_bytes_atomic(self.paths.state, data)
        self._raw = data
        crash.point("ledger:after_commit")
        for held in self._unlogged:
            self.log(held)
        self._unlogged.clear()
        if event is not None:
            self.log(event)

    def log(self, event: dict[str, Any]) -> None:
        """Append one event to events.jsonl. Never put a secret in an event."""
        line = orjson.dumps({"ts": round(time.time(), 3), **event})
        fsio.append_line(self.paths.events, line)

    def advance(self, shard: Shard, dst: ShardState, *, commit: bool = True, **changes: Any) -> None:
        """Move `shard` to `dst` (if the table allows it), apply `changes`, and commit; with `commit`
        False, the next commit writes the change (a caller that can redo it after a crash)."""
        transitions.check(shard, dst)
        src = shard.state
        for name, value in changes.items():
            if not hasattr(shard, name):
                raise AttributeError(name)
            setattr(shard, name, value)
        shard.state = dst
        event = {"event": "transition", "shard": shard.id, "from": src.value, "to": dst.value}
        if commit:
            self.commit(event)
        else:
            self._unlogged.append(event)

    def file_ref(self, path: Path, size: int, sha256: str) -> FileRef:
        return FileRef(path=str(path.relative_to(self.paths.root)), bytes=size, sha256=sha256)

    def verify(self, ref: FileRef) -> Path:
        """Check that a file the ledger names is there, whole and unchanged; return its path."""
        path = self._named(ref)
        self._check(ref, *fsio.sha256_file(path))
        return path

    @contextlib.contextmanager
    def reading(self, ref: FileRef) -> Iterator[BinaryIO]:
        """A file the ledger names, opened to be read, and checked by that same read: at the end
        of the block, a file that is not whole and unchanged raises what `verify` raises. One
        pass over the file instead of two (verify, then the read): the caller must act on
        nothing it read before the block ends."""
        hashing = fsio.HashingReader(open(self._named(ref), "rb", buffering=0))  # noqa: SIM115 - closed below
        with io.BufferedReader(hashing, 1 << 20) as f:
            yield f
            while f.read(1 << 20):  # what the caller left unread is checked too
                pass
        self._check(ref, hashing.size, hashing.hash.hexdigest())

    def _named(self, ref: FileRef) -> Path:
        path = self.paths.root / ref.path
        if not path.is_file():
            raise LedgerError(f"{path} is named in the ledger but missing", hint=self._recover_hint())
        return path

    def _check(self, ref: FileRef, size: int, digest: str) -> None:
        if (size, digest) != (ref.bytes, ref.sha256):
            raise LedgerError(f"{self.paths.root / ref.path} has changed since batchpipe wrote it (size or sha256 "
                              "differ)", hint=self._recover_hint())

    def _recover_hint(self) -> str:
        return f"run `batchpipe recover {self.paths.run_id}` to see what can be done"
