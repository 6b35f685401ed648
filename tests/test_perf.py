"""Issue 9: what makes the local stages and the everyday commands fast, checked by what it does
(modules loaded, calls the service saw, rows the index refused), never by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batchpipe.ops.shard_writer import INDEX_BATCH
from conftest import review_rows, write_job

# Run the real `batchpipe` in a fresh interpreter, then report which modules it loaded.
PROBE = """
import json, runpy, sys
report, sys.argv = sys.argv[1], ["batchpipe", *sys.argv[2:]]
code = 0
try:
    runpy.run_module("batchpipe", run_name="__main__")
except SystemExit as exc:
    code = exc.code
with open(report, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def loaded(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    report = tmp_path / "probe.json"
    subprocess.run([sys.executable, "-c", PROBE, str(report), *args], env=os.environ.copy(),
                   capture_output=True, check=True)
    data = json.loads(report.read_text())
    return data["code"], set(data["modules"])


def test_help_and_list_load_neither_the_client_nor_the_steps_they_do_not_run(tmp_path, cli):
    cli("create", write_job(tmp_path / "job"))
    for args in (["--help"], ["list"]):
        code, modules = loaded(tmp_path, *args)
        assert code == 0
        assert "openai" not in modules
        assert not {"batchpipe.ops.submit", "batchpipe.ops.process", "batchpipe.ops.create"} & modules, args
        assert "yaml" not in modules, args  # not even the config loader


def test_status_of_a_finished_run_makes_no_call_and_does_not_load_the_client(tmp_path, cli, emulator):
    config = write_job(tmp_path / "job")
    run_id = cli.json("create", config)["data"]["run"]
    cli("run", run_id, "--wait")
    before = emulator.counts["requests"]
    code, modules = loaded(tmp_path, "status", run_id)
    assert code == 0
    assert "openai" not in modules
    assert emulator.counts["requests"] == before
    assert cli.json("status", run_id)["data"]["refreshed"] is True


def test_status_of_submitted_shards_makes_one_call_per_shard_at_most(tmp_path, cli, emulator):
    config = write_job(tmp_path / "job", review_rows(12))  # 5 per shard: 3 shards
    run_id = cli.json("create", config)["data"]["run"]
    cli("submit", run_id)
    submitted = sum(s["state"] == "submitted" for s in cli.json("status", run_id)["data"]["shards"])
    assert submitted == 3
    before = emulator.counts["requests"]
    cli("status", run_id)
    assert emulator.counts["requests"] - before <= submitted + 1


def test_status_table_of_many_shards_is_grouped_and_json_keeps_every_one(tmp_path, cli):
    config = write_job(tmp_path / "job", review_rows(120), limits={"max_requests_per_shard": 2})
    run_id = cli.json("create", config)["data"]["run"]
    out = cli("status", run_id).output
    assert "60 shards" in out and "00001.a1" not in out
    assert "--json lists each one" in out
    assert len(cli.json("status", run_id)["data"]["shards"]) == 60


def test_duplicate_id_in_a_later_index_batch_is_named_with_both_lines(tmp_path, cli, runs_dir):
    rows = review_rows(INDEX_BATCH + 10)
    rows[INDEX_BATCH + 4]["review_id"] = rows[2]["review_id"]  # line INDEX_BATCH + 5 repeats line 3
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 50_000})
    out = cli("create", config, code=2).output
    assert f"line {INDEX_BATCH + 5}: id 'r0003'" in out and "first on line 3" in out
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_duplicate_id_inside_one_index_batch_is_named_with_both_lines(tmp_path, cli, runs_dir):
    rows = review_rows(30)
    rows[20]["review_id"] = rows[9]["review_id"]
    rows[25]["review_id"] = rows[1]["review_id"]  # a later duplicate: the first one is reported
    out = cli("create", write_job(tmp_path / "job", rows), code=2).output
    assert "line 21: id 'r0010'" in out and "first on line 10" in out
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_a_created_index_is_a_normal_durable_database(tmp_path, cli, runs_dir):
    """The bulk build turns its no-sync journal off again: the index others open is a plain one."""
    import sqlite3

    run_id = cli.json("create", write_job(tmp_path / "job"))["data"]["run"]
    db = sqlite3.connect(runs_dir / run_id / "index.sqlite")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 12
        assert db.execute("SELECT sum(lines) FROM shard_files").fetchone()[0] == 12  # every line of the shard files
    finally:
        db.close()


def test_a_duplicate_id_above_a_bad_row_of_the_same_index_batch_is_the_error_named(tmp_path, cli):
    """Index rows go in by batches: the first error in file order is still the one reported."""
    rows = review_rows(30)
    rows[10]["review_id"] = rows[4]["review_id"]  # line 11 repeats line 5
    del rows[20]["text"]  # line 21 lacks a field the prompt uses
    out = cli("create", write_job(tmp_path / "job", rows), code=2).output
    assert "line 11: id 'r0005'" in out and "first on line 5" in out
