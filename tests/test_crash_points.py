"""Kill batchpipe at every named crash point, resume, and get exactly a fault-free run's output
with not one duplicate batch at the server (DESIGN.md §4: the measure is a test, not an argument).

The crashing run is a real subprocess that dies by os._exit at the point (as after kill -9: no
cleanup, no finally). The resume is the ordinary CLI: `recover`, then `run --wait`.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from conftest import batchpipe, ctrl_c_when, read_jsonl, review_rows, write_job

from batchpipe import crash

CRASH_CASES = [
    # Points a plain batch run never reaches have tests of their own: cancel in this file, recut in
    # test_queue_limits, sync in test_sync, export and import in test_handoff, steps in test_steps.
    *(f"{p}:1" for p in sorted(crash.POINTS - {"cancel:before", "cancel:after", "recut:after_index"})
      if not p.startswith(("sync:", "steps:", "export:", "import:"))),
    # later hits of the busiest points: mid-run, between other steps
    "ledger:before_commit:4", "ledger:after_commit:18", "batch_create:after:3", "process:after_index:3",
]


def job_rows() -> list[dict]:
    rows = review_rows(10)
    rows[4]["text"] += " [[fail:500]]"  # a transient-looking failure: retried, so the retry points are met
    rows[7]["text"] += " [[fail:400]]"  # a permanent one: kept as it is
    return rows



_reference: list[list[dict]] = []


def reference_output(cli, tmp_path: Path, runs_dir: Path) -> list[dict]:
    """The output of the same job run without faults (made once: it is deterministic)."""
    if not _reference:
        config = write_job(tmp_path / "ref", job_rows(), limits={"max_requests_per_shard": 4})
        cli("run", config, "--run", "reference", "--wait", "--poll-interval", "0", code=6)  # 2 rows fail
        _reference.append(read_jsonl(runs_dir / "reference" / "output.jsonl"))
    return _reference[0]


@pytest.mark.parametrize("crash_at", CRASH_CASES)
def test_kill_at_a_crash_point_then_resume(cli, emulator, runs_dir, tmp_path, crash_at):
    expected = reference_output(cli, tmp_path, runs_dir)
    config = write_job(tmp_path / "job", job_rows(), limits={"max_requests_per_shard": 4})

    if crash_at.startswith("run_create:"):  # killed while it creates the run
        target = [str(config), "--run", "crashy"]
    else:  # created here (this process has the tokenizer loaded): the killed process starts at submit
        cli("create", config, "--run", "crashy")
        target = ["crashy"]
    # --canary 2: the canary split is one more step with side effects to crash in
    killed = batchpipe("run", *target, "--canary", "2", "--wait", "--poll-interval", "0", crash_at=crash_at)
    assert killed.returncode == crash.EXIT_CODE, f"{crash_at} was never reached:\n{killed.stdout}{killed.stderr}"

    if (runs_dir / "crashy").exists():
        cli("recover", "crashy")
        cli("run", "crashy", "--canary", "2", "--wait", "--poll-interval", "0", code=6)
    else:  # killed before create published the run: creating again is the resume
        cli("run", config, "--run", "crashy", "--canary", "2", "--wait", "--poll-interval", "0", code=6)
        assert [p.name for p in runs_dir.iterdir() if p.name.startswith(".crashy.")] == []  # create removed the stray
        cli("recover", "crashy")
    assert [p.name for p in runs_dir.iterdir() if p.name.startswith(".")] == []  # no stray temp dir left

    assert read_jsonl(runs_dir / "crashy" / "output.jsonl") == expected
    assert emulator.counts["duplicate_creates"] == 0
    # Every shard attempt made exactly one batch: the canary, 3 shards, 2 retries of the 500.
    creates = emulator.counts["creates_by_tag"]
    assert sorted(creates.values()) == [1] * len(creates)
    assert sorted(tag for tag in creates if tag.startswith("crashy/")) == [
        "crashy/00000.a1", "crashy/00001.a1", "crashy/00002.a1", "crashy/00002.a2", "crashy/00002.a3", "crashy/00003.a1",
    ]
    # and nothing is left mid-write
    assert not list((runs_dir / "crashy").rglob("*.tmp"))


def test_a_duplicate_batch_is_cancelled_and_reported(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "dup")
    cli("submit", "dup")
    status = cli.json("status", "dup")["data"]["shards"][0]
    # Someone (a retrying client, another tool) made a second batch for the same shard.
    client = openai.OpenAI(base_url=emulator.base_url, api_key="k", max_retries=0)
    emulator.options.validating_seconds = 3600  # keep the duplicate running, so there is something to cancel
    # (it carries the shard's whole tag: a batch with another sha or nonce is not this run's, see test_tags.py)
    tag = json.loads((runs_dir / "dup" / "state.json").read_text())["shards"][0]["batch"]["metadata"]
    twin = client.batches.create(input_file_id=status["file_id"], endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata=tag)
    killed = batchpipe("recover", "dup", crash_at="cancel:before:1")
    assert killed.returncode == crash.EXIT_CODE
    result = cli("recover", "dup")
    assert f"cancelled duplicate batch {twin.id} (kept {status['batch_id']})" in result.stdout
    assert client.batches.retrieve(twin.id).status in ("cancelling", "cancelled")
    assert client.batches.retrieve(status["batch_id"]).status == "completed"
    emulator.options.validating_seconds = 0
    cli("run", "dup", "--wait", "--poll-interval", "0")
    assert len(read_jsonl(runs_dir / "dup" / "output.jsonl")) == 4


def test_ctrl_c_during_run_wait_exits_130_and_resumes(cli, runs_dir, tmp_path, monkeypatch):
    import time

    from batchpipe.emulator import Emulator, EmulatorOptions, ManualClock

    # The batches stay running until the test moves this clock on. It starts at the real time:
    # lookups by tag page back to the intent's local time, so the two clocks must agree (as they
    # do, within minutes, against a real service).
    clock = ManualClock(start=time.time())
    options = EmulatorOptions(validating_seconds=1, in_progress_seconds=1, finalizing_seconds=1)
    with Emulator(options=options, port=0, clock=clock) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        # a known queue limit, so both batches go at once (without one, the second waits for the first)
        config = write_job(tmp_path / "job", review_rows(6), limits={"max_requests_per_shard": 3, "enqueued_tokens": 10**6})
        code, stderr = ctrl_c_when(lambda: emu.counts["batch_creates"] >= 2,  # both batches exist
                                   "run", str(config), "--run", "intr", "--wait", "--poll-interval", "0.05")
        assert code == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr

        clock.advance(10)
        cli("recover", "intr")
        cli("run", "intr", "--wait", "--poll-interval", "0")
        assert len(read_jsonl(runs_dir / "intr" / "output.jsonl")) == 6
        assert emu.counts["batch_creates"] == 2 and emu.counts["duplicate_creates"] == 0
