"""Sync mode: the shards' requests sent to the regular endpoint, concurrently, journaled as answered.

The same shard files `create` writes (and the retry attempts `process` plans) are sent line by
line to the provider's regular endpoint (`/v1/chat/completions`, ...), never to /files or
/batches, so it works with OpenAI-compatible servers that have no batch API. Each answer is
appended to the shard's journal (`results/<shard>.journal.jsonl`, whole lines, fsynced) in the
Batch API's output-line shape, `{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error"}`, so `process` reads it as it reads a batch's result files: a failed request
is an error line as in a batch's error file, and is retried the same way.

Exactly-once, as far as a synchronous API allows: a request is sent only if its custom_id has no
line in the journal, which is read before anything is sent, so a killed pass loses at most the
requests in flight (they are sent again). New requests are handed to the workers only as slots
free, after the previous answer is journaled. When every request of a shard has its line, the
journal's lines become the shard's result file and the shard goes straight to `completed`,
marked `mode: sync` (no upload, no batch).

Retries within a pass: 429, 408, 409 and 5xx answers and lost connections are tried again,
up to TRIES times, after the service's Retry-After (a 429 pauses every worker) or an
exponential backoff; the openai client's own retries are off (providers/openai_batch.py), so
none is counted twice. A 5xx that outlasts them is journaled as an error line (`process` plans
a new attempt, sent in sync mode too); a connection that stays lost stops the pass (nothing is
journaled). 401, 403, 404 and non-JSON answers stop the pass with the service's message: they
are about the key, the URL or the model, not about one request.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchpipe import crash, fsio
from batchpipe.errors import ProviderError, UsageError
from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import run_config
from batchpipe.ops.ratelimit import RateGate, SendCancelled, retry_after
from batchpipe.ops.schedule import Schedule
from batchpipe.ops.submit import start_pass
from batchpipe.paths import RunPaths
from batchpipe.pipeline.tokens import counter_for, max_output_tokens
from batchpipe.providers import Provider, SyncAnswer

SYNC = "sync"
TRIES = 6  # sends of one request within a pass (1 + 5 retries) before its failure is journaled
RETRY_STATUSES = frozenset({408, 409, 429})
STOPPING_STATUSES = {
    401: "the service refused the API key",
    403: "the service refused access",
    404: "the service has no such endpoint or model",
}


@dataclass
class SyncSent:
    run_id: str
    sent: list[str] = field(default_factory=list)  # shards whose requests were sent in this pass
    completed: list[str] = field(default_factory=list)  # shards every request of which is now answered
    answered: int = 0  # journal lines written in this pass
    notes: list[str] = field(default_factory=list)
    held: str | None = None
    over_budget: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # shards waiting for the canary


def read_journal(path: Path) -> dict[str, bytes]:
    """custom_id -> its (first) whole line. A line a kill cut short is skipped: its request is sent again."""
    lines: dict[str, bytes] = {}
    if not path.is_file():
        return lines
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                continue
            try:
                custom_id = orjson.loads(raw).get("custom_id")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if isinstance(custom_id, str):
                lines.setdefault(custom_id, raw)
    return lines


def answer_line(custom_id: str, answer: SyncAnswer) -> bytes:
    """An answer as a Batch API output (or error-file) line."""
    body = answer.body if isinstance(answer.body, dict) else {
        "error": {"message": f"HTTP {answer.status_code} with a body that is not JSON", "type": None, "param": None,
                  "code": None}}
    response = {"status_code": answer.status_code, "request_id": answer.request_id, "body": body}
    return orjson.dumps({"id": f"sync_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response,
                         "error": None}) + b"\n"


def backoff(tries: int) -> float:
    """Wait after the n-th failed send with no Retry-After: 0.5 s doubling up to 30 s, with jitter."""
    return min(30.0, 0.5 * 2 ** (tries - 1)) * (1 - random.random() * 0.25)


def _retryable(answer: SyncAnswer) -> bool:
    return answer.status_code in RETRY_STATUSES or answer.status_code >= 500


def _send(provider: Provider, gate: RateGate, endpoint: str, body: dict[str, Any], tokens: int) -> SyncAnswer:
    """One request, tried again on 429 / 5xx / a lost connection, paced by the gate."""
    for tries in range(1, TRIES + 1):
        gate.acquire(tokens)
        try:
            answer = provider.call(endpoint, body)
        except ProviderError:
            if tries == TRIES:
                raise
            gate.delay(backoff(tries))
            continue
        gate.observe(answer.headers)
        if not _retryable(answer) or tries == TRIES:
            return answer
        wait_for = retry_after(answer.headers)
        if answer.status_code == 429:
            gate.pause(wait_for if wait_for is not None else backoff(tries))  # the account's limit: everyone waits
        else:
            gate.delay(wait_for if wait_for is not None else backoff(tries))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold SIGINT back (where the OS allows) for a moment that must not be cut in two."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _stopping(answer: SyncAnswer, endpoint: str, base_url: str) -> ProviderError | None:
    """An answer that is about the key, the URL or the model rather than this request."""
    if answer.status_code in STOPPING_STATUSES:
        error = (answer.body or {}).get("error") if isinstance(answer.body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        hint = ("check OPENAI_API_KEY (environment or .env)" if answer.status_code == 401 else
                f"check the model and that {base_url} serves {endpoint} (provider.base_url / OPENAI_BASE_URL)")
        return ProviderError(f"{endpoint} at {base_url}: HTTP {answer.status_code}: "
                             f"{message or STOPPING_STATUSES[answer.status_code]}", hint=hint,
                             status_code=answer.status_code)
    if 200 <= answer.status_code < 300 and not isinstance(answer.body, dict):
        kind = answer.headers.get("content-type", "").split(";")[0] or "no content type"
        return ProviderError(f"{endpoint} at {base_url} answered with {kind}, not the OpenAI API",
                             hint="check OPENAI_BASE_URL (or provider.base_url): it must be the API itself, "
                                  "such as https://api.openai.com/v1")
    return None


def _requests(ledger: Ledger, shard: Shard, answered: dict[str, bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(custom_id, body) of each request of the shard file that has no answer yet, in file order."""
    with open(ledger.verify(shard.file), "rb") as f:
        for raw in f:
            request = orjson.loads(raw)
            if request["custom_id"] not in answered:
                yield request["custom_id"], request["body"]


def send_shard(ledger: Ledger, shard: Shard, provider: Provider, gate: RateGate, max_workers: int,
               on_answer: Callable[[int, int], None]) -> int:
    """Send every request of `shard` not answered yet; complete the shard once all are. Returns answers journaled."""
    paths, endpoint = ledger.paths, ledger.run.endpoint
    if shard.mode != SYNC:  # recorded before the first request goes out: this shard is never a batch now
        shard.mode = SYNC
        ledger.commit({"event": "sync", "shard": shard.id, "requests": shard.requests})
    journal = paths.journal(shard.id)
    paths.results_dir.mkdir(exist_ok=True)
    answered = read_journal(journal)
    counter = counter_for(ledger.run.model)
    todo = _requests(ledger, shard, answered)
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"sync-{shard.id}")
    in_flight: dict[Future, str] = {}
    written, stop = 0, None  # stop: why the pass ends early (an error, a Ctrl-C), raised once in-flight answers are in

    def fill() -> None:
        while stop is None and len(in_flight) < max_workers and (item := next(todo, None)) is not None:
            custom_id, body = item
            tokens = counter.body(endpoint, body) + (max_output_tokens(body, ledger.run.model, endpoint) or 0)
            with _no_interrupt():  # a request handed out is always one we wait for
                in_flight[pool.submit(_send, provider, gate, endpoint, body, tokens)] = custom_id

    def take(future: Future) -> None:
        """Journal one finished request (once, even if a Ctrl-C cut an earlier try short)."""
        nonlocal written, stop
        custom_id = in_flight[future]
        if custom_id not in answered:
            try:
                answer = future.result()
            except SendCancelled:
                answer = None
            except ProviderError as exc:
                answer, stop = None, stop or exc
            if answer is not None and (problem := _stopping(answer, endpoint, provider.base_url)) is not None:
                answer, stop = None, stop or problem
            if answer is not None:
                line = answer_line(custom_id, answer)
                with _no_interrupt():  # a Ctrl-C lands after the line is whole and counted, not halfway
                    fsio.append_line(journal, line)
                    answered[custom_id] = line
                    written += 1
                crash.point("sync:after_answer")
                on_answer(written, len(in_flight) - 1)
        del in_flight[future]

    try:
        fill()
        while in_flight:
            try:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    take(future)
                fill()  # only now: a kill at any moment leaves at most max_workers requests unjournaled
            except KeyboardInterrupt as exc:  # Ctrl-C: send nothing more, but keep what was sent
                stop = stop or exc
                gate.close()  # workers still waiting for their turn give up; the others are awaited
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    ledger.log({"event": "remote", "call": "sync", "shard": shard.id, "answered": written})
    if stop is not None:
        raise stop
    if len(answered) >= shard.requests:
        _complete(ledger, shard, journal, answered)
    return written


def _complete(ledger: Ledger, shard: Shard, journal: Path, answered: dict[str, bytes]) -> None:
    """The journal's lines become the shard's result file (data before pointer); the shard is completed."""
    path = ledger.paths.result_file(shard.id, "output")
    size, sha = fsio.write_lines_atomic(path, iter(answered.values()))
    crash.point("sync:after_result_file")
    ledger.advance(shard, ShardState.COMPLETED, outputs=ledger.file_ref(path, size, sha), errors_file=None)
    journal.unlink(missing_ok=True)


def switch_to_sync(ledger: Ledger) -> str | None:
    """Record that the run sends in sync mode from now on; refuse while batches of it are at the service."""
    if ledger.run.mode == SYNC:
        return None
    at_service = [s.id for s in ledger.shards if s.state in (ShardState.UPLOADED, ShardState.SUBMITTED)]
    if at_service:
        raise UsageError(
            f"run {ledger.run.id} has shards at the Batch API ({', '.join(at_service[:5])}): they cannot be sent "
            f"in sync mode without paying for them twice",
            hint=f"let them finish first (`batchpipe run {ledger.run.id} --wait`), then run it with --sync",
        )
    ledger.run.mode = SYNC
    ledger.commit({"event": "mode", "mode": SYNC})
    if all(s.state == ShardState.PREPARED and s.mode is None for s in ledger.shards):
        return None  # a new run: nothing to say
    return f"run {ledger.run.id} sends in sync mode from now on (the regular endpoint, not the Batch API)"


def send(paths: RunPaths, provider: Provider, options: Any, *, on_answer: Callable[[int, int], None] | None = None,
         sleep: Callable[[float], None] = time.sleep) -> SyncSent:
    """Send every prepared shard in sync mode, within the budget and behind a canary (as `submit` would).

    `options` is the caller's SubmitOptions (hold, budget, canary). `on_answer(answered, in_flight)`
    is called after each journaled answer, with this pass's count.
    """
    result = SyncSent(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        if note := switch_to_sync(ledger):
            result.notes.append(note)
        result.held, waiting = start_pass(ledger, paths.run_id, options, result.notes)
        if result.held is not None:
            return result
        if ledger.run.target_reached is not None:  # limits.target: nothing more is needed
            result.notes.append(f"limits.target reached ({ledger.run.target_reached} valid records): nothing more "
                                "is sent")
            return result
        cfg = run_config(paths)
        schedule = Schedule.of(ledger, ledger.run.budget_usd, None, cfg, options.poll_interval, provider.base_url)
        gate = RateGate(cfg.sync.requests_per_minute, cfg.sync.tokens_per_minute, sleep=sleep)
        for shard in list(ledger.shards):
            if shard.state != ShardState.PREPARED:
                if shard.mode == SYNC:  # a kill between its completion and this cleanup left the journal
                    paths.journal(shard.id).unlink(missing_ok=True)
                continue
            if shard.handoff is not None:  # a person uploads it (ops/handoff.py): never pay twice
                result.notes.append(f"shard {shard.id} was exported for upload by hand: not sent (bring its results "
                                    f"in with `batchpipe import {paths.run_id} FILE...`)")
                continue
            if waiting and shard.id != ledger.run.canary:
                result.queued.append(f"shard {shard.id}: {waiting}")
                continue
            if shard.mode != SYNC and (why := schedule.over_budget(shard, sync=True)):
                result.over_budget.append(why)
                continue
            result.sent.append(shard.id)
            done = result.answered

            def counted(n: int, in_flight: int, done: int = done) -> None:
                result.answered = done + n
                if on_answer is not None:
                    on_answer(result.answered, in_flight)

            send_shard(ledger, shard, provider, gate, cfg.sync.max_workers, counted)
            if shard.state == ShardState.COMPLETED:
                result.completed.append(shard.id)
    return result
