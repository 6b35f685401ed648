"""Whole runs through the CLI against the emulator, as a user would drive them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import expected_answer, read_jsonl, review_rows, write_job

from batchpipe.emulator import Emulator


def state_of(runs_dir: Path, run_id: str) -> dict:
    return json.loads((runs_dir / run_id / "state.json").read_text())


def snapshot(runs_dir: Path, run_id: str) -> dict[str, bytes]:
    """Every file of a run (but the lock), to prove a repeated command changed nothing."""
    root = runs_dir / run_id
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_step_by_step_every_row_gets_its_own_answer(cli, emulator: Emulator, runs_dir: Path, tmp_path: Path):
    rows = review_rows(12)
    config = write_job(tmp_path / "job", rows)

    created = cli.json("create", config, "--run", "reviews")
    assert created["data"] == {
        "run": "reviews", "path": str(runs_dir / "reviews"), "created": True, "shards": 3, "requests": 12,
    }
    assert emulator.counts["uploads"] == 0  # create never touches the network

    submitted = cli.json("submit", "reviews")["data"]
    assert submitted["submitted"] == ["00001.a1", "00002.a1", "00003.a1"]

    status = cli.json("status", "reviews")["data"]
    assert [s["remote_status"] for s in status["shards"]] == ["completed"] * 3
    assert [s["request_counts"] for s in status["shards"]] == [
        {"total": 5, "completed": 5, "failed": 0}, {"total": 5, "completed": 5, "failed": 0},
        {"total": 2, "completed": 2, "failed": 0},
    ]

    downloaded = cli.json("download", "reviews")["data"]
    assert downloaded == {"run": "reviews", "shards": ["00001.a1", "00002.a1", "00003.a1"], "files": 3, "lost": []}

    processed = cli.json("process", "reviews")["data"]
    assert processed["done"] and processed["ok"] == 12 and processed["failed"] == 0

    out = read_jsonl(runs_dir / "reviews" / "output.jsonl")
    assert [r["review_id"] for r in out] == [r["review_id"] for r in rows]  # input order
    assert all(r["verdict"] == expected_answer(src) for r, src in zip(out, rows, strict=True))
    assert all("verdict_error" not in r for r in out)
    # one upload and one batch per shard, nothing twice
    assert emulator.counts["uploads"] == 3
    assert emulator.counts["batch_creates"] == 3
    assert emulator.counts["duplicate_creates"] == 0


def test_run_wait_finishes_with_progress_and_exit_0(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(9)
    config = write_job(tmp_path / "job", rows)
    result = cli("run", config, "--wait", "--poll-interval", "0")
    run_id = next(p.name for p in runs_dir.iterdir())
    assert f"output: {runs_dir / run_id / 'output.jsonl'} (9 answered, 0 failed)" in result.stdout
    assert "done: 9 answered, 0 failed" in result.stderr  # piped (not a terminal): a log line, not a bar
    out = read_jsonl(runs_dir / run_id / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]


def test_run_without_wait_is_pending_then_done(cli, runs_dir, tmp_path, monkeypatch):
    from batchpipe.emulator import EmulatorOptions

    # A timeline far longer than the test: the batches stay in progress.
    slow = EmulatorOptions(validating_seconds=3600, in_progress_seconds=3600, finalizing_seconds=3600)
    with Emulator(options=slow, port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        config = write_job(tmp_path / "job", review_rows(4))
        result = cli("run", config, "--run", "slow", code=3)
        assert "0/4 requests finished" in result.stdout
        status = cli.json("status", "slow")["data"]
        assert status["shards"][0]["remote_status"] == "validating"
        assert not status["done"]
        cli("process", "slow", code=3)
        assert not (runs_dir / "slow" / "output.jsonl").exists()


def test_300_rows_in_37_request_shards(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(300)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 37})
    cli("run", config, "--run", "big", "--wait", "--poll-interval", "0")
    state = state_of(runs_dir, "big")
    assert [s["requests"] for s in state["shards"]] == [37] * 8 + [4]
    assert {s["state"] for s in state["shards"]} == {"merged"}
    out = read_jsonl(runs_dir / "big" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert emulator.counts["uploads"] == 9 and emulator.counts["batch_creates"] == 9
    # The key never reaches the run dir.
    for path in (runs_dir / "big").rglob("*"):
        if path.is_file():
            assert b"SECRET" not in path.read_bytes(), path


def test_shards_split_at_the_byte_limit(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(10)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 100, "max_bytes_per_shard": 800})
    cli("create", config, "--run", "bytes")
    state = state_of(runs_dir, "bytes")
    sizes = [s["file"]["bytes"] for s in state["shards"]]
    assert len(sizes) > 1 and all(size <= 800 for size in sizes)
    assert sum(s["requests"] for s in state["shards"]) == 10
    lines = [line for s in state["shards"] for line in (runs_dir / "bytes" / s["file"]["path"]).read_bytes().splitlines()]
    assert [json.loads(line)["custom_id"] for line in lines] == [r["review_id"] for r in rows]
    cli("run", "bytes", "--wait", "--poll-interval", "0")
    assert [r["verdict"] for r in read_jsonl(runs_dir / "bytes" / "output.jsonl")] == [expected_answer(r) for r in rows]


def test_failed_requests_keep_their_row_with_the_error(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(8)
    rows[2]["text"] = "broken [[fail:400]]"
    rows[6]["text"] = "server trouble [[fail:500]]"
    config = write_job(tmp_path / "job", rows)
    result = cli("run", config, "--run", "fails", "--wait", "--poll-interval", "0", code=6)  # done, 2 rows failed
    assert "(6 answered, 2 failed)" in result.stdout
    out = read_jsonl(runs_dir / "fails" / "output.jsonl")
    assert [r["review_id"] for r in out] == [r["review_id"] for r in rows]
    for i, row in enumerate(out):
        if i in (2, 6):
            assert row["verdict"] is None
            assert row["verdict_error"]["status_code"] == (400 if i == 2 else 500)
            assert row["verdict_error"]["message"]
        else:
            assert row["verdict"] == expected_answer(rows[i]) and "verdict_error" not in row
    # A 400 is permanent: one attempt. A 500 may be transient: retried up to max_attempts (3).
    assert [row["verdict_attempts"] for row in out] == [1, 1, 1, 1, 1, 1, 3, 1]
    # the raw error file is kept, untouched, beside the output
    assert (runs_dir / "fails" / "results" / "00001.a1.errors.jsonl").exists()


def test_validation_failed_batch_stops_with_rows_named(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(3), model="llama-nope")
    result = cli("run", config, "--run", "badmodel", "--wait", "--poll-interval", "0", code=5)
    assert "failed validation at line 1 (row 1, id r0001): model_not_found" in result.stderr
    assert "line 3 (row 3, id r0003)" in result.stderr
    report = cli.json("status", "badmodel")["data"]
    assert report["shards"][0]["remote_status"] == "failed"
    assert report["shards"][0]["errors"][0]["code"] == "model_not_found"
    out = read_jsonl(runs_dir / "badmodel" / "output.jsonl")
    assert all(r["verdict"] is None and r["verdict_error"]["code"] == "model_not_found" for r in out)
    assert emulator.counts["batch_creates"] == 1
    # Running again does not resubmit: a retry cannot fix a bad model.
    cli("run", "badmodel", code=5)
    assert emulator.counts["batch_creates"] == 1


def test_every_command_is_idempotent(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(7))
    steps = [("create", config, "--run", "idem"), ("submit", "idem"), ("status", "idem"),
             ("download", "idem"), ("process", "idem"), ("run", "idem")]
    for args in steps:
        cli(*args)
        before, counts = snapshot(runs_dir, "idem"), emulator.counts
        cli(*args)
        after = snapshot(runs_dir, "idem")
        # the second call adds no remote object and writes no new data (the event log may only grow)
        assert {k: v for k, v in after.items() if k != "events.jsonl"} == {
            k: v for k, v in before.items() if k != "events.jsonl"
        }, args
        assert emulator.counts["uploads"] == counts["uploads"] and emulator.counts["batch_creates"] == counts["batch_creates"]
    created = cli.json("create", config, "--run", "idem")["data"]
    assert created["created"] is False


def test_create_twice_without_run_id_finds_the_same_run(cli, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(3))
    first = cli.json("create", config)["data"]
    second = cli.json("create", config)["data"]
    assert first["run"] == second["run"] and first["created"] and not second["created"]
    assert first["run"].startswith("job-")
    assert [p.name for p in runs_dir.iterdir()] == [first["run"]]
