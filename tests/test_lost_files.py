"""Files the service no longer has: a deleted output or error file, an input file deleted before
its batch was created. One lost file never blocks the other shards; its requests are sent again
as a new attempt (within max_attempts and the budget); a vanished input file is uploaded again.
"""

from __future__ import annotations

import json

import openai
import pytest
from conftest import batchpipe, expected_answer, read_jsonl, review_rows, sdk, write_job

from batchpipe import crash
from batchpipe.emulator.server import build_parser, options_from_args


def shard_states(cli, run: str) -> dict[str, str]:
    return {s["shard"]: s["state"] for s in cli.json("status", run)["data"]["shards"]}


def test_a_lost_output_file_does_not_stop_the_other_shards(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_output_of_batches = (1,)  # shard 1's output file is gone when it finishes
    rows = review_rows(9)
    cli("create", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3}), "--run", "lost")
    cli("submit", "lost")

    downloaded = cli("download", "lost")
    assert "shard 00001.a1: the service no longer has its output file" in downloaded.output
    results = runs_dir / "lost" / "results"
    assert sorted(p.name for p in results.iterdir()) == ["00002.a1.output.jsonl", "00003.a1.output.jsonl"]

    # The other shards' paid results are merged; the lost shard's requests wait in a new attempt.
    processed = cli.json("process", "lost", code=3)["data"]
    assert processed["merged"] == ["00001.a1", "00002.a1", "00003.a1"]
    assert shard_states(cli, "lost") == {
        "00001.a1": "merged", "00002.a1": "merged", "00003.a1": "merged", "00001.a2": "prepared",
    }

    cli("run", "lost", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert [r["verdict_attempts"] for r in out] == [2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert not any("verdict_error" in r for r in out)
    counts = emulator.counts
    assert counts["creates_by_tag"] == {"lost/00001.a1": 1, "lost/00002.a1": 1, "lost/00003.a1": 1, "lost/00001.a2": 1}
    assert counts["batch_creates"] == 4 and counts["duplicate_creates"] == 0


def test_run_wait_gets_through_a_lost_output_file(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_output_of_batches = (2,)
    rows = review_rows(6)
    result = cli("run", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3}), "--run", "lost",
                 "--wait", "--poll-interval", "0")
    assert "shard 00002.a1: the service no longer has its output file" in result.output
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert [r["verdict_attempts"] for r in out] == [1, 1, 1, 2, 2, 2]
    assert emulator.counts["creates_by_tag"]["lost/00002.a2"] == 1 and emulator.counts["batch_creates"] == 3


def test_a_lost_error_file_retries_what_the_output_does_not_hold(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_errors_of_batches = (1,)
    rows = review_rows(4)
    rows[1]["text"] += " [[fail:400]]"  # fails in every attempt; its error line was in the lost file
    cli("run", write_job(tmp_path / "job", rows), "--run", "lost", "--wait", "--poll-interval", "0", code=6)  # a row failed for good
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(rows[0]), None, expected_answer(rows[2]), expected_answer(rows[3])]
    assert [r["verdict_attempts"] for r in out] == [1, 2, 1, 1]  # only the request missing from the output was sent again
    assert out[1]["verdict_error"]["status_code"] == 400  # the second attempt's error file was there
    assert emulator.counts["creates_by_tag"] == {"lost/00001.a1": 1, "lost/00001.a2": 1}


def test_a_lost_output_file_on_the_last_attempt_is_reported_on_its_rows(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_output_of_batches = (1,)
    rows = review_rows(3)
    cli("run", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3, "max_attempts": 1}),
        "--run", "lost", "--wait", "--poll-interval", "0", code=6)
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [None, None, None]
    assert {r["verdict_error"]["code"] for r in out} == {"result_file_lost"}
    assert emulator.counts["batch_creates"] == 1


def test_a_retry_of_a_lost_file_is_held_back_by_the_budget(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_output_of_batches = (1,)
    cli("create", write_job(tmp_path / "job", review_rows(6), limits={"max_requests_per_shard": 3}), "--run", "lost")
    cli("submit", "lost")
    cli("download", "lost")
    cli("process", "lost", code=3)  # plans attempt 2 of shard 1
    held = cli("submit", "lost", "--budget", "0.000001", code=5)
    assert "shard 00001.a2 held back" in held.output and "over the budget" in held.output
    assert "held back" in cli("run", "lost", code=5).output  # and it stays held: a person must decide
    assert emulator.counts["batch_creates"] == 2
    # the lost file's requests were billed: they count at what the service reported, not at 0
    status = cli.json("status", "lost")["data"]
    [lost] = [s for s in status["shards"] if s["shard"] == "00001.a1"]
    assert lost["usage"]["input_tokens"] > 0 and lost["cost_usd"] > 0


def test_an_input_file_deleted_before_create_is_uploaded_again(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_uploads = (1,)  # shard 1's upload is gone before its batch is created
    rows = review_rows(6)
    result = cli("run", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3}), "--run", "lost",
                 "--wait", "--poll-interval", "0")
    assert "shard 00001.a1: the service no longer has its input file" in result.output
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    counts = emulator.counts
    assert counts["uploads"] == 3 and counts["duplicate_uploads"] == 0  # shard 1 twice, shard 2 once
    assert counts["creates_by_tag"] == {"lost/00001.a1": 1, "lost/00002.a1": 1}
    state = json.loads((runs_dir / "lost" / "state.json").read_text())
    [first] = [s for s in state["shards"] if s["id"] == "00001.a1"]
    # the new upload carries the shard's usual tag, and it is the one the ledger records
    [again] = [f for f in emulator.files if f["filename"].startswith("lost--00001.a1--")]
    assert first["upload"] == {**first["upload"], "file_id": again["id"], "filename": again["filename"]}


def test_recover_reports_and_repairs_lost_result_and_input_files(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(6)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3})
    cli("create", config, "--run", "lost")
    # killed after shard 2's upload, before its batch create: shard 1's batch is created
    killed = batchpipe("submit", "lost", crash_at="batch_create:before:2")
    assert killed.returncode == crash.EXIT_CODE, killed.stdout + killed.stderr
    client = sdk(emulator)
    [batch] = emulator.batches
    client.files.delete(batch["output_file_id"])  # the service lost shard 1's output (it is finished)
    state = json.loads((runs_dir / "lost" / "state.json").read_text())
    [second] = [s for s in state["shards"] if s["id"] == "00002.a1"]
    client.files.delete(second["upload"]["file_id"])  # and shard 2's input, before its batch was created

    result = cli.json("recover", "lost")["data"]
    assert result["problems"] == []
    assert any(a.startswith("shard 00001.a1: the service no longer has its output file") for a in result["actions"])
    assert any(a.startswith("shard 00002.a1: the service no longer has its input file") for a in result["actions"])
    assert shard_states(cli, "lost") == {"00001.a1": "completed", "00002.a1": "prepared"}

    cli("run", "lost", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    counts = emulator.counts
    assert counts["creates_by_tag"] == {"lost/00001.a1": 1, "lost/00002.a1": 1, "lost/00001.a2": 1}
    assert counts["uploads"] == 4 and counts["duplicate_creates"] == 0  # 2 shards, shard 2 again, the retry
    assert "consistent: nothing to do" in cli("recover", "lost").output


def test_tick_gets_through_a_lost_output_file(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_output_of_batches = (1,)
    rows = review_rows(6)
    cli("create", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3}), "--run", "lost")
    cli("submit", "lost")
    cli("tick", "lost", code=3)  # shard 2 merged, shard 1's requests planned again
    cli("tick", "lost", code=0)  # sent, finished, merged
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert emulator.counts["batch_creates"] == 3


def test_recover_retries_a_damaged_result_file_the_service_no_longer_has(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(6)
    cli("create", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3}), "--run", "lost")
    cli("submit", "lost")
    cli("download", "lost")
    (runs_dir / "lost" / "results" / "00001.a1.output.jsonl").write_bytes(b"")  # damaged on disk
    [first] = [b for b in emulator.batches if b["metadata"]["batchpipe_shard"] == "00001.a1"]
    sdk(emulator).files.delete(first["output_file_id"])  # and gone at the service

    result = cli.json("recover", "lost")["data"]
    assert result["problems"] == []
    [action] = [a for a in result["actions"] if a.startswith("shard 00001.a1")]
    assert f"the service no longer has file {first['output_file_id']}" in action and "sent again" in action
    cli("run", "lost", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert [r["verdict_attempts"] for r in out] == [2, 2, 2, 1, 1, 1]


def test_recover_says_a_merged_shards_lost_raw_results_cannot_be_restored(cli, emulator, runs_dir, tmp_path):
    cli("run", write_job(tmp_path / "job", review_rows(3)), "--run", "lost", "--wait", "--poll-interval", "0")
    output = (runs_dir / "lost" / "output.jsonl").read_bytes()
    (runs_dir / "lost" / "results" / "00001.a1.output.jsonl").unlink()
    [batch] = emulator.batches
    sdk(emulator).files.delete(batch["output_file_id"])
    [problem] = cli.json("recover", "lost", code=5)["data"]["problems"]
    assert problem.startswith("shard 00001.a1:") and "cannot be restored" in problem
    assert (runs_dir / "lost" / "output.jsonl").read_bytes() == output  # the merged answers are kept
    assert emulator.counts["batch_creates"] == 1


def test_the_emulator_loses_files_on_request(emulator):
    emulator.options.lose_uploads = (2,)
    emulator.options.lose_output_of_batches = (1,)
    client = sdk(emulator)
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n'
    kept = client.files.create(file=("a.jsonl", line), purpose="batch")
    lost = client.files.create(file=("b.jsonl", line), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(lost.id)
    with pytest.raises(openai.BadRequestError, match="Cannot find file"):
        client.batches.create(input_file_id=lost.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = client.batches.create(input_file_id=kept.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id  # the batch still names its output file
    with pytest.raises(openai.NotFoundError):
        client.files.content(batch.output_file_id)
    assert client.files.delete(kept.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.delete(kept.id)
    assert emulator.counts["deleted_files"] == 3


def test_the_emulator_command_line_takes_the_file_loss_switches():
    args = build_parser().parse_args(["--lose-output-of-batch", "2", "--lose-output-of-batch", "5",
                                      "--lose-errors-of-batch", "1", "--lose-upload", "3"])
    options = options_from_args(args)
    assert (options.lose_output_of_batches, options.lose_errors_of_batches, options.lose_uploads) == ((2, 5), (1,), (3,))


def test_a_canary_whose_output_file_is_lost_is_judged_by_the_services_counts(cli, emulator, runs_dir, tmp_path):
    emulator.options.lose_output_of_batches = (1,)  # the canary's answers are gone, though all succeeded
    rows = review_rows(6)
    cli("run", write_job(tmp_path / "job", rows), "--run", "lost", "--canary", "2", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "lost" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert [r["verdict_attempts"] for r in out] == [2, 2, 1, 1, 1, 1]
    assert emulator.counts["creates_by_tag"]["lost/00000.a2"] == 1
