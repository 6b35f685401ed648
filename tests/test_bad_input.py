"""Bad configs and input rows, as `create` (and `run`) meet them: a clear message naming the
file, line, row and field, exit code 2, no traceback and no run dir left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import review_rows, write_job


def assert_refused(cli, runs_dir: Path, args, *needles: str) -> str:
    result = cli(*args, code=2)
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.output
    # nothing half-made: no run dir, no hidden temp dir
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []
    return result.stderr


def test_missing_placeholder_field_names_file_line_row_and_field(cli, runs_dir, tmp_path):
    rows = review_rows(5)
    del rows[3]["stars"]
    config = write_job(tmp_path / "job", rows)
    assert_refused(cli, runs_dir, ["create", config], "job.jsonl", "line 4", "r0004", "stars")


def test_duplicate_id_names_both_lines(cli, runs_dir, tmp_path):
    rows = review_rows(5)
    rows[4]["review_id"] = rows[1]["review_id"]
    config = write_job(tmp_path / "job", rows)
    assert_refused(cli, runs_dir, ["create", config], "line 5: id 'r0002'", "appears twice, first on line 2")


def test_unreadable_line_is_named(cli, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(3))
    data = tmp_path / "job" / "job.jsonl"
    data.write_text(data.read_text() + "{not json\n")
    assert_refused(cli, runs_dir, ["create", config], "job.jsonl", "line 4")


def test_missing_id_field(cli, runs_dir, tmp_path):
    rows = review_rows(3)
    del rows[2]["review_id"]
    config = write_job(tmp_path / "job", rows)
    assert_refused(cli, runs_dir, ["create", config], "line 3", "review_id")


@pytest.mark.parametrize(
    "override, needles",
    [
        ({"limits": {"max_requests_per_shard": "lots"}}, ["job.yaml", "limits.max_requests_per_shard"]),
        ({"promt": {"user": "x"}}, ["job.yaml", "promt", "prompt"]),
        ({"endpoint": "/v1/nope"}, ["job.yaml", "endpoint"]),
        ({"input": {"path": "missing.jsonl"}}, ["job.yaml", "input.path", "missing.jsonl"]),
        ({"prompt": {"user": "Review {stars"}}, ["job.yaml", "prompt.user"]),
    ],
    ids=["bad-number", "typo", "endpoint", "missing-input", "template"],
)
def test_bad_config_is_named_with_its_line(cli, runs_dir, tmp_path, override, needles):
    config = write_job(tmp_path / "job", review_rows(3), **override)
    stderr = assert_refused(cli, runs_dir, ["create", config], *needles)
    assert "line " in stderr


def test_missing_config_file(cli, runs_dir, tmp_path):
    assert_refused(cli, runs_dir, ["create", tmp_path / "nope.yaml"], "nope.yaml")


def test_a_request_bigger_than_the_byte_limit(cli, runs_dir, tmp_path):
    rows = review_rows(3)
    rows[1]["text"] = "x" * 2000
    config = write_job(tmp_path / "job", rows, limits={"max_bytes_per_shard": 1000})
    assert_refused(cli, runs_dir, ["create", config], "line 2", "r0002", "max_bytes_per_shard")


def test_same_run_id_with_a_different_config_is_refused(cli, runs_dir, tmp_path):
    cli("create", write_job(tmp_path / "a", review_rows(3)), "--run", "taken")
    result = cli("create", write_job(tmp_path / "b", review_rows(4)), "--run", "taken", code=2)
    assert "already exists with a different config or input" in result.stderr
