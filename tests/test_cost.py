"""Actual cost: the tokens the service reported, at the run's price, shown by `status`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import review_rows, write_job

from batchpipe.pricing import format_usd

PRICING = {"input_per_million": 1.0, "output_per_million": 2.0}


def reported_tokens(results: Path, pattern: str = "*.output.jsonl") -> tuple[int, int]:
    """(input, output) tokens over the successful lines of the downloaded output files."""
    tokens_in = tokens_out = 0
    for path in sorted(results.glob(pattern)):
        for line in path.read_text(encoding="utf-8").splitlines():
            response = json.loads(line)["response"]
            if response["status_code"] == 200:
                tokens_in += response["body"]["usage"]["prompt_tokens"]
                tokens_out += response["body"]["usage"]["completion_tokens"]
    return tokens_in, tokens_out


def dollars(tokens_in: int, tokens_out: int) -> float:
    """USD at PRICING: $1 per 1M input tokens, $2 per 1M output tokens."""
    return (tokens_in * 1.0 + tokens_out * 2.0) / 1_000_000


def failing_rows() -> list[dict]:
    rows = review_rows(12)
    rows[2]["text"] = "broken [[fail:400]]"  # permanent: one attempt, in shard 1's error file
    rows[7]["text"] = "server trouble [[fail:500]]"  # retried: shard 2 gets attempts 2 and 3
    return rows


def test_status_cost_is_the_reported_usage_at_the_config_price(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", failing_rows(), pricing=PRICING)
    cli("run", config, "--run", "priced", "--wait", "--poll-interval", "0", code=6)  # done, 2 rows failed
    results = runs_dir / "priced" / "results"

    data = cli.json("status", "priced")["data"]
    tokens_in, tokens_out = reported_tokens(results)
    assert tokens_in > 0 and tokens_out > 0
    assert data["usage"] == {"input_tokens": tokens_in, "output_tokens": tokens_out}
    assert data["cost_usd"] == pytest.approx(dollars(tokens_in, tokens_out), abs=1e-12)
    assert data["cost_note"] is None
    assert data["price_source"].startswith("pricing: in ")

    shards = {s["shard"]: s for s in data["shards"]}
    assert sorted(shards) == ["00001.a1", "00002.a1", "00002.a2", "00002.a3", "00003.a1"]
    assert sum(s["cost_usd"] for s in shards.values()) == pytest.approx(data["cost_usd"], abs=1e-12)
    for shard_id, s in shards.items():
        tin, tout = reported_tokens(results, f"{shard_id}.output.jsonl")
        assert s["usage"] == {"input_tokens": tin, "output_tokens": tout}
        assert s["cost_usd"] == pytest.approx(dollars(tin, tout), abs=1e-12)

    # failed requests are not billed: their shards' error files hold them, and they add nothing
    errors = [json.loads(line)["custom_id"] for p in results.glob("*.errors.jsonl") for line in p.open()]
    assert sorted(set(errors)) == ["r0003", "r0008"]
    assert shards["00001.a1"]["merged"]["failed"] == 1 and shards["00001.a1"]["cost_usd"] > 0
    assert shards["00002.a2"]["cost_usd"] == 0 and shards["00002.a3"]["cost_usd"] == 0  # only the failing request

    # the batch-level usage of a finished batch agrees with the line sums recorded at merge
    state = json.loads((runs_dir / "priced" / "state.json").read_text())
    for s in state["shards"]:
        assert s["usage"] == {k: s["batch"]["usage"][k] for k in ("input_tokens", "output_tokens")}


def test_cost_before_merge_comes_from_the_batch_usage(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(7), pricing=PRICING)
    cli("create", config, "--run", "early")
    created = cli.json("status", "early")["data"]
    assert created["cost_usd"] == 0 and created["cost_note"] is None  # nothing sent, nothing spent
    assert [s["cost_usd"] for s in created["shards"]] == [None, None]  # no usage reported yet

    cli("submit", "early")
    running = cli.json("status", "early")["data"]  # the instant emulator: the batches are complete
    assert all(s["state"] == "submitted" for s in running["shards"])
    assert running["cost_usd"] > 0

    cli("download", "early")
    cli("process", "early")
    merged = cli.json("status", "early")["data"]
    assert all(s["state"] == "merged" for s in merged["shards"])
    assert merged["cost_usd"] == pytest.approx(running["cost_usd"], abs=1e-12)
    assert merged["cost_usd"] == pytest.approx(dollars(*reported_tokens(runs_dir / "early" / "results")), abs=1e-12)


def test_status_table_shows_the_cost_column_and_total(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", failing_rows(), pricing=PRICING)
    cli("run", config, "--run", "table", "--wait", "--poll-interval", "0", code=6)  # done, 2 rows failed
    data = cli.json("status", "table")["data"]

    out = cli("status", "table").stdout
    header = next(line for line in out.splitlines() if "shard" in line and "state" in line)
    assert "cost" in header
    assert f"cost so far: {format_usd(data['cost_usd'])}" in out
    for s in data["shards"]:
        row = next(line for line in out.splitlines() if s["shard"] in line)
        assert format_usd(s["cost_usd"]) in row


def test_a_model_without_a_price_does_not_break_status(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(4), model="gpt-4o-mini-custom")
    cli("run", config, "--run", "unpriced", "--wait", "--poll-interval", "0")

    data = cli.json("status", "unpriced")["data"]
    assert data["done"]
    assert data["cost_usd"] is None
    assert "no price known for model 'gpt-4o-mini-custom'" in data["cost_note"]
    assert data["usage"]["input_tokens"] > 0  # the tokens are still there, for whoever knows the price
    assert all(s["cost_usd"] is None for s in data["shards"])

    out = cli("status", "unpriced").stdout
    assert "cost unknown" in out and "gpt-4o-mini-custom" in out


def test_the_progress_line_says_what_was_spent_so_far():
    from batchpipe.ops import Progress
    from batchpipe.render import describe_progress

    shards = {"prepared": 0, "uploaded": 0, "submitted": 1, "completed": 0, "merged": 1}
    running = Progress(10, 5, 0, shards, False, {"in_progress": 1}, 1.0, None, cost_usd=0.0123)
    assert describe_progress(running) == "1/2 shards merged · 1 in_progress · $0.0123 so far"
    assert "so far" not in describe_progress(Progress(10, 0, 0, shards, False, {}, None, None))  # nothing known yet
    finished = Progress(10, 10, 0, {**shards, "submitted": 0, "merged": 2}, True, {}, 1.0, None, cost_usd=1.5)
    assert describe_progress(finished) == "done · $1.50 spent"
