"""`list --remote`: the provider's recent batches, each with the batchpipe run and shard it was made for
(from the metadata tag batchpipe writes), or "not ours"."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import INSTANT, review_rows, sdk, write_job

from batchpipe.emulator import Emulator


@pytest.fixture
def busy_emulator(monkeypatch):
    """An emulator whose batch list already holds one batch of another team."""
    with Emulator(options=replace(INSTANT, foreign_batches=1), port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        yield emu


def test_ours_and_a_foreign_batch(cli, busy_emulator, tmp_path):
    config = write_job(tmp_path, review_rows(7))  # two shards
    cli("run", config, "--run", "mine", "--wait", "--poll-interval", "0")

    data = cli.json("list", "--remote")["data"]["batches"]
    assert len(data) == 3
    by_tag = {b["tag"]: b for b in data}
    assert set(by_tag) == {"mine 00001.a1", "mine 00002.a1", "not ours"}
    first = by_tag["mine 00001.a1"]
    assert (first["run"], first["shard"], first["run_here"]) == ("mine", "00001.a1", True)
    assert first["status"] == "completed" and first["endpoint"] == "/v1/chat/completions"
    assert first["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert first["created_at_iso"] is not None
    foreign = by_tag["not ours"]
    assert foreign["run"] is None and foreign["request_counts"]["total"] == 1
    # newest first: ours were made after the foreign one
    assert data[-1]["tag"] == "not ours"

    table = cli("list", "--remote").output
    for text in ("mine 00001.a1", "mine 00002.a1", "not ours", "completed", "/v1/chat/completions", foreign["id"]):
        assert text in table, text


def test_limit_and_a_tagged_batch_of_a_run_not_here(cli, busy_emulator, tmp_path):
    client = sdk(busy_emulator)
    line = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
            b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n')
    up = client.files.create(file=("elsewhere.jsonl", line), purpose="batch")
    client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h",
                          metadata={"batchpipe_run": "elsewhere", "batchpipe_shard": "00004.a2"})

    data = cli.json("list", "--remote", "--limit", "1")["data"]["batches"]
    assert len(data) == 1
    assert (data[0]["tag"], data[0]["run_here"]) == ("elsewhere 00004.a2", False)
    assert "not in this runs dir" in cli("list", "--remote").output
    assert cli("list", "--remote", "--limit", "0", code=2)


def test_without_a_key_it_says_what_to_set(cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = cli("list", "--remote", code=2).output
    assert "OPENAI_API_KEY" in out and "Traceback" not in out
