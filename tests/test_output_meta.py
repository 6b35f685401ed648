"""`output.meta: true`: every row carries `<key>_usage` (the tokens the service reported for its
answer, kept per request in the run's index) and `<key>_finish_reason`."""

from __future__ import annotations

import json
import os

from conftest import read_jsonl, review_rows, write_job


def reported_usage(results_dir) -> dict[str, dict]:
    """custom_id -> the usage the service reported, read from the downloaded result files."""
    found = {}
    for path in results_dir.glob("*.output.jsonl"):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            found[item["custom_id"]] = item["response"]["body"]["usage"]
    return found


def test_meta_writes_usage_and_finish_reason_on_every_row(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(4)
    rows[3]["text"] = "refused [[fail:400]]"
    rows[2]["text"] = "a much longer review that goes on and on past the small output limit of this job"
    config = write_job(tmp_path, rows, params={"max_tokens": 12}, output={"key": "verdict", "meta": True})
    cli("run", config, "--run", "meta", "--wait", "--poll-interval", "0", code=6)
    out = read_jsonl(runs_dir / "meta" / "output.jsonl")
    usage = reported_usage(runs_dir / "meta" / "results")
    for row in out[:3]:
        assert row["verdict_usage"] == usage[row["review_id"]]  # as the service said it, per row
        assert row["verdict_usage"]["completion_tokens"] > 0
    assert [r["verdict_finish_reason"] for r in out] == ["stop", "stop", "length", None]
    assert out[3]["verdict_usage"] is None  # the request failed: nothing was reported (or billed)
    # what the rows say adds up to what the run reports
    data = cli.json("status", "meta")["data"]
    assert sum(r["verdict_usage"]["completion_tokens"] for r in out[:3]) == data["usage"]["output_tokens"]

    # the index is derived data: rebuilt from the run's files, it gives the same rows
    before = (runs_dir / "meta" / "output.jsonl").read_bytes()
    os.remove(runs_dir / "meta" / "index.sqlite")
    os.remove(runs_dir / "meta" / "output.jsonl")
    cli("process", "meta", code=6)
    assert (runs_dir / "meta" / "output.jsonl").read_bytes() == before


def test_without_meta_rows_are_as_before(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path, review_rows(2))
    cli("run", config, "--run", "plain", "--wait", "--poll-interval", "0")
    for row in read_jsonl(runs_dir / "plain" / "output.jsonl"):
        assert set(row) == {"review_id", "stars", "text", "verdict", "verdict_attempts"}
    assert "meta:" not in (runs_dir / "plain" / "config.yaml").read_text()


def test_an_index_from_before_usage_was_kept_still_serves(cli, emulator, runs_dir, tmp_path):
    """A run whose index was written by an earlier batchpipe (no usage column) is processed as before."""
    import sqlite3

    cli("run", write_job(tmp_path, review_rows(3)), "--run", "old", "--wait", "--poll-interval", "0")
    before = (runs_dir / "old" / "output.jsonl").read_bytes()
    db = sqlite3.connect(runs_dir / "old" / "index.sqlite")
    db.executescript(  # the tables as they were before the usage column (one row per request)
        "DROP TABLE results; DROP TABLE shard_files; DROP TABLE requests; PRAGMA user_version = 0;"
        "CREATE TABLE requests (custom_id TEXT PRIMARY KEY, row_no INTEGER NOT NULL UNIQUE, line_no INTEGER NOT NULL);"
        "CREATE TABLE shard_lines (file TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL,"
        " PRIMARY KEY (file, line));"
        "CREATE TABLE results (custom_id TEXT PRIMARY KEY, shard TEXT NOT NULL, attempt INTEGER NOT NULL,"
        " ok INTEGER NOT NULL, retryable INTEGER NOT NULL, value BLOB, error BLOB, finish_reason TEXT);")
    db.close()
    os.remove(runs_dir / "old" / "output.jsonl")
    cli("process", "old")
    assert (runs_dir / "old" / "output.jsonl").read_bytes() == before
