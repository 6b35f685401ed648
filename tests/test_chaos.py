"""Chaos: SIGKILL `batchpipe run --wait` at random moments while the service fails transiently
and loses answers (20% each), until the run finishes. The output must equal a fault-free run's,
and the service must have seen not one duplicate batch.

Bounded: a fixed seed, at most MAX_PASSES processes, and a deadline. The seed is printed in the
failure message so a failing run can be replayed.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

from conftest import expected_answer, read_jsonl, review_rows, write_job

from batchpipe.emulator import Emulator, EmulatorOptions

SEED = int(os.environ.get("BATCHPIPE_CHAOS_SEED", "20261122"))
MAX_PASSES = 60
DEADLINE_SECONDS = 90


def test_killed_repeatedly_under_faults_still_finishes_exactly_once(cli, runs_dir, tmp_path, monkeypatch):
    rng = random.Random(SEED)
    options = EmulatorOptions(
        validating_seconds=0.1, in_progress_seconds=1.0, finalizing_seconds=0.1,
        transient_error_rate=0.2, lost_answer_rate=0.2, fault_seed=SEED, retry_after_ms=5,
    )
    rows = review_rows(40)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 5})
    with Emulator(options=options, port=0) as emu:
        env = {**os.environ, "OPENAI_BASE_URL": emu.base_url, "OPENAI_API_KEY": "k"}
        command = [sys.executable, "-m", "batchpipe", "run", str(config), "--run", "chaos", "--wait",
                   "--poll-interval", "0.02"]
        kills, outcomes, deadline = 0, [], time.monotonic() + DEADLINE_SECONDS
        for _ in range(MAX_PASSES):
            assert time.monotonic() < deadline, f"seed {SEED}: not done in time; outcomes {outcomes}"
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                # The kill comes at a random moment of the run: this wait is the dice, not a synchronisation.
                _, stderr = proc.communicate(timeout=rng.uniform(0.1, 1.5))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                kills += 1
                outcomes.append("killed")
                continue
            outcomes.append(proc.returncode)
            assert proc.returncode == 0, f"seed {SEED}: exit {proc.returncode}\n{stderr}"
            break
        else:
            raise AssertionError(f"seed {SEED}: still not done after {MAX_PASSES} passes: {outcomes}")

        counts = emu.counts
        assert counts["duplicate_creates"] == 0, f"seed {SEED}: {counts}"
        assert kills >= 1, f"seed {SEED}: the test never killed a run ({outcomes})"
        # the faults really happened (lost answers alone are proven without dice in test_salvage.py)
        assert counts["transient_errors"] > 0 and counts["transient_errors"] + counts["lost_answers"] > 10, counts

    out = read_jsonl(runs_dir / "chaos" / "output.jsonl")
    assert [r["review_id"] for r in out] == [r["review_id"] for r in rows]
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert all(r["verdict_attempts"] == 1 for r in out)
    creates = {tag: n for tag, n in counts["creates_by_tag"].items() if tag.startswith("chaos/")}
    assert sorted(creates) == [f"chaos/{i:05d}.a1" for i in range(1, 9)]
