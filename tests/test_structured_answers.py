"""Structured answers: `output.parse: json` (or a JSON response format) puts the parsed JSON value
under the output key; an answer that does not parse is a failed row with its reason, retried like
a failed request, never a crash. The emulator answers JSON that fits the request's schema, and
can break a share of its JSON answers, so all of this is rehearsed offline.
"""

from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, review_rows, write_job

from batchpipe.emulator.json_answers import json_text

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "reasons": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    },
    "required": ["sentiment", "score", "reasons"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": SCHEMA}}


def user_text(row: dict) -> str:
    return f"Review ({row['stars']} stars): {row['text']}"


def test_json_schema_answers_are_parsed_onto_their_rows(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(7)
    config = write_job(tmp_path / "j", rows, params={"temperature": 0, "response_format": SCHEMA_FORMAT})
    cli("run", config, "--run", "js", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "js" / "output.jsonl")
    assert len(out) == 7
    for row, got in zip(rows, out):
        expected = json.loads(json_text({"type": "json_schema", "schema": SCHEMA}, user_text(row)))
        assert got["verdict"] == expected  # a JSON value, not a string, and its own row's
        assert got["verdict"]["sentiment"] in ("positive", "negative", "mixed")
        assert 1 <= got["verdict"]["score"] <= 5 and 1 <= len(got["verdict"]["reasons"]) <= 3
        assert "verdict_error" not in got
    # the default follows the response format; the snapshot does not need to say it
    assert "parse:" not in (runs_dir / "js" / "config.yaml").read_text()


def test_json_object_answers_and_an_explicit_parse_text(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(3)
    params = {"response_format": {"type": "json_object"}}
    cli("run", write_job(tmp_path / "a", rows, params=params), "--run", "obj", "--wait", "--poll-interval", "0")
    assert [r["verdict"] for r in read_jsonl(runs_dir / "obj" / "output.jsonl")] == [
        {"echo": user_text(row)} for row in rows
    ]
    raw = write_job(tmp_path / "b", rows, params=params, output={"key": "verdict", "parse": "text"})
    cli("run", raw, "--run", "raw", "--wait", "--poll-interval", "0")
    assert [r["verdict"] for r in read_jsonl(runs_dir / "raw" / "output.jsonl")] == [
        json.dumps({"echo": user_text(row)}) for row in rows
    ]
    assert "parse: text" in (runs_dir / "raw" / "config.yaml").read_text()


def test_an_answer_that_is_not_json_is_a_failed_row_with_its_reason(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(4)
    rows[2]["text"] = "this one breaks [[invalid-json]]"
    config = write_job(tmp_path / "j", rows, params={"response_format": SCHEMA_FORMAT},
                       limits={"max_attempts": 2})
    result = cli("run", config, "--run", "bad", "--wait", "--poll-interval", "0", code=6)
    assert "1 failed" in result.stdout
    out = read_jsonl(runs_dir / "bad" / "output.jsonl")
    failed = out[2]
    assert failed["verdict"] is None and failed["verdict_attempts"] == 2  # retried, then final
    assert failed["verdict_error"]["code"] == "invalid_json"
    assert "not valid JSON" in failed["verdict_error"]["message"]
    assert all(isinstance(r["verdict"], dict) for i, r in enumerate(out) if i != 2)
    # the raw answer that did not parse is kept in the run's results
    lines = [json.loads(line) for p in (runs_dir / "bad" / "results").glob("*.output.jsonl")
             for line in p.read_text().splitlines()]
    kept = [x["response"]["body"]["choices"][0]["message"]["content"] for x in lines if x["custom_id"] == "r0003"]
    assert kept == [json_text({"type": "json_schema", "schema": SCHEMA}, user_text(rows[2]))] * 2
    assert emulator.counts["batch_creates"] == 2


def test_a_share_of_broken_json_answers_is_retried_until_whole(cli, emulator, runs_dir, tmp_path):
    emulator.options.invalid_json_share = 0.5
    emulator.options.fault_seed = 3
    rows = review_rows(10)
    config = write_job(tmp_path / "j", rows, params={"response_format": SCHEMA_FORMAT},
                       limits={"max_requests_per_shard": 10, "max_attempts": 8})
    cli("run", config, "--run", "share", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "share" / "output.jsonl")
    assert all(isinstance(r["verdict"], dict) for r in out)
    assert max(r["verdict_attempts"] for r in out) > 1  # some were broken and sent again
    assert emulator.counts["batch_creates"] == max(r["verdict_attempts"] for r in out)


@pytest.mark.parametrize("endpoint", ["/v1/embeddings", "/v1/moderations"])
def test_parse_json_needs_an_endpoint_that_answers_text(cli, tmp_path, endpoint):
    config = write_job(tmp_path / "j", endpoint=endpoint, prompt={"user": "{text}"}, params={},
                       output={"key": "v", "parse": "json"})
    result = cli("create", config, code=2)
    assert "output.parse: json cannot be used with endpoint" in result.stderr
    assert "j/job.yaml line" in result.stderr.replace("\\", "/")
