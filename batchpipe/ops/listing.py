"""`list`: the runs in a runs dir at a glance, from their ledgers alone (no network)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchpipe.errors import LedgerError
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import Progress
from batchpipe.paths import RunPaths


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
    for state in sorted(runs_dir.glob("*/state.json")):
        if state.parent.name.startswith("."):
            continue  # the temp dir of a create that was interrupted before it published the run
        paths = RunPaths(state.parent)
        try:
            ledger = Ledger.load(paths)
        except LedgerError as exc:
            summaries.append(RunSummary(paths.run_id, None, None, None, exc.message))
            continue
        summaries.append(RunSummary(paths.run_id, ledger.run.created_at, ledger.run.model, Progress.of(ledger)))
    return sorted(summaries, key=lambda s: (s.created_at or 0, s.run_id))
