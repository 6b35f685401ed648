"""How `process` writes the output lines of the usual job, and how a run's index of an earlier
layout is taken: a row answered as it should be is its input line with the answer appended (its
own bytes kept); any other row is parsed and written whole; an old index is rebuilt."""

from __future__ import annotations

import json
import sqlite3

from conftest import read_jsonl, review_rows, write_job


def test_an_answered_row_is_its_input_line_with_the_answer_appended(cli, emulator, runs_dir, tmp_path):
    lines = [
        '\ufeff{"review_id": "a", "stars": 5, "text": "ok"}\r\n',  # a byte order mark, spaces, CRLF
        '{"review_id":"b","stars":1.50,"text":"caf\\u00e9"}\n',  # 1.50 and \u00e9 kept as written
        "\n",
        '{"review_id": "c", "stars": 2, "text": "' + "long " * 20 + '"}  \n',  # its answer is cut short
    ]
    config = write_job(tmp_path / "job", [], params={"max_tokens": 10})
    (tmp_path / "job" / "job.jsonl").write_bytes("".join(lines).encode("utf-8"))
    cli("run", config, "--run", "lines", "--wait", "--poll-interval", "0")

    out = (runs_dir / "lines" / "output.jsonl").read_text(encoding="utf-8").splitlines()
    assert out[:2] == [
        '{"review_id": "a", "stars": 5, "text": "ok","verdict":"echo: Review (5 stars): ok","verdict_attempts":1}',
        '{"review_id":"b","stars":1.50,"text":"caf\\u00e9","verdict":"echo: Review (1.5 stars): café",'
        '"verdict_attempts":1}',
    ]
    # A row whose answer was cut gets a field more: it is parsed and written whole, compact.
    cut = json.loads(out[2])
    assert out[2].startswith('{"review_id":"c","stars":2,"text":"long long')
    assert (cut["verdict_finish_reason"], cut["verdict_attempts"]) == ("length", 1)
    assert len(out) == 3


def test_an_empty_row_gets_its_answer(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", [{}, {}], input={"path": "job.jsonl"}, prompt={"user": "Say hi"})
    cli("run", config, "--run", "empty", "--wait", "--poll-interval", "0")
    assert (runs_dir / "empty" / "output.jsonl").read_text().splitlines() == [
        '{"verdict":"echo: Say hi","verdict_attempts":1}'] * 2


def test_an_index_of_the_earlier_layout_is_rebuilt_and_the_output_is_the_same(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(7))
    cli("run", config, "--run", "old", "--wait", "--poll-interval", "0")
    before = (runs_dir / "old" / "output.jsonl").read_bytes()
    index = runs_dir / "old" / "index.sqlite"
    index.unlink()
    with sqlite3.connect(index) as db:  # what batchpipe 0.1 wrote: a row per request, no layout version
        db.executescript(
            "CREATE TABLE requests (custom_id TEXT PRIMARY KEY, row_no INTEGER NOT NULL UNIQUE, line_no INTEGER);"
            "CREATE TABLE shard_lines (file TEXT, line INTEGER, custom_id TEXT, PRIMARY KEY (file, line));"
            "CREATE TABLE results (custom_id TEXT PRIMARY KEY, shard TEXT, attempt INTEGER, ok INTEGER,"
            " retryable INTEGER, value BLOB, error BLOB, finish_reason TEXT, usage BLOB);")
    (runs_dir / "old" / "output.jsonl").unlink()

    result = cli.json("process", "old", code=0)
    assert any("has the layout of an earlier batchpipe" in w and "rebuilt it" in w for w in result["data"]["warnings"])
    assert (runs_dir / "old" / "output.jsonl").read_bytes() == before
    assert [r["verdict_attempts"] for r in read_jsonl(runs_dir / "old" / "output.jsonl")] == [1] * 7
