"""`tick`: one non-blocking pass over one run or every run, for cron.

It does every step that can be done now and returns at once: a run another process holds is
skipped, not waited on, and a held (cancelled) run is not submitted. Each run ends in one
outcome, and the outcomes map to the stable exit codes of the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchpipe import fsio
from batchpipe.errors import BatchpipeError, ExitCode, RunLocked
from batchpipe.ops.changes import Watch
from batchpipe.ops.run import RunReport, step
from batchpipe.ops.steps import failure_notes
from batchpipe.ops.submit import SubmitOptions
from batchpipe.paths import STEPS_FILE, RunPaths
from batchpipe.providers import Provider

# outcome -> exit code; for several runs the most urgent wins, in this order. A run done with
# failed rows ranks below pending: it is finished (like done), so `tick --all` says 6 only once
# no run is pending any more, and 0 only when every run is done with every row answered.
EXIT_CODES = {"error": ExitCode.ERROR, "attention": ExitCode.ATTENTION, "pending": ExitCode.PENDING,
              "busy": ExitCode.PENDING, "done_with_failures": ExitCode.DONE_WITH_FAILURES, "done": ExitCode.OK}


@dataclass
class Ticked:
    run_id: str
    outcome: str  # done | done_with_failures | pending | attention | busy | error
    message: str
    report: RunReport | None = None
    changes: list[str] = field(default_factory=list)  # what this pass changed, one line each (ops/changes.py)


def tick(paths: RunPaths, provider_for: Callable[[RunPaths], Provider]) -> Ticked:
    changes: list[str] = []
    try:
        with fsio.run_lock(paths.root, timeout=0):
            watch = Watch(paths)
            try:
                report = step(paths, provider_for(paths), SubmitOptions(respect_hold=True))
            finally:  # what a failed pass did before it failed is news too
                changes = watch.changes()
    except RunLocked:
        return Ticked(paths.run_id, "busy", "skipped: another batchpipe process is working on it")
    except BatchpipeError as exc:
        return Ticked(paths.run_id, "error", exc.message + (f" ({exc.hint})" if exc.hint else ""), changes=changes)
    outcome = _outcome(paths, report)
    outcome.changes = changes
    return outcome


def _outcome(paths: RunPaths, report: RunReport) -> Ticked:
    p = report.progress
    truncated = f", {p.truncated} cut at the output limit" if p.truncated else ""
    if report.processed.batch_errors:
        return Ticked(paths.run_id, "attention", "a batch failed validation: see `batchpipe process`", report)
    if p.done and report.processed.target_reached is not None:  # the rows it did not need are no failures
        return Ticked(paths.run_id, "done", f"limits.target reached: {report.processed.written} records written "
                      f"({report.processed.target_reached} valid)", report)
    if p.done and report.processed.failed:
        by_step = failure_notes(paths.current_step())  # a multi-step run: where its rows failed
        what = "; ".join(by_step) if by_step else f"send them again with `batchpipe process {paths.run_id} --retry-failed`"
        return Ticked(paths.run_id, "done_with_failures", f"{p.requests} requests, {report.processed.failed} "
                      f"failed{truncated}; {what}", report)
    if p.done:
        return Ticked(paths.run_id, "done", f"{p.requests} requests, {p.failed} failed{truncated}", report)
    if report.stuck_on_budget:
        return Ticked(paths.run_id, "attention", report.over_budget[0] + f"; raise it with `batchpipe submit {paths.run_id} --budget USD`", report)
    if report.stuck_on_queue:
        return Ticked(paths.run_id, "attention", report.too_big[0], report)
    if report.stuck_on_handoff:
        return Ticked(paths.run_id, "attention", f"waiting for the results of {len(report.handed_off)} exported "
                      f"shard(s) (not submitted by batchpipe): `batchpipe import {paths.run_id} FILE...`", report)
    if report.held:
        return Ticked(paths.run_id, "attention", f"held ({report.held}): resume with `batchpipe run {paths.run_id}`", report)
    exported = f"; {len(report.handed_off)} exported shard(s) not submitted, waiting for `batchpipe import`" \
        if report.handed_off else ""
    return Ticked(paths.run_id, "pending", f"{p.finished}/{p.requests} requests finished{exported}", report)


def tick_all(runs_dir: Path, provider_for: Callable[[RunPaths], Provider]) -> list[Ticked]:
    runs = sorted(p.parent for p in Path(runs_dir).glob("*/state.json") if not p.parent.name.startswith("."))
    runs += [p.parent for p in Path(runs_dir).glob(f"*/{STEPS_FILE}") if not p.parent.name.startswith(".")]
    return [tick(RunPaths(root).current_step(), provider_for) for root in sorted(runs)]  # a multi-step run: its step


def exit_code(results: list[Ticked]) -> ExitCode:
    for outcome in EXIT_CODES:
        if any(r.outcome == outcome for r in results):
            return EXIT_CODES[outcome]
    return ExitCode.OK
