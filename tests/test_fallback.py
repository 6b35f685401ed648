"""`output.on_invalid` (retry, drop, fallback) and `output.fallback` (a hook, or `{copy: FIELD}`),
through `batchpipe run` against the emulator: what each row of the output says, what the run
counts and shows, and what the service was asked to do again.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml
from conftest import read_jsonl, review_rows, write_job

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}


def run(cli, config, run_id: str, code: int = 0):
    return cli("run", config, "--run", run_id, "--wait", "--poll-interval", "0", code=code)


def masking_rows() -> list[dict]:
    """Four rows: one answered well, one off-schema, one broken JSON, one whose request fails (400)."""
    rows = review_rows(4)
    rows[1]["text"] = "wrong shape [[off-schema]]"
    rows[2]["text"] = "cut in half [[invalid-json]]"
    rows[3]["text"] = "refused [[fail:400]]"
    return rows


def hooks(directory: Path, source: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hooks.py").write_text(textwrap.dedent(source), encoding="utf-8")


def test_fallback_hook_fills_failed_and_invalid_rows_at_once(cli, emulator, runs_dir, tmp_path):
    hooks(tmp_path, """
        def mask(row):
            row["text"] = "changed"              # a copy: the output row keeps its own text
            return "[MASKED] " + row["review_id"]
    """)
    rows = masking_rows()
    config = write_job(tmp_path, rows, params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "validate": {"json_schema": SCHEMA}, "on_invalid": "fallback",
                               "fallback": "hooks:mask"})
    result = run(cli, config, "fb")  # nothing is left failed: exit 0, and it says what was filled
    assert "output: " in result.stdout and "(1 answered, 3 by fallback, 0 failed)" in result.stdout
    assert "2 row(s) whose answer stayed invalid: 1 invalid_json, 1 invalid_schema" in result.stdout
    assert "3 row(s) were filled by output.fallback, not by the model" in result.stderr
    out = read_jsonl(runs_dir / "fb" / "output.jsonl")
    assert [r["verdict_source"] for r in out] == ["model", "fallback", "fallback", "fallback"]
    assert isinstance(out[0]["verdict"], dict) and "verdict_error" not in out[0]
    assert [r["verdict"] for r in out[1:]] == ["[MASKED] r0002", "[MASKED] r0003", "[MASKED] r0004"]
    assert [r["text"] for r in out] == [r["text"] for r in rows]
    # nothing falls back silently: each keeps why the model's answer is not there
    assert [r["verdict_error"]["code"] for r in out[1:]] == ["invalid_schema", "invalid_json", "invalid_request"]
    assert emulator.counts["batch_creates"] == 1  # on_invalid: fallback is final, not retried
    data = cli.json("status", "fb")["data"]
    assert data["result_counts"] == {"ok": 1, "failed": 0, "truncated": 0, "fallback": 3,
                                     "invalid_json": 1, "invalid_schema": 1}
    assert data["invalid_answers"] == {"invalid_json": 1, "invalid_schema": 1}
    status = cli("status", "fb")
    assert "3 row(s) were filled by output.fallback" in status.stderr
    assert "2 invalid answer(s): 1 invalid_json, 1 invalid_schema" in status.stdout


def test_copy_fallback_after_the_retries_ran_out(cli, emulator, runs_dir, tmp_path):
    rows = masking_rows()
    config = write_job(tmp_path, rows, params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "fallback": {"copy": "text"}}, limits={"max_attempts": 2})
    run(cli, config, "cp")
    out = read_jsonl(runs_dir / "cp" / "output.jsonl")
    assert [r["verdict_source"] for r in out] == ["model", "model", "fallback", "fallback"]
    # off-schema still parses (no validator here); broken JSON was retried once, then fell back
    assert out[1]["verdict"] == {"unexpected": "Review (3 stars): wrong shape [[off-schema]]"}
    assert out[2]["verdict"] == rows[2]["text"] and out[2]["verdict_attempts"] == 2
    assert out[2]["verdict_error"]["code"] == "invalid_json"
    assert out[3]["verdict"] == rows[3]["text"] and out[3]["verdict_attempts"] == 1  # a 400 is not retried
    assert emulator.counts["batch_creates"] == 2
    assert yaml.safe_load((runs_dir / "cp" / "config.yaml").read_text())["output"]["fallback"] == {"copy": "text"}
    counts = cli.json("status", "cp")["data"]["result_counts"]
    assert counts["fallback"] == 2 and counts["ok"] == 2 and counts["failed"] == 0


def test_drop_leaves_invalid_rows_out_and_counts_them(cli, emulator, runs_dir, tmp_path):
    rows = masking_rows()
    config = write_job(tmp_path, rows, params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "validate": {"json_schema": SCHEMA}, "on_invalid": "drop"})
    result = run(cli, config, "dr", code=6)  # the failed request (400) is still a failed row
    assert "(1 answered, 1 failed, 2 dropped)" in result.stdout
    assert "2 row(s) were left out of the output: their answer was invalid and output.on_invalid is drop" in result.stderr
    out = read_jsonl(runs_dir / "dr" / "output.jsonl")
    assert [r["review_id"] for r in out] == ["r0001", "r0004"]
    assert "verdict_source" not in out[0]  # no fallback configured: no source marks
    assert out[1]["verdict_error"]["code"] == "invalid_request"
    assert emulator.counts["batch_creates"] == 1  # dropped answers are not sent again
    counts = cli.json("status", "dr")["data"]["result_counts"]
    assert counts == {"ok": 1, "failed": 1, "truncated": 0, "dropped": 2, "invalid_json": 1, "invalid_schema": 1}
    processed = cli.json("process", "dr", code=6)["data"]
    assert (processed["ok"], processed["failed"], processed["dropped"], processed["fallback"]) == (1, 1, 2, 0)
    assert processed["invalid"] == {"invalid_json": 1, "invalid_schema": 1}


def test_a_fallback_that_raises_leaves_the_row_failed_saying_both(cli, emulator, runs_dir, tmp_path):
    hooks(tmp_path, """
        def mask(row):
            if row["review_id"] == "r0003":
                raise RuntimeError("cannot mask this one")
            return "masked"
    """)
    config = write_job(tmp_path, masking_rows(), params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "on_invalid": "fallback", "fallback": "hooks:mask"})
    result = run(cli, config, "ff", code=6)
    assert "(2 answered, 1 by fallback, 1 failed)" in result.stdout  # off-schema parses: no validator here
    out = read_jsonl(runs_dir / "ff" / "output.jsonl")
    assert [r["verdict_source"] for r in out] == ["model", "model", None, "fallback"]
    failed = out[2]
    assert failed["verdict"] is None
    assert failed["verdict_error"]["code"] == "fallback_failed"
    assert failed["verdict_error"]["message"].startswith(
        "output.fallback hooks:mask raised RuntimeError: cannot mask this one; the row had failed with invalid_json")
    assert failed["verdict_error"]["cause"]["code"] == "invalid_json"
    counts = cli.json("status", "ff")["data"]["result_counts"]
    assert counts["failed"] == 1 and counts["fallback"] == 1 and counts["invalid_json"] == 1


def test_a_copy_of_a_field_the_row_lacks_is_fallback_failed(cli, emulator, runs_dir, tmp_path):
    rows = masking_rows()
    config = write_job(tmp_path, rows, output={"key": "verdict", "fallback": {"copy": "meta.original"}})
    run(cli, config, "nf", code=6)
    out = read_jsonl(runs_dir / "nf" / "output.jsonl")
    assert out[3]["verdict_error"]["code"] == "fallback_failed"
    assert "the row's field 'meta.original' is missing" in out[3]["verdict_error"]["message"]
    assert out[3]["verdict_source"] is None
