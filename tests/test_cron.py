"""Unattended use: `tick` over several runs from cron, `status --all`, `cancel` and resume."""

from __future__ import annotations


from conftest import expected_answer, read_jsonl, review_rows, write_job
from filelock import FileLock




def test_a_cron_loop_of_tick_all_brings_every_run_to_done(cli, slow_emulator, runs_dir, tmp_path):
    # A known queue limit: without one, the first batches of a model go one at a time (test_queue_limits.py).
    limits = {"max_requests_per_shard": 5, "enqueued_tokens": 1_000_000}
    for name in ("alpha", "beta", "gamma"):
        cli("create", write_job(tmp_path / name, review_rows(7), name=name, limits=limits), "--run", name)
    first = cli.json("tick", "--all", code=3)["data"]["runs"]
    assert [(r["run"], r["outcome"]) for r in first] == [("alpha", "pending"), ("beta", "pending"), ("gamma", "pending")]
    assert slow_emulator.counts["batch_creates"] == 6  # 2 shards each, all submitted in one pass

    cli("tick", "--all", code=3)  # nothing has finished yet: still pending, nothing new sent
    assert slow_emulator.counts["batch_creates"] == 6

    slow_emulator.clock.advance(10)
    done = cli.json("tick", "--all", code=0)["data"]["runs"]
    assert {r["outcome"] for r in done} == {"done"}
    for name in ("alpha", "beta", "gamma"):
        out = read_jsonl(runs_dir / name / "output.jsonl")
        assert [r["verdict"] for r in out] == [expected_answer(r) for r in review_rows(7)]
    cli("tick", "--all", code=0)  # and again: nothing to do
    assert slow_emulator.counts["batch_creates"] == 6 and slow_emulator.counts["duplicate_creates"] == 0


def test_tick_exit_codes_tell_attention_and_busy_apart(cli, emulator, runs_dir, tmp_path):
    cli("create", write_job(tmp_path / "bad", review_rows(3), name="bad", model="llama-nope"), "--run", "bad")
    cli("create", write_job(tmp_path / "good", review_rows(3), name="good"), "--run", "good")
    results = cli.json("tick", "--all", code=5)["data"]["runs"]
    assert [(r["run"], r["outcome"]) for r in results] == [("bad", "attention"), ("good", "done")]

    cli("create", write_job(tmp_path / "busy", review_rows(3), name="busy"), "--run", "busy")
    with FileLock(runs_dir / "busy" / ".lock"):
        assert "skipped" in cli("tick", "busy", code=4).stdout
        results = cli.json("tick", "--all", code=5)["data"]["runs"]
    assert ("busy", "busy") in [(r["run"], r["outcome"]) for r in results]
    assert emulator.counts["batch_creates"] == 2  # the busy run was not touched


def test_status_all_lists_every_run(cli, emulator, tmp_path):
    cli("run", write_job(tmp_path / "a", review_rows(3), name="a"), "--run", "a", "--wait", "--poll-interval", "0")
    cli("create", write_job(tmp_path / "b", review_rows(4), name="b"), "--run", "b")
    runs = cli.json("status", "--all")["data"]["runs"]
    assert [(r["run"], r["done"], r["requests"]) for r in runs] == [("a", True, 3), ("b", False, 4)]
    assert "run a: 3/3 requests finished" in cli("status", "--all").stdout
    cli("status", code=2)  # neither a run nor --all


def test_cancel_keeps_finished_work_holds_the_run_and_resumes(cli, slow_emulator, runs_dir, tmp_path):
    rows = review_rows(6)
    limits = {"max_requests_per_shard": 3, "enqueued_tokens": 1_000_000}  # known: both batches go at once
    cli("run", write_job(tmp_path / "job", rows, limits=limits), "--run", "c", code=3)
    cancelled = cli.json("cancel", "c")["data"]["cancelled"]
    assert len(cancelled) == 2 and slow_emulator.counts["cancels"] == 2

    slow_emulator.clock.advance(10)  # the cancels take effect
    ticked = cli.json("tick", "c", code=5)["data"]["runs"][0]
    assert ticked["outcome"] == "attention" and "held" in ticked["message"]
    status = cli.json("status", "c")["data"]
    assert {s["remote_status"] for s in status["shards"] if s["shard"].endswith(".a1")} == {"cancelled"}
    assert slow_emulator.counts["batch_creates"] == 2  # tick did not resubmit the held run

    result = cli("run", "c", code=3)  # a person resumes it: the unrun requests go out again
    assert "resuming run c" in result.stderr
    slow_emulator.clock.advance(10)
    cli("run", "c", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "c" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert {r["verdict_attempts"] for r in out} == {2}
    assert slow_emulator.counts["duplicate_creates"] == 0
