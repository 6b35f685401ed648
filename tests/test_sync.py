"""Sync mode (issue 7, feature 7): the same requests to the regular endpoint, journaled as they
are answered, merged into the same output file as a batch run's, byte for byte.

Everything runs against the emulator's synchronous endpoints through the real `openai` client;
what the server saw (its counters) proves that nothing went to /files or /batches, that no
request was answered twice, and how many requests were in flight at once.
"""

from __future__ import annotations

import json

import pytest
from conftest import batchpipe, ctrl_c_when, expected_answer, read_jsonl, review_rows, sdk, write_job

from batchpipe import crash
from batchpipe.emulator import answer_for
from batchpipe.emulator.server import build_parser, options_from_args
from batchpipe.ops.ratelimit import RateGate, parse_duration


def rows_with_failures() -> list[dict]:
    rows = review_rows(12)
    rows[2]["text"] += " [[fail:400]]"  # a permanent failure: one attempt, its error kept
    rows[6]["text"] += " [[fail:500]]"  # a server error: retried, as new attempts, up to max_attempts
    return rows


def batch_free(counts: dict) -> bool:
    """The server saw nothing but synchronous requests: no upload, no batch, no listing."""
    return (counts["uploads"] == counts["batch_creates"] == counts["batch_list_pages"] == counts["file_list_pages"] == 0
            and counts["requests"] == counts["sync_requests"] + counts["transient_errors"])


def test_a_sync_run_writes_the_same_output_file_as_a_batch_run(cli, emulator, runs_dir, tmp_path):
    emulator.options.retry_after_ms = 1  # the 500 row's answers say when to try again: soon
    config = write_job(tmp_path / "job", rows_with_failures())
    cli("run", config, "--run", "as-batch", "--wait", "--poll-interval", "0", code=6)
    batch_counts = emulator.counts

    cli("run", config, "--run", "as-sync", "--sync", code=6)  # done in one go: no --wait needed

    sync_output = (runs_dir / "as-sync" / "output.jsonl").read_bytes()
    assert sync_output == (runs_dir / "as-batch" / "output.jsonl").read_bytes()
    rows = [json.loads(line) for line in sync_output.splitlines()]
    assert rows[6]["verdict_error"]["status_code"] == 500 and rows[6]["verdict_attempts"] == 3
    assert rows[2]["verdict_error"]["status_code"] == 400 and rows[2]["verdict_attempts"] == 1
    counts = emulator.counts
    # the sync run uploaded and created nothing
    assert (counts["uploads"], counts["batch_creates"]) == (batch_counts["uploads"], batch_counts["batch_creates"])
    assert counts["sync_answered"] == 10 and counts["sync_duplicate_answers"] == 0
    state = json.loads((runs_dir / "as-sync" / "state.json").read_text())
    assert state["run"]["mode"] == "sync"
    assert {(s["mode"], s["batch"], s["upload"]) for s in state["shards"]} == {("sync", None, None)}
    # the 500 row went as two more attempts of its shard, each sent in sync mode too
    assert sorted(s["id"] for s in state["shards"]) == ["00001.a1", "00002.a1", "00002.a2", "00002.a3", "00003.a1"]


def test_mode_sync_in_the_config_never_calls_files_or_batches(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(7), mode="sync", sync={"max_workers": 2})
    result = cli.json("run", config, "--run", "cfg-sync")
    assert result["data"]["done"] and result["data"]["result_counts"]["ok"] == 7
    assert batch_free(emulator.counts)
    out = read_jsonl(runs_dir / "cfg-sync" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in review_rows(7)]
    snapshot = (runs_dir / "cfg-sync" / "config.yaml").read_text()
    assert "mode: sync" in snapshot and "max_workers: 2" in snapshot
    # the batch commands refuse a sync run: its journals hold answers a batch would pay for again
    refused = cli("submit", "cfg-sync", code=2)
    assert "sync mode" in refused.output


def test_429s_and_5xx_are_retried_and_each_request_is_answered_once(cli, emulator, runs_dir, tmp_path):
    emulator.options.retry_after_ms = 1
    emulator.options.sync_rate_limit_first = 4  # the first four answers: 429 with retry-after
    emulator.options.transient_error_rate = 0.2  # then 503 / 500 / 429 now and then
    emulator.options.fault_seed = 3
    config = write_job(tmp_path / "job", review_rows(12), mode="sync", sync={"max_workers": 3})
    cli("run", config, "--run", "bumpy")
    counts = emulator.counts
    assert counts["sync_rate_limited"] >= 4 and counts["transient_errors"] > 0
    assert counts["sync_answered"] == 12 and counts["sync_duplicate_answers"] == 0
    assert batch_free(counts)
    out = read_jsonl(runs_dir / "bumpy" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in review_rows(12)]
    # retried within the pass, after the service's Retry-After: not as new attempts of the shard
    assert {r["verdict_attempts"] for r in out} == {1}


def test_max_workers_bounds_the_requests_in_flight(cli, emulator, tmp_path):
    emulator.options.sync_latency_seconds = 0.05  # each answer takes a while, so requests overlap
    config = write_job(tmp_path / "job", review_rows(15), mode="sync", sync={"max_workers": 3},
                       limits={"max_requests_per_shard": 50})
    cli("run", config, "--run", "workers")
    assert emulator.counts["sync_answered"] == 15
    assert 2 <= emulator.counts["sync_max_concurrency"] <= 3


def test_the_services_rate_limit_headers_are_followed(cli, emulator, tmp_path):
    # 3 requests per 0.3 s: without following x-ratelimit-remaining/reset, requests sent back to
    # back would be refused with 429
    emulator.options.rate_limit_requests = 3
    emulator.options.rate_limit_window_seconds = 0.3
    config = write_job(tmp_path / "job", review_rows(8), mode="sync", sync={"max_workers": 1})
    cli("run", config, "--run", "paced")
    assert emulator.counts["sync_answered"] == 8
    assert emulator.counts["sync_rate_limited"] == 0


@pytest.mark.parametrize("crash_at", ["sync:after_answer:5", "sync:after_result_file:1", "ledger:after_commit:3"])
def test_a_killed_sync_run_resumes_without_asking_anything_twice(cli, emulator, runs_dir, tmp_path, crash_at):
    config = write_job(tmp_path / "job", review_rows(12), mode="sync", sync={"max_workers": 1})
    killed = batchpipe("run", str(config), "--run", "killed", crash_at=crash_at)
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    answered_before = emulator.counts["sync_answered"]
    assert 0 < answered_before < 12 or crash_at.startswith("ledger")
    if crash_at == "sync:after_answer:5":  # status counts the answers journaled so far
        status = cli.json("status", "killed")["data"]
        assert status["finished"] == 5 and status["shards"][0]["mode"] == "sync"

    cli("run", "killed")  # the run is in sync mode: no --sync needed to go on

    counts = emulator.counts
    assert counts["sync_answered"] == 12 and counts["sync_duplicate_answers"] == 0
    assert batch_free(counts)
    out = read_jsonl(runs_dir / "killed" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in review_rows(12)]
    assert not list((runs_dir / "killed" / "results").glob("*.journal.jsonl"))  # every journal became a result file


def test_a_kill_loses_at_most_the_requests_in_flight(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(12), mode="sync", sync={"max_workers": 3},
                       limits={"max_requests_per_shard": 50})
    killed = batchpipe("run", str(config), "--run", "killed", crash_at="sync:after_answer:4")
    assert killed.returncode == crash.EXIT_CODE
    journal = runs_dir / "killed" / "results" / "00001.a1.journal.jsonl"
    assert len(journal.read_bytes().splitlines()) == 4
    cli("run", "killed")
    counts = emulator.counts
    assert counts["sync_duplicate_answers"] <= 3  # what was in flight at the kill, and nothing else
    assert len(read_jsonl(runs_dir / "killed" / "output.jsonl")) == 12


def test_the_emulator_answers_synchronously_as_in_a_batch(emulator):
    client = sdk(emulator)
    bodies = {
        "/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        "/responses": {"model": "gpt-4o-mini", "input": "hello there"},
        "/embeddings": {"model": "text-embedding-3-small", "input": "a text"},
        "/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "once"},
    }
    for path, body in bodies.items():
        raw = client.with_options(max_retries=0).post(path, cast_to=object, body=body)
        expected = answer_for("/v1" + path, body)
        for key in ("created", "created_at"):
            raw.pop(key, None), expected.pop(key, None)
        assert raw == expected
    answered = client.chat.completions.with_raw_response.create(**bodies["/chat/completions"])
    assert answered.headers["x-ratelimit-limit-requests"] == "10000"
    assert int(answered.headers["x-ratelimit-remaining-requests"]) == 10000 - 5
    assert emulator.counts["sync_answered"] == 5

    emulator.options.sync_rate_limit_first = 7  # the switch: the next two requests are answered 429
    emulator.options.retry_after_ms = 1500
    import openai
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**bodies["/chat/completions"])
    assert refused.value.response.headers["retry-after-ms"] == "1500"
    assert refused.value.response.headers["retry-after"] == "2"
    assert emulator.counts["sync_rate_limited"] == 1


def test_the_emulator_switches_have_command_line_flags(cli):
    args = build_parser().parse_args(["--sync-rate-limit-first", "3", "--sync-rate-limit-share", "0.5",
                                      "--sync-latency-seconds", "0.1", "--rate-limit-requests", "60"])
    options = options_from_args(args)
    assert (options.sync_rate_limit_first, options.sync_rate_limit_share, options.sync_latency_seconds,
            options.rate_limit_requests) == (3, 0.5, 0.1, 60)
    import typer.main

    from batchpipe.cli import app

    flags = {opt for p in typer.main.get_command(app).commands["emulator"].params for opt in p.opts}
    assert {"--sync-rate-limit-first", "--sync-rate-limit-share", "--sync-latency-seconds"} <= flags


def test_our_own_requests_per_minute_limit_paces_the_sends():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    gate = RateGate(requests_per_minute=60, tokens_per_minute=600, clock=lambda: now[0], sleep=sleep)
    for _ in range(60):
        gate.acquire(tokens=10)  # a full minute's worth goes at once
    assert slept == []
    gate.acquire(tokens=10)  # the 61st waits for the bucket to refill: one request a second
    assert sum(slept) == pytest.approx(1.0)
    gate.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"})
    before = sum(slept)
    gate.acquire(tokens=1)  # the service said nothing remains for 6 minutes
    assert sum(slept) - before == pytest.approx(360.0)


def test_reset_durations_are_read_as_the_service_writes_them():
    assert [parse_duration(t) for t in ("20ms", "1.5s", "6m0s", "1h2m3s", "2", "bad", None)] == [
        0.02, 1.5, 360.0, 3723.0, 2.0, None, None]


PRICY = {"input_per_million": 1000.0, "output_per_million": 1000.0}  # big enough figures to compare


def test_sync_mode_pays_and_budgets_the_regular_endpoints_price(cli, emulator, runs_dir, tmp_path):
    # 12 requests, worst case (every max_tokens used) about $0.51 at these batch prices: a budget
    # of $0.75 lets the batch run send all of it, but not the sync run (twice the price)
    batch = write_job(tmp_path / "batch", review_rows(12), pricing=PRICY, limits={"max_requests_per_shard": 5})
    cli("run", batch, "--run", "pb", "--wait", "--poll-interval", "0")
    sync = write_job(tmp_path / "sync", review_rows(12), pricing=PRICY, mode="sync",
                     limits={"max_requests_per_shard": 5})
    cli("run", sync, "--run", "ps")
    batch_cost = cli.json("status", "pb")["data"]["cost_usd"]
    assert cli.json("status", "ps")["data"]["cost_usd"] == pytest.approx(2 * batch_cost)

    budget = write_job(tmp_path / "budget", review_rows(12), pricing=PRICY, mode="sync",
                       limits={"max_requests_per_shard": 5, "budget_usd": 0.75})
    held = cli("run", budget, "--run", "pbud", code=5)
    assert "over the budget" in held.output
    shards = cli.json("status", "pbud")["data"]["shards"]
    states = [s["state"] for s in shards]
    assert states[0] == "merged" and "prepared" in states  # what fits is sent; the rest waits for a person
    # the same budget in batch mode sends it all (at half the price)
    cli("run", write_job(tmp_path / "bb", review_rows(12), pricing=PRICY,
                         limits={"max_requests_per_shard": 5, "budget_usd": 0.75}), "--run", "pbb", "--wait",
        "--poll-interval", "0")


def test_ctrl_c_keeps_every_answer_already_sent_for(cli, runs_dir, tmp_path, monkeypatch):
    from batchpipe.emulator import Emulator, EmulatorOptions

    # slow answers, so that Ctrl-C comes while requests are in flight
    with Emulator(EmulatorOptions(sync_latency_seconds=0.3), port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        config = write_job(tmp_path / "job", review_rows(20), mode="sync", sync={"max_workers": 3},
                           limits={"max_requests_per_shard": 50})
        code, stderr = ctrl_c_when(lambda: emu.counts["sync_answered"] >= 4, "run", str(config), "--run", "intr")
        assert code == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        journal = runs_dir / "intr" / "results" / "00001.a1.journal.jsonl"
        # every request the server answered (those in flight at Ctrl-C included) is in the journal
        assert len(journal.read_bytes().splitlines()) == emu.counts["sync_answered"] < 20

        cli("run", "intr")
        assert emu.counts["sync_answered"] == 20 and emu.counts["sync_duplicate_answers"] == 0
        assert len(read_jsonl(runs_dir / "intr" / "output.jsonl")) == 20


def test_tick_moves_a_sync_run_in_sync_mode(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(6), mode="sync")
    cli("create", config, "--run", "cron-sync")
    cli("tick", "cron-sync")  # what cron does: one pass, which for a sync run sends everything
    assert len(read_jsonl(runs_dir / "cron-sync" / "output.jsonl")) == 6
    assert batch_free(emulator.counts) and emulator.counts["sync_answered"] == 6


def test_sync_is_refused_while_batches_of_the_run_are_at_the_service(cli, slow_emulator, tmp_path):
    config = write_job(tmp_path / "job", review_rows(6))
    cli("create", config, "--run", "mixed")
    cli("submit", "mixed")
    refused = cli("run", "mixed", "--sync", code=2)
    assert "Batch API" in refused.output and slow_emulator.counts["sync_requests"] == 0


def test_an_answer_that_is_not_the_api_stops_the_run_and_nothing_is_journaled(cli, emulator, runs_dir, tmp_path):
    emulator.options.html_answer = True  # a proxy's sign-in page instead of the API
    config = write_job(tmp_path / "job", review_rows(4), mode="sync")
    stopped = cli("run", config, "--run", "proxied", code=1)
    assert "text/html, not the OpenAI API" in stopped.output and "Traceback" not in stopped.output
    assert not (runs_dir / "proxied" / "results" / "00001.a1.journal.jsonl").exists()
    emulator.options.html_answer = False
    cli("run", "proxied")  # fixed: it goes on
    assert len(read_jsonl(runs_dir / "proxied" / "output.jsonl")) == 4


def test_estimate_prices_a_sync_job_at_the_regular_endpoints_price(cli, tmp_path):
    batch = cli.json("estimate", write_job(tmp_path / "b", review_rows(6)))["data"]
    sync = cli.json("estimate", write_job(tmp_path / "s", review_rows(6), mode="sync"))["data"]
    assert sync["input_tokens"] == batch["input_tokens"]
    assert sync["cost_usd_worst_case"] == pytest.approx(2 * batch["cost_usd_worst_case"], abs=2e-6)  # (rounded to 1e-6)
    assert sync["price"]["input_per_million"] == 2 * batch["price"]["input_per_million"]
    assert "sync mode" in sync["price"]["source"]
