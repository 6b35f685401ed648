"""`demo`: a whole run against an in-process emulator: no key, no network, no cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from batchpipe.emulator import Emulator, EmulatorOptions
from batchpipe.ops.common import Progress
from batchpipe.ops.create import Created, create
from batchpipe.ops.run import RunReport, run
from batchpipe.paths import RunPaths
from batchpipe.providers import open_provider

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "reviews.yaml"

# Slow enough to watch the phases go by, fast enough not to bore anyone.
DEMO_TIMELINE = EmulatorOptions(validating_seconds=0.5, in_progress_seconds=2.0, finalizing_seconds=0.5)


def create_demo(runs_dir: Path) -> Created:
    """A fresh run of the bundled example (a new id each time: the emulator forgets everything)."""
    return create(EXAMPLE, runs_dir=runs_dir, run_id=time.strftime("demo-%Y%m%d-%H%M%S"))


def run_demo(
    paths: RunPaths,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    options: EmulatorOptions = DEMO_TIMELINE,
    poll_interval: float = 0.25,
) -> RunReport:
    with Emulator(options=options, host="127.0.0.1", port=0) as emu:
        # The emulator accepts any non-empty key; the user's real key is never touched here.
        provider = open_provider(base_url=emu.base_url, api_key="batchpipe-demo")
        return run(paths, provider, wait=True, poll_interval=poll_interval, on_progress=on_progress)
