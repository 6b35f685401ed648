"""Budget and queue: submit never lets the worst case pass the budget, and keeps the provider's
enqueued-token queue full without overfilling it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import expected_answer, read_jsonl, review_rows, write_job

from batchpipe.emulator import Emulator, EmulatorOptions

PRICING = {"input_per_million": 100.0, "output_per_million": 200.0}  # dear, so a small job costs cents


def billed_usd(runs_dir: Path, run_id: str) -> float:
    """What the service's own usage figures say the run cost, from the raw output files."""
    total = 0.0
    for path in (runs_dir / run_id / "results").glob("*.output.jsonl"):
        for line in path.read_text().splitlines():
            usage = json.loads(line)["response"]["body"]["usage"]
            total += (usage["prompt_tokens"] * PRICING["input_per_million"]
                      + usage["completion_tokens"] * PRICING["output_per_million"]) / 1e6
    return total


def test_a_budget_smaller_than_the_job_is_never_exceeded(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(20)
    config = write_job(tmp_path / "job", rows, pricing=PRICING, limits={"max_requests_per_shard": 4})
    worst = cli.json("estimate", config)["data"]["cost_usd_worst_case"]
    budget = round(worst * 0.45, 4)  # a bit under half the job's worst case
    cli("create", config, "--run", "b")
    result = cli.json("run", "b", "--wait", "--poll-interval", "0", "--budget", str(budget), code=5)
    held = result["data"]["over_budget"]
    assert held and all("over the budget" in h for h in held)
    assert billed_usd(runs_dir, "b") <= budget
    sent = emulator.counts["uploads"]
    assert 0 < sent < 5  # some shards went, the rest were held back before upload

    # tick says it needs a person, and sends nothing more
    ticked = cli.json("tick", "b", code=5)["data"]["runs"][0]
    assert ticked["outcome"] == "attention" and "--budget" in ticked["message"]
    assert emulator.counts["uploads"] == sent

    # a person raises the budget: the rest goes, and the whole job is answered
    cli("run", "b", "--wait", "--poll-interval", "0", "--budget", str(worst * 2))
    out = read_jsonl(runs_dir / "b" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]


def test_the_budget_comes_from_the_config_too(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(4), pricing=PRICING, limits={"budget_usd": 0.000001})
    result = cli("submit", cli.json("create", config)["data"]["run"], code=5)
    assert "held back" in result.stderr and "over the budget of" in result.stderr
    assert emulator.counts["uploads"] == 0


def test_the_queue_is_kept_full_never_overfilled(cli, runs_dir, tmp_path, monkeypatch):
    rows = review_rows(30)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3})
    total = cli.json("estimate", config)["data"]["input_tokens"]
    limit = total // 5  # the queue holds a fifth of the job
    queued = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3, "enqueued_tokens": limit})
    # The service enforces the same limit, and its batches stay queued for a while.
    options = EmulatorOptions(validating_seconds=0.05, in_progress_seconds=0.25, finalizing_seconds=0.05,
                              enqueued_token_limit=limit)
    with Emulator(options=options, port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        cli("run", queued, "--run", "q", "--wait", "--poll-interval", "0.02")
        counts = emu.counts
    out = read_jsonl(runs_dir / "q" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert counts["token_limit_failures"] == 0  # never overfilled
    high_water = counts["max_enqueued_tokens"]["gpt-4o-mini"]
    assert 0.7 * limit <= high_water <= limit  # and used close to its limit
    status = cli.json("status", "q")["data"]
    assert {s["remote_status"] for s in status["shards"]} == {"completed"}  # no batch left failed
