"""Issue 9, startup: a run's own config snapshot is read back without validating it again (no
pydantic), to exactly what validating it gives; anything else is validated as before.

Checked by what the commands answer and what a process loaded, never by timing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import write_job
from test_instant_cli import loaded

from batchpipe.config import load_config, snapshot_config, snapshot_yaml

HOOKS = '''
def parse(text):
    return {"label": text}


def check(record):
    return True
'''

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
JSON_PARAMS = {"temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}}

# One-step configs using every part of the format the snapshot writes (each a section override of write_job's).
CONFIGS = {
    "plain": {},
    "no system, no id, csv-free defaults": {"prompt": {"user": "{text}"}, "input": {"path": "job.jsonl"}},
    "json answers, checked and mended": {
        "params": JSON_PARAMS,
        "output": {"key": "v", "fields": ["label"], "meta": True, "truncated": "fail", "on_invalid": "fallback",
                   "fallback": {"copy": "text"},
                   "validate": {"json": True, "json_schema": SCHEMA, "regex": "^.", "choices": ["a", 1, 2.5, True]}},
    },
    "exploded list answers": {"params": JSON_PARAMS, "output": {"key": "items", "explode": "items", "parse": "json"}},
    "parse text while asking for json": {"params": JSON_PARAMS, "output": {"key": "v", "parse": "text"}},
    "hooks": {"output": {"key": "v", "parse": "hooks:parse", "validate": {"function": "hooks:check"}}},
    "hooks from their own dir": {"output": {"key": "v", "parse": "hooks:parse"}, "hooks_dir": "."},
    "limits, prices, provider, sync": {
        "limits": {"max_requests_per_shard": 7, "max_bytes_per_shard": 100_000, "max_attempts": 5,
                   "budget_usd": 12, "enqueued_tokens": 90_000, "target": 4},
        "pricing": {"input_per_million": 0.1, "output_per_million": 0.4},
        "provider": {"name": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "mode": "sync", "sync": {"max_workers": 3, "requests_per_minute": 60, "tokens_per_minute": 10_000},
    },
    "images and a dialogue": {
        "prompt": {"system": "You caption.", "user": "Caption {text}", "images": ["pics/{review_id}.png"],
                   "images_dir": "pics", "history": [{"user": "a cat", "assistant": "cat", "images": ["x.png"]},
                                                     {"user": "a dog", "assistant": "dog"}]},
    },
    "records of a line": {"input": {"path": "job.jsonl", "id": "review_id", "records": "items", "record_id": "sku"}},
    "a generation job": {"input": {"count": 5}, "prompt": {"user": "Write sentence {index}."}},
    "a generation job with an id": {"input": {"count": 3, "id": "index"}, "prompt": {"user": "Line {index}."}},
    "embeddings": {"endpoint": "/v1/embeddings", "prompt": {"user": "{text}"}, "params": {}},
    "responses asking for json": {
        "endpoint": "/v1/responses",
        "params": {"text": {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA}}},
    },
    "multi-line text": {"prompt": {"system": "Line one.\nLine two:  \n\tand a tab", "user": "Review:\n{text}"}},
}


def _snapshot_of(tmp_path: Path, overrides: dict) -> Path:
    """Where create would keep it: the resolved config, written as create writes it, in another directory."""
    job = tmp_path / "job"
    rows = [{"review_id": "r1", "stars": 3, "text": "fine", "items": [{"sku": "a"}]}]
    config = write_job(job, rows, **overrides)
    (job / "hooks.py").write_text(HOOKS, encoding="utf-8")
    snapshot = tmp_path / "run" / "config.yaml"
    snapshot.parent.mkdir()
    snapshot.write_bytes(snapshot_yaml(load_config(config, check_hooks=True)).encode())
    return snapshot


@pytest.mark.parametrize("name", CONFIGS)
def test_a_snapshot_reads_back_as_validating_it_does(tmp_path, name):
    snapshot = _snapshot_of(tmp_path, CONFIGS[name])
    fast = snapshot_config(snapshot.read_bytes(), snapshot.absolute())
    assert fast is not None, "this snapshot should be read without the models"
    assert fast == load_config(snapshot)  # every field, source included
    assert snapshot_yaml(fast) == snapshot.read_text()


def test_what_is_not_a_snapshot_as_create_writes_it_is_left_to_validation(tmp_path):
    snapshot = _snapshot_of(tmp_path, {})
    text = snapshot.read_text()
    data = yaml.safe_load(text)

    def fast(new_text: str) -> object:
        snapshot.write_text(new_text)
        return snapshot_config(snapshot.read_bytes(), snapshot.absolute())

    assert fast(text) is not None
    assert fast(text + "surprise: 1\n") is None  # a key it does not know
    assert fast(text.replace("max_attempts: 3", "max_attempts: null")) is None  # not set: the default, not null
    assert fast(text.replace("provider:\n  name: openai\n  base_url: null\n", "provider: openai\n")) is None
    assert fast(yaml.safe_dump({**data, "steps": []})) is None  # a multi-step job: its steps inherit
    assert fast("model: [unclosed\n") is None
    assert fast("- a list\n") is None
    snapshot.write_bytes(b"model: \xff\n")  # not UTF-8
    assert snapshot_config(snapshot.read_bytes(), snapshot.absolute()) is None
    Path(data["input"]["path"]).unlink()  # load_config refuses a snapshot whose input is gone: so must this
    assert fast(text) is None


def test_status_and_process_of_a_run_load_no_models_and_reading_takes_no_lock(tmp_path, cli, emulator, runs_dir):
    run_id = cli.json("run", write_job(tmp_path / "job"), "--wait", "--poll-interval", "0")["data"]["run"]
    read_only = loaded(tmp_path, [["status", run_id], ["status", run_id, "--json"], ["list"], ["list", "--json"]])
    assert "batchpipe.render" in read_only  # (the probe sees what ran)
    assert not {"pydantic", "batchpipe.config.models", "jsonschema", "filelock", "dotenv"} & read_only
    processed = loaded(tmp_path, [["process", run_id], ["process", run_id, "--json"]])
    assert "batchpipe.ops.process" in processed
    assert not {"pydantic", "batchpipe.config.models", "jsonschema", "batchpipe.ops.create"} & processed


def test_a_snapshot_changed_since_create_is_still_validated(tmp_path, cli, runs_dir):
    run_id = cli.json("create", write_job(tmp_path / "job"))["data"]["run"]
    snapshot = runs_dir / run_id / "config.yaml"
    # Written as create writes it, but not what create validated: the models must see it.
    snapshot.write_text(snapshot.read_text().replace("max_attempts: 3", "max_attempts: 0"))
    result = cli("status", run_id)  # (its price needs the config: it says why there is none)
    assert "config.yaml line" in result.output
    assert "limits.max_attempts must be a whole number of at least 1 (got 0)" in result.output


def test_a_run_whose_input_is_gone_says_so_as_before(tmp_path, cli, runs_dir):
    config = write_job(tmp_path / "job")
    run_id = cli.json("create", config)["data"]["run"]
    (tmp_path / "job" / "job.jsonl").unlink()
    result = cli("process", run_id, code=2)
    assert "input.path: file not found" in result.output


def test_an_input_gone_after_the_config_was_read_once_is_still_seen(tmp_path, cli, runs_dir):
    """The snapshot is parsed once per process: whether its input is there is asked on every read."""
    config = write_job(tmp_path / "job")
    run_id = cli.json("create", config)["data"]["run"]
    cli("status", run_id)  # reads the snapshot, with its input there
    (tmp_path / "job" / "job.jsonl").unlink()
    result = cli("process", run_id, code=2)
    assert "input.path: file not found" in result.output


def test_parameters_are_still_checked_by_typer(tmp_path, cli, runs_dir):
    """Text and paths are taken as given; numbers typed in are still typer's to check, with its messages."""
    run_id = cli.json("create", write_job(tmp_path / "job"), "--run", "typed")["data"]["run"]
    assert cli.json("status", run_id, "--runs-dir", str(runs_dir))["data"]["run"] == "typed"
    assert "Invalid value for '--budget'" in cli("submit", run_id, "--budget", "-1", code=2).output
    assert "Invalid value for '--limit'" in cli("list", "--remote", "--limit", "many", code=2).output
