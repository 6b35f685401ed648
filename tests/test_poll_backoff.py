"""`run --wait` looks soon after a batch is created, then backs off: no 30 s stare at `validating`.

The emulator's clock is moved by the sleeps `run` asks for, so what is measured is the time a
user would wait, without waiting it.
"""

from __future__ import annotations

import time

from conftest import review_rows, write_job

from batchpipe import ops
from batchpipe.emulator import Emulator, EmulatorOptions, ManualClock
from batchpipe.ops.run import MAX_BACKOFF


def waits_of_a_run(tmp_path, runs_dir, options: EmulatorOptions, poll_interval: float) -> tuple[list[float], ops.RunReport]:
    clock = ManualClock(start=time.time())
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    with Emulator(options=options, port=0, clock=clock) as emu:
        created = ops.create(write_job(tmp_path / "job", review_rows(5)), runs_dir=runs_dir, run_id="w")
        paths = ops.run_paths(runs_dir, created.run_id)
        provider = ops.provider_for(paths, api_key="test", base_url=emu.base_url)
        report = ops.run(paths, provider, wait=True, poll_interval=poll_interval, sleep=sleep)
    return waits, report


def test_a_short_batch_is_seen_done_within_seconds_at_the_default_interval(tmp_path, runs_dir):
    # `batchpipe emulator`'s default timeline, as in the README's rehearsal recipe
    options = EmulatorOptions(validating_seconds=1, in_progress_seconds=5, finalizing_seconds=1)
    waits, report = waits_of_a_run(tmp_path, runs_dir, options, poll_interval=30)
    assert report.progress.done
    assert waits[:3] == [1, 2, 4]  # the first look a second after the create, then doubling
    assert sum(waits) < 16  # done at 7 s: seen by the look at 7 s or the next, not after 30 s


def test_the_waits_grow_to_the_interval_and_past_it_only_while_nothing_changes(tmp_path, runs_dir):
    options = EmulatorOptions(validating_seconds=600, in_progress_seconds=100, finalizing_seconds=0)
    waits, report = waits_of_a_run(tmp_path, runs_dir, options, poll_interval=10)
    assert report.progress.done
    assert waits[:5] == [1, 2, 4, 8, 10]
    longest = waits.index(max(waits))
    assert max(waits) == 10 * MAX_BACKOFF  # ten minutes of validating: backed off to the cap, no further
    assert 10 in waits[longest:]  # requests moving again: back to the interval

