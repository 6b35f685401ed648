"""`run`: every step that can be done now, and with `wait`, again until the run is done."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from batchpipe import fsio
from batchpipe.errors import BatchpipeError, ProviderError, RunLocked
from batchpipe.ledger.store import Ledger
from batchpipe.ops.cancel import cancel_running
from batchpipe.ops.changes import Watch
from batchpipe.ops.common import Progress
from batchpipe.ops.download import download
from batchpipe.ops.process import Processed, process
from batchpipe.ops.remote import backoff
from batchpipe.ops.steps import advance, count_final, final_counts
from batchpipe.ops.sync import send as sync_send
from batchpipe.ops.submit import SubmitOptions, submit
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider


@dataclass
class RunReport:
    run_id: str
    progress: Progress
    processed: Processed
    passes: int = 1
    submitted: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    held: str | None = None
    over_budget: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    too_big: list[str] = field(default_factory=list)  # requests the provider's queue can never take
    handed_off: list[str] = field(default_factory=list)  # shards exported for a person to upload (ops/handoff.py)

    @property
    def stuck_on_queue(self) -> bool:
        """Only requests the queue can never take are left: a person must shorten them."""
        s = self.progress.shards
        return bool(self.too_big) and s["merged"] + len(self.too_big) == sum(s.values())

    @property
    def stuck_on_handoff(self) -> bool:
        """Only shards handed off by `export` are left: their results come by `import`, not by waiting."""
        s = self.progress.shards
        return bool(self.handed_off) and s["merged"] + len(self.handed_off) == sum(s.values())

    @property
    def stuck_on_budget(self) -> bool:
        """Shards are kept back by the budget and nothing else is running: a person must decide."""
        return bool(self.over_budget) and self.progress.shards["submitted"] + self.progress.shards["completed"] == 0

# Passes in a row that may fail on a retryable service error before `run --wait` gives up.
MAX_FAILED_PASSES = 10
# While nothing changes, the wait between polls grows to at most this many poll intervals.
MAX_BACKOFF = 8
# The first look after a batch is created comes this soon (or at the poll interval, if that is
# shorter); the waits then double up to the poll interval. A short job (or a rehearsal against
# the emulator) is seen finishing within seconds, a long one costs a handful of extra look-ups.
FIRST_POLL = 1.0


def next_delay(delay: float, poll_interval: float, *, moved: bool, submitted: bool) -> float:
    """The wait before the next pass of `run --wait`, given the last one.

    New batches start again from FIRST_POLL; after that the wait doubles up to `poll_interval`,
    and goes on growing (by half, up to MAX_BACKOFF intervals) only while nothing changes: a
    batch can sit in one phase for hours.
    """
    if submitted:
        return min(FIRST_POLL, poll_interval)
    if delay < poll_interval:
        return min(delay * 2, poll_interval)
    return poll_interval if moved else min(delay * 1.5, poll_interval * MAX_BACKOFF)


def step(
    paths: RunPaths, provider: Provider, options: SubmitOptions = SubmitOptions(), *, sleep=time.sleep,
    on_answer: Callable[[int, int], None] | None = None,
) -> RunReport:
    """One pass: submit what is prepared, download what finished, process what was downloaded.

    A run in sync mode (`mode: sync`, `run --sync`) sends instead (ops/sync.py): see sync_step.
    For a multi-step run, on the step it is at; when that step's output is written, the next
    step is created and the pass goes on with it (ops/steps.py).
    """
    paths = advance(paths.current_step())
    in_sync = options.sync or Ledger.load(paths).run.mode == "sync"
    send = sync_step if in_sync else batch_step
    report = send(paths, provider, options, sleep=sleep, on_answer=on_answer)
    if paths.parent is not None and report.processed.done and (moved_on := advance(paths)) != paths:
        later = step(moved_on, provider, options, sleep=sleep, on_answer=on_answer)
        later.submitted[:0], later.downloaded[:0], later.notes[:0] = report.submitted, report.downloaded, report.notes
        return later
    if paths.parent is not None:  # a multi-step run is done once its last step is, with its whole output's counts
        count_final(paths, report.processed)
        report.processed.done = final_counts(paths) is not None
        report.progress = replace(report.progress, done=report.processed.done)
    return report


def batch_step(
    paths: RunPaths, provider: Provider, options: SubmitOptions, *, sleep=time.sleep,
    on_answer: Callable[[int, int], None] | None = None,
) -> RunReport:
    """One pass through the Batch API: submit, download, process (`on_answer` is sync mode's)."""
    submitted = submit(paths, provider, options, sleep=sleep)
    downloaded = download(paths, provider)
    processed = process(paths)
    if processed.target_reached is not None:
        submitted.notes += stop_for_target(paths, provider)
    return RunReport(
        paths.run_id,
        Progress.of(Ledger.load(paths), with_cost=True),
        processed,
        submitted=submitted.submitted,
        downloaded=downloaded.shards,
        notes=submitted.notes + downloaded.lost,
        held=submitted.held,
        over_budget=submitted.over_budget,
        queued=submitted.queued,
        too_big=submitted.too_big,
        handed_off=submitted.handed_off,
    )


def stop_for_target(paths: RunPaths, provider: Provider) -> list[str]:
    """limits.target is reached: cancel the run's running batches (the next passes download and
    merge what they finished); one note per batch cancelled."""
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        cancelled = cancel_running(ledger, provider, why="limits.target reached")
    return [f"limits.target reached ({ledger.run.target_reached} valid records): cancelled batch {b}"
            for b in cancelled]


def sync_step(
    paths: RunPaths, provider: Provider, options: SubmitOptions, *, sleep=time.sleep,
    on_answer: Callable[[int, int], None] | None = None,
) -> RunReport:
    """One pass in sync mode: send what is prepared and process it, again while that plans retries.

    Nothing has to be waited for (every answer comes back at once), so one pass goes on until no
    shard is left to send: retries, and the rest of the run behind a canary, included.
    """
    notes: list[str] = []
    answered = 0
    while True:
        sent = sync_send(paths, provider, options, sleep=sleep,
                         on_answer=None if on_answer is None else lambda n, f, base=answered: on_answer(base + n, f))
        answered += sent.answered
        notes += sent.notes
        processed = process(paths)
        if not sent.sent or sent.held:
            break
    return RunReport(
        paths.run_id, Progress.of(Ledger.load(paths), with_cost=True), processed, notes=notes, held=sent.held,
        over_budget=sent.over_budget, queued=sent.queued,
    )


def run(
    paths: RunPaths,
    provider: Provider,
    *,
    wait: bool = False,
    poll_interval: float = 30.0,
    on_progress: Callable[[Progress], None] | None = None,
    on_problem: Callable[[BatchpipeError], None] | None = None,
    on_change: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    options: SubmitOptions = SubmitOptions(),
    on_answer: Callable[[int, int], None] | None = None,
) -> RunReport:
    """Run every step now; with `wait`, repeat until done.

    The first look after new batches comes within a second, then the waits double up to
    `poll_interval` and keep growing (up to MAX_BACKOFF intervals) while nothing changes: see
    next_delay. `on_change` gets one line per change seen after each pass (see ops/changes.py).
    The run lock is held during each pass only, not while sleeping, so `status` in another
    terminal can still refresh between passes. While waiting, a run another process holds (past
    BATCHPIPE_LOCK_TIMEOUT, on a busy machine) is waited for, not given up on. In sync mode
    `on_answer(answered, in_flight)` follows each answer of the pass (ops/sync.py).
    """
    options = replace(options, poll_interval=poll_interval)
    passes = failures = 0
    notes: list[str] = []
    delay, last = min(FIRST_POLL, poll_interval), None
    watch = Watch(paths) if on_change is not None else None
    while True:
        try:
            try:
                report = step(paths, provider, options, sleep=sleep, on_answer=on_answer)
            finally:  # what a failed pass did before it failed is news too
                for line in watch.changes() if watch is not None else []:
                    on_change(line)
        except RunLocked as exc:
            if not wait:
                raise
            if on_problem is not None:
                on_problem(exc)  # say so, then keep waiting: the other process will let go
            sleep(poll_interval)
            continue
        except ProviderError as exc:
            # While waiting, a service hiccup is not the end of the run: the next pass starts by
            # looking up whatever the failed one may have left open.
            failures += 1
            if not (wait and exc.retryable) or failures > MAX_FAILED_PASSES:
                raise
            if on_problem is not None:
                on_problem(exc)
            sleep(max(poll_interval, backoff(failures, exc)))
            continue
        failures = 0
        passes += 1
        notes += report.notes
        report.passes, report.notes = passes, notes
        if on_progress is not None:
            on_progress(report.progress)
        if report.progress.done or not wait or report.stuck_on_budget or report.held or report.stuck_on_queue:
            return report
        if report.stuck_on_handoff:  # nothing to wait for: a person brings the results (`batchpipe import`)
            return report
        moved = (report.progress.finished, report.progress.shards, report.progress.phases)
        delay = next_delay(delay, poll_interval, moved=moved != last, submitted=bool(report.submitted))
        last = moved
        sleep(delay)
