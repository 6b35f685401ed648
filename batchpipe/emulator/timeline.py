"""Where a batch is in its life at a given moment, computed from the clock alone.

No background thread moves batches along: every read asks `Timeline.at(now)`, so a test that
injects a clock (see `store.ManualClock`) can step a batch through validating -> in_progress ->
finalizing -> completed deterministically, and phase lengths of 0 make a batch finish by the
first read after create. `run_limit` (the `expire_after_requests` switch) stops a batch after
its first N requests and makes it `expired` when in_progress ends. All times are float seconds
on the store's clock; the store turns them into the API's integer unix timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Statuses from which a batch can still be cancelled (reference §3.6: cancel of a terminal batch is
# a 409, of a cancelling/cancelled one a no-op 200).
CANCELLABLE = frozenset({"validating", "in_progress", "finalizing"})
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class Phase:
    status: str
    processed: int  # requests run so far (they run in input order; results are shuffled later)
    timestamps: dict[str, float] = field(default_factory=dict)  # e.g. {"in_progress_at": t, ...}
    terminal_at: float | None = None  # when the batch reached its terminal status, if it has


@dataclass(frozen=True)
class Timeline:
    created: float
    validating: float
    in_progress: float
    finalizing: float
    cancelling: float
    window: float  # the completion window: requests not run by created + window expire
    total: int  # number of requests (0 if the file is invalid)
    valid: bool  # did validation pass
    # Requests that get to run (`expire_after_requests`): with fewer than `total`, the batch stops
    # after this many and is `expired` when in_progress ends. None: all of them.
    run_limit: int | None = None

    @property
    def limited(self) -> bool:
        return self.run_limit is not None and self.run_limit < self.total

    def processed_at(self, t: float) -> int:
        start = self.created + self.validating
        if t < start:
            return 0
        if self.in_progress <= 0 or t >= start + self.in_progress:
            done = self.total
        else:
            done = math.floor(self.total * (t - start) / self.in_progress)
        if self.run_limit is not None:
            done = min(done, self.run_limit)
        return done

    def at(self, now: float, cancel_at: float | None = None) -> Phase:
        """The phase at `now`; `cancel_at` is when a cancel was accepted (the batch was not terminal then)."""
        if cancel_at is not None and now >= cancel_at:
            before = self.at(cancel_at)
            stamps = {**before.timestamps, "cancelling_at": cancel_at}
            done = cancel_at + self.cancelling
            if now < done:
                return Phase("cancelling", before.processed, stamps)
            return Phase("cancelled", before.processed, {**stamps, "cancelled_at": done}, done)

        t_ip = self.created + self.validating
        t_fin = t_ip + self.in_progress
        t_done = t_fin + self.finalizing
        deadline = self.created + self.window
        if not self.valid:
            if now < t_ip:
                return Phase("validating", 0)
            return Phase("failed", 0, {"failed_at": t_ip}, t_ip)
        if t_fin > deadline and now >= deadline:
            # Not all requests could run inside the window: expired, with what ran so far.
            stamps = {"in_progress_at": t_ip} if t_ip <= deadline else {}
            return Phase("expired", self.processed_at(deadline), {**stamps, "expired_at": deadline}, deadline)
        if now < t_ip:
            return Phase("validating", 0)
        if self.limited:
            if now < t_fin:
                return Phase("in_progress", self.processed_at(now), {"in_progress_at": t_ip})
            stamps = {"in_progress_at": t_ip, "expired_at": t_fin}
            return Phase("expired", self.processed_at(t_fin), stamps, t_fin)
        if now < t_fin:
            return Phase("in_progress", self.processed_at(now), {"in_progress_at": t_ip})
        stamps = {"in_progress_at": t_ip, "finalizing_at": t_fin}
        if now < t_done:
            return Phase("finalizing", self.total, stamps)
        return Phase("completed", self.total, {**stamps, "completed_at": t_done}, t_done)
