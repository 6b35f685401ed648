"""Hand-off by hand: `export` the request files for a person to upload, `import` what they download.

Some people must (or want to) upload batch files themselves: a provider console, another
account, a machine that cannot reach the service. `export RUN DIR` copies every prepared shard
attempt into DIR, ready to upload, with a README.txt on what to do with them, and from then
on the shard is *handed off*: `submit`, `run` and `tick` never upload it nor create a batch for
it, so a person who exports and then runs `batchpipe run` does not pay twice. The hand-off is
committed to the ledger before the files are written: a crash in between leaves a shard handed
off with no file yet (export again), never a file out in the world that batchpipe would also send.

`import RUN FILE...` takes the output and error files downloaded by hand, in any order and any
subset. Every file is checked whole before anything is written (a damaged line, a request file
instead of a result file, a custom_id that is not a request of this run: refused, naming the
file and line). Each line goes to the handed-off attempt that holds its custom_id (the index
knows which shard file each request is in); the lines a file brings to a shard are copied into a
piece file under results/ (fsynced before the ledger names it). A file imported before (same
sha256) is skipped, and a line identical to one already imported is too. A shard is completed
once every request of it has a line; `import --partial` completes the shards that have some
lines with what they have (the missing requests then count as missing results and become a new
attempt, which can be exported again). Then `process` works as for a downloaded batch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchpipe import crash, fsio
from batchpipe.errors import InputError, LedgerError, UsageError
from batchpipe.ledger import transitions
from batchpipe.ledger.index import Index
from batchpipe.ledger.model import Handoff, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import run_config
from batchpipe.paths import RunPaths
from batchpipe.providers import base_url_from_env
from batchpipe.providers.lazy import DEFAULT_BASE_URL
from batchpipe.urls import public_url

README_NAME = "README.txt"
# Lines of one file that are ignored (their shard already has its results, or was not exported)
# are named one by one up to this many; the rest are counted.
MAX_WARNINGS = 10


def awaiting(shard: Shard) -> bool:
    """Handed off and still waiting for its results to be imported."""
    return shard.handoff is not None and shard.state == ShardState.PREPARED


def export_name(run_id: str, shard: Shard) -> str:
    return f"{run_id}--{shard.id}.jsonl"


@dataclass
class Exported:
    run_id: str
    directory: Path
    files: list[dict[str, Any]] = field(default_factory=list)  # {"shard", "file", "requests", "bytes"}
    handed_off: list[str] = field(default_factory=list)  # shards handed off by this call (the rest were before)
    skipped: list[str] = field(default_factory=list)  # shards batchpipe has begun sending itself, and why
    readme: Path | None = None


def export(paths: RunPaths, directory: Path) -> Exported:
    """Hand off every prepared shard attempt and write it (and README.txt) into `directory`."""
    directory = Path(directory)
    result = Exported(paths.run_id, directory)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        now = time.time()
        for shard in ledger.shards:
            if shard.state == ShardState.PREPARED and shard.handoff is None:
                if shard.upload is not None:  # an upload of ours may be under way: sending it is ours to finish
                    result.skipped.append(f"shard {shard.id}: batchpipe has begun uploading it; "
                                          f"`batchpipe recover {paths.run_id}` then `batchpipe submit` finish that")
                    continue
                if paths.journal(shard.id).exists():  # sync mode answered some of it: those are paid for
                    result.skipped.append(f"shard {shard.id}: sync mode has answered part of it already; "
                                          f"`batchpipe run {paths.run_id}` finishes it")
                    continue
                shard.handoff = Handoff(exported_at=now)
                result.handed_off.append(shard.id)
            elif shard.state == ShardState.UPLOADED and shard.batch is None:
                result.skipped.append(f"shard {shard.id}: batchpipe has uploaded it already; "
                                      f"`batchpipe submit {paths.run_id}` creates its batch")
        if result.handed_off:  # the promise not to send them is durable before any file leaves
            ledger.commit({"event": "handoff", "shards": result.handed_off, "dir": str(directory)})
            crash.point("export:after_handoff")
        shards = [s for s in ledger.shards if awaiting(s)]
        if not shards:
            return result
        directory.mkdir(parents=True, exist_ok=True)
        for shard in shards:
            source = ledger.verify(shard.file)
            target = directory / export_name(paths.run_id, shard)
            if not (target.is_file() and fsio.sha256_file(target) == (shard.file.bytes, shard.file.sha256)):
                with open(source, "rb") as f:
                    fsio.write_lines_atomic(target, f)
            result.files.append({"shard": shard.id, "file": str(target), "requests": shard.requests,
                                 "bytes": shard.file.bytes, "received": shard.handoff.received})
        result.readme = directory / README_NAME
        fsio.write_bytes_atomic(result.readme, _readme(ledger, shards).encode())
        ledger.log({"event": "exported", "dir": str(directory), "shards": [s.id for s in shards]})
    return result


def _readme(ledger: Ledger, shards: list[Shard]) -> str:
    run = ledger.run
    # where batchpipe would send them: the run's service, else the config's, the environment's, the default
    url = run.base_url or run_config(ledger.paths).provider.base_url or base_url_from_env() or DEFAULT_BASE_URL
    base = public_url(url).rstrip("/")
    first = export_name(run.id, shards[0])
    listing = "\n".join(f"  {export_name(run.id, s)}   {s.requests} request(s)"
                        + (f", {s.handoff.received} imported so far" if s.handoff.received else "") for s in shards)
    return f"""batchpipe hand-off of run {run.id} ({len(shards)} file(s), {sum(s.requests for s in shards)} requests)

batchpipe will not upload these files nor create batches for them: you do, once each.
Uploading a file twice makes two batches, and both are billed.

Files (one batch each):
{listing}

For each file:
  1. Upload it to the Files API with purpose "batch" (POST {base}/files).
  2. Create a batch from the file id: endpoint "{run.endpoint}", completion_window "24h".
     Optional: metadata {{"batchpipe_run": "{run.id}", "batchpipe_shard": "<the shard, e.g. {shards[0].id}>"}}
     lets `batchpipe list --remote` show which shard each batch is.
  3. When the batch has ended (completed, expired or cancelled), download its output file
     (output_file_id) and its error file (error_file_id), if it has them.

Then, in the directory you run batchpipe from:
  batchpipe import {run.id} FILE...     (any order; a file given again is skipped)
  batchpipe process {run.id}

With curl (OPENAI_API_KEY set in your shell):
  curl {base}/files -H "Authorization: Bearer $OPENAI_API_KEY" -F purpose=batch -F file=@{first}
  curl {base}/batches -H "Authorization: Bearer $OPENAI_API_KEY" -H "Content-Type: application/json" \\
    -d '{{"input_file_id": "FILE_ID", "endpoint": "{run.endpoint}", "completion_window": "24h"}}'
  curl {base}/batches/BATCH_ID -H "Authorization: Bearer $OPENAI_API_KEY"
  curl {base}/files/OUTPUT_FILE_ID/content -H "Authorization: Bearer $OPENAI_API_KEY" -o {shards[0].id}.output.jsonl

Requests that fail come back as new attempts after `batchpipe process`: `batchpipe export {run.id} DIR`
writes them out the same way.
"""


# -- import -------------------------------------------------------------------------------------


@dataclass
class Imported:
    run_id: str
    files: list[dict[str, Any]] = field(default_factory=list)  # {"file", "status", "lines", "routed", ...}
    completed: list[str] = field(default_factory=list)  # shards completed by this call
    waiting: list[dict[str, Any]] = field(default_factory=list)  # handed-off shards still short of lines
    warnings: list[str] = field(default_factory=list)


def _digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw.rstrip(b"\r\n")).digest()


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                yield n, raw


def _custom_id(path: Path, n: int, raw: bytes) -> str:
    """The custom_id of a result line; InputError naming the file and line if it is not one."""
    hint = "import the output and error files that the batch produced, downloaded as they are"
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path} line {n}: not a JSON line ({exc}); the file is damaged or not a result file",
                         hint=hint) from None
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        raise InputError(f"{path} line {n}: no custom_id; this is not a Batch API result file", hint=hint)
    if "response" not in record and "error" not in record:
        what = "a request (what is uploaded), not a result" if "body" in record else "not a result line"
        raise InputError(f"{path} line {n}: {what}", hint=hint)
    return record["custom_id"]


class _Router:
    """Which shard attempt each result line belongs to, and what each already has."""

    def __init__(self, ledger: Ledger, index: Index) -> None:
        self.ledger, self.index = ledger, index
        self.by_file = {s.file.path: s for s in ledger.shards}
        self._known: dict[str, dict[str, set[bytes]]] = {}

    def shards_of(self, custom_id: str) -> list[Shard]:
        return [self.by_file[f] for f in self.index.files_of(custom_id) if f in self.by_file]

    def known(self, shard: Shard) -> dict[str, set[bytes]]:
        """custom_id -> digests of the result lines `shard` has (bounded: one shard's requests)."""
        if shard.id not in self._known:
            refs = [*shard.handoff.pieces, *(r for r in (shard.outputs, shard.errors_file) if r is not None)]
            known: dict[str, set[bytes]] = {}
            for ref in refs:
                path = self.ledger.verify(ref)
                for n, raw in _lines(path):
                    known.setdefault(_custom_id(path, n, raw), set()).add(_digest(raw))
            self._known[shard.id] = known
        return self._known[shard.id]


def import_results(paths: RunPaths, files: list[Path], *, partial: bool = False) -> Imported:
    """Bring result files downloaded by hand into the run (see the module doc)."""
    result = Imported(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        if not any(s.handoff is not None for s in ledger.shards):
            raise UsageError(f"run {paths.run_id} has no exported shards: there is nothing to import results for",
                             hint=f"`batchpipe export {paths.run_id} DIR` hands shards off; batchpipe downloads "
                             "the results of the batches it submitted itself")
        with Index(paths.index) as index:
            router = _Router(ledger, index)
            todo = _check_files(ledger, router, files, result)  # every file whole and this run's, before any write
            for path, size, sha in todo:
                _import_file(ledger, router, path, size, sha, result)
        _complete(ledger, partial, result)
    result.completed.sort()
    return result


def _check_files(ledger: Ledger, router: _Router, files: list[Path], result: Imported) -> list[tuple[Path, int, str]]:
    done = {i["sha256"] for i in ledger.run.imports}
    todo: list[tuple[Path, int, str]] = []
    for path in files:
        if not path.is_file():
            what = "is not a file" if path.exists() else "no such file"
            raise InputError(f"{path}: {what}", hint="give the output and error files you downloaded")
        size, sha = fsio.sha256_file(path)
        if sha in done:
            result.files.append({"file": str(path), "status": "already imported", "lines": 0, "routed": 0})
            continue
        for n, raw in _lines(path):
            custom_id = _custom_id(path, n, raw)
            if not router.shards_of(custom_id):
                raise InputError(
                    f"{path} line {n}: custom_id {custom_id!r} is not a request of run {ledger.run.id}: "
                    f"the file belongs to another run or job",
                    hint=f"import it into the run it came from; nothing of {path.name} was imported",
                )
        done.add(sha)
        todo.append((path, size, sha))
    return todo


def _import_file(ledger: Ledger, router: _Router, path: Path, size: int, sha: str, result: Imported) -> None:
    routed: dict[str, list[int]] = {}  # shard id -> the line numbers of this file it takes
    new: dict[str, set[str]] = {}  # shard id -> requests that have their first line now
    counts = {"lines": 0, "routed": 0, "duplicates": 0, "skipped": 0}
    for n, raw in _lines(path):
        counts["lines"] += 1
        custom_id, digest = _custom_id(path, n, raw), _digest(raw)
        shards = router.shards_of(custom_id)
        handed = [s for s in shards if s.handoff is not None]
        if any(digest in router.known(s).get(custom_id, ()) for s in handed):
            counts["duplicates"] += 1  # imported before, from this file or another
            continue
        target = next((s for s in handed if awaiting(s)), None)
        if target is None:
            counts["skipped"] += 1
            if handed:
                why = f"shard {handed[-1].id} already has its results; this line differs (was it uploaded twice?)"
            else:
                why = f"shard {shards[-1].id} was not exported: batchpipe downloads its results itself"
            if counts["skipped"] <= MAX_WARNINGS:
                result.warnings.append(f"{path} line {n}: custom_id {custom_id!r}: {why}; line ignored")
            continue
        known = router.known(target)
        if custom_id not in known:
            new.setdefault(target.id, set()).add(custom_id)
        known.setdefault(custom_id, set()).add(digest)
        routed.setdefault(target.id, []).append(n)
        counts["routed"] += 1
    if counts["skipped"] > MAX_WARNINGS:
        result.warnings.append(f"{path}: {counts['skipped'] - MAX_WARNINGS} more line(s) ignored the same way")
    # Data before pointer: every piece file whole on disk before the ledger names it.
    for shard_id, numbers in routed.items():
        shard = ledger.state.shard(shard_id)
        piece = ledger.paths.results_dir / f"{shard.id}.import-{sha[:12]}.jsonl"
        piece.parent.mkdir(parents=True, exist_ok=True)
        wanted = set(numbers)
        lines = (raw if raw.endswith(b"\n") else raw + b"\n" for n, raw in _lines(path) if n in wanted)
        piece_size, piece_sha = fsio.write_lines_atomic(piece, lines)
        shard.handoff.pieces.append(ledger.file_ref(piece, piece_size, piece_sha))
        shard.handoff.received += len(new.get(shard_id, ()))
    crash.point("import:after_piece")
    ledger.run.imports.append({"name": path.name, "sha256": sha, "bytes": size, "imported_at": time.time(),
                               **counts, "shards": sorted(routed)})
    # A shard this file made whole is completed in the same commit: nothing to finish after a crash.
    completed = []
    for shard_id in sorted(routed):
        shard = ledger.state.shard(shard_id)
        if shard.handoff.received >= shard.requests:
            transitions.check(shard, ShardState.COMPLETED)
            shard.state = ShardState.COMPLETED
            completed.append(shard_id)
    ledger.commit({"event": "import", "file": path.name, "sha256": sha, **counts, "shards": sorted(routed),
                   "completed": completed})
    result.completed += completed
    result.files.append({"file": str(path), "status": "imported", **counts, "shards": sorted(routed)})


def _complete(ledger: Ledger, partial: bool, result: Imported) -> None:
    """Complete every handed-off shard that has all its lines (with `partial`: any lines at all)."""
    for shard in ledger.shards:
        if not awaiting(shard):
            continue
        got = shard.handoff.received
        if got >= shard.requests or (partial and got > 0):
            ledger.advance(shard, ShardState.COMPLETED)
            result.completed.append(shard.id)
        else:
            result.waiting.append({"shard": shard.id, "received": got, "requests": shard.requests})


def repair_pieces(ledger: Ledger) -> tuple[list[str], list[str]]:
    """`recover`: the imported piece files that are missing or damaged; return (actions, problems).

    A shard still waiting for results forgets the damaged piece and the import that wrote it, so
    that the same downloaded file can simply be imported again. A shard already completed has
    its results in the index (once merged) and cannot take them again: that is said, not hidden.
    """
    actions: list[str] = []
    problems: list[str] = []
    for shard in ledger.shards:
        if shard.handoff is None:
            continue
        damaged = [ref for ref in shard.handoff.pieces if _damaged(ledger, ref)]
        if not damaged:
            continue
        names = ", ".join(Path(ref.path).name for ref in damaged)
        if not awaiting(shard):
            if shard.state == ShardState.MERGED:
                why = "its results are merged and kept in index.sqlite and output.jsonl: do not delete those"
            else:
                why = ("the shard is complete but not merged, so `process` cannot read it: put the file back, "
                       "or create the job again as a new run")
            problems.append(f"shard {shard.id}: imported result file(s) {names} are missing or damaged; {why}")
            continue
        shas = {Path(ref.path).name.rsplit(".import-", 1)[1].removesuffix(".jsonl") for ref in damaged}
        shard.handoff.pieces = [ref for ref in shard.handoff.pieces if ref not in damaged]
        received: set[str] = set()
        for ref in shard.handoff.pieces:
            path = ledger.verify(ref)
            received.update(_custom_id(path, n, raw) for n, raw in _lines(path))
        shard.handoff.received = len(received)
        ledger.run.imports = [i for i in ledger.run.imports if i["sha256"][:12] not in shas]
        ledger.commit({"event": "import_forgotten", "shard": shard.id, "pieces": names})
        actions.append(f"shard {shard.id}: imported result file(s) {names} were missing or damaged: forgotten, "
                       f"import the downloaded file(s) again (`batchpipe import {ledger.run.id} FILE...`)")
    return actions, problems


def _damaged(ledger: Ledger, ref: Any) -> bool:
    try:
        ledger.verify(ref)
    except LedgerError:
        return True
    return False
