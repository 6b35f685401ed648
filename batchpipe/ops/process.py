"""`process`: parse downloaded results into the index, plan retries, write the merged output.

Results are joined to rows by custom_id, never by position: the service returns lines in any
order. Whatever a batch returned is kept, even from an expired, cancelled or partly failed
batch. Requests that failed in a way another attempt may fix (5xx, expired, cancelled, missing
from both files) go into a new attempt of their shard, up to `limits.max_attempts`; the rest
keep their row in the output, with null under the output key and the error beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchpipe import crash, fsio
from batchpipe.errors import InputError
from batchpipe.ledger.index import Index, Outcome
from batchpipe.ledger.model import FileRef, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import Progress, run_config, usage_tokens
from batchpipe.ops.reindex import intact, open_index, restore_shard_file
from batchpipe.paths import RunPaths
from batchpipe.pipeline.inputs import iter_rows
from batchpipe.pipeline.results import BadLine, Parsed, is_retryable, parse_lines
from batchpipe.pipeline.shards import shard_id

MISSING = {"code": "missing_result", "message": "the service returned no result for this request"}
# In a shard's `merged`: how many failed requests cannot be retried because its request file is
# damaged and could not be made again (recover removes it once the file is whole).
RETRY_LOST = "retry_lost"


@dataclass
class Processed:
    run_id: str
    merged: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)  # new shard attempts planned by this call
    output_written: bool = False
    done: bool = False
    ok: int = 0
    failed: int = 0
    # Batches that failed validation, as {"shard", "code", "message", "line", "row_no", "custom_id"}:
    # retrying cannot fix them, a person has to look.
    batch_errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _lines(ledger: Ledger, shard: Shard) -> Iterator[bytes]:
    for ref in (shard.outputs, shard.errors_file):
        if ref is not None:
            with open(ledger.verify(ref), "rb") as f:
                yield from f


def _validation_failure(shard: Shard, index: Index, result: Processed) -> Iterator[Outcome]:
    """Every request of a batch that failed as a whole gets the batch's error (its own line's, if any)."""
    by_line: dict[int, dict[str, Any]] = {}
    for err in shard.batch.errors:
        line = err.get("line")
        where = index.request_at(shard.file.path, line) if isinstance(line, int) else None
        custom_id, row_no, _ = where if where else (None, None, None)
        result.batch_errors.append({"shard": shard.id, **err, "row_no": row_no, "custom_id": custom_id})
        if isinstance(line, int):
            by_line.setdefault(line, err)
    first = shard.batch.errors[0] if shard.batch.errors else {"code": "batch_failed", "message": "the batch failed"}
    for line, custom_id in index.shard_ids(shard.file.path):
        err = by_line.get(line, first)
        error = {"code": err.get("code") or "batch_failed", "message": err.get("message")}
        yield Outcome(custom_id, False, None, error, retryable=False, attempt=shard.attempt)


def _outcomes(
    ledger: Ledger, shard: Shard, index: Index, result: Processed, usage: dict[str, int]
) -> Iterator[Outcome]:
    """Each request's outcome; adds the tokens the service reported for the successful ones to `usage`.

    Failed requests are not billed (and report no usage): only successful lines count.
    """
    if shard.batch.status == "failed":
        yield from _validation_failure(shard, index, result)
        return
    # One shard holds at most 50,000 requests: a per-shard map is bounded, whatever the dataset size.
    expected = {custom_id for _, custom_id in index.shard_ids(shard.file.path)}
    found: dict[str, Parsed] = {}
    for parsed in parse_lines(ledger.run.endpoint, _lines(ledger, shard)):
        if isinstance(parsed, BadLine):
            result.warnings.append(f"shard {shard.id}: a result line is unreadable ({parsed.reason})")
        elif parsed.custom_id not in expected:
            result.warnings.append(f"shard {shard.id}: result for unknown custom_id {parsed.custom_id!r} ignored")
        elif parsed.custom_id not in found or (parsed.ok and not found[parsed.custom_id].ok):
            found[parsed.custom_id] = parsed
    for custom_id in expected:
        p = found.get(custom_id)
        if p is not None and p.ok:
            tokens_in, tokens_out = usage_tokens(p.usage)
            usage["input_tokens"] += tokens_in
            usage["output_tokens"] += tokens_out
            yield Outcome(custom_id, True, p.value, None, attempt=shard.attempt)
        else:
            error = p.error if p is not None else MISSING
            yield Outcome(custom_id, False, None, error, retryable=is_retryable(error), attempt=shard.attempt)


def replay(ledger: Ledger, shard: Shard, index: Index) -> Iterator[Outcome]:
    """A merged shard's outcomes once more, from its result files (to rebuild the index)."""
    return _outcomes(ledger, shard, index, Processed(ledger.run.id), {"input_tokens": 0, "output_tokens": 0})


def _plan_retry(ledger: Ledger, shard: Shard, index: Index, max_attempts: int, result: Processed) -> None:
    """Put this attempt's retryable failures into a new attempt of the shard (data before pointer)."""
    if shard.retry is not None or shard.attempt >= max_attempts or shard.batch.status == "failed":
        return
    if (shard.merged or {}).get(RETRY_LOST):
        return  # its file could not be made again; `recover` lifts this once it can
    wanted = dict(index.retryable(shard.id, shard.file.path))  # line in this attempt's file -> custom_id
    if not wanted:
        return
    if not intact(ledger, shard):  # the retry is cut from this file: make it again, or say what is lost
        if why := restore_shard_file(ledger, shard, index):
            # Say it once and let the run finish: these rows keep their error rather than block every row.
            shard.merged = {**(shard.merged or {}), RETRY_LOST: len(wanted)}
            ledger.commit({"event": "retry_lost", "shard": shard.id, "requests": len(wanted)})
            result.warnings.append(
                f"shard {shard.id}: {len(wanted)} failed request(s) cannot be retried: {shard.file.path} is damaged "
                f"and {why}; they keep their error in the output (see `batchpipe recover {ledger.run.id}`)"
            )
            return
        result.warnings.append(f"shard {shard.id}: {shard.file.path} was damaged; rendered it again (sha256 matches)")
    new_id = shard_id(shard.index, shard.attempt + 1)
    path = ledger.paths.shard_file(new_id)
    with open(ledger.paths.root / shard.file.path, "rb") as src:  # checked just above
        lines = (line for n, line in enumerate(src, 1) if n in wanted)
        size, sha = fsio.write_lines_atomic(path, lines)
    crash.point("retry:after_shard_file")
    file = str(path.relative_to(ledger.paths.root))
    index.add_shard_file(file, wanted.values())
    crash.point("retry:after_index")
    ledger.state.shards.append(
        Shard(
            id=new_id,
            index=shard.index,
            attempt=shard.attempt + 1,
            state=ShardState.PREPARED,
            file=FileRef(file, size, sha),
            requests=len(wanted),
            # The retried lines are a subset of this attempt's: their share of its counts (by bytes
            # for input tokens; every request of a job has the same output bound).
            est_tokens=-(-shard.est_tokens * size // max(shard.file.bytes, 1)),
            max_output_tokens=-(-shard.max_output_tokens * len(wanted) // max(shard.requests, 1)),
        )
    )
    shard.retry = new_id
    shard.merged = {**(shard.merged or {}), "retried": len(wanted)}
    ledger.commit({"event": "retry_planned", "shard": shard.id, "attempt": new_id, "requests": len(wanted)})
    result.retries.append(new_id)


def _merged_rows(ledger: Ledger, index: Index, key: str, result: Processed) -> Iterator[bytes]:
    cfg = run_config(ledger.paths)
    joined = index.joined()
    for row in iter_rows(cfg.input):
        row_no, _, outcome = next(joined, (None, None, None))
        if row_no != row.row_no:  # the index and the input disagree: the input changed under us
            raise InputError(f"{cfg.input.path}: row {row.row_no} does not match the run's index")
        data = dict(row.data)
        if outcome is not None and outcome.ok:
            data[key] = outcome.value
            result.ok += 1
        else:
            data[key] = None
            data[f"{key}_error"] = outcome.error if outcome is not None else MISSING
            result.failed += 1
        data[f"{key}_attempts"] = outcome.attempt if outcome is not None else 0
        yield orjson.dumps(data) + b"\n"


def _write_output(ledger: Ledger, index: Index, result: Processed) -> None:
    run = ledger.run
    _, sha = fsio.sha256_file(Path(run.input["path"]))
    if sha != run.input["sha256"]:
        raise InputError(
            f"{run.input['path']} has changed since the run was created: its rows can no longer be matched",
            hint="restore the original input file (same content) and run `batchpipe process` again",
        )
    key = run_config(ledger.paths).output.key
    out_size, out_sha = fsio.write_lines_atomic(ledger.paths.output, _merged_rows(ledger, index, key, result))
    crash.point("output:after_file")
    run.output = ledger.file_ref(ledger.paths.output, out_size, out_sha)
    run.result_counts = {"ok": result.ok, "failed": result.failed}
    ledger.commit({"event": "output", "rows": result.ok + result.failed, "ok": result.ok, "failed": result.failed})
    result.output_written = True


def process(paths: RunPaths) -> Processed:
    result = Processed(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        max_attempts = run_config(paths).limits.max_attempts
        with open_index(ledger, replay, result.warnings) as index:  # rebuilt first if it is lost or damaged
            for shard in list(ledger.shards):
                if shard.state == ShardState.COMPLETED:
                    usage = {"input_tokens": 0, "output_tokens": 0}  # a running sum: bounded, whatever the shard
                    counts = index.put_results(shard.id, _outcomes(ledger, shard, index, result, usage))
                    crash.point("process:after_index")
                    ledger.advance(shard, ShardState.MERGED, merged=counts, usage=usage)
                    result.merged.append(shard.id)
                elif shard.state == ShardState.MERGED and shard.batch.status == "failed" and shard.batch.errors:
                    list(_validation_failure(shard, index, result))  # report them again: still unresolved
                if shard.state == ShardState.MERGED:
                    _plan_retry(ledger, shard, index, max_attempts, result)
            all_merged = all(s.state == ShardState.MERGED for s in ledger.shards)
            if all_merged and (result.merged or ledger.run.output is None or not _output_intact(ledger)):
                _write_output(ledger, index, result)
        if ledger.run.result_counts:
            result.ok, result.failed = ledger.run.result_counts["ok"], ledger.run.result_counts["failed"]
        result.done = Progress.of(ledger).done
    return result


def _output_intact(ledger: Ledger) -> bool:
    """Is the recorded output still there? Size only: `tick` on a done run must stay cheap, and
    `recover` is where every file is checked byte for byte."""
    ref = ledger.run.output
    path = ledger.paths.output
    return ref is not None and path.is_file() and path.stat().st_size == ref.bytes

