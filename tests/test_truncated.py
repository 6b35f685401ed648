"""Answers cut at the output limit: counted per run, marked in their rows, shown by `status` and
the summaries, and failed on request (`output.truncated: fail`) without being retried on their own.

The emulator cuts an answer at the request's max_tokens (max_output_tokens for responses) as the
service does; an answer is `echo: <user message>`, about len/4 tokens, so a long text is cut and
a short one is not.
"""

from __future__ import annotations

import sqlite3

import pytest
from conftest import expected_answer, read_jsonl, review_rows, write_job

LIMIT = 12  # tokens: the emulator cuts an answer to LIMIT * 4 characters


def mixed_rows() -> list[dict]:
    """Six reviews; rows 2 and 5 are long enough for their answers to be cut at LIMIT tokens."""
    rows = review_rows(6)
    for i in (1, 4):
        rows[i]["text"] = "a long and winding review " * 4
    return rows


def job(tmp_path, **overrides):
    return write_job(tmp_path / "job", mixed_rows(), params={"temperature": 0, "max_tokens": LIMIT},
                     limits={"max_requests_per_shard": 3}, **overrides)


def test_truncated_answers_are_kept_counted_and_marked(cli, emulator, runs_dir, tmp_path):
    rows = mixed_rows()
    result = cli("run", job(tmp_path), "--run", "t", "--wait", "--poll-interval", "0")
    assert "(6 answered, 0 failed, 2 truncated)" in result.stdout
    assert "2 answer(s) were cut at the output limit, kept as the answer" in result.stderr
    assert "verdict_finish_reason: length" in result.stderr

    out = read_jsonl(runs_dir / "t" / "output.jsonl")
    for i, row in enumerate(out):
        full = expected_answer(rows[i])
        if i in (1, 4):
            assert row["verdict"] == full[: LIMIT * 4] != full
            assert row["verdict_finish_reason"] == "length"
        else:
            assert row["verdict"] == full and "verdict_finish_reason" not in row  # "stop" is not written
        assert "verdict_error" not in row and row["verdict_attempts"] == 1

    status = cli.json("status", "t")["data"]
    assert status["truncated"] == 2 and status["failed"] == 0
    assert status["result_counts"] == {"ok": 6, "failed": 0, "truncated": 2}
    assert sorted(s["merged"]["truncated"] for s in status["shards"]) == [1, 1]
    table = cli("status", "t")
    assert "6/6 requests finished, 0 failed, 2 truncated" in table.stdout
    assert "cut at the output limit" in table.stderr
    processed = cli.json("process", "t")["data"]
    assert (processed["ok"], processed["failed"], processed["truncated"]) == (6, 0, 2)
    assert emulator.counts["batch_creates"] == 2  # kept answers are not sent again


def test_a_run_without_truncation_says_nothing_about_it(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(3), params={"max_tokens": 100})
    result = cli("run", config, "--run", "clean", "--wait", "--poll-interval", "0")
    assert "(3 answered, 0 failed)" in result.stdout and "truncated" not in result.stdout + result.stderr
    assert all("verdict_finish_reason" not in r for r in read_jsonl(runs_dir / "clean" / "output.jsonl"))
    assert cli.json("status", "clean")["data"]["truncated"] == 0


def test_fail_policy_fails_truncated_rows_without_retrying_them(cli, emulator, runs_dir, tmp_path):
    config = job(tmp_path, output={"key": "verdict", "truncated": "fail"})
    result = cli("run", config, "--run", "t", "--wait", "--poll-interval", "0", code=6)
    assert "(4 answered, 2 failed, 2 truncated)" in result.stdout
    assert "counted as failed (output.truncated: fail)" in result.stderr
    assert "`batchpipe process t --retry-failed` sends them again" in result.stderr

    out = read_jsonl(runs_dir / "t" / "output.jsonl")
    for i in (1, 4):
        assert out[i]["verdict"] is None
        assert out[i]["verdict_error"]["code"] == "truncated"
        assert out[i]["verdict_finish_reason"] == "length"
        assert out[i]["verdict_attempts"] == 1  # the same max_tokens would cut it again: not retried
    assert all(out[i]["verdict"] == expected_answer(r) for i, r in enumerate(mixed_rows()) if i not in (1, 4))
    assert emulator.counts["batch_creates"] == 2

    status = cli.json("status", "t")["data"]
    assert (status["failed"], status["truncated"]) == (2, 2)
    # the paid-for (cut) answers still count in the cost
    assert status["usage"]["output_tokens"] >= 2 * LIMIT


@pytest.mark.parametrize(
    ("endpoint", "params", "overrides"),
    [
        ("/v1/responses", {"max_output_tokens": LIMIT}, {}),
        ("/v1/completions", {"max_tokens": LIMIT}, {"prompt": {"user": "Review ({stars} stars): {text}"}}),
    ],
)
def test_other_endpoints_report_truncation_the_same_way(cli, emulator, runs_dir, tmp_path, endpoint, params, overrides):
    config = write_job(tmp_path / "job", mixed_rows(), endpoint=endpoint, params=params, **overrides)
    result = cli("run", config, "--run", "t", "--wait", "--poll-interval", "0")
    assert "(6 answered, 0 failed, 2 truncated)" in result.stdout
    out = read_jsonl(runs_dir / "t" / "output.jsonl")
    assert [r.get("verdict_finish_reason") for r in out] == [None, "length", None, None, "length", None]
    assert cli.json("status", "t")["data"]["truncated"] == 2


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("  truncated: fial\n", "output.truncated must be keep or fail (got 'fial') — did you mean 'fail'?"),
        ("  truncated: no\n", "output.truncated must be keep or fail (got false) — YAML reads yes/no"),
        ("  truncate: fail\n", "unknown key 'output.truncate' — did you mean 'truncated'?"),
    ],
)
def test_a_bad_truncated_policy_is_named_with_its_line(cli, tmp_path, runs_dir, output, message):
    config = write_job(tmp_path / "job", review_rows(2))
    text = config.read_text().replace("output:\n  key: verdict\n", "output:\n  key: verdict\n" + output)
    config.write_text(text)
    line_no = text.splitlines().index(output.rstrip("\n")) + 1
    result = cli("create", config, code=2)
    assert f"{config} line {line_no}: {message}" in result.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_a_run_whose_index_predates_finish_reasons_still_merges(cli, emulator, runs_dir, tmp_path):
    """A run created by an earlier batchpipe has an index without the finish_reason column."""
    cli("create", job(tmp_path), "--run", "old")
    with sqlite3.connect(runs_dir / "old" / "index.sqlite") as db:
        db.execute("DROP TABLE results")
        db.execute("CREATE TABLE results (custom_id TEXT PRIMARY KEY, shard TEXT NOT NULL, attempt INTEGER NOT NULL, "
                   "ok INTEGER NOT NULL, retryable INTEGER NOT NULL, value BLOB, error BLOB)")
    result = cli("run", "old", "--wait", "--poll-interval", "0")
    assert "(6 answered, 0 failed, 2 truncated)" in result.stdout
    out = read_jsonl(runs_dir / "old" / "output.jsonl")
    assert [r.get("verdict_finish_reason") for r in out] == [None, "length", None, None, "length", None]


def test_the_default_policy_leaves_the_snapshot_and_run_id_as_they_were(cli, runs_dir, tmp_path):
    """Runs created before output.truncated existed keep their config hash: same job, same run."""
    config = write_job(tmp_path / "job", review_rows(2))
    first = cli.json("create", config)["data"]
    assert "truncated" not in (runs_dir / first["run"] / "config.yaml").read_text()
    config.write_text(config.read_text().replace("  key: verdict\n", "  key: verdict\n  truncated: keep\n"))
    again = cli.json("create", config)["data"]
    assert (again["run"], again["created"]) == (first["run"], False)
    config.write_text(config.read_text().replace("truncated: keep", "truncated: fail"))
    failing = cli.json("create", config)["data"]
    assert failing["created"] and failing["run"] != first["run"]
    assert "truncated: fail" in (runs_dir / failing["run"] / "config.yaml").read_text()


def test_a_canary_whose_answers_are_cut_holds_the_run_under_fail(cli, emulator, runs_dir, tmp_path):
    config = job(tmp_path, output={"key": "verdict", "truncated": "fail"})
    result = cli("run", config, "--run", "c", "--canary", "2", "--wait", "--poll-interval", "0", code=5)
    assert "canary failed: 1 of 2 requests" in result.stderr  # row 2's answer was cut
    assert emulator.counts["batch_creates"] == 1  # only the canary was paid for
