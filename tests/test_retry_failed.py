"""Every finished row has an outcome a script can trust: a run that ends with failed rows exits 6
(not 0), and `process --retry-failed` sends only those rows again, as new shard attempts, within
the run's budget, until `run --wait` takes the run back to done and rewrites its output."""

from __future__ import annotations

import json

import pytest
from conftest import batchpipe, expected_answer, read_jsonl, review_rows, write_job

from batchpipe import crash
from batchpipe.emulator import Emulator, EmulatorOptions


@pytest.fixture
def flaky(monkeypatch):
    """An instant emulator whose requests fail with a 500 line half the time (seeded)."""
    options = EmulatorOptions(validating_seconds=0, in_progress_seconds=0, finalizing_seconds=0,
                              request_failure_rate=0.5, fault_seed=3)
    with Emulator(options=options, port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        yield emu


def batch_ids(emu: Emulator) -> set[str]:
    return {b["id"] for b in emu.batches}


def sent_ids(emu: Emulator, batch_id: str) -> list[str]:
    """The custom_ids of the requests in one batch's input file, as the service received them."""
    batch = next(b for b in emu.batches if b["id"] == batch_id)
    return [json.loads(line)["custom_id"] for line in emu.file_content(batch["input_file_id"]).splitlines()]


def state_of(runs_dir, run):
    return json.loads((runs_dir / run / "state.json").read_text())


def test_failed_rows_exit_6_and_retry_failed_sends_only_them(cli, flaky, runs_dir, tmp_path):
    rows = review_rows(20)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 10, "max_attempts": 1})
    result = cli("run", config, "--run", "s", "--wait", "--poll-interval", "0", code=6)
    out = read_jsonl(runs_dir / "s" / "output.jsonl")
    failed = {r["review_id"] for r in out if r["verdict"] is None}
    assert failed and len(failed) < 20  # with this seed, some requests failed and some did not
    assert all(r["verdict_error"]["status_code"] == 500 for r in out if r["review_id"] in failed)
    assert f"({20 - len(failed)} answered, {len(failed)} failed)" in result.stdout
    assert "`batchpipe process s --retry-failed` sends them again" in result.stderr
    cli("process", "s", code=6)  # asked again, the finished run still says so
    assert cli.json("tick", "s", code=6)["data"]["runs"][0]["outcome"] == "done_with_failures"
    first_batches = batch_ids(flaky)

    flaky.options.request_failure_rate = 0.0  # whatever went wrong has passed
    retried = cli.json("process", "s", "--retry-failed", code=3)["data"]
    assert retried["requeued"] == len(failed) and not retried["done"]
    by_shard = {s["id"]: s for s in state_of(runs_dir, "s")["shards"]}
    assert sorted(retried["retries"]) == sorted(sid for sid in by_shard if sid.endswith(".a2"))
    old_output = (runs_dir / "s" / "output.jsonl").read_bytes()
    assert read_jsonl(runs_dir / "s" / "output.jsonl") == out  # not rewritten until every row has an outcome again

    cli("run", "s", "--wait", "--poll-interval", "0")  # exit 0: done, every row answered
    new_batches = batch_ids(flaky) - first_batches
    assert len(new_batches) == len(retried["retries"])  # one batch per retry shard
    assert sorted(cid for b in new_batches for cid in sent_ids(flaky, b)) == sorted(failed)  # only the failed rows
    assert flaky.counts["duplicate_creates"] == 0

    final = read_jsonl(runs_dir / "s" / "output.jsonl")
    assert (runs_dir / "s" / "output.jsonl").read_bytes() != old_output
    assert [r["verdict"] for r in final] == [expected_answer(r) for r in rows]
    assert all("verdict_error" not in r for r in final)
    assert {r["review_id"]: r["verdict_attempts"] for r in final} == {
        r["review_id"]: 2 if r["review_id"] in failed else 1 for r in rows
    }
    status = cli.json("status", "s")["data"]
    assert (status["finished"], status["failed"], status["result_counts"]["failed"]) == (20, 0, 0)
    cli("process", "s", "--retry-failed")  # nothing left to send: exit 0, nothing new
    assert len(batch_ids(flaky)) == len(first_batches) + len(new_batches)


@pytest.mark.parametrize(
    "crash_at", ["retry:after_shard_file:1", "retry:after_index:1", "ledger:before_commit:1", "ledger:after_commit:1"]
)
def test_retry_failed_killed_midway_sends_each_failed_row_once(cli, flaky, runs_dir, tmp_path, crash_at):
    rows = review_rows(10)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 10, "max_attempts": 1})
    cli("run", config, "--run", "k", "--wait", "--poll-interval", "0", code=6)
    failed = sorted(r["review_id"] for r in read_jsonl(runs_dir / "k" / "output.jsonl") if r["verdict"] is None)
    assert failed
    before = batch_ids(flaky)
    flaky.options.request_failure_rate = 0.0

    killed = batchpipe("process", "k", "--retry-failed", crash_at=crash_at)
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    cli("recover", "k")
    cli("process", "k", "--retry-failed", code=3)  # plans it, or finds it planned: either way not done
    cli("run", "k", "--wait", "--poll-interval", "0")
    (new,) = batch_ids(flaky) - before  # one retry batch, holding each failed row once
    assert sorted(sent_ids(flaky, new)) == failed
    assert [r["verdict"] for r in read_jsonl(runs_dir / "k" / "output.jsonl")] == [expected_answer(r) for r in rows]


def test_retry_failed_takes_permanent_failures_from_every_attempt_once(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(6)
    rows[1]["text"] = "refused [[fail:400]]"  # a 4xx: never retried on its own, stays in attempt 1
    rows[3]["text"] = "server trouble [[fail:500]]"  # retried on its own up to max_attempts: attempt 2
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 6, "max_attempts": 2})
    cli("run", config, "--run", "p", "--wait", "--poll-interval", "0", code=6)
    assert [r["verdict_attempts"] for r in read_jsonl(runs_dir / "p" / "output.jsonl")] == [1, 1, 1, 2, 1, 1]
    before = batch_ids(emulator)

    result = cli("process", "p", "--retry-failed", code=3)
    assert "sent 2 failed row(s) again as new attempt(s) 00001.a3" in result.stdout
    again = cli("process", "p", "--retry-failed", code=3)  # asked twice before it ran: nothing sent twice
    assert "no failed rows to send again yet: earlier attempts have not finished" in again.stdout
    assert [s["id"] for s in state_of(runs_dir, "p")["shards"]] == ["00001.a1", "00001.a2", "00001.a3"]

    # The markers fail the same way again: the run ends done with failures once more, honestly.
    cli("run", "p", "--wait", "--poll-interval", "0", code=6)
    (new,) = batch_ids(emulator) - before
    assert sorted(sent_ids(emulator, new)) == ["r0002", "r0004"]
    out = read_jsonl(runs_dir / "p" / "output.jsonl")
    assert [r["verdict_attempts"] for r in out] == [1, 3, 1, 3, 1, 1]
    assert out[1]["verdict_error"]["status_code"] == 400 and out[3]["verdict_error"]["status_code"] == 500
    status = cli.json("status", "p")["data"]
    assert (status["finished"], status["failed"]) == (6, 2)  # each row counted once, in its latest attempt


def test_retry_failed_waits_for_the_budget_like_any_shard(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(4)
    rows[2]["text"] = "refused [[fail:400]]"
    cli("run", write_job(tmp_path / "job", rows), "--run", "b", "--wait", "--poll-interval", "0", code=6)
    cli("process", "b", "--retry-failed", code=3)
    creates = emulator.counts["batch_creates"]

    result = cli("run", "b", "--wait", "--poll-interval", "0", "--budget", "0.000001", code=5)
    assert "00001.a2" in result.stderr and "budget" in result.stderr
    assert emulator.counts["batch_creates"] == creates  # held back: nothing sent past the budget
    cli("run", "b", "--wait", "--poll-interval", "0", "--budget", "5", code=6)  # raised: sent (and refused again)
    assert emulator.counts["batch_creates"] == creates + 1


def test_truncated_rows_failed_by_policy_are_sent_again_when_asked(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(4)
    rows[0]["text"] = "a long and winding review " * 4  # cut at max_tokens every time
    config = write_job(tmp_path / "job", rows, params={"max_tokens": 12}, output={"key": "verdict", "truncated": "fail"})
    cli("run", config, "--run", "t", "--wait", "--poll-interval", "0", code=6)
    assert cli.json("process", "t", "--retry-failed", code=3)["data"]["requeued"] == 1
    cli("run", "t", "--wait", "--poll-interval", "0", code=6)  # the same limit cuts it again
    out = read_jsonl(runs_dir / "t" / "output.jsonl")
    assert out[0]["verdict_error"]["code"] == "truncated" and out[0]["verdict_attempts"] == 2
    status = cli.json("status", "t")["data"]
    assert (status["failed"], status["truncated"]) == (1, 1)  # the row is counted once, not once per attempt


def test_a_batch_that_failed_validation_is_sent_again_when_asked(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(3), model="llama-nope")
    cli("run", config, "--run", "v", "--wait", "--poll-interval", "0", code=5)
    result = cli("process", "v", "--retry-failed", code=3)  # sent again: nothing for a person until it ran
    assert "sent 3 failed row(s) again as new attempt(s) 00001.a2" in result.stdout
    result = cli("run", "v", "--wait", "--poll-interval", "0", code=5)  # the model still does not exist
    assert "shard 00001.a2 failed validation at line 1 (row 1, id r0001): model_not_found" in result.stderr
    assert "00001.a1" not in result.stderr  # the earlier attempt is not reported twice
    assert emulator.counts["batch_creates"] == 2
    assert all(r["verdict_attempts"] == 2 for r in read_jsonl(runs_dir / "v" / "output.jsonl"))



def test_tick_all_tells_done_and_clean_from_done_with_failures(cli, slow_emulator, runs_dir, tmp_path):
    # a known queue limit: every run's batch goes in the first tick (an unknown one is probed batch by batch)
    limits = {"max_requests_per_shard": 5, "enqueued_tokens": 10**6}
    failing = review_rows(3)
    failing[0]["text"] = "refused [[fail:400]]"
    cli("create", write_job(tmp_path / "clean", review_rows(3), name="clean", limits=limits), "--run", "clean")
    cli("create", write_job(tmp_path / "failing", failing, name="failing", limits=limits), "--run", "failing")
    cli("tick", "--all", code=3)
    slow_emulator.clock.advance(10)
    ticked = cli.json("tick", "--all", code=6)["data"]["runs"]
    assert [(r["run"], r["outcome"]) for r in ticked] == [("clean", "done"), ("failing", "done_with_failures")]
    assert "--retry-failed" in ticked[1]["message"]

    # a run still pending outranks a finished one with failures: 6 only once everything is finished
    cli("create", write_job(tmp_path / "late", review_rows(3), name="late", limits=limits), "--run", "late")
    cli("tick", "--all", code=3)
    slow_emulator.clock.advance(10)
    cli("tick", "--all", code=6)
    cli("tick", "clean", code=0)
