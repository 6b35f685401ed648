"""`list`: the runs in a runs dir at a glance, from their ledgers alone (no network, no lock).

The build dirs of creates (hidden, beside the runs) are listed too: a create killed mid-way
leaves one behind, and it takes disk space until the next create or `recover RUN` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchpipe import fsio
from batchpipe.errors import LedgerError
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import Progress
from batchpipe.paths import STEPS_FILE, RunPaths


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    created_at: float | None
    model: str | None
    progress: Progress | None
    problem: str | None = None  # why the ledger could not be read


def list_runs(runs_dir: Path) -> list[RunSummary]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    summaries = []
    found = [*runs_dir.glob("*/state.json"), *runs_dir.glob(f"*/{STEPS_FILE}")]  # a multi-step run: its current step
    for state in sorted(found):
        if state.parent.name.startswith("."):
            continue  # the temp dir of a create that was interrupted before it published the run
        paths = RunPaths(state.parent).current_step()
        try:
            ledger = Ledger.load(paths)
        except LedgerError as exc:
            summaries.append(RunSummary(paths.run_id, None, None, None, exc.message))
            continue
        summaries.append(RunSummary(paths.run_id, ledger.run.created_at, ledger.run.model, Progress.of(ledger)))
    for build in fsio.build_dirs(runs_dir):
        size = f"{build.bytes / 1e6:.1f} MB"
        if build.live:
            problem = f"being created ({build.path.name}, {size} so far)"
        else:
            problem = (f"left by an interrupted create: {build.path.name} ({size}); the next create or "
                       f"`batchpipe recover {build.run_id}` removes it")
        summaries.append(RunSummary(build.run_id, None, None, None, problem))
    return sorted(summaries, key=lambda s: (s.created_at or 0, s.run_id))
