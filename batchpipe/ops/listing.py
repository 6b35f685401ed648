"""`list`: the runs in a runs dir at a glance, from their ledgers alone (no network, no lock).

The build dirs of creates (hidden, beside the runs) are listed too: a create killed mid-way
leaves one behind, and it takes disk space until the next create or `recover RUN` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchpipe import fsio
from batchpipe.errors import LedgerError, UsageError
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import Progress
from batchpipe.paths import STEPS_FILE, RunPaths
from batchpipe.providers import Provider


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


# -- the provider's side: `list --remote` ------------------------------------------------------


@dataclass(frozen=True)
class RemoteListed:
    """One of the provider's recent batches, and whose it is by the tag batchpipe writes in its metadata."""

    id: str
    status: str
    created_at: int
    request_counts: dict[str, int]
    endpoint: str | None
    run: str | None  # metadata batchpipe_run: None for a batch that is not ours
    shard: str | None  # metadata batchpipe_shard
    here: bool  # the run is in this runs dir, with the same nonce (not another run of the same name)

    @property
    def tag(self) -> str:
        return f"{self.run} {self.shard or '?'}" if self.run else "not ours"


def list_remote(runs_dir: Path, provider: Provider, limit: int = 20) -> list[RemoteListed]:
    """The provider's `limit` newest batches, each with the batchpipe run and shard it is tagged with."""
    nonces: dict[str, str | None] = {}

    def nonce_here(run_id: str) -> str | None:
        if run_id not in nonces:
            try:
                nonces[run_id] = Ledger.load(RunPaths.of(runs_dir, run_id)).run.nonce
            except (LedgerError, UsageError):  # not here, or not a run id batchpipe would have written
                nonces[run_id] = None
        return nonces[run_id]

    listed = []
    for b in provider.recent_batches(limit):
        run, shard = b.metadata.get("batchpipe_run"), b.metadata.get("batchpipe_shard")
        nonce = b.metadata.get("batchpipe_nonce")
        here = run is not None and nonce_here(run) is not None and nonce in (None, nonce_here(run))
        listed.append(RemoteListed(b.id, b.status, b.created_at, dict(b.request_counts), b.endpoint, run, shard, here))
    return listed
