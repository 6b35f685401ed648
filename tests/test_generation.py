"""Generation jobs (`input.count`), one answer parsed into many records (`output.explode`), stopping
at a number of valid records (`limits.target`), and the summary line (answers, records, valid,
invalid by reason, success rate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import read_jsonl, write_config

from batchpipe.emulator.json_answers import json_text

PAIRS_SCHEMA = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array", "minItems": 2, "maxItems": 4,
            "items": {"type": "object", "properties": {"single": {"type": "string"}, "multi": {"type": "string"}},
                      "required": ["single", "multi"], "additionalProperties": False},
        },
    },
    "required": ["pairs"],
    "additionalProperties": False,
}  # fmt: skip
PAIRS_FORMAT = {"type": "json_schema", "json_schema": {"name": "pairs", "strict": True, "schema": PAIRS_SCHEMA}}


def write_gen(directory: Path, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "input": {"count": 5},
        "prompt": {"user": "Write refusal scenarios, set {index}"},
        "params": {"max_tokens": 200},
        "output": {"key": "answer"},
        "limits": {"max_requests_per_shard": 2},
    }
    return write_config(directory / "gen.yaml", config, **overrides)


def pairs_of(index: int) -> list[dict[str, str]]:
    """What the emulator answers set `index` with (its answers are derived from the request)."""
    text = f"Write refusal scenarios, set {index}"
    return json.loads(json_text({"type": "json_schema", "schema": PAIRS_SCHEMA}, text))["pairs"]


def test_a_count_makes_rows_with_an_index(cli, emulator, runs_dir, tmp_path):
    config = write_gen(tmp_path / "g")
    created = cli.json("create", config, "--run", "g")["data"]
    assert created["requests"] == 5 and created["shards"] == 3
    ids = [json.loads(line)["custom_id"] for p in sorted((runs_dir / "g" / "shards").glob("*.jsonl"))
           for line in p.read_text().splitlines()]
    assert ids == ["0", "1", "2", "3", "4"]  # a generation row is named by its index
    cli("run", "g", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "g" / "output.jsonl")
    assert out == [{"index": i, "answer": f"echo: Write refusal scenarios, set {i}", "answer_attempts": 1}
                   for i in range(5)]
    # process re-checks the input: for a count, its digest; the run stays done and the same
    assert cli("process", "g").exit_code == 0
    assert read_jsonl(runs_dir / "g" / "output.jsonl") == out


def test_the_same_generation_job_is_found_not_made_twice(cli, tmp_path):
    config = write_gen(tmp_path / "g")
    first = cli.json("create", config)["data"]
    again = cli.json("create", config)["data"]
    assert again["run"] == first["run"] and again["created"] is False
    other = cli.json("create", write_gen(tmp_path / "h", input={"count": 6}))["data"]
    assert other["run"] != first["run"]


def test_explode_writes_one_line_per_item_with_its_parent(cli, emulator, runs_dir, tmp_path):
    config = write_gen(tmp_path / "g", input={"count": 3}, params={"response_format": PAIRS_FORMAT},
                       output={"key": "pair", "explode": "pairs"})
    result = cli("run", config, "--run", "x", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "x" / "output.jsonl")
    expected = [{"index": i, "pair": item, "pair_parent": str(i), "pair_index": n, "pair_attempts": 1}
                for i in range(3) for n, item in enumerate(pairs_of(i))]
    assert out == expected and len(out) > 3
    figures = cli.json("status", "x")["data"]["summary"]
    assert figures == {"answers": 3, "records": len(expected), "valid": len(expected), "invalid": {},
                       "success_rate": 1.0}
    assert f"summary: 3 answers, {len(expected)} records, {len(expected)} valid, 0 invalid, success rate 100.0%" \
        in result.stdout


def test_explode_true_takes_a_list_answer_and_survives_an_index_rebuild(cli, emulator, runs_dir, tmp_path):
    # OpenAI's json_schema needs an object at the top (so `explode: FIELD`); a list answer, as a
    # parse hook or another server may give, is exploded by `explode: true`. The emulator answers one.
    schema = {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "string"}}
    params = {"response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": schema}}}
    config = write_gen(tmp_path / "g", input={"count": 2}, params=params, output={"key": "q", "explode": True})
    cli("run", config, "--run", "l", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "l" / "output.jsonl")
    items = [json.loads(json_text({"type": "json_schema", "schema": schema}, f"Write refusal scenarios, set {i}"))
             for i in range(2)]
    assert [(r["index"], r["q"], r["q_parent"], r["q_index"]) for r in out] == [
        (i, item, str(i), n) for i in range(2) for n, item in enumerate(items[i])]
    (runs_dir / "l" / "index.sqlite").unlink()  # rebuilt from the count and the results, the same output
    (runs_dir / "l" / "output.jsonl").unlink()
    cli("process", "l")
    assert read_jsonl(runs_dir / "l" / "output.jsonl") == out


def test_an_answer_that_is_not_a_list_is_invalid_and_retried(cli, emulator, runs_dir, tmp_path):
    # explode: true needs a list at the top; this schema's answers are objects: every answer is invalid
    config = write_gen(tmp_path / "g", input={"count": 2}, params={"response_format": PAIRS_FORMAT},
                       output={"key": "pair", "explode": True}, limits={"max_attempts": 2})
    result = cli("run", config, "--run", "bad", "--wait", "--poll-interval", "0", code=6)
    out = read_jsonl(runs_dir / "bad" / "output.jsonl")
    assert [(r["index"], r["pair"], r["pair_error"]["code"], r["pair_attempts"]) for r in out] == [
        (0, None, "invalid_explode", 2), (1, None, "invalid_explode", 2)]
    assert "needs a list answer" in out[0]["pair_error"]["message"]
    assert emulator.counts["batch_creates"] == 2  # retried once, like invalid JSON
    assert "4 answers, 0 records, 0 valid, 4 invalid (invalid_explode 4), success rate 0.0%" in result.stdout
    figures = cli.json("status", "bad", code=None)["data"]["summary"]
    assert figures["invalid"] == {"invalid_explode": 4} and figures["success_rate"] == 0.0


def test_invalid_json_is_counted_by_reason_in_the_summary(cli, emulator, runs_dir, tmp_path):
    config = write_gen(tmp_path / "g", input={"count": 3}, params={"response_format": PAIRS_FORMAT},
                       prompt={"user": "set {index} [[invalid-json]]"}, output={"key": "pair", "explode": "pairs"},
                       limits={"max_attempts": 1})
    result = cli("process", cli.json("create", config, "--run", "j")["data"]["run"], code=3)
    assert "summary" not in result.stdout  # nothing answered yet: no summary to give
    cli("run", "j", "--wait", "--poll-interval", "0", code=6)
    figures = cli.json("process", "j", code=6)["data"]["summary"]
    assert figures == {"answers": 3, "records": 0, "valid": 0, "invalid": {"invalid_json": 3}, "success_rate": 0.0}


def test_target_stops_sending_and_cancels_running_batches(cli, slow_emulator, runs_dir, tmp_path):
    """Shard 1 finishes while shard 2 runs and shard 3 waits (held back by the budget): shard 1's
    records reach the target, so shard 3 is never sent, shard 2 is cancelled and what it holds is
    merged, and the run is done with exactly `target` records, in row order."""
    clock = slow_emulator.clock
    config = write_gen(tmp_path / "g", input={"count": 6}, params={"response_format": PAIRS_FORMAT},
                       output={"key": "pair", "explode": "pairs"},
                       limits={"max_requests_per_shard": 2, "target": 3, "enqueued_tokens": 1_000_000},
                       pricing={"input_per_million": 1.0, "output_per_million": 0.0})
    shard_worst = cli.json("estimate", config)["data"]["cost_usd_worst_case"] / 3
    cli("create", config, "--run", "t")
    cli("submit", "t", "--budget", str(shard_worst * 1.5), code=None)  # shard 1 only
    assert slow_emulator.counts["batch_creates"] == 1
    clock.advance(1.5)
    cli("submit", "t", "--budget", str(shard_worst * 2.05), code=None)  # shard 2, while shard 1 runs
    assert slow_emulator.counts["batch_creates"] == 2
    clock.advance(1.8)  # shard 1 is done, shard 2 is in progress
    result = cli("run", "t", code=3)
    assert "limits.target reached" in result.stderr and "cancelled batch" in result.stderr
    assert slow_emulator.counts["cancels"] == 1
    clock.advance(5)  # the cancel takes effect
    result = cli("run", "t", code=0)
    assert "(3 valid records; limits.target reached)" in result.stdout
    assert slow_emulator.counts["batch_creates"] == 2 and slow_emulator.counts["uploads"] == 2  # shard 3 never sent
    out = read_jsonl(runs_dir / "t" / "output.jsonl")
    first = [{"index": 0, "pair": item, "pair_parent": "0", "pair_index": n, "pair_attempts": 1}
             for n, item in enumerate(pairs_of(0))]
    first += [{"index": 1, "pair": item, "pair_parent": "1", "pair_index": n, "pair_attempts": 1}
              for n, item in enumerate(pairs_of(1))]
    assert out == first[:3]
    status = cli.json("status", "t")["data"]
    assert status["done"] is True and status["shard_states"]["prepared"] == 1
    assert status["summary"]["target_reached"] >= 3 and status["summary"]["not_needed_shards"] == 1
    assert "target of 3 reached: 1 shard(s) not sent" in cli("status", "t").stdout
    # nothing more is sent by a later run or tick, and the run stays done
    cli("run", "t", code=0)
    cli("tick", "t", code=0)
    assert slow_emulator.counts["batch_creates"] == 2


def test_a_target_not_reached_writes_every_valid_record(cli, emulator, runs_dir, tmp_path):
    config = write_gen(tmp_path / "g", input={"count": 2}, params={"response_format": PAIRS_FORMAT},
                       output={"key": "pair", "explode": "pairs"}, limits={"target": 1000})
    cli("run", config, "--run", "n", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "n" / "output.jsonl")
    assert len(out) == len(pairs_of(0)) + len(pairs_of(1))
    assert "target_reached" not in cli.json("status", "n")["data"]["summary"]


def test_generation_config_mistakes_exit_2_naming_the_field(cli, tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n')
    both = write_gen(tmp_path, input={"count": 3, "path": "rows.jsonl"})
    result = cli("create", both, code=2)
    assert "gen.yaml line" in result.stderr and "input.path and input.count cannot both be set" in result.stderr
    result = cli("create", write_gen(tmp_path, input={"id": "x"}), code=2)
    assert "input.path is required" in result.stderr
    result = cli("create", write_gen(tmp_path, input={"count": 0}), code=2)
    assert "input.count" in result.stderr
    result = cli("create", write_gen(tmp_path, input={"count": 2, "records": "items"}), code=2)
    assert "input.records cannot be used with input.count" in result.stderr
    result = cli("create", write_gen(tmp_path, output={"key": "answer", "explode": True},
                                     endpoint="/v1/embeddings", prompt={"user": "{index}"}), code=2)
    assert "output.explode cannot be used with endpoint /v1/embeddings" in result.stderr


def test_with_explode_each_item_is_validated_and_an_invalid_one_left_out(cli, emulator, runs_dir, tmp_path):
    schema = {"type": "object", "required": ["items"], "properties": {"items": {
        "type": "array", "minItems": 3, "maxItems": 5, "items": {
            "type": "object", "properties": {"kind": {"enum": ["a", "b", "c"]}, "text": {"type": "string"}}}}}}
    params = {"response_format": {"type": "json_schema", "json_schema": {"name": "k", "schema": schema}}}
    only_a = {"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]}
    config = write_gen(tmp_path / "g", input={"count": 4}, params=params,
                       output={"key": "item", "explode": "items", "validate": {"json_schema": only_a}})
    cli("run", config, "--run", "v", "--wait", "--poll-interval", "0")
    answers = [json.loads(json_text({"type": "json_schema", "schema": schema},
                                    f"Write refusal scenarios, set {i}"))["items"] for i in range(4)]
    kept = [(i, item) for i in range(4) for item in answers[i] if item["kind"] == "a"]
    left_out = sum(len(a) for a in answers) - len(kept)
    assert kept and left_out  # the emulator's picks give both kinds here: the test means something
    out = read_jsonl(runs_dir / "v" / "output.jsonl")
    assert [(r["index"], r["item"]) for r in out] == kept  # the answer's other items are left out
    figures = cli.json("status", "v")["data"]["summary"]
    assert (figures["records"], figures["valid"], figures["invalid"]) == (
        len(kept) + left_out, len(kept), {"invalid_schema": left_out})
    assert emulator.counts["batch_creates"] == 2  # an answer with invalid items is not sent again
