"""The provider's enqueued-token queue when the config names no limit (issue 8, issue 11 item 5):
the limit is learned from the service's `token_limit_exceeded`, shared by the runs of a runs dir,
and shards too big for it are re-cut instead of being rejected forever."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import INSTANT, batchpipe, expected_answer, read_jsonl, review_rows, sdk, write_job

from batchpipe import crash, ops
from batchpipe.emulator import Emulator, ManualClock


def job_tokens(cli, config) -> int:
    return cli.json("estimate", config)["data"]["input_tokens"]


@pytest.fixture
def limited(monkeypatch):
    """An emulator whose enqueued-token limit a test sets with `emu.options.enqueued_token_limit`."""
    with Emulator(options=replace(INSTANT), port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        yield emu


def test_a_shard_bigger_than_the_queue_is_recut_and_the_run_finishes(cli, limited, runs_dir, tmp_path):
    rows = review_rows(12)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 12})  # one shard, no queue limit
    limited.options.enqueued_token_limit = job_tokens(cli, config) // 2  # the shard is twice the queue
    run = cli.json("create", config, "--run", "big")["data"]["run"]
    codes = [cli("tick", run, code=None).exit_code for _ in range(8)]
    assert codes[-1] == 0, codes
    out = read_jsonl(runs_dir / "big" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    counts = limited.counts
    assert counts["token_limit_failures"] == 1  # one rejection taught the limit; the re-cut pieces fit
    assert counts["max_enqueued_tokens"]["gpt-4o-mini"] <= limited.options.enqueued_token_limit
    state = json.loads((runs_dir / "big" / "state.json").read_text())
    assert all(len(s["history"]) <= 1 for s in state["shards"])  # no history growing without bound


def test_a_kill_in_the_middle_of_a_recut_is_resumed_without_a_second_batch(cli, limited, runs_dir, tmp_path):
    rows = review_rows(12)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 12})
    limited.options.enqueued_token_limit = job_tokens(cli, config) // 2
    cli("create", config, "--run", "cut")
    cli("tick", "cut", code=None)  # the one shard is refused for the queue: the limit is learned
    killed = batchpipe("tick", "cut", crash_at="recut:after_index")
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    state = json.loads((runs_dir / "cut" / "state.json").read_text())
    assert [s["id"] for s in state["shards"]] == ["00001.a1"]  # the pieces are not in the ledger yet
    codes = [cli("tick", "cut", code=None).exit_code for _ in range(8)]
    assert codes[-1] == 0, codes
    assert [r["verdict"] for r in read_jsonl(runs_dir / "cut" / "output.jsonl")] == [expected_answer(r) for r in rows]
    assert limited.counts["duplicate_creates"] == 0
    assert sorted(limited.counts["creates_by_tag"].values()) == [1] * len(limited.counts["creates_by_tag"])


# --- a job four times the queue, with no limit configured (issue 8) ---------------------------

POLL = 30.0  # seconds between polls; the emulator's batches take minutes, as the service's do
SLOW = replace(INSTANT, validating_seconds=30.0, in_progress_seconds=120.0, finalizing_seconds=30.0)


def simulated_run(config, run_id: str, limit: int, message_has_number: bool = True) -> tuple[float, dict]:
    """`run --wait` of a job against an emulator whose clock moves only while batchpipe sleeps
    between polls: returns (makespan in the emulator's seconds, the emulator's counts)."""
    clock = ManualClock()
    options = replace(SLOW, enqueued_token_limit=limit, token_limit_message_has_number=message_has_number)
    with Emulator(options=options, port=0, clock=clock) as emu:
        created = ops.create(config, runs_dir=ops_runs_dir(), run_id=run_id)
        paths = ops.run_paths(ops_runs_dir(), created.run_id)
        start = clock()
        report = ops.run(paths, ops.provider_for(paths, api_key="k", base_url=emu.base_url), wait=True,
                         poll_interval=POLL, sleep=clock.advance)
        assert report.progress.done
        return clock() - start, emu.counts


def ops_runs_dir() -> Path:
    return Path(os.environ["BATCHPIPE_RUNS_DIR"])


def test_without_a_configured_limit_the_service_refuses_one_batch_and_the_job_takes_no_longer(
        cli, runs_dir, tmp_path):
    rows = review_rows(44)  # 11 shards of 4
    unknown = write_job(tmp_path / "a", rows, limits={"max_requests_per_shard": 4})
    limit = job_tokens(cli, unknown) // 4  # the queue holds a quarter of the job
    known = write_job(tmp_path / "b", rows, limits={"max_requests_per_shard": 4, "enqueued_tokens": limit})

    learned_makespan, learned = simulated_run(unknown, "unknown", limit)
    configured_makespan, configured = simulated_run(known, "known", limit)

    for run_id in ("unknown", "known"):
        out = read_jsonl(runs_dir / run_id / "output.jsonl")
        assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert configured["token_limit_failures"] == 0
    assert learned["token_limit_failures"] == 1  # one refusal taught the limit: no storm
    assert learned["max_enqueued_tokens"]["gpt-4o-mini"] <= limit
    print(f"makespan: learned {learned_makespan:.0f} s, configured {configured_makespan:.0f} s")
    assert learned_makespan <= 1.2 * configured_makespan


def test_a_message_without_a_number_teaches_the_tokens_in_flight(cli, runs_dir, tmp_path):
    rows = review_rows(44)
    config = write_job(tmp_path / "a", rows, limits={"max_requests_per_shard": 4})
    limit = job_tokens(cli, config) // 4
    _, counts = simulated_run(config, "quiet", limit, message_has_number=False)
    out = read_jsonl(runs_dir / "quiet" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert counts["token_limit_failures"] == 1  # the working limit (what was in flight) is never refused
    (learned,) = json.loads((runs_dir / ".queue-limits.json").read_text())["limits"].values()
    assert "in flight" in learned["source"] and not learned["definitive"]
    assert 0 < learned["tokens"] <= limit
    status = cli.json("status", "quiet")["data"]
    assert status["queue"]["rejected"] == 1 and status["queue"]["limit"] == learned["tokens"]
    assert "in flight" in status["queue"]["source"]


def test_the_emulator_answers_in_the_services_wording_with_or_without_the_number(limited):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a review " * 1000}]}
    line = json.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": body})
    client = sdk(limited)
    limited.options.enqueued_token_limit = 1_000  # the request alone is over it
    messages = []
    for has_number in (True, False):
        limited.options.token_limit_message_has_number = has_number
        f = client.files.create(file=("x.jsonl", line.encode()), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert b.status == "validating"  # the create is answered 200; the batch fails at validation
        b = client.batches.retrieve(b.id)
        (error,) = b.errors.data
        assert b.status == "failed" and error.code == "token_limit_exceeded" and error.line is None and error.param is None
        messages.append(error.message)
    assert messages == [
        "Enqueued token limit reached for gpt-4o-mini in organization org-emulator. Limit: 1,000 enqueued tokens. "
        "Please try again once some in_progress batches have been completed.",
        "Enqueued token limit reached for gpt-4o-mini in organization org-emulator. "
        "Please try again once some in_progress batches have been completed.",
    ]


def test_the_limit_is_read_from_the_services_message_and_absent_without_a_number():
    from batchpipe.ops.queue_limits import parse_limit

    assert parse_limit("Enqueued token limit reached for gpt-4o-mini in organization org-xxx. Limit: 2,000,000 "
                       "enqueued tokens. Please try again once some in_progress batches have been completed.") == 2_000_000
    assert parse_limit("The number of enqueued tokens has surpassed the configured limit of 30K for the "
                       "deployment 'gpt-4o'.") == 30_000
    assert parse_limit("Enqueued token limit reached for gpt-4o-mini in organization org-xxx. Please try again "
                       "once some in_progress batches have been completed.") is None


def test_two_runs_ticked_together_share_the_learned_limit(cli, runs_dir, tmp_path, monkeypatch):
    first = write_job(tmp_path / "a", review_rows(12), limits={"max_requests_per_shard": 4})
    second = write_job(tmp_path / "b", review_rows(16)[4:], limits={"max_requests_per_shard": 4})
    shard = job_tokens(cli, first) // 3
    clock = ManualClock()
    options = replace(SLOW, enqueued_token_limit=int(shard * 2.5))  # two and a half shards
    with Emulator(options=options, port=0, clock=clock) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        cli("create", first, "--run", "one")
        cli("create", second, "--run", "two")
        for _ in range(200):
            if cli("tick", "--all", code=None).exit_code == 0:
                break
            clock.advance(POLL)
        counts = emu.counts
    for run_id, rows in (("one", review_rows(12)), ("two", review_rows(16)[4:])):
        out = read_jsonl(runs_dir / run_id / "output.jsonl")
        assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert counts["token_limit_failures"] == 1  # after the first refusal, the two together stayed within it
    assert counts["max_enqueued_tokens"]["gpt-4o-mini"] >= 2 * shard * 0.9  # and both used the queue


def test_a_single_request_bigger_than_the_queue_stops_with_its_row_named(cli, limited, runs_dir, tmp_path):
    rows = review_rows(8)
    rows[1]["text"] = "a very long review " * 200
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 4})
    short = write_job(tmp_path / "short", review_rows(1), limits={"max_requests_per_shard": 4})
    limited.options.enqueued_token_limit = job_tokens(cli, short) * 3  # three short rows, not the long one
    result = cli.json("run", config, "--run", "long", "--wait", "--poll-interval", "0", code=5)
    problems = result["data"]["too_big"]
    assert len(problems) == 1 and "row 2 (id r0002, input line 2)" in problems[0] and "shorten it" in problems[0]
    assert limited.counts["token_limit_failures"] == 1
    status = cli.json("status", "long")["data"]
    assert status["finished"] == 7  # every other row was answered
    ticked = cli.json("tick", "long", code=5)["data"]["runs"][0]
    assert ticked["outcome"] == "attention" and "row 2" in ticked["message"]
    checks = {c["name"]: c for c in cli.json("doctor", config)["data"]["checks"]}
    limit = limited.options.enqueued_token_limit
    assert checks["queue limit"]["detail"].startswith(f"gpt-4o-mini: {limit:,} tokens (the service's token_limit_exceeded")
    assert status["queue"] | {"learned_at": None, "learned_at_iso": None} == {
        "limit": limit, "source": "the service's token_limit_exceeded message", "learned_at": None, "rejected": 1,
        "waited_seconds": status["queue"]["waited_seconds"], "recut": ["00001.a1", "00002.a1"], "learned_at_iso": None}  # 4 rows > 3
    summary = cli("status", "long").stdout
    assert f"queue limit: {limit:,} enqueued tokens" in summary and "1 batch(es) refused for the queue" in summary


def test_a_lone_request_refused_without_a_number_stops_after_a_few_tries(cli, limited, runs_dir, tmp_path):
    rows = review_rows(4)
    rows[2]["text"] = "a very long review " * 200
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 4})
    short = write_job(tmp_path / "short", review_rows(1), limits={"max_requests_per_shard": 4})
    limited.options.enqueued_token_limit = job_tokens(cli, short) * 3
    limited.options.token_limit_message_has_number = False
    result = cli.json("run", config, "--run", "quiet", "--wait", "--poll-interval", "0", code=5)
    (problem,) = result["data"]["too_big"]
    assert problem.startswith("row 3 (id r0003, input line 3)") and "refused it for the queue 3 times" in problem
    assert cli.json("status", "quiet")["data"]["finished"] == 3
    refused = limited.counts["token_limit_failures"]
    assert refused <= 5  # the whole shard once, a half of it at most once, then the row alone 3 times
    cli("tick", "quiet", code=5)
    assert limited.counts["token_limit_failures"] == refused  # and never again


def test_a_refusal_below_the_stated_limit_by_our_counts_lowers_the_working_limit(tmp_path):
    from batchpipe.ops import queue_limits

    def learn(in_flight: int, shard: int) -> dict:
        return queue_limits.learn(tmp_path, "http://user:secret@host:1/v1/", "m", in_flight=in_flight,
                                  shard_tokens=shard, shard_requests=4, run_id="r",
                                  message="Enqueued token limit reached for m in organization o. Limit: 1,000 enqueued tokens.")

    assert learn(800, 300)["tokens"] == 1000  # over it by our counts: the stated limit
    entry = learn(500, 300)  # within it by our counts, yet refused: our counts run low
    assert entry["tokens"] == 799 and not entry["definitive"]
    assert queue_limits.in_force(tmp_path, "http://host:1/v1", "m", None).tokens == 799
    assert "secret" not in (tmp_path / ".queue-limits.json").read_text()  # credentials never on disk


def test_while_the_limit_is_unknown_one_run_waits_for_the_other_runs_probe(cli, runs_dir, tmp_path, monkeypatch):
    clock = ManualClock()
    with Emulator(options=SLOW, port=0, clock=clock) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        cli("run", write_job(tmp_path / "a", review_rows(8), limits={"max_requests_per_shard": 4}), "--run", "first",
            code=3)
        other = write_job(tmp_path / "b", review_rows(8)[4:], name="other")
        waiting = cli.json("submit", cli.json("create", other, "--run", "other")["data"]["run"])["data"]
        assert waiting["submitted"] == [] and "waiting for first/00001.a1" in waiting["queued"][0]
        assert emu.counts["batch_creates"] == 1  # first's second shard waits for its probe too
        clock.advance(SLOW.validating_seconds)  # the service has accepted the probe
        cli("tick", "--all", code=3)
        assert emu.counts["batch_creates"] == 2 and emu.counts["token_limit_failures"] == 0
