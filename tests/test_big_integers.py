"""Integers of any size reach the prompt and the output digit for digit (orjson reads integers
beyond 64 bits as floats, and refuses to write them)."""

from __future__ import annotations

import json

from conftest import read_jsonl, write_job

BIG = 123456789012345678901234567890  # far beyond 2**64: orjson reads it as a float


def test_integers_beyond_64_bits_stay_exact_in_prompts_and_output(cli, emulator, runs_dir, tmp_path):
    rows = [
        {"review_id": 2**64 + i, "stars": 5, "text": "fine", "order": BIG + i, "meta": {"ref": -(2**70) - i, "low": -(2**63) - 1}}
        for i in range(3)
    ]
    config = write_job(tmp_path / "job", rows, prompt={"user": "Order {order} ({meta}): {text}"}, params={"max_tokens": 200})
    cli("run", config, "--run", "big", "--wait", "--poll-interval", "0")

    requests = [json.loads(line) for line in (runs_dir / "big" / "shards" / "00001.a1.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in requests] == [str(2**64 + i) for i in range(3)]
    prompts = [r["body"]["messages"][0]["content"] for r in requests]
    assert prompts == [f'Order {BIG + i} ({{"ref":{-(2**70) - i},"low":-9223372036854775809}}): fine' for i in range(3)]

    out = read_jsonl(runs_dir / "big" / "output.jsonl")  # the stdlib json reads integers exactly
    assert [(r["review_id"], r["order"], r["meta"]) for r in out] == [
        (2**64 + i, BIG + i, {"ref": -(2**70) - i, "low": -(2**63) - 1}) for i in range(3)
    ]
    assert [r["verdict"] for r in out] == [f"echo: {p}" for p in prompts]
    assert str(BIG) in (runs_dir / "big" / "output.jsonl").read_text()  # written digit for digit


def test_a_long_number_in_text_and_floats_read_as_before(cli, emulator, runs_dir, tmp_path):
    rows = [{"review_id": "a", "stars": 1.5, "text": "call 0012345678901234567890123", "score": 1e300}]
    config = write_job(tmp_path / "job", rows)
    cli("run", config, "--run", "mixed", "--wait", "--poll-interval", "0")
    (out,) = read_jsonl(runs_dir / "mixed" / "output.jsonl")
    assert (out["stars"], out["text"], out["score"]) == (1.5, "call 0012345678901234567890123", 1e300)
    assert out["verdict"] == "echo: Review (1.5 stars): call 0012345678901234567890123"
