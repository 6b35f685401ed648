"""Issue 9: request ids in no order (UUIDs, hashes) at create.

Inserted one by one, each such id lands on a page of its own anywhere in the index's table of
requests: create slowed down and its memory grew with the run. Such ids are now staged beside
the index and put in place sorted at the end; the run, its index and every message about a
duplicate id must be what they were.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from conftest import expected_answer, read_jsonl, write_job


def hex_rows(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    return [{"review_id": f"{rng.getrandbits(128):032x}", "stars": i % 5 + 1, "text": f"review number {i}"}
            for i in range(1, n + 1)]


def assert_refused(cli, runs_dir: Path, config: Path, *needles: str) -> None:
    result = cli("create", config, code=2)
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []  # nothing half-made, no staging file


def test_scattered_ids_make_a_run_whose_every_row_gets_its_own_answer(cli, emulator, runs_dir, tmp_path):
    rows = hex_rows(240)
    config = write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 50})
    assert cli.json("create", config, "--run", "hex")["data"]["requests"] == 240
    assert sorted(p.name for p in (runs_dir / "hex").iterdir() if "index" in p.name) == ["index.sqlite"]

    result = cli.json("run", "hex", "--wait", "--poll-interval", "0")
    assert result["data"]["done"]
    assert not any("index.sqlite" in w for w in result["data"]["warnings"])  # not rebuilt: it was whole
    out = read_jsonl(runs_dir / "hex" / "output.jsonl")
    assert [r["review_id"] for r in out] == [r["review_id"] for r in rows]
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert cli.json("recover", "hex")["exit_code"] == 0


def test_a_duplicate_scattered_id_names_both_lines(cli, runs_dir, tmp_path):
    rows = hex_rows(200)
    rows[150]["review_id"] = rows[30]["review_id"]
    rows[170]["review_id"] = rows[10]["review_id"]  # a later duplicate of an earlier id: the first in the file wins
    config = write_job(tmp_path / "job", rows)
    assert_refused(cli, runs_dir, config, f"line 151: id '{rows[30]['review_id']}'", "appears twice, first on line 31")


def test_a_duplicate_scattered_id_above_a_bad_row_is_the_error(cli, runs_dir, tmp_path):
    rows = hex_rows(120)
    rows[60]["review_id"] = rows[2]["review_id"]
    config = write_job(tmp_path / "job", rows)
    data = tmp_path / "job" / "job.jsonl"
    lines = data.read_text().splitlines(keepends=True)
    lines[100] = "{not json\n"
    data.write_text("".join(lines))
    assert_refused(cli, runs_dir, config, "line 61: id", "appears twice, first on line 3")


def test_a_duplicate_of_an_id_from_before_the_ids_scattered_is_found(cli, runs_dir, tmp_path):
    # the first rows' ids ascend (they go straight into the index); the rest are scattered
    rows = [{"review_id": f"a{i:04d}", "stars": 3, "text": "fine"} for i in range(1, 41)] + hex_rows(200)
    rows[-1]["review_id"] = "a0007"
    config = write_job(tmp_path / "job", rows)
    assert_refused(cli, runs_dir, config, "line 240: id 'a0007'", "appears twice, first on line 7")


def test_a_bad_row_after_scattered_ids_still_names_its_line(cli, runs_dir, tmp_path):
    rows = hex_rows(80)
    config = write_job(tmp_path / "job", rows)
    data = tmp_path / "job" / "job.jsonl"
    data.write_text(data.read_text() + json.dumps({"review_id": "x", "stars": 1}) + "\n")
    assert_refused(cli, runs_dir, config, "line 81", "text")


def test_a_duplicate_scattered_id_after_blank_lines_names_the_file_lines(cli, runs_dir, tmp_path):
    rows = hex_rows(90)
    rows[70]["review_id"] = rows[20]["review_id"]
    config = write_job(tmp_path / "job", rows)
    data = tmp_path / "job" / "job.jsonl"
    data.write_text("\n\n" + data.read_text())  # two blank lines first: line numbers are no longer row numbers
    assert_refused(cli, runs_dir, config, "line 73: id", "appears twice, first on line 23")
