"""The provider's enqueued-token queue when the config names no limit (issue 8, issue 11 item 5):
the limit is learned from the service's `token_limit_exceeded`, shared by the runs of a runs dir,
and shards too big for it are re-cut instead of being rejected forever."""

from __future__ import annotations

import json

import pytest
from conftest import INSTANT, expected_answer, read_jsonl, review_rows, write_job

from batchpipe.emulator import Emulator
from dataclasses import replace


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
