"""A row never carries a field the output writes (`<key>`, `<key>_error`, `<key>_attempts`):
create refuses it, naming the file, line, row and field, so no value is overwritten and no
stale error sits beside a fresh answer."""

from __future__ import annotations

import pytest
from conftest import read_jsonl, review_rows, write_job


@pytest.mark.parametrize("field", ["verdict", "verdict_error", "verdict_attempts"])
def test_a_row_that_has_a_field_the_output_writes_is_refused_at_create(cli, runs_dir, tmp_path, field):
    rows = review_rows(4)
    rows[2][field] = "from an earlier pass"
    config = write_job(tmp_path / "job", rows)  # output.key: verdict
    result = cli("create", config, code=2)
    assert f"job.jsonl line 3 (row id r0003): the row already has a field '{field}'" in result.stderr
    assert "output.key is 'verdict'" in result.stderr
    assert "choose another output.key in job/job.yaml" in result.stderr
    assert "Traceback" not in result.output
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_a_csv_column_named_like_the_output_key_is_refused(cli, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(1), input={"path": "job.csv"}, output={"key": "label"})
    (tmp_path / "job" / "job.csv").write_text("text,stars,label\nnice,4,old\n")
    result = cli("create", config, code=2)
    assert "job.csv line 2 (row 1): the row already has a field 'label'" in result.stderr


def test_the_output_of_a_run_feeds_a_second_job_under_another_key(cli, emulator, runs_dir, tmp_path):
    """The refusal's own advice works: a second pass over an output, with another output.key,
    keeps the first pass's fields and adds its own; no stale error is carried to a success."""
    rows = review_rows(3)
    rows[1]["text"] = "broken [[fail:400]]"
    first = write_job(tmp_path / "one", rows)
    cli("run", first, "--run", "one", "--wait", "--poll-interval", "0", code=6)  # one row failed for good
    second = write_job(
        tmp_path / "two", [], output={"key": "second"}, prompt={"user": "Again: {review_id}"},
        input={"path": str(runs_dir / "one" / "output.jsonl"), "id": "review_id"},
    )
    cli("create", second, "--run", "two")  # input rows hold verdict, verdict_error, verdict_attempts
    cli("run", "two", "--wait", "--poll-interval", "0", code=0)
    out = read_jsonl(runs_dir / "two" / "output.jsonl")
    assert [r["verdict_error"]["status_code"] for r in out if "verdict_error" in r] == [400]
    assert [r["second"] for r in out] == [f"echo: Again: {r['review_id']}" for r in rows]
    assert all("second_error" not in r for r in out)
    assert [r["second_attempts"] for r in out] == [1, 1, 1]


def test_the_same_key_on_a_second_pass_is_refused(cli, emulator, runs_dir, tmp_path):
    first = write_job(tmp_path / "one", review_rows(2))
    cli("run", first, "--run", "one", "--wait", "--poll-interval", "0")
    again = write_job(tmp_path / "two", [], input={"path": str(runs_dir / "one" / "output.jsonl"), "id": "review_id"})
    result = cli("create", again, code=2)
    assert "line 1 (row id r0001): the row already has a field 'verdict'" in result.stderr
