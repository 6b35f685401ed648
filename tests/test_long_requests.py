"""A request too long for the tokenizer (bpe-openai refuses texts of a million characters or
200,000 tokens) is counted by bytes with a note, not refused: only the service's own limits
(bytes per batch file, the enqueued-token limit) refuse a request."""

from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, review_rows, write_job

from batchpipe.pipeline.tokens import tokenizer_available


@pytest.fixture(autouse=True)
def _tokenizer() -> None:
    assert tokenizer_available(), "these tests need bpe-openai (pip install -e '.[test]')"

LONG_TEXTS = {
    "5MB": "word " * 1_000_000,  # 5,000,000 characters: over the tokenizer's character limit
    "250k-tokens": "é" * 250_000,  # 250,000 characters, one token each: over its token limit
}


@pytest.mark.parametrize("kind", LONG_TEXTS)
def test_create_and_estimate_count_a_text_too_long_for_the_tokenizer_by_bytes(cli, runs_dir, tmp_path, kind):
    rows = review_rows(3)
    rows[1]["text"] = LONG_TEXTS[kind]
    config = write_job(tmp_path / "job", rows)

    estimate = cli.json("estimate", config)["data"]
    long_bytes = len(rows[1]["text"].encode())
    assert estimate["requests"] == 3
    assert estimate["input_tokens"] >= long_bytes // 4  # the long text counts its bytes / 4
    note = next(w for w in estimate["warnings"] if "too long for the tokenizer" in w)
    assert note.startswith("1 text was too long for the tokenizer") and "UTF-8 bytes / 4" in note

    result = cli("create", config, "--run", "long")
    assert "Traceback" not in result.output
    assert "1 text was too long for the tokenizer" in result.stderr
    shard = json.loads((runs_dir / "long" / "state.json").read_text())["shards"][0]
    assert shard["requests"] == 3 and shard["est_tokens"] >= long_bytes // 4
    created = cli.json("create", config, "--run", "long")["data"]  # the run exists: nothing is counted
    assert created["created"] is False


def test_the_long_request_is_sent_and_answered(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(2)
    rows[0]["text"] = LONG_TEXTS["5MB"]
    config = write_job(tmp_path / "job", rows, params={"max_tokens": 20})
    cli("run", config, "--run", "sent", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "sent" / "output.jsonl")
    assert [r["verdict"].startswith("echo: Review") for r in out] == [True, True]
    assert emulator.counts["batch_creates"] == 1


def test_a_request_over_the_enqueued_token_limit_is_still_refused(cli, runs_dir, tmp_path):
    rows = review_rows(2)
    rows[1]["text"] = LONG_TEXTS["5MB"]
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 5, "enqueued_tokens": 1_000_000})
    result = cli("create", config, code=2)
    assert "line 2 (row id r0002): the request is" in result.stderr
    assert "more than limits.enqueued_tokens (1000000)" in result.stderr
    assert "counted by bytes" in result.stderr  # the figure is an estimate, and says so
