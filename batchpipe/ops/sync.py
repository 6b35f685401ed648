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
requests in flight (they are sent again): a worker takes its next request only once its last
answer is on disk, so there are never more than `sync.max_workers` of them. The workers answered
at the same moment share one fsync (fsio.AppendLog), and they run through the shards as one feed:
a shard's last requests are out while the next one's start. When every request of a shard has its
line, the journal's lines become the shard's result file and the shard goes straight to
`completed`, marked `mode: sync` (no upload, no batch).

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
import queue
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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


def _send(call: Callable[[str, dict[str, Any]], SyncAnswer], gate: RateGate, endpoint: str, body: dict[str, Any],
          tokens: int) -> SyncAnswer:
    """One request (`call` is the provider's), tried again on 429 / 5xx / a lost connection, paced by the gate."""
    for tries in range(1, TRIES + 1):
        gate.acquire(tokens)
        try:
            answer = call(endpoint, body)
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


def _unanswered(path: Path, answered: dict[str, bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(custom_id, body) of each request of a shard file that has no answer yet, in file order."""
    with open(path, "rb") as f:
        for raw in f:
            request = orjson.loads(raw)
            if request["custom_id"] not in answered:
                yield request["custom_id"], request["body"]


@dataclass
class _Sending:
    """A shard of this pass: its journal and every answer it has so far (read back, then as they come)."""

    shard: Shard
    journal: fsio.AppendLog
    answered: dict[str, bytes]
    written: int = 0  # journal lines written in this pass


class _Pass:
    """One sync pass: `max_workers` threads, each sending one request at a time from one feed that
    runs through the shards in order (a worker moves on to the next shard while the last requests
    of one are still out), and journaling its answer itself.

    A worker takes its next request only once its last answer is durable in the journal, so at any
    moment at most `max_workers` requests are sent but not journaled: all a kill can lose (they are
    sent again). The journal's fsyncs are shared (fsio.AppendLog): workers answered at the same
    moment pay one fsync, not one each in a row. The worker that journals a shard's last answer
    completes it (its result file, then the ledger) before it takes another request; the others
    go on meanwhile. The main thread only waits, and takes Ctrl-C.
    """

    def __init__(self, ledger: Ledger, provider: Provider, gate: RateGate, max_workers: int, result: SyncSent,
                 on_answer: Callable[[int, int], None] | None) -> None:
        self.ledger, self.provider, self.gate, self.result, self.on_answer = ledger, provider, gate, result, on_answer
        self.max_workers = max_workers
        self.endpoint = ledger.run.endpoint
        self.counter = counter_for(ledger.run.model)
        self.call: Callable[[str, dict[str, Any]], SyncAnswer] | None = None  # the client's, opened by _start
        self.feed_lock = threading.Lock()  # handing out requests (and starting shards)
        self.journal_lock = threading.Lock()  # one answer at a time: its line, its count, its crash point
        self.ledger_lock = threading.Lock()  # commits and events: a shard taken up, a shard completed
        self.stop: BaseException | None = None  # why the pass ends early; raised once the answers in flight are in
        self.started: list[_Sending] = []
        self.handed_out = 0
        self.finished = 0
        self.ended: queue.SimpleQueue[None] = queue.SimpleQueue()  # one None per worker that has ended

    def run(self, shards: Iterator[Shard]) -> None:
        """Send every unanswered request of `shards` (taken up in order, as the feed reaches them)."""
        self.feed = self._requests(shards)
        try:
            with _no_interrupt():  # every worker starts (each is waited for below); a Ctrl-C comes after
                for n in range(self.max_workers):
                    threading.Thread(target=self._work, name=f"sync-{n}", daemon=True).start()
        except KeyboardInterrupt as exc:
            self.halt(exc)
        running = self.max_workers
        while running:
            try:
                self.ended.get()  # (a Ctrl-C interrupts the wait)
                running -= 1
            except KeyboardInterrupt as exc:  # send nothing more, but keep what was sent
                self.halt(exc)
        for sending in self.started:
            sending.journal.close()
            if sending.shard.state != ShardState.COMPLETED:
                self.ledger.log({"event": "remote", "call": "sync", "shard": sending.shard.id,
                                 "answered": sending.written})
        if self.stop is not None:
            raise self.stop

    def halt(self, exc: BaseException) -> None:
        """Hand out nothing more; the first reason is the one raised. Ctrl-C also stops requests not yet sent."""
        with self.feed_lock:
            self.stop = self.stop or exc
        if isinstance(exc, KeyboardInterrupt):
            self.gate.close()  # workers waiting for their turn give up; those whose request is out are awaited

    def _requests(self, shards: Iterator[Shard]) -> Iterator[tuple[_Sending, str, dict[str, Any], int]]:
        """(shard, custom_id, body, tokens) of every request to send, read (and counted) as handed out."""
        model, endpoint = self.ledger.run.model, self.endpoint
        for shard in shards:
            sending = self._start(shard)
            if len(sending.answered) >= shard.requests:  # every answer was in before: only its completion is left
                self._complete(sending)
                continue
            for custom_id, body in _unanswered(self.ledger.verify(shard.file), sending.answered):
                # tokens as the service counts them against its limit: input plus the output bound
                tokens = self.counter.body(endpoint, body) + (max_output_tokens(body, model, endpoint) or 0)
                yield sending, custom_id, body, tokens

    def _start(self, shard: Shard) -> _Sending:
        """Take up a shard (in a worker, under the feed lock): recorded as sync before its first request goes out."""
        paths = self.ledger.paths
        journal = paths.journal(shard.id)
        sending = _Sending(shard, fsio.AppendLog(journal), read_journal(journal))
        if self.call is None and len(sending.answered) < shard.requests:  # opened once, here, not by every worker
            self.call = self.provider.call  # at once (it imports `openai`); and only when there is something to send
        if shard.mode != SYNC:  # from now on this shard is never a batch
            with self.ledger_lock:
                shard.mode = SYNC
                self.ledger.commit({"event": "sync", "shard": shard.id, "requests": shard.requests})
        paths.results_dir.mkdir(exist_ok=True)
        self.started.append(sending)
        self.result.sent.append(shard.id)
        return sending

    def _next(self) -> tuple[_Sending, str, dict[str, Any], int] | None:
        with self.feed_lock:
            if self.stop is not None:
                return None
            item = next(self.feed, None)
            if item is not None:
                self.handed_out += 1
            return item

    def _work(self) -> None:
        try:
            while (item := self._next()) is not None:
                try:
                    self._answer(*item)
                finally:
                    with self.journal_lock:
                        self.finished += 1
        except BaseException as exc:  # a bad shard file, a full disk: the pass stops, the main thread raises it
            self.halt(exc)
        finally:
            self.ended.put(None)

    def _answer(self, sending: _Sending, custom_id: str, body: dict[str, Any], tokens: int) -> None:
        """Send one request and journal its answer (durable before this worker takes another)."""
        try:
            answer = _send(self.call, self.gate, self.endpoint, body, tokens)
        except SendCancelled:
            return
        except ProviderError as exc:
            self.halt(exc)
            return
        if (problem := _stopping(answer, self.endpoint, self.provider.base_url)) is not None:
            self.halt(problem)
            return
        line = answer_line(custom_id, answer)
        with self.journal_lock:
            ticket = sending.journal.write(line)
            sending.answered[custom_id] = line
            sending.written += 1
            self.result.answered += 1
            crash.point("sync:after_answer")
            if self.on_answer is not None:  # here, so that the counts it is given only go up
                self.on_answer(self.result.answered, self.handed_out - self.finished - 1)
            filled = len(sending.answered) >= sending.shard.requests
        sending.journal.sync(ticket)  # before this worker takes another request
        if filled:
            self._complete(sending)

    def _complete(self, sending: _Sending) -> None:
        """The journal's lines become the shard's result file (data before pointer); the shard is completed."""
        shard, ledger = sending.shard, self.ledger
        path = ledger.paths.result_file(shard.id, "output")
        size, sha = fsio.write_lines_atomic(path, iter(sending.answered.values()))
        crash.point("sync:after_result_file")
        with self.ledger_lock:
            ledger.advance(shard, ShardState.COMPLETED, outputs=ledger.file_ref(path, size, sha), errors_file=None)
            ledger.log({"event": "remote", "call": "sync", "shard": shard.id, "answered": sending.written})
        sending.journal.close()
        ledger.paths.journal(shard.id).unlink(missing_ok=True)
        self.result.completed.append(shard.id)


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
        for shard in ledger.shards:
            if shard.state != ShardState.PREPARED and shard.mode == SYNC:  # a kill between its completion and
                paths.journal(shard.id).unlink(missing_ok=True)  # the journal's removal left it behind
        _Pass(ledger, provider, gate, cfg.sync.max_workers, result, on_answer).run(
            _to_send(ledger, schedule, waiting, result))
    return result


def _to_send(ledger: Ledger, schedule: Schedule, waiting: str | None, result: SyncSent) -> Iterator[Shard]:
    """The prepared shards this pass may send, in order; each is judged when the feed reaches it (the
    budget counts every shard taken up before it), and what is kept back is said in `result`."""
    run_id = ledger.paths.run_id
    for shard in [s for s in ledger.shards if s.state == ShardState.PREPARED]:
        if shard.handoff is not None:  # a person uploads it (ops/handoff.py): never pay twice
            result.notes.append(f"shard {shard.id} was exported for upload by hand: not sent (bring its results "
                                f"in with `batchpipe import {run_id} FILE...`)")
            continue
        if waiting and shard.id != ledger.run.canary:
            result.queued.append(f"shard {shard.id}: {waiting}")
            continue
        if shard.mode != SYNC and (why := schedule.over_budget(shard, sync=True)):
            result.over_budget.append(why)
            continue
        yield shard
