"""The usual job's merge (chat completions, the answer taken as is) reads each answer of the usual
shape straight into the index's row; every other line goes the general way. Whatever the lines,
the index, the ledger's counts and usage, the warnings and the output must be what the general
path makes of them.

The general path is the same job with a validator that accepts every answer (`output.validate.
function`): its answers are no longer taken as is, so `process` judges each of them one by one,
and a validator that says yes changes nothing else. Both runs get the same result lines, brought
in as a person would (`export`, then `import` of the files), lines of every shape the service
could send: a null answer, answers of other shapes, usages of other shapes, failures, duplicates.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import read_jsonl, review_rows, write_job

ROWS = 27


def answer(cid: str, content: Any = "positive", *, reason: Any = "stop", usage: Any = None, status: int = 200,
           error: Any = None, **body: Any) -> dict[str, Any]:
    """A result line of the Batch API: an answer (status 2xx) or a failure."""
    if status >= 300:
        response_body: Any = {"error": {"message": "Internal error (test).", "type": "server_error", "code": None}}
    else:
        response_body = {
            "id": f"chatcmpl-{cid}", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": reason}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32} if usage is None else usage,
        } | body
    return {"id": f"batch_req_{cid}", "custom_id": cid,
            "response": {"status_code": status, "request_id": f"req_{cid}", "body": response_body}, "error": error}


def result_lines(ids: list[str]) -> list[bytes]:
    """One or more lines for each request but the last (which has none), in an order of their own."""
    ok = [answer(cid, "negative" if n % 2 else "positive") for n, cid in enumerate(ids)]
    odd: dict[int, list[dict[str, Any]]] = {
        1: [answer(ids[1], None)],  # the model said nothing (a refusal, a tool call): null content
        2: [answer(ids[2], "cut sh", reason="length")],  # cut at the output limit
        3: [answer(ids[3], reason=None)],  # no finish reason
        4: [answer(ids[4], usage={"input_tokens": 7, "output_tokens": 3})],  # the /v1/responses words
        5: [answer(ids[5], usage={"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15,
                                  "prompt_tokens_details": {"cached_tokens": 0}})],  # the usual shape with details
        6: [{k: v for k, v in answer(ids[6]).items() if k != "error"}],  # no "error" key at all
        7: [answer(ids[7], usage={"prompt_tokens": -1, "completion_tokens": True})],  # counts that are not counts
        8: [answer(ids[8], usage={"prompt_tokens": 9.0, "completion_tokens": 2})],  # a float count
        9: [{**answer(ids[9]), "response": {**answer(ids[9])["response"], "body": {
            k: v for k, v in answer(ids[9])["response"]["body"].items() if k != "usage"}}}],  # no usage
        10: [answer(ids[10], status=201)],  # another 2xx
        11: [{**answer(ids[11]), "response": {**answer(ids[11])["response"], "status_code": 500}}],  # 500, a body
        12: [{**answer(ids[12]), "error": {"code": "server_error", "message": "odd"}}],  # status 200, an error
        13: [answer(ids[13], choices=[])],  # an answer without choices: unreadable
        14: [answer(ids[14], choices=[{"message": "positive", "finish_reason": "stop"}])],  # a message that is text
        15: [answer(ids[15], status=500), answer(ids[15], "late but fine")],  # a failure, then the answer
        16: [answer(ids[16], "first"), answer(ids[16], "second")],  # two answers: the first is kept
        17: [answer(ids[17], "kept"), answer(ids[17], status=500)],  # an answer, then a failure of it
        18: [answer(ids[18], "é \"quoted\"\n\t \\ done")],  # text to escape
        19: [answer(ids[19], {"an": "object"})],  # not text
        20: [answer(ids[20], "positive", reason=7)],  # a finish reason that is not text
        21: [answer(ids[21], "two choices") | {"response": {"status_code": 200, "body": {
            "choices": [{"message": {"content": "one"}, "finish_reason": "stop"}, {"oops": 1}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}}}}],  # a second choice of another shape
        22: [answer(ids[22], usage={"prompt_tokens": 30, "completion_tokens": 2, "input_tokens": 8,
                                    "output_tokens": 1})],  # both words: input_tokens/output_tokens count
        # Lines the usual shape's decoder (msgspec) and orjson read apart: the general way decides
        23: [answer(ids[23], usage={"prompt_tokens": 2**64, "completion_tokens": 2})],  # past 64 bits: a float
        24: [{**answer(ids[24]), "response": {**answer(ids[24])["response"], "status_code": 200.0}}],
        25: [answer(ids[25], 12345678901234567890123)],  # an answer that is a number past 64 bits
    }
    lines = [line for n, first in enumerate(ok[:-1]) for line in odd.get(n, [first])]
    lines = lines[1::2] + lines[0::2]  # not in request order, as the service answers
    return [json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines]


def merged_run(cli, tmp_path: Path, run: str, lines: list[bytes], **output: Any) -> dict[str, Any]:
    """Create `run` (the usual job with `output`), export it, import `lines` as one output file, process it."""
    (tmp_path / run).mkdir()
    (tmp_path / run / "hooks.py").write_text("def accept(value):\n    return True\n", encoding="utf-8")
    config = write_job(tmp_path / run, review_rows(ROWS), output={"key": "verdict", **output},
                       limits={"max_requests_per_shard": 10, "max_attempts": 1})
    cli("create", str(config), "--run", run)
    cli("export", run, str(tmp_path / run / "handoff"))
    downloaded = tmp_path / run / "output.jsonl"
    downloaded.write_bytes(b"".join(lines))
    cli("import", run, str(downloaded), "--partial")
    return processed_run(cli, run)


def processed_run(cli, run: str) -> dict[str, Any]:
    """`process` the run: what it says, and what it leaves in the index, the ledger and the output."""
    processed = cli.json("process", run, code=None)
    root = Path("runs") / run
    with sqlite3.connect(root / "index.sqlite") as db:
        index = db.execute("SELECT shard, file, lo, hi, failed, retryable, n, outcomes FROM results "
                           "ORDER BY shard").fetchall()
    state = json.loads((root / "state.json").read_text())
    return {
        "index": index,
        "shards": [{k: s.get(k) for k in ("id", "merged", "usage", "answers")} for s in state["shards"]],
        "counts": state["run"]["result_counts"],
        "warnings": processed["data"]["warnings"],
        "output": read_jsonl(root / "output.jsonl"),
    }


def request_ids(cli, tmp_path: Path) -> list[str]:
    config = write_job(tmp_path / "ids", review_rows(ROWS), limits={"max_requests_per_shard": 10})
    cli("create", str(config), "--run", "ids")
    return [json.loads(line)["custom_id"] for shard in sorted((Path("runs") / "ids" / "shards").glob("*.jsonl"))
            for line in shard.read_bytes().splitlines()]


@pytest.mark.parametrize("output", [{}, {"meta": True}, {"truncated": "fail"}], ids=["usual", "meta", "truncated-fail"])
def test_every_shape_of_line_merges_as_the_general_path_merges_it(cli, tmp_path, output):
    lines = result_lines(request_ids(cli, tmp_path))
    fast = merged_run(cli, tmp_path, "fast", lines, **output)
    general = merged_run(cli, tmp_path, "general", lines, validate={"function": "hooks:accept"}, **output)

    assert fast["index"] == general["index"]  # the outcomes byte for byte, and every figure beside them
    assert fast["shards"] == general["shards"]
    assert fast["counts"] == general["counts"]
    assert fast["warnings"] == general["warnings"]
    assert fast["output"] == general["output"]

    # and what that is, as a user sees it
    rows = {r["review_id"]: r for r in fast["output"]}
    assert rows["r0001"]["verdict"] == "positive" and rows["r0002"]["verdict"] is None  # null content: an answer
    assert "verdict_error" not in rows["r0002"]
    assert rows["r0016"]["verdict"] == "late but fine" and rows["r0017"]["verdict"] == "first"
    assert rows["r0018"]["verdict"] == "kept" and rows["r0019"]["verdict"] == "é \"quoted\"\n\t \\ done"
    assert rows["r0020"]["verdict"] == {"an": "object"} and rows["r0022"]["verdict"] == "one"
    assert rows["r0012"]["verdict_error"]["status_code"] == 500
    assert rows["r0014"]["verdict_error"]["code"] == "unreadable_response"
    assert rows["r0027"]["verdict_error"]["code"] == "missing_result"
    assert rows["r0024"]["verdict"] == "positive" and rows["r0025"]["verdict"] == "positive"
    assert rows["r0026"]["verdict"] == 12345678901234567890123.0  # as orjson reads it
    if output.get("truncated") == "fail":
        assert rows["r0003"]["verdict_error"]["code"] == "truncated"
    else:
        assert rows["r0003"]["verdict"] == "cut sh" and rows["r0003"]["verdict_finish_reason"] == "length"
    # Tokens: of the answers kept, as the service reported them; 30 in and 2 out for the 14 usual
    # usages, then 7/3 (input_tokens), 11/4, -1/true (not counts: 0/0), 9.0/2 (0/2), none, 5/1, 8/1,
    # 2**64/2 (a float: 0/2).
    assert sum(s["usage"]["input_tokens"] for s in fast["shards"]) == 14 * 30 + 7 + 11 + 5 + 8
    assert sum(s["usage"]["output_tokens"] for s in fast["shards"]) == 14 * 2 + 3 + 4 + 2 + 1 + 1 + 2

def test_recover_rebuilds_the_same_index_from_the_result_files(cli, tmp_path):
    lines = result_lines(request_ids(cli, tmp_path))
    before = merged_run(cli, tmp_path, "fast", lines)
    (Path("runs") / "fast" / "index.sqlite").unlink()

    assert "rebuilt it" in cli("recover", "fast", code=None).stdout
    with sqlite3.connect(Path("runs") / "fast" / "index.sqlite") as db:
        after = db.execute("SELECT shard, file, lo, hi, failed, retryable, n, outcomes FROM results "
                           "ORDER BY shard").fetchall()
    assert after == before["index"]


def test_blank_lines_unknown_ids_and_a_line_twice_are_met_as_by_the_general_path(cli, emulator, tmp_path):
    emulator.options.stray_result_lines = True  # each output file: a blank line, a stranger's line, a line twice
    runs = {}
    for run, output in (("fast", {}), ("general", {"validate": {"function": "hooks:accept"}})):
        (tmp_path / run).mkdir()
        (tmp_path / run / "hooks.py").write_text("def accept(value):\n    return True\n", encoding="utf-8")
        config = write_job(tmp_path / run, review_rows(12), output={"key": "verdict", **output})
        cli("create", str(config), "--run", run)
        cli("submit", run)
        cli("download", run)
        runs[run] = processed_run(cli, run)
    fast, general = runs["fast"], runs["general"]

    assert fast == general
    assert fast["counts"] == {"ok": 12, "failed": 0, "truncated": 0}  # the line twice is one answer
    assert [s["answers"]["answers"] for s in fast["shards"]] == [5, 5, 2]
    assert [s["usage"]["output_tokens"] > 0 for s in fast["shards"]] == [True, True, True]
    strangers = [w for w in fast["warnings"] if "-stranger' ignored" in w]
    assert len(strangers) == 3 and all("result for unknown custom_id" in w for w in strangers)
    assert not any("unreadable" in w for w in fast["warnings"])  # a blank line is no line
