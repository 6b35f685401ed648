"""Chaos: kill `batchpipe run --wait` in every phase of a run while the service fails transiently and
loses answers (20% each), then let one run finish. The output must equal a fault-free run's, and
the service must have seen exactly one batch per shard attempt.

Each kill is triggered by observed progress, never by a timer, so the test proves the same thing on
a fast machine and on a slow, busy one:
- os._exit at a named crash point (BATCHPIPE_CRASH_AT=<point>:<n>, as after kill -9), or
- SIGKILL as soon as the run's events.jsonl shows a chosen step (or the run has caught up).
The batches run on a clock the test moves: their phases last hours of emulator time, so they stay
`validating` until the test jumps the clock into `in_progress`, then to `completed`. Where each kill
landed is read back from the ledger and the service (not assumed), and every phase must be hit.

The random choices (which hit of a crash point, which event line, which step) come from one seed,
printed in every failure: BATCHPIPE_CHAOS_SEED=<seed> replays the plan. Waits have generous
deadlines (a hang fails instead of stalling) and none is a sleep standing in for an event.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import expected_answer, read_jsonl, review_rows, write_job

from batchpipe.emulator import Emulator, EmulatorOptions

SEED = int(os.environ.get("BATCHPIPE_CHAOS_SEED", "20261122"))
PASS_DEADLINE = 180  # seconds one process may take to reach its kill: only a hang comes near it
PHASE = 10_000.0  # emulator seconds in validating, in_progress and finalizing each
GAP = 1_000.0  # emulator seconds between the first batches and the others (two groups, see below)
SHARDS = 8

# Where a kill must have landed at least once (labels of `landed`).
REQUIRED = {
    "upload intent, not sent",  # before upload
    "upload sent, not recorded",
    "create intent, not sent",  # between upload and create
    "create sent, not recorded",
    "batches in progress",  # while batches run
    "result file written, not recorded",  # during download
    "downloaded, not merged",  # during process
    "output written, not recorded",
}


class JumpClock:
    """The emulator's clock: real time plus the jumps the test makes.

    Real time, so that objects carry timestamps near the local intents (tag lookups page back to
    the intent's local time, as against the real service); jumps, so that batches whose phases
    last hours move only when the test says.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.time() + self.offset

    def jump_to(self, when: float) -> None:
        with self._lock:
            self.offset = max(self.offset, when - time.time())


class Chaos:
    """One run under chaos: starts `run --wait` processes, kills them, and records where."""

    def __init__(self, emu: Emulator, config: Path, runs_dir: Path, logs: Path) -> None:
        self.emu, self.config, self.logs = emu, config, logs
        self.run_dir = runs_dir / "chaos"
        self.env = {**os.environ, "OPENAI_BASE_URL": emu.base_url, "OPENAI_API_KEY": "k"}
        self.passes: list[tuple[str, str, list[str]]] = []  # (pass, how it ended, where the kill landed)

    def fail(self, message: str) -> None:
        raise AssertionError(f"seed {SEED}: {message}\npasses so far: {json.dumps(self.passes, indent=1)}")

    # -- what the run and the service look like --------------------------------------------------
    def ledger(self) -> dict[str, Any]:
        path = self.run_dir / "state.json"  # replaced atomically: always whole
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"run": {}, "shards": []}

    def events(self) -> list[dict[str, Any]]:
        try:
            text = (self.run_dir / "events.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def shard_states(self) -> set[str]:
        return {s["state"] for s in self.ledger()["shards"]}

    def landed(self) -> list[str]:
        """Where the run stands after a kill, from the ledger, the files and the service."""
        state, where = self.ledger(), set()
        remote_files = {f["filename"] for f in self.emu.files if f["purpose"] == "batch"}
        remote_batches = self.emu.batches
        tagged = {b["metadata"]["batchpipe_shard"] for b in remote_batches if b.get("metadata")}
        for shard in state["shards"]:
            upload, batch = shard.get("upload"), shard.get("batch")
            if upload and not upload["file_id"]:
                where.add("upload sent, not recorded" if upload["filename"] in remote_files else "upload intent, not sent")
            if shard["state"] == "uploaded":
                if batch is None:
                    where.add("uploaded, no batch intent")
                else:
                    sent = shard["id"] in tagged
                    where.add("create sent, not recorded" if sent else "create intent, not sent")
            if shard["state"] == "submitted" and (self.run_dir / "results" / f"{shard['id']}.output.jsonl").exists():
                where.add("result file written, not recorded")
            if shard["state"] == "completed":
                where.add("downloaded, not merged")
        statuses = {b["status"] for b in remote_batches}
        if state["shards"] and self.shard_states() == {"submitted"} and statuses in ({"validating"}, {"in_progress"}):
            where.add(f"batches {statuses.pop().replace('_', ' ')}")
        if self.shard_states() == {"merged"} and not state["run"].get("output") and (self.run_dir / "output.jsonl").exists():
            where.add("output written, not recorded")
        return sorted(where)

    # -- one process -----------------------------------------------------------------------------
    def run(
        self,
        name: str,
        *,
        crash_at: str | None = None,
        kill_when: Callable[[list[dict[str, Any]]], bool] | None = None,
        caught_up: Callable[[], bool] | None = None,
    ) -> str:
        """Start `run --wait`; end it at the crash point, with SIGKILL once `kill_when(new events)`
        or `caught_up()` holds, or let it finish. Returns "crashed", "killed" or "done"."""
        env = self.env | ({"BATCHPIPE_CRASH_AT": crash_at} if crash_at else {})
        seen = len(self.events())
        log = self.logs / f"{len(self.passes) + 1:02d}-{name.replace(' ', '_').replace(':', '_')}.stderr"
        command = [sys.executable, "-m", "batchpipe", "run", str(self.config), "--run", "chaos", "--wait",
                   "--poll-interval", "0.02"]
        with open(log, "w") as stderr:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline, killed = time.monotonic() + PASS_DEADLINE, False
        try:
            while proc.poll() is None:
                if (kill_when is not None and kill_when(self.events()[seen:])) or (caught_up is not None and caught_up()):
                    proc.kill()
                    killed = True
                    break
                if time.monotonic() > deadline:
                    self.fail(f"pass {name!r} neither reached its kill nor ended in {PASS_DEADLINE} s")
                time.sleep(0.005)  # how often the files are looked at, not a wait for anything
            code = proc.wait(timeout=PASS_DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if killed:
            outcome = "killed"
        elif code == 99:  # batchpipe.crash.EXIT_CODE
            outcome = "crashed"
        elif code == 0:
            outcome = "done"
        else:
            self.fail(f"pass {name!r} exited {code}:\n{log.read_text()[-3000:]}")
        self.passes.append((name, outcome, self.landed() if outcome != "done" else []))
        return outcome


def nth_line(n: int, **match: Any) -> Callable[[list[dict[str, Any]]], bool]:
    """True once the new event lines hold n lines with these fields (any line if none given)."""
    return lambda events: sum(all(e.get(k) == v for k, v in match.items()) for e in events) >= n


@pytest.mark.timeout(900)  # bounded by PASS_DEADLINE per process; the suite-wide 120 s is for tests without one
def test_killed_in_every_phase_under_faults_still_finishes_exactly_once(runs_dir, tmp_path):
    rng = random.Random(SEED)
    clock = JumpClock()
    options = EmulatorOptions(
        validating_seconds=PHASE, in_progress_seconds=PHASE, finalizing_seconds=PHASE,
        transient_error_rate=0.2, lost_answer_rate=0.2, fault_seed=SEED, retry_after_ms=5,
    )
    rows = review_rows(5 * SHARDS)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 5, "enqueued_tokens": 10**6})  # not about the queue: all at once
    logs = tmp_path / "logs"
    logs.mkdir()
    with Emulator(options=options, port=0, clock=clock) as emu:
        chaos = Chaos(emu, config, runs_dir, logs)

        def created() -> list[float]:
            return sorted(b["created_at"] for b in emu.batches)

        def all_submitted() -> bool:
            return chaos.shard_states() == {"submitted"}

        # 1. Submission, every batch held in `validating`. Crash points first: each stops within
        # the first shards, so every one of them is reached; then SIGKILLs at a random event line.
        chaos.run("before an upload", crash_at=f"upload:before:{rng.randint(2, 3)}", caught_up=all_submitted)
        if not emu.batches:
            chaos.fail("the first pass created no batch")
        first_group = {b["id"] for b in emu.batches}
        # The batches created from now on start GAP later: they finish later, so that results
        # can come in two rounds (step 3).
        clock.jump_to(clock() + GAP)
        chaos.run("after an upload", crash_at="upload:after:1", caught_up=all_submitted)
        chaos.run("before a create", crash_at=f"batch_create:before:{rng.randint(1, 2)}", caught_up=all_submitted)
        chaos.run("after a create", crash_at="batch_create:after:1", caught_up=all_submitted)
        chaos.run("submitting", kill_when=nth_line(rng.randint(1, 6)), caught_up=all_submitted)
        chaos.run("the rest of the submission", caught_up=all_submitted)  # killed while the batches validate
        if not all_submitted():
            chaos.fail("not every shard was submitted")
        if len(emu.batches) == len(first_group):
            chaos.fail("every batch was created in the first pass")

        # 2. While the batches run: the clock moves them into in_progress; the process that
        # notices (a remote_status line) is killed.
        clock.jump_to(created()[-1] + PHASE + rng.uniform(0.2, 0.8) * PHASE)
        chaos.run("in progress", kill_when=nth_line(1, event="remote_status"))

        # 3a. The first batches finish (the others are still finalizing): a kill at a random step
        # of downloading and merging them, or once the run has caught up.
        firsts = [b for b in emu.batches if b["id"] in first_group]
        clock.jump_to(max(b["created_at"] for b in firsts) + 3 * PHASE + GAP / 2)
        shard_ids = {b["metadata"]["batchpipe_shard"] for b in firsts}

        def firsts_merged() -> bool:
            return all(s["state"] == "merged" for s in chaos.ledger()["shards"] if s["id"] in shard_ids)

        step = rng.choice([dict(event="remote_status"), dict(event="remote", call="download"), dict(to="completed"),
                           dict(to="merged")])
        chaos.run(f"first results at {step}", kill_when=nth_line(1, **step), caught_up=firsts_merged)

        # 3b. Every batch finishes: crashes while downloading, merging and writing the output.
        clock.jump_to(created()[-1] + 3 * PHASE + 1)
        chaos.run("downloading", crash_at=f"download:after_file:{rng.randint(1, 2)}")
        chaos.run("merging", crash_at=f"process:after_index:{rng.randint(1, 2)}")
        chaos.run("writing the output", crash_at="output:after_file:1")

        # 4. And one run to done.
        if chaos.run("to done") != "done":
            chaos.fail("the last run did not finish")

        landed = {where for _, _, places in chaos.passes for where in places}
        if not REQUIRED <= landed:
            chaos.fail(f"no kill landed at {sorted(REQUIRED - landed)}")
        counts = emu.counts
        print(f"seed {SEED}: {json.dumps(chaos.passes)}")  # shown with -s, or when an assertion below fails

    out = read_jsonl(runs_dir / "chaos" / "output.jsonl")
    assert [r["review_id"] for r in out] == [r["review_id"] for r in rows], f"seed {SEED}"
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows], f"seed {SEED}"
    assert all(r["verdict_attempts"] == 1 for r in out), f"seed {SEED}"
    # exactly one batch per shard attempt, whatever the kills and the lost answers did
    assert counts["duplicate_creates"] == 0, f"seed {SEED}: {counts}"
    creates = {tag: n for tag, n in counts["creates_by_tag"].items() if tag.startswith("chaos/")}
    assert creates == {f"chaos/{i:05d}.a1": 1 for i in range(1, SHARDS + 1)}, f"seed {SEED}: {counts}"
    # the faults really happened (lost answers alone are proven without dice in test_salvage.py)
    assert counts["transient_errors"] > 0 and counts["lost_answers"] > 0, f"seed {SEED}: {counts}"
