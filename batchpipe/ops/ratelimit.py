"""Pacing of sync mode's requests: our own per-minute limits, the service's word, and its 429s.

Three things can make a request wait before it is sent, and it waits for the longest:
- the config's `sync.requests_per_minute` / `sync.tokens_per_minute`: token buckets that refill
  continuously (a full minute's worth at most), so a burst never passes the limit;
- the service's `x-ratelimit-remaining-*` / `x-ratelimit-reset-*` headers: once it says nothing
  remains, nothing more is sent until its reset time (each request sent since counts against
  what it said remained, so the requests in flight are not forgotten);
- a 429's `retry-after-ms` / `retry-after`, which pauses every worker: a rate limit is the
  account's, not one request's.
Tokens are counted as the service counts them for its limit: input tokens plus the output bound.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping

# A reset or retry-after further away than this is taken as this: a run is never parked for hours
# on one header (a person can stop it and run it again later).
MAX_WAIT = 600.0
# Sleep in slices no longer than this while waiting, so a changed outlook (a fresh header) is seen.
SLICE = 1.0

_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?(?:(?P<s>\d+(?:\.\d+)?)s)?"
                       r"(?:(?P<ms>\d+(?:\.\d+)?)ms)?")


def parse_duration(text: str | None) -> float | None:
    """`x-ratelimit-reset-*` as seconds: `20ms`, `1.5s`, `6m0s`, `1h2m3s`, or a bare number of seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        return None
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return parts["h"] * 3600 + parts["m"] * 60 + parts["s"] + parts["ms"] / 1000


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a 429 or 5xx asked for (retry-after-ms, then retry-after in seconds), if any."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return min(MAX_WAIT, max(0.0, float(headers[name]) * scale))
        except (KeyError, ValueError):
            continue
    return None


class SendCancelled(Exception):
    """The pass is ending (Ctrl-C): a request still waiting for its turn is not sent."""


class _Bucket:
    """`per_minute` units a minute, refilled continuously; holds at most a minute's worth."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.rate = per_minute / 60.0
        self.at = now

    def wait(self, amount: float, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        # a request bigger than a whole minute's worth goes once the bucket is full, alone
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class RateGate:
    """Where every request of a sync pass waits its turn (shared by the worker threads)."""

    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        now = clock()
        self._requests = _Bucket(requests_per_minute, now) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute, now) if tokens_per_minute else None
        # what the service last said remains, and until when that holds: {"requests": [n, until], ...}
        self._remaining: dict[str, list[float]] = {}
        self._paused_until = 0.0
        self.waited = 0.0  # seconds spent waiting here, over all workers (for the summary)
        self._closed = threading.Event()

    def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` tokens may be sent, then count it as sent.

        Raises SendCancelled once the gate is closed."""
        while True:
            if self._closed.is_set():
                raise SendCancelled()
            with self._lock:
                now = self._clock()
                wait = self._wait(tokens, now)
                if wait <= 0:
                    self._take(tokens)
                    return
                self.waited += min(wait, SLICE)
            if self._sleep is time.sleep:
                self._closed.wait(min(wait, SLICE))  # a close wakes it at once
            else:
                self._sleep(min(wait, SLICE))

    def _wait(self, tokens: int, now: float) -> float:
        waits = [self._paused_until - now]
        for name, amount in (("requests", 1), ("tokens", tokens)):
            remaining, until = self._remaining.get(name, (None, 0.0))
            if remaining is not None and now < until and remaining < amount:
                waits.append(until - now)
        if self._requests is not None:
            waits.append(self._requests.wait(1, now))
        if self._tokens is not None:
            waits.append(self._tokens.wait(tokens, now))
        return max(waits)

    def _take(self, tokens: int) -> None:
        for name, amount in (("requests", 1), ("tokens", tokens)):
            if name in self._remaining:
                self._remaining[name][0] -= amount
        if self._requests is not None:
            self._requests.take(1)
        if self._tokens is not None:
            self._tokens.take(tokens)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take in the service's `x-ratelimit-remaining-*` / `x-ratelimit-reset-*` of an answer."""
        with self._lock:
            now = self._clock()
            for name in ("requests", "tokens"):
                try:
                    remaining = float(headers[f"x-ratelimit-remaining-{name}"])
                except (KeyError, ValueError):
                    continue
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{name}"))
                self._remaining[name] = [remaining, now + min(MAX_WAIT, reset if reset is not None else 1.0)]

    def delay(self, seconds: float) -> None:
        """One worker waits `seconds` (a backoff before it tries again); raises SendCancelled if the gate closes."""
        if self._sleep is time.sleep:
            if self._closed.wait(min(MAX_WAIT, seconds)):
                raise SendCancelled()
        else:
            self._sleep(min(MAX_WAIT, seconds))

    def close(self) -> None:
        """Send nothing more: every request waiting here, or coming, raises SendCancelled."""
        self._closed.set()

    def pause(self, seconds: float) -> None:
        """The service answered 429: nobody sends for `seconds`."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + min(MAX_WAIT, seconds))
