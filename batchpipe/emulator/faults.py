"""HTTP-level fault decisions: transient errors before a call acts, lost answers after it acted.

One `random.Random`, seeded from `EmulatorOptions.fault_seed`, decides every rate switch, so a
chaos run with a seed replays the same faults for the same sequence of calls (concurrent calls
may reach it in a different order). The kind of fault cycles, so rate 1.0 shows each kind in
turn: transient statuses 503, 500, 429; lost answers an HTTP 500, then a dropped connection.
Options are read at each decision; changing `fault_seed` re-seeds at the next one.
"""

from __future__ import annotations

import math
import random
import threading
from typing import Any

from .apierror import APIError
from .options import EmulatorOptions

TRANSIENT_STATUSES = (503, 500, 429)
LOST_KINDS = ("http_500", "dropped")
MUTATING_OPS = ("upload", "create", "cancel")

SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_TRANSIENT = {
    500: (SERVER_ERROR, "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    429: ("Rate limit reached for requests in organization org-emulator. Please try again shortly.",
          "requests", "rate_limit_exceeded"),
}


def retry_headers(retry_after_ms: int) -> dict[str, str]:
    """`retry-after-ms` and `retry-after` (whole seconds, rounded up) for a delay."""
    ms = max(0, int(retry_after_ms))
    return {"retry-after-ms": str(ms), "retry-after": str(math.ceil(ms / 1000))}


def lost_answer_error() -> APIError:
    return APIError(500, SERVER_ERROR, type="server_error")


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._seed: object = object()  # the seed self._rng was made from (a sentinel: none yet)
        self._transient_turn = 0
        self._lost_turn = 0
        self._transient: dict[str, int] = {str(s): 0 for s in TRANSIENT_STATUSES}
        self._lost: dict[str, int] = {k: 0 for k in LOST_KINDS}
        self._lost_by_op: dict[str, int] = {op: 0 for op in MUTATING_OPS}

    def _fires(self, rate: float, seed: int | None) -> bool:
        """One rate decision; call with the lock held. Rates 0 and 1 draw nothing."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        if seed != self._seed:
            self._rng = random.Random(seed)
            self._seed = seed
        return self._rng.random() < rate

    def fires(self, rate: float, seed: int | None) -> bool:
        """One rate decision with the shared dice (e.g. the sync endpoints' 429 share)."""
        with self._lock:
            return self._fires(rate, seed)

    def transient(self, options: EmulatorOptions) -> APIError | None:
        """The transient error to answer an API call with instead of acting on it, if any."""
        with self._lock:
            if not self._fires(options.transient_error_rate, options.fault_seed):
                return None
            status = TRANSIENT_STATUSES[self._transient_turn % len(TRANSIENT_STATUSES)]
            self._transient_turn += 1
            self._transient[str(status)] += 1
        message, type_, code = _TRANSIENT[status]
        return APIError(status, message, type=type_, code=code, headers=retry_headers(options.retry_after_ms))

    def lost_answer(self, options: EmulatorOptions, op: str) -> str | None:
        """How the answer to a mutating call that took effect is lost ("http_500" / "dropped"), if it is."""
        with self._lock:
            if not self._fires(options.lost_answer_rate, options.fault_seed):
                return None
            kind = LOST_KINDS[self._lost_turn % len(LOST_KINDS)]
            self._lost_turn += 1
            self._lost[kind] += 1
            self._lost_by_op[op] += 1
            return kind

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {
                "transient_errors": sum(self._transient.values()),
                "transient_errors_by_status": dict(self._transient),
                "lost_answers": sum(self._lost.values()),
                "lost_answers_by_kind": dict(self._lost),
                "lost_answers_by_op": dict(self._lost_by_op),
            }
