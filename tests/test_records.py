"""Nested records (`input.records`): one request per record of a list inside each line; each answer
is written into its own record, the rest of the line as it was (field order kept)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import read_jsonl, write_config

USERS = [
    {"user_id": "u1", "name": "Ann", "tweets": [{"tweet_id": "t1", "full_text": "I love it", "lang": "en"},
                                                {"tweet_id": "t2", "full_text": "awful film"}], "meta": {"n": 1}},
    {"user_id": "u2", "name": "Bob", "tweets": [], "meta": {"n": 2}},
    {"user_id": "u3", "name": "Cy", "tweets": [{"tweet_id": 7, "full_text": "so so"}], "meta": {"n": 3}},
    {"user_id": "u4", "name": "Di", "tweets": [{"full_text": "great"}, {"full_text": "bad"}, {"full_text": "ok"}]},
]


def write_masking(directory: Path, users: list[dict[str, Any]], **overrides: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users), encoding="utf-8")
    config: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "input": {"path": "users.jsonl", "id": "user_id", "records": "tweets"},
        "prompt": {"system": "Mask opinion words.", "user": "Mask ({name}): {record.full_text}"},
        "params": {"max_tokens": 50},
        "output": {"key": "masked_text"},
        "limits": {"max_requests_per_shard": 2},
    }
    return write_config(directory / "mask.yaml", config, **overrides)


def shard_ids(run_dir: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for p in sorted((run_dir / "shards").glob("*.a1.jsonl"))
            for line in p.read_text().splitlines()]


def test_each_record_gets_its_own_answer_and_the_line_is_kept(cli, emulator, runs_dir, tmp_path):
    config = write_masking(tmp_path / "j", USERS)
    created = cli.json("create", config, "--run", "m")["data"]
    assert created["requests"] == 6 and created["shards"] == 3  # one request per tweet, 2 per shard
    assert shard_ids(runs_dir / "m") == ["u1#0", "u1#1", "u3#0", "u4#0", "u4#1", "u4#2"]  # line id # position
    cli("run", "m", "--wait", "--poll-interval", "0")
    out = read_jsonl(runs_dir / "m" / "output.jsonl")
    assert len(out) == 4  # one line per input line, in order
    for user, got in zip(USERS, out):
        assert list(got) == list(user)  # the line's fields, in their order, nothing added at its level
        assert {k: v for k, v in got.items() if k != "tweets"} == {k: v for k, v in user.items() if k != "tweets"}
        assert len(got["tweets"]) == len(user["tweets"])
        for tweet, masked in zip(user["tweets"], got["tweets"]):
            assert list(masked)[: len(tweet)] == list(tweet)  # the record's own fields first, as they were
            assert {k: masked[k] for k in tweet} == tweet
            assert masked["masked_text"] == f"echo: Mask ({user['name']}): {tweet['full_text']}"
            assert masked["masked_text_attempts"] == 1 and "masked_text_error" not in masked
    assert out[1] == USERS[1]  # an empty list: the line is written unchanged
    assert emulator.counts["batch_creates"] == 3


def test_record_id_names_the_record_and_estimate_counts_every_record(cli, emulator, runs_dir, tmp_path):
    users = [u for u in USERS if all("tweet_id" in t for t in u["tweets"])]
    config = write_masking(tmp_path / "j", users, input={"path": "users.jsonl", "id": "user_id",
                                                         "records": "tweets", "record_id": "tweet_id"})
    estimate = cli.json("estimate", config)["data"]
    assert estimate["requests"] == 3 and estimate["shards"] == 2
    cli("create", config, "--run", "ids")
    assert shard_ids(runs_dir / "ids") == ["u1#t1", "u1#t2", "u3#7"]


def test_a_failed_record_keeps_its_place_with_its_error(cli, emulator, runs_dir, tmp_path):
    users = json.loads(json.dumps(USERS))
    users[0]["tweets"][1]["full_text"] = "awful [[fail:400]]"
    config = write_masking(tmp_path / "j", users)
    result = cli("run", config, "--run", "f", "--wait", "--poll-interval", "0", code=6)
    assert "1 failed" in result.stdout
    out = read_jsonl(runs_dir / "f" / "output.jsonl")
    first, failed = out[0]["tweets"]
    assert first["masked_text"] == "echo: Mask (Ann): I love it"
    assert failed["masked_text"] is None and failed["masked_text_error"]["status_code"] == 400
    assert failed["full_text"] == "awful [[fail:400]]" and failed["tweet_id"] == "t2"
    assert all(t["masked_text"].startswith("echo: ") for u in out[2:] for t in u["tweets"])


def test_the_index_is_rebuilt_for_records(cli, emulator, runs_dir, tmp_path):
    """recover's rebuild renders the requests again: their order must match the records'."""
    cli("run", write_masking(tmp_path / "j", USERS), "--run", "r", "--wait", "--poll-interval", "0")
    before = (runs_dir / "r" / "output.jsonl").read_bytes()
    (runs_dir / "r" / "index.sqlite").unlink()
    (runs_dir / "r" / "output.jsonl").unlink()
    cli("process", "r")
    assert (runs_dir / "r" / "output.jsonl").read_bytes() == before


def test_a_line_whose_records_are_not_a_list_is_named(cli, tmp_path):
    users = json.loads(json.dumps(USERS))
    users[2]["tweets"] = {"tweet_id": 7, "full_text": "so so"}
    result = cli("create", write_masking(tmp_path / "j", users), code=2)
    assert "users.jsonl line 3 (row id u3): records field 'tweets' (input.records) must be a list" in result.stderr
    del users[2]["tweets"]
    result = cli("create", write_masking(tmp_path / "k", users), code=2)
    assert "users.jsonl line 3 (row id u3): records field 'tweets' (input.records) is missing" in result.stderr
    users[2]["tweets"] = ["so so"]
    result = cli("create", write_masking(tmp_path / "l", users), code=2)
    assert "line 3 (row id u3): record 0 of 'tweets' must be a JSON object" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-made


def test_a_record_id_used_twice_in_a_line_is_refused(cli, tmp_path):
    users = [{"user_id": "u1", "name": "Ann",
              "tweets": [{"tweet_id": "a", "full_text": "x"}, {"tweet_id": "a", "full_text": "y"}]}]
    config = write_masking(tmp_path / "j", users, input={"path": "users.jsonl", "id": "user_id",
                                                         "records": "tweets", "record_id": "tweet_id"})
    result = cli("create", config, code=2)
    assert "id 'u1#a'" in result.stderr and "appears twice" in result.stderr
    users[0]["tweets"][1]["tweet_id"] = "b#c"
    result = cli("create", write_masking(tmp_path / "k", users, input={
        "path": "users.jsonl", "id": "user_id", "records": "tweets", "record_id": "tweet_id"}), code=2)
    assert "record 1 of 'tweets': record id field 'tweet_id' (input.record_id) contains '#'" in result.stderr


def test_a_record_that_has_the_output_key_already_is_refused(cli, tmp_path):
    users = [{"user_id": "u1", "name": "Ann", "tweets": [{"full_text": "x", "masked_text": "old"}]}]
    result = cli("create", write_masking(tmp_path / "j", users), code=2)
    assert "line 1 (row id u1#0): the record already has a field 'masked_text'" in result.stderr


def test_records_config_mistakes_name_the_field(cli, tmp_path):
    config = write_masking(tmp_path / "j", USERS, output={"key": "masked_text", "explode": True})
    result = cli("create", config, code=2)
    assert "output.explode cannot be used with input.records" in result.stderr and "mask.yaml line" in result.stderr
    config = write_masking(tmp_path / "k", USERS, limits={"target": 3})
    assert "limits.target cannot be used with input.records" in cli("create", config, code=2).stderr
    config = write_masking(tmp_path / "l", USERS, input={"path": "users.jsonl", "record_id": "tweet_id"})
    assert "input.record_id needs input.records" in cli("create", config, code=2).stderr
