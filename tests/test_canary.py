"""`--canary N`: the first N requests go alone; the rest wait for their verdict."""

from __future__ import annotations

from conftest import expected_answer, read_jsonl, review_rows, write_job


def sent_requests(emulator) -> int:
    return sum(b["request_counts"]["total"] for b in emulator.batches)


def test_a_good_canary_lets_the_rest_go(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(12)
    cli("create", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 5}), "--run", "c")
    first = cli("submit", "c", "--canary", "3")
    assert "waiting for the canary" in first.stderr
    assert emulator.counts["batch_creates"] == 1 and sent_requests(emulator) == 3

    cli("run", "c", "--wait", "--poll-interval", "0")
    shards = [(s["shard"], s["requests"]) for s in cli.json("status", "c")["data"]["shards"]]
    assert shards == [("00000.a1", 3), ("00001.a1", 2), ("00002.a1", 5), ("00003.a1", 2)]
    out = read_jsonl(runs_dir / "c" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert sent_requests(emulator) == 12  # every request sent exactly once
    assert emulator.counts["duplicate_creates"] == 0


def test_a_failing_canary_holds_the_run_until_a_person_resumes_it(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(10)
    rows[1]["text"] = "a prompt the model refuses [[fail:400]]"
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 5})
    result = cli("run", config, "--run", "c", "--canary", "4", "--wait", "--poll-interval", "0", code=5)
    assert "canary failed: 1 of 4 requests" in result.stderr
    assert sent_requests(emulator) == 4  # the broken prompt cost 4 requests, not 10

    ticked = cli.json("tick", "c", code=5)["data"]["runs"][0]
    assert ticked["outcome"] == "attention" and "canary failed" in ticked["message"]
    assert sent_requests(emulator) == 4

    cli("run", "c", "--wait", "--poll-interval", "0", code=6)  # a person looked, and goes on: done, 1 row failed
    out = read_jsonl(runs_dir / "c" / "output.jsonl")
    assert out[1]["verdict"] is None and out[1]["verdict_error"]["status_code"] == 400
    assert [r["verdict"] for i, r in enumerate(out) if i != 1] == [expected_answer(r) for i, r in enumerate(rows) if i != 1]
    assert sent_requests(emulator) == 10


def test_a_canary_after_the_first_submit_is_refused(cli, emulator, tmp_path):
    cli("create", write_job(tmp_path / "job", review_rows(6)), "--run", "c")
    cli("submit", "c")
    result = cli("submit", "c", "--canary", "2", code=2)
    assert "before the first submit" in result.stderr
