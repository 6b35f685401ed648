"""The regular (synchronous) endpoints: one request, one answer, as in sync mode.

`POST /v1/chat/completions`, `/v1/responses`, `/v1/embeddings`, `/v1/completions` and
`/v1/moderations` answer with exactly what the same request gets inside a batch
(answers.answer_for; a `[[fail:<status>]]` marker fails it with that status, as in a batch, a 5xx
with `retry-after-ms: retry_after_ms`), so
a job run in sync mode and in batch mode ends with the same output.

Like the real service, every answer carries the account's rate limits: `x-ratelimit-limit-*`,
`x-ratelimit-remaining-*` and `x-ratelimit-reset-*` (requests and tokens, e.g. `reset: 1.5s`),
over a sliding window (`rate_limit_window_seconds`, a minute by default). A request over either
limit is answered 429 `rate_limit_exceeded` with `retry-after` / `retry-after-ms` for the time
until the window has room. Tokens are counted as the service counts them for its limit: the
request's input tokens plus its output bound.

Fault switches (EmulatorOptions): `sync_rate_limit_first` answers the first N requests 429, and
`sync_rate_limit_share` a share of them (drawn with the other fault dice), both with
`retry-after-ms: retry_after_ms`; `sync_latency_seconds` makes every request take that long, so
concurrency can be observed (`sync_max_concurrency` in the counts).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from typing import Any, Callable

from .answers import answer_for
from .apierror import APIError
from .faults import Faults, retry_headers
from .options import EmulatorOptions
from .results import error_body, planned_failure

SYNC_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/moderations")
RATE_LIMITED = "Rate limit reached for {kind} in organization org-emulator on {model}. Please try again in {wait}."


def reset_text(seconds: float) -> str:
    """A wait as the service writes it in `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s` (rounded up)."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    return f"{ms // 60_000}m{math.ceil(ms % 60_000 / 1000)}s"


def limit_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """What a request weighs against the token limit: its input tokens plus its output bound."""
    from batchpipe.pipeline.tokens import input_tokens, max_output_tokens

    return max(1, input_tokens(body, endpoint)) + (max_output_tokens(body, str(body.get("model", "")), endpoint) or 0)


class SyncService:
    """The synchronous endpoints' state: the rate-limit window and the counters tests read."""

    def __init__(self, options: EmulatorOptions, clock: Callable[[], float], faults: Faults) -> None:
        self.options = options
        self.clock = clock
        self.faults = faults
        self._lock = threading.Lock()
        self._window: deque[tuple[float, int]] = deque()  # (time, tokens) of the requests in the window
        self._window_tokens = 0  # their sum, kept as they come and go (a busy minute holds thousands)
        self._answered: set[str] = set()  # digests of the requests answered 200
        self._in_flight = 0
        self.counts = {"sync_requests": 0, "sync_answered": 0, "sync_failed": 0, "sync_rate_limited": 0,
                       "sync_duplicate_answers": 0, "sync_max_concurrency": 0}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counts)

    def answer(self, endpoint: str, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, headers) for one request; raises APIError for a bad or rate-limited one."""
        body = _body(raw)
        with self._lock:
            self.counts["sync_requests"] += 1
            self._in_flight += 1
            self.counts["sync_max_concurrency"] = max(self.counts["sync_max_concurrency"], self._in_flight)
            number = self.counts["sync_requests"]
        try:
            if self.options.sync_latency_seconds > 0:
                time.sleep(self.options.sync_latency_seconds)  # the model "thinking": lets requests overlap
            return self._decide(endpoint, body, number)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _decide(self, endpoint: str, body: dict[str, Any], number: int) -> tuple[int, dict[str, Any], dict[str, str]]:
        opts = self.options
        tokens = limit_tokens(endpoint, body)
        model = str(body.get("model"))
        with self._lock:
            now = self.clock()
            window = opts.rate_limit_window_seconds
            while self._window and self._window[0][0] <= now - window:
                self._window_tokens -= self._window.popleft()[1]
            switched = number <= opts.sync_rate_limit_first or self.faults.fires(opts.sync_rate_limit_share,
                                                                                   opts.fault_seed)
            used_requests = len(self._window)
            used_tokens = self._window_tokens
            over = None
            if used_requests + 1 > opts.rate_limit_requests:
                over = ("requests", self._wait(now, lambda acc: used_requests - acc + 1 <= opts.rate_limit_requests))
            elif used_tokens + tokens > opts.rate_limit_tokens:
                over = ("tokens", self._wait(now, lambda acc: used_tokens - acc + tokens <= opts.rate_limit_tokens,
                                             by_tokens=True))
            if switched or over is not None:
                self.counts["sync_rate_limited"] += 1
                kind, wait = over if over is not None else ("requests", opts.retry_after_ms / 1000)
                headers = retry_headers(math.ceil(wait * 1000)) | self._headers(now, used_requests, used_tokens)
                message = RATE_LIMITED.format(kind=kind, model=model, wait=reset_text(wait))
                raise APIError(429, message, type=kind, code="rate_limit_exceeded", headers=headers)
            self._window.append((now, tokens))
            self._window_tokens += tokens
            headers = self._headers(now, used_requests + 1, used_tokens + tokens)
            status = planned_failure(body)
            if status is not None:  # a 5xx or 429 says when to come back, as the service's often do
                self.counts["sync_failed"] += 1
                again = retry_headers(opts.retry_after_ms) if status >= 500 or status == 429 else {}
                return status, error_body(status), headers | again
            digest = hashlib.sha256(json.dumps([endpoint, body], sort_keys=True).encode()).hexdigest()
            if digest in self._answered:
                self.counts["sync_duplicate_answers"] += 1
            self._answered.add(digest)
            self.counts["sync_answered"] += 1
        return 200, answer_for(endpoint, body, created=int(now)), headers

    def _wait(self, now: float, fits: Callable[[int], bool], *, by_tokens: bool = False) -> float:
        """Seconds until enough of the window has aged out for `fits(released)` to hold."""
        released = 0
        for t, tokens in self._window:
            released += tokens if by_tokens else 1
            if fits(released):
                return max(0.0, t + self.options.rate_limit_window_seconds - now)
        return self.options.rate_limit_window_seconds

    def _headers(self, now: float, used_requests: int, used_tokens: int) -> dict[str, str]:
        opts = self.options
        oldest = self._window[0][0] if self._window else now
        reset = max(0.0, oldest + opts.rate_limit_window_seconds - now) if self._window else 0.0
        return {
            "x-ratelimit-limit-requests": str(opts.rate_limit_requests),
            "x-ratelimit-limit-tokens": str(opts.rate_limit_tokens),
            "x-ratelimit-remaining-requests": str(max(0, opts.rate_limit_requests - used_requests)),
            "x-ratelimit-remaining-tokens": str(max(0, opts.rate_limit_tokens - used_tokens)),
            "x-ratelimit-reset-requests": reset_text(reset),
            "x-ratelimit-reset-tokens": reset_text(reset),
        }


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise APIError(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                            "using your HTTP library correctly. The OpenAI API expects a JSON payload.)")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise APIError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
    if body.get("stream"):
        raise APIError(400, "The emulator does not stream: leave out 'stream'.", param="stream",
                       code="unsupported_value")
    return body
