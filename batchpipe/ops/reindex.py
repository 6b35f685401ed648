"""The index and the shard files are derived data: check them, and make them again from their sources.

- index.sqlite: the requests come from the input and the config snapshot, which request is on
  which line of a shard file from that file (or the attempt before it), and the outcomes from
  the result files of the merged shards, replayed attempt by attempt as `process` first recorded
  them. It is built beside the old one and put in its place in one rename.
- a shard file: attempt 1 is rendered again from the input and the config snapshot (the same
  split as create's, and the canary's); a retry attempt is the lines of the attempt before it
  that the index says it holds. The new bytes are used only if their sha256 is the one the
  ledger recorded, so a changed input, config or tokenizer can never slip in other requests.
Nothing here talks to the provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

from batchpipe import fsio
from batchpipe.errors import BatchpipeError, LedgerError
from batchpipe.ledger.index import Index, IndexFailure, Outcome
from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import run_config
from batchpipe.pipeline.requests import render_requests
from batchpipe.pipeline.shards import shard_id

# The outcomes of a merged shard, from its result files (process.replay).
Replay = Callable[[Ledger, Shard, Index], Iterable[Outcome]]


def index_problem(ledger: Ledger, *, thorough: bool = False) -> str | None:
    """Why the index cannot be trusted, or None. `thorough` also reads every page (recover)."""
    path = ledger.paths.index
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with Index(path) as index:
            if thorough and (check := index.quick_check()) != "ok":
                return f"{path.name} is damaged ({check})"
            if thorough and (record := index.unreadable()) is not None:
                return f"{path.name} is damaged ({record} do not read back as written)"
            if (n := index.count("requests")) != ledger.run.requests:
                return f"{path.name} knows {n} of the run's {ledger.run.requests} requests"
            for shard in ledger.shards:
                if index.count("shard_lines", shard.file.path) != shard.requests:
                    return f"{path.name} does not know the lines of {shard.file.path}"
            # attempt 1 of every shard holds each request once; retries hold some of them again
            merged = sum(s.requests for s in ledger.shards if s.attempt == 1 and s.state == ShardState.MERGED)
            if index.count("results") < merged:
                return f"{path.name} lacks results of merged shards"
    except IndexFailure as exc:
        if not exc.damaged:
            raise
        return exc.message
    return None


def open_index(ledger: Ledger, replay: Replay, notes: list[str]) -> Index:
    """The run's index, rebuilt first if it is missing or damaged (and `notes` says so)."""
    if problem := index_problem(ledger):
        notes.append(rebuild_index(ledger, replay, problem))
    return Index(ledger.paths.index)


def rebuild_index(ledger: Ledger, replay: Replay, why: str) -> str:
    """Make index.sqlite again from the run's files; return what was done.

    Raises LedgerError, saying what is missing, if a source it needs is gone or changed.
    """
    paths = ledger.paths
    _check_input(ledger, f"cannot rebuild {paths.index.name}")
    cfg = run_config(paths)
    with fsio.atomic_path(paths.index) as tmp, Index(tmp, create=True) as index:
        index.add_requests((r.custom_id, r.seq, r.line_no) for r in render_requests(cfg))
        replayed, differ = 0, []
        for attempt in sorted({s.attempt for s in ledger.shards}):
            for shard in (s for s in ledger.shards if s.attempt == attempt):
                index.add_shard_file(shard.file.path, _ids(ledger, shard, index))
                if not intact(ledger, shard) and (why := restore_shard_file(ledger, shard, index)):
                    # the ids above were derived, not read: only a file that matches its sha256 confirms them
                    raise LedgerError(
                        f"cannot rebuild {paths.index.name}: {shard.file.path} is damaged, and {why}",
                        hint="put back the input and config the run was created from, or a backup of the run dir",
                    )
                if shard.state == ShardState.MERGED:
                    counts = index.put_results(shard.id, shard.file.path, replay(ledger, shard, index))
                    replayed += 1
                    recorded = {k: (shard.merged or {}).get(k) for k in counts}
                    if counts != recorded:
                        differ.append(f"{shard.id} (now {counts}, recorded {recorded})")
    ledger.log({"event": "index_rebuilt", "why": why, "merged_shards": replayed})
    note = (f"{why}: rebuilt it from the input, the config snapshot, {len(ledger.shards)} shard file(s) "
            f"and the results of {replayed} merged shard(s)")
    if differ:
        note += "; these shards' outcomes differ from what was recorded when they were merged: " + ", ".join(differ)
    return note


def _check_input(ledger: Ledger, doing: str) -> None:
    run = ledger.run
    if run.input["path"] is None:  # a generation job (input.count): nothing on disk to change
        return
    try:
        _, sha = fsio.sha256_file(Path(run.input["path"]))
    except OSError as exc:
        raise LedgerError(f"{doing}: the input {run.input['path']} cannot be read ({exc.strerror})",
                          hint="put the original input file back and run the same command again") from None
    if sha != run.input["sha256"]:
        raise LedgerError(f"{doing}: the input {run.input['path']} has changed since the run was created",
                          hint="put the original input file back (same content) and run the same command again")


def _ids(ledger: Ledger, shard: Shard, index: Index) -> list[str]:
    """The custom_ids on the lines of a shard's file, in order, without trusting the old index.

    From the file if it is intact; else derived (the caller then makes the file again, which
    checks them): a retry holds the retryable failures of the attempt before it (just replayed),
    attempt 1 what rendering the input gives.
    """
    if intact(ledger, shard):
        with open(ledger.paths.root / shard.file.path, "rb") as f:
            return [orjson.loads(line)["custom_id"] for line in f]
    if shard.attempt > 1:
        previous = _previous(ledger, shard)
        return [cid for _, cid in index.retryable(previous.id)]
    return [orjson.loads(line)["custom_id"] for line in _rendered(ledger, shard, index)]


def intact(ledger: Ledger, shard: Shard) -> bool:
    try:
        ledger.verify(shard.file)
    except LedgerError:
        return False
    return True


def _previous(ledger: Ledger, shard: Shard) -> Shard:
    return ledger.state.shard(shard_id(shard.index, shard.attempt - 1))


def shard_lines(ledger: Ledger, shard: Shard, index: Index) -> Iterator[bytes]:
    """The lines of a shard's file: from the file if it is intact, else made again."""
    if intact(ledger, shard):
        with open(ledger.paths.root / shard.file.path, "rb") as f:
            yield from f
    else:
        yield from _rendered(ledger, shard, index)


def _rendered(ledger: Ledger, shard: Shard, index: Index) -> Iterator[bytes]:
    if shard.attempt > 1:
        wanted = set(index.ids_of(shard.file.path))  # at most one shard's worth
        for line in shard_lines(ledger, _previous(ledger, shard), index):
            if orjson.loads(line)["custom_id"] in wanted:
                yield line
        return
    # A canary split the first shard in two: the canary (shard 0) holds its first n lines, shard 1 the rest.
    canary = next((s for s in ledger.shards if s.index == 0 and s.attempt == 1), None)
    n = canary.requests if canary is not None else 0
    wanted_shard = 1 if shard.index == 0 else shard.index
    seen = 0
    from batchpipe.ops.create import plan_shards  # here: `process` loads create's code only to re-render a lost file

    for planned in plan_shards(run_config(ledger.paths)):
        if planned.shard < wanted_shard:
            continue
        if planned.shard > wanted_shard:
            return
        seen += 1
        if shard.index == 0 and seen > n:
            return
        if shard.index == 1 and canary is not None and seen <= n:
            continue
        yield planned.request.line


def restore_shard_file(ledger: Ledger, shard: Shard, index: Index) -> str | None:
    """Write a damaged shard file again from its sources if the bytes match; return why not (None: done)."""
    try:
        _check_input(ledger, "it cannot be rendered again")
        ref = shard.file
        if fsio.write_lines_checked(ledger.paths.root / ref.path, _rendered(ledger, shard, index), ref.bytes, ref.sha256):
            ledger.log({"event": "shard_file_restored", "shard": shard.id, "file": ref.path})
            return None
        return ("rendering it again from the input and the config snapshot gives other bytes than were "
                "sent (its sha256 differs: the config, the input or the tokenizer is not what it was at create)")
    except BatchpipeError as exc:
        return exc.message
