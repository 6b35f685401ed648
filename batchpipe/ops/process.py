"""`process`: parse downloaded results into the index, plan retries, write the merged output.

Results are joined to rows by custom_id, never by position: the service returns lines in any
order. Whatever a batch returned is kept, even from an expired, cancelled or partly failed
batch. Requests that failed in a way another attempt may fix (5xx, expired, cancelled, missing
from both files) go into a new attempt of their shard, up to `limits.max_attempts`; the rest
keep their row in the output, with null under the output key and the error beside it.

An answer cut at the output limit (finish_reason `length`) is counted and marked in its row;
with `output.truncated: fail` it is a failure (code `truncated`) that is not retried on its
own: the same limit would cut it again. `retry_failed` (a person asking, `process
--retry-failed`) sends every failed request again, whatever its error, as one new attempt of
its shard: the budget check of `submit` applies to it as to any prepared shard.

An answer that came back but is invalid (batchpipe.pipeline.interpret: it does not parse, or a
validator refuses it) is a failed outcome with an `invalid_*` code, counted per code in its
shard's `merged`; `output.on_invalid` decides what becomes of it: `retry` (retryable like a
5xx), `drop` (final; its row is left out of the output) or `fallback` (final; the fallback fills
it). `output.fallback` fills every row whose outcome is finally a failure (but a dropped one)
when the output is written, and marks each row's `<key>_source`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import operator
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from batchpipe import crash, fsio
from batchpipe.config import JobConfig, OutputConfig
from batchpipe.errors import BatchpipeError, ExitCode, InputError
from batchpipe.forked import end_with_parent
from batchpipe.ledger.index import Index, Joined, Outcome, Rows, outcome_of
from batchpipe.ledger.model import FileRef, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import Progress, gc_paused, run_config, usage_tokens
from batchpipe.ops.lost import billed_usage, lost_error
from batchpipe.ops.reindex import intact, open_index, restore_shard_file
from batchpipe.paths import RunPaths
from batchpipe.ops.summary import not_needed, summary
from batchpipe.pipeline.fallback import Fallback
from batchpipe.pipeline.inputs import (
    InputDigest, WholeRead, block_rows, count_rows, dumps_row, input_name, input_sha256, iter_rows, json_blocks,
    json_range_blocks, parse_json_line,
)
from batchpipe.pipeline.interpret import Interpreter, is_invalid
from batchpipe.pipeline.requests import custom_id_for, line_records
from batchpipe.pipeline.results import (
    TRUNCATED, USUAL_MISFITS, Parsed, is_retryable, parse_record, usual_answer, usual_usage,
)
from batchpipe.pipeline.shards import shard_id

MISSING = {"code": "missing_result", "message": "the service returned no result for this request"}
TRUNCATED_ERROR = {
    "code": "truncated",
    "message": "the answer was cut at the output limit (finish_reason: length) and output.truncated is fail",
}
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
    truncated: int = 0  # rows of the output whose answer was cut at the output limit (kept or failed)
    requeued: int = 0  # failed requests sent again by retry_failed, in the attempts of `retries`
    dropped: int = 0  # rows left out of the output: their answer was invalid and output.on_invalid is drop
    fallback: int = 0  # rows of the output filled by output.fallback (their error is kept beside)
    # rows whose answer stayed invalid (failed, dropped or filled by the fallback), per error code
    invalid: dict[str, int] = field(default_factory=dict)
    # Batches that failed validation, as {"shard", "code", "message", "line", "row_no", "custom_id"}:
    # retrying cannot fix them, a person has to look.
    batch_errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    written: int = 0  # lines of the output (rows; with output.explode, records)
    summary: dict[str, Any] | None = None  # answers, records, valid, invalid by reason (summary())
    target_reached: int | None = None  # the valid records counted when limits.target was reached

    @property
    def exit_code(self) -> ExitCode:
        """Where this leaves the run, for a script: 5 a batch failed validation, 3 not done yet,
        6 done but some rows failed (their error is under `<key>_error`), 0 done and clean (or
        done because limits.target was reached: the rows it did not need are not failures)."""
        if self.batch_errors:
            return ExitCode.ATTENTION
        if not self.done:
            return ExitCode.PENDING
        return ExitCode.DONE_WITH_FAILURES if self.failed and self.target_reached is None else ExitCode.OK


def _result_refs(shard: Shard) -> list[FileRef]:
    """The shard attempt's result files: output, errors, and any imported by hand (ops/handoff.py)."""
    pieces = shard.handoff.pieces if shard.handoff is not None else []
    return [ref for ref in (shard.outputs, shard.errors_file, *pieces) if ref is not None]


def _batch_failed(shard: Shard) -> bool:
    """Did the shard's batch fail as a whole? (A shard sent in sync mode has no batch.)"""
    return shard.batch is not None and shard.batch.status == "failed"


def _validation_failure(shard: Shard, index: Index, result: Processed) -> Iterator[Outcome]:
    """Every request of a batch that failed as a whole gets the batch's error (its own line's, if any)."""
    by_line: dict[int, dict[str, Any]] = {}
    lines = [e["line"] for e in shard.batch.errors if isinstance(e.get("line"), int)]
    named = index.requests_at(shard.file.path, lines)  # the file's ids read once, however many errors
    for err in shard.batch.errors:
        line = err.get("line")
        custom_id, row_no, _ = named.get(line, (None, None, None)) if isinstance(line, int) else (None, None, None)
        result.batch_errors.append({"shard": shard.id, **err, "row_no": row_no, "custom_id": custom_id})
        if isinstance(line, int):
            by_line.setdefault(line, err)
    first = shard.batch.errors[0] if shard.batch.errors else {"code": "batch_failed", "message": "the batch failed"}
    for line, custom_id in index.shard_ids(shard.file.path):
        err = by_line.get(line, first)
        error = {"code": err.get("code") or "batch_failed", "message": err.get("message")}
        yield Outcome(custom_id, False, None, error, retryable=False, attempt=shard.attempt)


def _outcomes(
    ledger: Ledger, shard: Shard, index: Index, result: Processed, usage: dict[str, int], cfg: JobConfig,
    stats: dict[str, int] | None = None,
) -> Iterable[Outcome]:
    """Each request's outcome; adds the tokens the service reported for the successful ones to `usage`.

    Failed requests are not billed (and report no usage): only successful lines count, truncated
    answers too (they were paid for, even when `output.truncated: fail` makes them failures), and
    answers that do not mean anything usable (batchpipe.pipeline.interpret): those are failed
    outcomes with their reason (counted per code), retried like a failed request unless
    `output.on_invalid` makes them final (drop, fallback).

    The usual job (chat completions, the answer taken as is) gets its outcomes as Rows: each
    answer of the usual shape goes from its line straight to its row in the index (_read_results),
    and only the other requests (failed, missing, answered in another shape) are judged one by one.
    """
    stats = {} if stats is None else stats  # the shard's summary counts (see summary())
    if _batch_failed(shard):
        return _validation_failure(shard, index, result)
    interpret = Interpreter(cfg.output, cfg.hook_directory())
    # One shard holds at most 50,000 requests: its lists are bounded, whatever the dataset size.
    ids = index.ids_of(shard.file.path)  # in the order of the shard file's lines, as the index keeps outcomes
    as_rows = ledger.run.endpoint == CHAT and interpret.as_is  # as_is: nothing to explode either
    read = _read_results(ledger, shard, ids, cfg, result, as_rows)
    kept = read.kept
    if not as_rows:
        return _judged(zip(ids, kept), shard, cfg, interpret, usage, stats)
    # The requests without a row yet, judged as the general path does; the rows' answers counted with theirs.
    rest = sorted(read.judged)
    if read.answered + len(rest) < len(ids):  # some have no result line at all: look for them
        rest = sorted(read.judged.union(i for i, row in enumerate(kept) if row is None))
    judged = Rows.of(_judged([(ids[i], kept[i]) for i in rest], shard, cfg, interpret, usage, stats,
                             read.tokens_in, read.tokens_out, read.answered))
    for i, row in zip(rest, judged.rows):
        kept[i] = _encoded(row)
    counts = judged.counts
    counts["ok"] += read.answered
    counts["truncated"] += read.truncated
    return Rows(ids, kept, counts, judged.retryable, encoded=True)


CHAT = "/v1/chat/completions"


def _encoded(row: Any) -> bytes:
    """`row` in JSON, in bytes of its own size: what orjson.dumps returns keeps a buffer of some
    kilobytes behind it, too much to keep one per request of a shard."""
    return bytes(memoryview(orjson.dumps(row)))


class _Read(NamedTuple):
    """What _read_results found in a shard attempt's result files."""

    kept: list[Any]  # per line of the shard file: its row (encoded, see below), Parsed, or None (no result)
    judged: set[int]  # the lines whose kept result is a Parsed
    answered: int = 0  # the rows made, and of their answers: the tokens, and how many were cut at the limit
    tokens_in: int = 0
    tokens_out: int = 0
    truncated: int = 0


def _read_results(
    ledger: Ledger, shard: Shard, ids: list[str], cfg: JobConfig, result: Processed, as_rows: bool,
) -> _Read:
    """The result line kept for each request of the shard attempt (`ids`, in line order): the
    first line of its custom_id, or the first answer if an earlier line failed. Unreadable lines
    and unknown ids are warned about in `result`.

    With `as_rows` (the usual job, see _outcomes) an answer of the usual shape (results.UsualAnswer:
    status 200, a string answer and finish reason; a usage of whole prompt_tokens and
    completion_tokens; the first line of its id) is kept as its row in the index: no dicts, no
    Parsed, no Outcome, its usage summed here. A line of any other shape fails to decode or fails a
    check and goes the general way (orjson, parse_record), so each request ends with the outcome the
    general path gives.
    """
    endpoint = ledger.run.endpoint
    attempt = shard.attempt
    keep_usage = cfg.output.meta  # an answer's own usage is only ever written by output.meta: not kept else
    cut = TRUNCATED if cfg.output.truncated == "fail" else None  # a finish reason the general way must judge
    line_of = {custom_id: i for i, custom_id in enumerate(ids)}
    kept: list[Any] = [None] * len(ids)
    judged: set[int] = set()
    answered = tokens_in = tokens_out = truncated = 0
    loads, dumps, usual = orjson.loads, orjson.dumps, usual_answer
    tails: dict[str, bytes] = {}  # a row's encoded end, by finish reason (see below)
    for ref in _result_refs(shard):
        with ledger.reading(ref) as f:  # checked whole and unchanged by this read: nothing is kept before
            for raw in f:
                if as_rows:
                    try:
                        if not raw.isascii():
                            raw.decode()  # UTF-8 throughout, as orjson requires (see results.usual_answer)
                        record = usual(raw)
                        i = line_of[record.custom_id]
                        body = record.response.body
                        first = body.choices[0]
                        reason = first.finish_reason
                        if kept[i] is None and reason != cut:
                            # The row, [true, content, null, false, attempt, reason, usage, false] (index.SCHEMA),
                            # encoded while its answer is at hand, joined from pieces (see _encoded): the
                            # end is the same for every answer of the same finish reason.
                            if keep_usage:
                                tail = b"," + dumps([None, False, attempt, reason, usual_usage(raw), False])[1:]
                            elif (tail := tails.get(reason)) is None:
                                tail = tails[reason] = b"," + dumps([None, False, attempt, reason, None, False])[1:]
                            kept[i] = b"[true," + dumps(first.message.content) + tail
                            used = body.usage
                            answered += 1
                            tokens_in += used.prompt_tokens
                            tokens_out += used.completion_tokens
                            truncated += reason == TRUNCATED
                            continue
                    except (*USUAL_MISFITS, KeyError, TypeError, IndexError):
                        pass  # another shape: the general way below
                try:
                    record = loads(raw)
                except orjson.JSONDecodeError as exc:
                    if raw.strip():  # a blank line is skipped
                        result.warnings.append(f"shard {shard.id}: a result line is unreadable (not valid JSON ({exc}))")
                    continue
                try:
                    parsed = parse_record(endpoint, record)
                except ValueError as exc:
                    result.warnings.append(f"shard {shard.id}: a result line is unreadable ({exc})")
                    continue
                i = line_of.get(parsed.custom_id)
                if i is None:
                    result.warnings.append(f"shard {shard.id}: result for unknown custom_id {parsed.custom_id!r} ignored")
                elif (had := kept[i]) is None or (parsed.ok and type(had) is not bytes and not had.ok):
                    kept[i] = parsed
                    judged.add(i)
    return _Read(kept, judged, answered, tokens_in, tokens_out, truncated)


def _judged(
    results: Iterable[tuple[str, Parsed | None]], shard: Shard, cfg: JobConfig, interpret: Interpreter,
    usage: dict[str, int], stats: dict[str, int], tokens_in: int = 0, tokens_out: int = 0, answers: int = 0,
) -> Iterator[Outcome]:
    """The outcome of each (custom_id, its kept result line or None), in that order; once
    all are yielded, the tokens of the answers go into `usage` and the summary counts into `stats`.

    `tokens_in`, `tokens_out`, `answers`: those of the answers already made rows (_read_results),
    each a valid record, added in.
    """
    fail_truncated = cfg.output.truncated == "fail"
    retry_invalid = cfg.output.on_invalid == "retry"
    explode = cfg.output.explode is not False
    # A request with no result line: missing, or (if one of the files was lost) perhaps in it.
    absent = lost_error(shard) or MISSING
    attempt = shard.attempt
    keep_usage = cfg.output.meta  # an answer's own usage is only ever written by output.meta: not kept else
    as_is = interpret.as_is  # the usual job: the answer is the value (never exploded)
    valid = answers  # summed here, added to usage and stats at the end
    for custom_id, p in results:
        if p is not None and p.ok:
            used = p.usage
            if used is not None:
                tin, tout = usage_tokens(used)
                tokens_in += tin
                tokens_out += tout
                if not keep_usage:
                    used = None
            answers += 1
            if fail_truncated and p.finish_reason == TRUNCATED:
                _add(stats, "invalid." + TRUNCATED_ERROR["code"])
                _add(stats, "records", 1 - explode)
                yield Outcome(custom_id, False, None, TRUNCATED_ERROR, False, attempt, p.finish_reason)
                continue
            if as_is:
                valid += 1
                yield outcome_of((custom_id, True, p.value, None, False, attempt, p.finish_reason, used, False))
                continue
            meant = interpret(p.value)
            made = len(meant.value) if explode and meant.ok else 1  # valid records this answer makes
            dropped = sum(meant.dropped.values())  # its invalid items (explode), left out
            _add(stats, "records", made + dropped if meant.ok or not explode else 0)
            for code, n in meant.dropped.items():
                _add(stats, "invalid." + code, n)
            if meant.ok:
                valid += made
                yield Outcome(custom_id, True, meant.value, None, False, attempt, p.finish_reason, used)
            else:
                _add(stats, "invalid." + str(meant.error.get("code") if meant.error else "invalid"))
                yield Outcome(custom_id, False, None, meant.error, retry_invalid, attempt, p.finish_reason, used,
                              True)  # fmt: skip
        else:
            error = p.error if p is not None else absent
            yield Outcome(custom_id, False, None, error, is_retryable(error), attempt)
    usage["input_tokens"] += tokens_in
    usage["output_tokens"] += tokens_out
    records = stats.pop("records", 0) + (valid if as_is else 0)  # as is, each valid answer is one record
    invalid = dict(stats)
    stats.clear()
    stats.update({k: n for k, n in (("answers", answers), ("records", records), ("valid", valid)) if n} | invalid)


def replay(ledger: Ledger, shard: Shard, index: Index) -> Iterator[Outcome]:
    """A merged shard's outcomes once more, from its result files (to rebuild the index)."""
    cfg = run_config(ledger.paths)
    return _outcomes(ledger, shard, index, Processed(ledger.run.id), {"input_tokens": 0, "output_tokens": 0}, cfg)


def _plan_retry(ledger: Ledger, shard: Shard, index: Index, max_attempts: int, result: Processed) -> None:
    """Put this attempt's retryable failures into a new attempt of the shard (data before pointer)."""
    if shard.retry is not None or shard.attempt >= max_attempts or _batch_failed(shard):
        return
    if (shard.merged or {}).get(RETRY_LOST):
        return  # its file could not be made again; `recover` lifts this once it can
    wanted = dict(index.retryable(shard.id))  # line in this attempt's file -> custom_id
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
    _new_attempt(ledger, index, shard, [(shard, wanted)], result)


def _retry_failed(ledger: Ledger, index: Index, result: Processed) -> None:
    """Every failed request, whatever its error, into one new attempt per shard: a person asked.

    A request's latest outcome may sit in any attempt of its shard (a 4xx stays in attempt 1
    while a 5xx of the same shard went on to attempt 2), so each attempt is asked for its own.
    A shard whose last attempt has not been merged yet is left alone: its failures are not
    final, and asking twice must not send a request twice.
    """
    chains: dict[int, list[Shard]] = {}
    for shard in ledger.shards:
        chains.setdefault(shard.index, []).append(shard)
    for attempts in chains.values():
        attempts.sort(key=lambda s: s.attempt)
        last = attempts[-1]
        if last.state != ShardState.MERGED or last.retry is not None:
            continue
        sources = [(s, dict(index.retryable(s.id, every_failure=True))) for s in attempts]
        sources = [(s, wanted) for s, wanted in sources if wanted]
        if sources:
            result.requeued += sum(len(wanted) for _, wanted in sources)
            _new_attempt(ledger, index, last, sources, result, every_failure=True)


def _new_attempt(
    ledger: Ledger,
    index: Index,
    last: Shard,
    sources: list[tuple[Shard, dict[int, str]]],
    result: Processed,
    *,
    every_failure: bool = False,
) -> None:
    """Write the given lines of earlier attempts into the attempt after `last` (data before pointer).

    `sources`: (attempt, {line in its file: custom_id}). Each source records how many of its
    requests it handed on ("retried"), so the run's figures count them once, in the new attempt.
    """
    new_id = shard_id(last.index, last.attempt + 1)
    path = ledger.paths.shard_file(new_id)
    source_bytes: dict[str, int] = {}

    def lines() -> Iterator[bytes]:
        for src, wanted in sources:
            with open(ledger.verify(src.file), "rb") as f:
                for n, line in enumerate(f, 1):
                    if n in wanted:
                        source_bytes[src.id] = source_bytes.get(src.id, 0) + len(line)
                        yield line

    size, sha = fsio.write_lines_atomic(path, lines())
    crash.point("retry:after_shard_file")
    file = str(path.relative_to(ledger.paths.root))
    index.add_shard_file(file, (cid for _, wanted in sources for cid in wanted.values()))
    crash.point("retry:after_index")
    requests = sum(len(wanted) for _, wanted in sources)
    ledger.state.shards.append(
        Shard(
            id=new_id,
            index=last.index,
            attempt=last.attempt + 1,
            state=ShardState.PREPARED,
            file=FileRef(file, size, sha),
            requests=requests,
            # The retried lines are a subset of their attempts': their share of its counts (by bytes
            # for input tokens; every request of a job has the same output bound).
            est_tokens=sum(-(-s.est_tokens * source_bytes.get(s.id, 0) // max(s.file.bytes, 1)) for s, _ in sources),
            max_output_tokens=sum(-(-s.max_output_tokens * len(w) // max(s.requests, 1)) for s, w in sources),
        )
    )
    for src, wanted in sources:
        merged = dict(src.merged or {})
        truncated = index.truncated_retryable(src.id, every_failure=every_failure)
        merged["retried"] = merged.get("retried", 0) + len(wanted)
        if truncated:
            merged["retried_truncated"] = merged.get("retried_truncated", 0) + truncated
        src.merged = merged
    last.retry = new_id
    event = {"event": "retry_planned", "shard": last.id, "attempt": new_id, "requests": requests}
    ledger.commit(event | ({"asked": "retry-failed"} if every_failure else {}))
    result.retries.append(new_id)


def _merged_rows(ledger: Ledger, index: Index, result: Processed) -> Iterator[bytes]:
    """The output lines: the input walked in order, each request's outcome joined by its place.

    Plain rows get the outcome's fields; with `input.records` each record of the line gets its
    own; with `output.explode` an answer's items become a line each. With `limits.target` only
    valid records are written, the first `target` of them (the rest stay in the index and results/).
    A row whose invalid answer `output.on_invalid: drop` drops is not written.
    """
    cfg = run_config(ledger.paths)
    if _splices(cfg):  # the usual job: a row gets its answer and its attempt count; the rest, below
        yield from _spliced_rows(ledger, cfg, index, result)
        return
    out = cfg.output
    fallback = Fallback(out.fallback, cfg.hook_directory()) if out.fallback is not None else None
    joined = index.joined()
    digest = InputDigest()
    explode = cfg.output.explode is not False
    target = cfg.limits.target
    seq = 0
    for row in iter_rows(cfg.input, digest):
        data = row.data  # parsed for this row alone: filled in place, not copied
        if cfg.input.records is not None:
            line_id = custom_id_for(cfg, row)
            for custom_id, record in line_records(cfg, row, line_id):
                seq += 1
                outcome = joined.at(seq)
                if outcome is not None and outcome.custom_id != custom_id:  # the input changed under us
                    raise InputError(f"{input_name(cfg.input)}: line {row.line_no} does not match the run's index")
                _fill_row(record, outcome, out, fallback, result)  # a dropped record keeps no answer
            result.written += 1
            yield dumps_row(data)
            continue
        outcome = joined.at(row.row_no)
        if target is not None and (outcome is None or not outcome.ok or result.written >= target):
            if outcome is not None and not outcome.ok:  # counted as _fill_row would, but not written
                why = outcome.error
                dropped = out.on_invalid == "drop" and is_invalid(why)
                result.dropped, result.failed = result.dropped + dropped, result.failed + (not dropped)
                if is_invalid(why):
                    result.invalid[why["code"]] = result.invalid.get(why["code"], 0) + 1
            continue  # a dataset: only valid records are written, up to the target; read on to the end
        if explode and outcome is not None and outcome.ok:
            result.ok += 1
            result.truncated += outcome.finish_reason == TRUNCATED
            for i, item in enumerate(outcome.value):
                if target is not None and result.written >= target:
                    break
                line = dict(data)
                line[out.key], line[f"{out.key}_parent"], line[f"{out.key}_index"] = item, outcome.custom_id, i
                _fill_meta(line, item, outcome, out, "model" if fallback is not None else None)
                result.written += 1
                yield dumps_row(line)
            continue
        if _fill_row(data, outcome, out, fallback, result) == "dropped":
            continue
        result.written += 1
        yield dumps_row(data)
    _check_every_request_has_a_row(ledger, cfg, joined)
    if digest.sha256 != ledger.run.input["sha256"]:  # changed since the check in _write_output
        raise _input_changed(ledger)


def _splices(cfg: JobConfig) -> bool:
    """Is this the usual JSONL job, whose rows _spliced_rows writes (no records, explode, target,
    fallback, fields or meta)?"""
    out = cfg.output
    return (cfg.input.format == "jsonl" and cfg.input.count is None and cfg.input.records is None
            and out.explode is False and cfg.limits.target is None and out.fallback is None and not out.fields
            and not out.meta)


# The usual job's output is written by worker processes, a range of the input's bytes each on every
# core, once the input holds this many bytes: reading, splicing and writing the rows is most of
# the output pass, and a Python process does it on one core. Below it, starting the workers costs
# more than they save.
PARALLEL_OUTPUT_BYTES = 16 << 20


def _spliced_rows(ledger: Ledger, cfg: JobConfig, index: Index, result: Processed) -> Iterator[bytes]:
    """The output of the usual JSONL job (_splices), in blocks of lines (_splice); by worker
    processes for a big input (_spliced_in_parallel).

    The input is read once: hashed as it is read, and its hash compared with the run's at the end
    (before that, nothing is published). A row that does not read as it did at create is an input
    that changed, if its hash says so: the message is the one a change found before the pass gets.
    """
    path = Path(cfg.input.path)
    recorded = ledger.run.input["sha256"]
    digest = InputDigest()
    try:
        workers = _output_workers(path)
        if workers > 1:
            rows = yield from _spliced_in_parallel(ledger, cfg, path, workers, digest, result)
            joined = index.joined(rows + 1)  # only the requests after the last row are asked for: none
        else:
            joined = index.joined()
            yield from _splice(cfg, joined, json_blocks(path, digest), 1, 1, result)
    except InputError:
        if input_sha256(cfg.input) != recorded:
            raise _input_changed(ledger) from None
        raise
    if digest.sha256 != recorded:
        raise _input_changed(ledger)
    _check_every_request_has_a_row(ledger, cfg, joined)


def _output_workers(path: Path) -> int:
    """How many processes write the output of a JSONL input (1: this one alone)."""
    try:
        size = path.stat().st_size
    except OSError:
        return 1  # the read says what is wrong with the file
    if size < PARALLEL_OUTPUT_BYTES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return min(os.cpu_count() or 1, size // (PARALLEL_OUTPUT_BYTES // 2))  # half the threshold each, at least


def _spliced_in_parallel(ledger: Ledger, cfg: JobConfig, path: Path, count: int, digest: InputDigest,
                         result: Processed) -> Generator[bytes, None, int]:
    """_spliced_rows by `count` worker processes, a range of the input's lines each (_output_worker);
    return how many rows the input has.

    Each writes its range's output lines to a part file beside the output. The first starts at
    once; the others once the rows and lines before their ranges are counted (each counts the
    range before its own, at C speed). This process hashes the whole input meanwhile, in a thread
    (a sha256 cannot be put together from the workers'; hashing and reading let go of the GIL),
    and hands the parts on in input order, as they are written, to the output's writer, which
    hashes what it writes. Nothing is published if any of it fails; the parts are removed in any
    case.
    """
    ranges = _line_ranges(path, count)
    rows = 0
    with ExitStack() as stack:
        whole = stack.enter_context(WholeRead(path))  # opened before any worker reads
        parts = stack.enter_context(fsio.scratch_files(ledger.paths.output, len(ranges)))
        workers = [stack.enter_context(_Worker(_output_worker, ledger, cfg, ranges, k, str(part)))
                   for k, part in enumerate(parts)]
        threads = stack.enter_context(ThreadPoolExecutor(2))
        hashed = threads.submit(whole.hash)
        row_no, line_no = 1, 1  # where the next range starts
        for worker in workers[1:]:
            rows_before, lines_before = worker.receive()  # of the range before its own
            row_no, line_no = row_no + rows_before, line_no + lines_before
            worker.send((row_no, line_no))
        for worker, part in zip(workers, parts):
            with open(part, "rb") as f:
                # handed on as it is written (the worker says how far it got): the next part's
                # work goes on meanwhile, and little is left to do once the last worker is done
                while isinstance(written := worker.receive(), int):
                    yield f.read(written - f.tell())
            # handed on whole: removed on a thread, as freeing a part's blocks takes a while (30 MB:
            # 10-20 ms) and the next part is waiting; any left are removed when the block ends
            threads.submit(part.unlink, missing_ok=True)
            counts = written
            rows += counts.pop("rows")
            for code, n in counts.pop("invalid").items():
                result.invalid[code] = result.invalid.get(code, 0) + n
            for name, n in counts.items():
                setattr(result, name, getattr(result, name) + n)
        hashed.result()
        whole.finish(digest)  # the workers are done: refuses a file that changed while they read it
    return rows


def _line_ranges(path: Path, count: int) -> list[tuple[int, int]]:
    """`count` ranges of bytes of the file (fewer if its lines are few), about as long as each
    other, each starting at a line."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, count):
            at = max(size * k // count, cuts[-1])
            f.seek(at)
            while (chunk := f.read(1 << 16)) and (nl := chunk.find(b"\n")) < 0:
                at += len(chunk)
            at = at + nl + 1 if chunk else size
            if cuts[-1] < at < size:
                cuts.append(at)
    return list(zip(cuts, [*cuts[1:], size]))


def _output_worker(conn: Connection, ledger: Ledger, cfg: JobConfig, ranges: list[tuple[int, int]], k: int,
                   part: str) -> None:
    """Write the output lines of the input's range `k` to `part`, sending how many bytes of it are
    written after each block, then the counts (and how many rows it read); first, but for the
    first range, count the rows and lines of the range before it, send them, and receive the row
    and line numbers its own range starts at."""
    path = Path(cfg.input.path)
    row_no, line_no = 1, 1
    if k:
        conn.send(count_rows(path, *ranges[k - 1]))
        row_no, line_no = conn.recv()
    result = Processed(ledger.run.id)
    with Index(ledger.paths.index) as index, open(part, "wb") as f:  # its own connection: never one across a fork
        spliced = _splice(cfg, index.joined(row_no), json_range_blocks(path, *ranges[k]), row_no, line_no, result)
        while True:
            try:
                f.write(next(spliced))
            except StopIteration as done:
                rows = done.value
                break
            f.flush()
            conn.send(f.tell())  # how many bytes of the part can be read
    conn.send({"rows": rows, "ok": result.ok, "failed": result.failed, "truncated": result.truncated,
               "written": result.written, "dropped": result.dropped, "fallback": result.fallback,
               "invalid": result.invalid})


class _Worker:
    """A forked process (it starts with this process's ledger, config and modules) running
    `target(conn, *args)` once, talked to over a pipe; what it raises is raised by `receive`.
    It ends with the process that started it (forked.end_with_parent), and leaving the block on
    an error stops it at once.
    """

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_run_worker, args=(theirs, target, *args), daemon=True)
        self.process.start()
        theirs.close()

    def send(self, value: Any) -> None:
        self.conn.send(value)

    def receive(self) -> Any:
        multiprocessing.connection.wait([self.conn, self.process.sentinel])
        if not self.conn.poll():
            self.process.join()
            raise BatchpipeError(
                f"a worker process writing the output stopped (exit code {self.process.exitcode}); nothing was written",
                hint="run the same command again",
            )
        value = self.conn.recv()
        if isinstance(value, BaseException):
            raise value
        return value

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            self.process.terminate()
        self.process.join()
        self.conn.close()


def _run_worker(conn: Connection, target: Callable[..., None], *args: Any) -> None:
    end_with_parent()  # killed, the process that started it waits for nothing: nor must this one
    try:
        target(conn, *args)
    except BaseException as exc:  # noqa: BLE001 - carried to the process that waits for it, not printed here
        try:
            conn.send(exc)  # a BatchpipeError pickles whole (errors.BatchpipeError.__reduce__)
        except Exception:  # noqa: BLE001 - one that does not pickle: its message, at least
            with contextlib.suppress(Exception):
                conn.send(BatchpipeError(f"a worker process writing the output failed: {exc!r}"))


# The last byte of a row's text before its closing brace, when the row cannot be spliced at block
# speed: it is "{" (the row is an empty object: no comma before the answer) or whitespace (left
# out before the answer, as bytes.rstrip does), or the line is a lone brace.
_ODD_ENDS = frozenset((b"", b"{", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c"))
_LAST_BYTE = operator.itemgetter(slice(-1, None))


class _AttemptsTails(dict[int, bytes]):
    """`,"<key>_attempts":<n>}` and the line's end, made once per attempt number n."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = b"," + orjson.dumps(f"{key}_attempts") + b":"

    def __missing__(self, attempt: int) -> bytes:
        self[attempt] = tail = b"%s%d}\n" % (self.key, attempt)
        return tail


def _splice(cfg: JobConfig, joined: Joined, blocks: Iterable[bytes], row_no: int, line_no: int,
            result: Processed) -> Generator[bytes, None, int]:
    """The output lines of the usual JSONL job for `blocks` of its input (json_blocks), whose first
    line is row `row_no` and line `line_no` of the file: a block of output lines per block; return
    how many rows they hold.

    A row whose answer came back as it should (finish reason "stop") is its input line with the
    answer (its JSON text, as the index keeps it) and the attempt count appended: nothing parsed or
    encoded again, the row's own bytes kept as they are. Any other row is parsed and filled by
    _fill_row, as for every other job. A block whose every line ends with "}" right after the
    row's last value (the usual file) is cut at those braces in one call, its outcomes joined as
    one list (Joined.span) and its lines put together from their pieces by list slices, not a row
    at a time; any other block is read a row at a time (_splice_rows).
    """
    out = cfg.output
    name = input_name(cfg.input)
    key = b"," + orjson.dumps(out.key) + b":"
    tails = _AttemptsTails(out.key)
    first = row_no
    for block in blocks:
        lines = block.count(b"\n")
        heads = block.split(b"}\n")  # each row's line without its closing brace
        heads.pop()  # what follows the last brace: nothing, if every line ends with one
        if len(heads) != lines or not _ODD_ENDS.isdisjoint(map(_LAST_BYTE, heads)):
            rows = block_rows(block, row_no, line_no)
            yield b"".join(_splice_rows(rows, joined, out, name, key, tails, result))
            row_no, line_no = row_no + len(rows), line_no + lines
            continue
        outcomes = joined.span(row_no, lines)
        others = [k for k, row in enumerate(outcomes) if row is None or not row[0] or row[5] not in _SPLICED]
        for k in others:
            outcomes[k] = _STAND_IN  # its pieces are replaced below
        # A row's line is four pieces: its head, the key, the answer, and the attempts with the line's end.
        parts = [key] * (4 * lines)
        parts[0::4] = heads
        parts[2::4] = map(_VALUE, outcomes)
        parts[3::4] = map(tails.__getitem__, map(_ATTEMPT, outcomes))
        for k in others:
            line = _filled(name, line_no + k, heads[k] + b"}\n", joined.outcome(row_no + k), out, result)
            parts[4 * k : 4 * k + 4] = (line, b"", b"", b"")
        result.ok += lines - len(others)
        result.written += lines - len(others)
        yield b"".join(parts)
        row_no, line_no = row_no + lines, line_no + lines
    return row_no - first


# The finish reasons of the answers _splice appends as they are (any other is written by _fill_row),
# and what it reads of a row of Joined.span: the answer's JSON text, the attempt.
_SPLICED = (None, "stop")
_VALUE, _ATTEMPT = operator.itemgetter(1), operator.itemgetter(4)
_STAND_IN = (True, b"", None, False, 1, "stop", None, False)  # in the place of a row _fill_row writes


def _splice_rows(rows: list[tuple[int, int, bytes]], joined: Joined, out: OutputConfig, name: str, key: bytes,
                 tails: _AttemptsTails, result: Processed) -> Iterator[bytes]:
    """_splice's lines for `rows` (block_rows), a row at a time: any line of a JSONL file."""
    outcomes = joined.span(rows[0][0], len(rows)) if rows else []
    for (row_no, line_no, raw), row in zip(rows, outcomes):
        if row is not None and row[0] and row[5] in _SPLICED:
            head = raw.rstrip()[:-1].rstrip()  # the row without its closing brace
            result.ok += 1
            result.written += 1
            yield b"".join((head, key[1:] if head.endswith(b"{") else key, row[1], tails[row[4]]))
            continue
        yield _filled(name, line_no, raw, joined.outcome(row_no), out, result)


def _filled(name: str, line_no: int, raw: bytes, outcome: Outcome | None, out: OutputConfig,
            result: Processed) -> bytes:
    """A row _splice does not append to: its line parsed, filled by _fill_row and written compact
    (b"" for a row its answer's output.on_invalid drops)."""
    data = parse_json_line(name, line_no, raw)
    if _fill_row(data, outcome, out, None, result) == "dropped":
        return b""
    result.written += 1
    return dumps_row(data)


def _fill_row(data: dict[str, Any], outcome: Outcome | None, out: OutputConfig, fallback: Fallback | None,
              result: Processed) -> str:
    """Write a row's (or a nested record's) outcome into it and count it in `result`; return "ok",
    "failed", "fallback" or "dropped" (a dropped row is left as it was: it is not written)."""
    key = out.key
    why = outcome.error if outcome is not None else MISSING  # why the model's answer is not the value
    error = why
    if outcome is not None and outcome.ok:
        value, source, kind = outcome.value, "model", "ok"
    elif out.on_invalid == "drop" and is_invalid(why):
        value, source, kind = None, None, "dropped"
    elif fallback is not None and (filled := fallback(data, why)).ok:
        value, source, kind = filled.value, "fallback", "fallback"
    else:
        value, source, kind = None, None, "failed"
        error = filled.error if fallback is not None else why  # fallback_failed, naming both failures
    setattr(result, kind, getattr(result, kind) + 1)
    if kind != "ok" and is_invalid(why):
        result.invalid[why["code"]] = result.invalid.get(why["code"], 0) + 1
    if kind == "dropped":
        return kind
    data[key] = value
    if kind != "ok":
        data[f"{key}_error"] = error
    result.truncated += outcome is not None and outcome.finish_reason == TRUNCATED
    _fill_meta(data, value, outcome, out, source if fallback is not None else None)
    return kind


def _fill_meta(data: dict[str, Any], value: Any, outcome: Outcome | None, out: OutputConfig,
               source: str | None) -> None:
    """The fields beside the answer: output.fields spread from `value`, attempts, finish reason,
    usage (output.meta) and the source (when a fallback is configured: `source` is not None)."""
    key = out.key
    for name in out.fields:  # spread from the value (null when the row has none)
        data[name] = value.get(name) if isinstance(value, dict) else None
    data[f"{key}_attempts"] = outcome.attempt if outcome is not None else 0
    finish_reason = outcome.finish_reason if outcome is not None else None
    if out.meta:  # on every row, null when not known
        data[f"{key}_finish_reason"] = finish_reason
        data[f"{key}_usage"] = outcome.usage if outcome is not None else None
    elif finish_reason not in (None, "stop"):  # "stop" is the norm: not written
        data[f"{key}_finish_reason"] = finish_reason
    if out.fallback is not None:
        data[f"{key}_source"] = source


def _check_every_request_has_a_row(ledger: Ledger, cfg: JobConfig, joined: Joined) -> None:
    """Raised inside the output's writer, so no output is published: a paid answer whose row is
    gone must never be dropped while the run reports done."""
    first, orphans = None, 0
    for _, custom_id in sorted(joined.rest()):
        first, orphans = first or custom_id, orphans + 1
    if orphans:
        raise InputError(
            f"{orphans} requests of run {ledger.run.id} have no row in {input_name(cfg.input)} "
            f"(the first: id {first!r}): the file has fewer rows than the run was created from",
            hint="restore the input file the run was created from and run `batchpipe process` again; "
            "the answers are kept until then",
        )


def _input_changed(ledger: Ledger) -> InputError:
    return InputError(
        f"{ledger.run.input['path']} has changed since the run was created: its rows can no longer be matched",
        hint="restore the original input file (same content) and run `batchpipe process` again",
    )


def _write_output(ledger: Ledger, index: Index, result: Processed) -> None:
    run = ledger.run
    cfg = run_config(ledger.paths)
    if not _splices(cfg) and input_sha256(cfg.input) != run.input["sha256"]:  # _spliced_rows: in its one read
        raise _input_changed(ledger)
    result.ok = result.failed = result.truncated = result.written = result.dropped = result.fallback = 0
    result.invalid = {}
    out_size, out_sha = fsio.write_lines_atomic(ledger.paths.output, _merged_rows(ledger, index, result))
    crash.point("output:after_file")
    run.output = ledger.file_ref(ledger.paths.output, out_size, out_sha)
    # dropped, fallback and the invalid codes only when there are some: a run without them keeps its figures
    extra = {"dropped": result.dropped, "fallback": result.fallback, **dict(sorted(result.invalid.items()))}
    run.result_counts = {"ok": result.ok, "failed": result.failed, "truncated": result.truncated} | {
        k: n for k, n in extra.items() if n}
    if cfg.input.records is not None or cfg.output.explode is not False or cfg.limits.target is not None:
        run.result_counts["lines"] = result.written  # not one line per request: say how many
    ledger.commit({"event": "output", "rows": result.ok + result.failed + result.fallback, **run.result_counts})
    result.output_written = True


def process(paths: RunPaths, *, retry_failed: bool = False) -> Processed:
    """Merge what was downloaded, plan retries, write the output once every row has an outcome.

    With `retry_failed`, then send every failed request of a finished shard again (see the module doc).
    """
    result = Processed(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        cfg = run_config(paths)
        max_attempts = cfg.limits.max_attempts
        with open_index(ledger, replay, result.warnings) as index, gc_paused():  # index rebuilt first if lost or damaged
            shards = list(ledger.shards)
            # Merging is redone as it was after a crash (the index replaces a shard's outcomes), so the
            # ledger need not be written for every shard: a run of a thousand small shards would
            # write its whole state.json a thousand times. It is written at least every second.
            written, held = time.monotonic(), False
            for shard, (counts, usage, stats) in _merge_completed(ledger, index, cfg, result):
                crash.point("process:after_index")
                ledger.advance(shard, ShardState.MERGED, merged=counts, usage=usage, answers=stats, commit=False)
                result.merged.append(shard.id)
                held = True
                if time.monotonic() - written >= COMMIT_EVERY:
                    ledger.commit()
                    written, held = time.monotonic(), False
            if held:
                ledger.commit()
            for shard in shards:
                if (shard.state == ShardState.MERGED and _batch_failed(shard) and shard.batch.errors
                        and shard.retry is None and shard.id not in result.merged):
                    list(_validation_failure(shard, index, result))  # report them again: still unresolved
            _check_target(ledger, cfg)
            if ledger.run.target_reached is None:  # once it is reached, nothing more is sent
                for shard in shards:
                    if shard.state == ShardState.MERGED:
                        _plan_retry(ledger, shard, index, max_attempts, result)
            all_merged = all(s.state == ShardState.MERGED or not_needed(ledger, s) for s in ledger.shards)
            if all_merged and (result.merged or ledger.run.output is None or not _output_intact(ledger)):
                _write_output(ledger, index, result)
            if retry_failed:
                _retry_failed(ledger, index, result)
                # a batch that failed validation and is now being sent again no longer needs a person
                result.batch_errors = [e for e in result.batch_errors if ledger.state.shard(e["shard"]).retry is None]
        if ledger.run.result_counts:
            counts = ledger.run.result_counts
            result.ok, result.failed, result.truncated = counts["ok"], counts["failed"], counts.get("truncated", 0)
            result.dropped, result.fallback = counts.get("dropped", 0), counts.get("fallback", 0)
            result.invalid = {k: n for k, n in counts.items() if k.startswith("invalid_")}
            result.written = counts.get("lines", result.ok + result.failed + result.fallback)
        result.done = Progress.of(ledger).done
        result.summary = summary(ledger)
        result.target_reached = ledger.run.target_reached
    return result


# Seconds of merging whose ledger changes are written in one commit (see process()).
COMMIT_EVERY = 1.0

# Completed shards holding at least this many requests in all are merged by worker processes, a
# shard each, on every core: reading result lines is most of `process`, and a Python process reads
# on one core. Below it, starting the workers costs more than they save.
PARALLEL_MIN_REQUESTS = 20_000

Merged = tuple[dict[str, int], dict[str, int], dict[str, int]]  # counts, usage, stats (see ledger.advance)


def _merge(ledger: Ledger, shard: Shard, index: Index, cfg: JobConfig, result: Processed) -> Merged:
    """Record a completed shard's outcomes in the index; what its ledger entry then says."""
    usage = {"input_tokens": 0, "output_tokens": 0}  # a running sum: bounded, whatever the shard
    stats: dict[str, int] = {}
    counts = index.put_results(shard.id, shard.file.path, _outcomes(ledger, shard, index, result, usage, cfg, stats))
    return counts, billed_usage(shard) or usage, stats  # a lost output file's requests were still billed


def _merge_completed(ledger: Ledger, index: Index, cfg: JobConfig, result: Processed) -> Iterator[tuple[Shard, Merged]]:
    """(shard, what it merged to) for each completed shard, in ledger order, each once its outcomes
    are committed to the index (the caller then advances the ledger: data before the pointer).

    A big pass is shared among worker processes (forked: they start with this process's ledger,
    config and modules), each with its own connection to the index. A batch that failed as a
    whole is merged here, where its errors are reported.
    """
    completed = [s for s in ledger.shards if s.state == ShardState.COMPLETED]
    apart = [s for s in completed if not _batch_failed(s)]
    workers = min(len(apart), os.cpu_count() or 1)
    if (workers < 2 or sum(s.requests for s in apart) < PARALLEL_MIN_REQUESTS
            or "fork" not in multiprocessing.get_all_start_methods()):
        apart = []
    with ExitStack() as stack:
        futures = {}
        if apart:
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_start,
                initargs=(ledger, cfg)))
            # the biggest first: the workers end close together, whatever the mix of attempts' sizes
            position = {s.id: k for k, s in enumerate(ledger.shards)}  # (list.index compares whole shards)
            futures = {s.id: pool.submit(_merge_in_worker, position[s.id])
                       for s in sorted(apart, key=lambda s: -s.requests)}
        for shard in completed:
            if shard.id not in futures:
                yield shard, _merge(ledger, shard, index, cfg, result)
                continue
            merged, warnings = futures[shard.id].result()
            result.warnings += warnings
            yield shard, merged


_WORKER: tuple[Ledger, JobConfig] | None = None  # a merge worker's run (see _merge_completed)


def _worker_start(ledger: Ledger, cfg: JobConfig) -> None:
    global _WORKER
    _WORKER = (ledger, cfg)
    end_with_parent()


def _merge_in_worker(position: int) -> tuple[Merged, list[str]]:
    assert _WORKER is not None
    ledger, cfg = _WORKER
    result = Processed(ledger.run.id)
    with Index(ledger.paths.index) as index:  # its own connection: one must never cross a fork
        return _merge(ledger, ledger.shards[position], index, cfg, result), result.warnings


def _add(stats: dict[str, int], name: str, n: int = 1) -> None:
    if n:
        stats[name] = stats.get(name, 0) + n


def _check_target(ledger: Ledger, cfg: JobConfig) -> None:
    """`limits.target`: once the merged shards hold that many valid records, say so in the ledger:
    `submit` then sends nothing more, `run` cancels the running batches, and the shards never
    sent are not needed for the run to be done."""
    target = cfg.limits.target
    if target is None or ledger.run.target_reached is not None:
        return
    valid = sum((s.answers or {}).get("valid", 0) for s in ledger.shards if s.state == ShardState.MERGED)
    if valid >= target:
        ledger.run.target_reached = valid
        ledger.commit({"event": "target_reached", "target": target, "valid": valid})


def _output_intact(ledger: Ledger) -> bool:
    """Is the recorded output still there? Size only: `tick` on a done run must stay cheap, and
    `recover` is where every file is checked byte for byte."""
    ref = ledger.run.output
    path = ledger.paths.output
    return ref is not None and path.is_file() and path.stat().st_size == ref.bytes

