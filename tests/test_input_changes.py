"""An input file that changes under a run: create records the hash of exactly the bytes it
rendered (or refuses), and process never reports done while a paid request has no row."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import expected_answer, read_jsonl, review_rows, write_job

from batchpipe.config import load_config
from batchpipe.errors import InputError
from batchpipe.ledger.store import Ledger
from batchpipe.paths import RunPaths
from batchpipe.pipeline.inputs import InputDigest, iter_rows


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def pay(cli, run_id: str) -> None:
    """Everything up to process: the run's requests are answered, paid and downloaded."""
    cli("submit", run_id)
    cli("status", run_id)
    cli("download", run_id)


def test_create_records_the_size_and_sha_of_the_bytes_it_rendered(cli, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(12))
    cli("create", config, "--run", "rec")
    data = (tmp_path / "job" / "job.jsonl").read_bytes()
    recorded = json.loads((runs_dir / "rec" / "state.json").read_text())["run"]["input"]
    assert recorded["bytes"] == len(data)
    assert recorded["sha256"] == hashlib.sha256(data).hexdigest()
    assert recorded["rows"] == 12


def test_input_changed_after_create_is_refused_by_process_until_restored(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(12)
    config = write_job(tmp_path / "job", rows)
    data = tmp_path / "job" / "job.jsonl"
    original = data.read_bytes()
    cli("create", config, "--run", "grown")
    pay(cli, "grown")

    for changed in (original + jsonl(review_rows(14)[12:]), jsonl(rows[:10])):  # rows appended, rows cut off
        data.write_bytes(changed)
        result = cli("process", "grown", code=2)
        assert "job.jsonl has changed since the run was created" in result.stderr
        assert "Traceback" not in result.output
        assert not (runs_dir / "grown" / "output.jsonl").exists()
        assert cli.json("status", "grown")["data"]["done"] is False

    data.write_bytes(original)  # what the hint says: restore the file the run was made from
    processed = cli.json("process", "grown")["data"]
    assert processed["done"] and processed["ok"] == 12
    out = read_jsonl(runs_dir / "grown" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]
    assert emulator.counts["batch_creates"] == 3  # nothing was sent twice


def test_process_never_reports_done_while_paid_requests_have_no_row(cli, emulator, runs_dir, tmp_path):
    """The run an input growing during create left behind (before create hashed what it read):
    12 requests rendered and paid, while the ledger recorded the hash of the first 10 rows.
    Truncating the input back to those 10 rows, as process's hint said, made process drop the
    2 paid answers silently and report done."""
    rows = review_rows(12)
    config = write_job(tmp_path / "job", rows)
    data = tmp_path / "job" / "job.jsonl"
    cli("create", config, "--run", "raced")
    pay(cli, "raced")
    first_ten = jsonl(rows[:10])
    data.write_bytes(first_ten)
    ledger = Ledger.load(RunPaths.of(runs_dir, "raced"))  # what that create recorded
    ledger.run.input.update(bytes=len(first_ten), sha256=hashlib.sha256(first_ten).hexdigest())
    ledger.commit()

    for _ in range(2):  # refused every time, nothing written in between
        result = cli("process", "raced", code=2)
        assert "2 requests of run raced have no row in job/job.jsonl" in result.stderr, result.stderr
        assert "(the first: id 'r0011')" in result.stderr
        assert "Traceback" not in result.output
        assert not (runs_dir / "raced" / "output.jsonl").exists()
        assert cli.json("status", "raced")["data"]["done"] is False

    data.write_bytes(jsonl(rows))  # the rows the requests were made from
    ledger = Ledger.load(RunPaths.of(runs_dir, "raced"))
    ledger.run.input.update(bytes=len(jsonl(rows)), sha256=hashlib.sha256(jsonl(rows)).hexdigest())
    ledger.commit()
    processed = cli.json("process", "raced")["data"]
    assert processed["done"] and processed["ok"] == 12  # every paid answer lands in the output
    assert [r["verdict"] for r in read_jsonl(runs_dir / "raced" / "output.jsonl")] == [expected_answer(r) for r in rows]


# The race itself, in the reader create and process use. The test changes the file between two
# rows of one read: the reader must refuse, or report the hash of exactly the bytes it parsed.


def reader_job(tmp_path: Path, rows: int = 3, fmt: str = "jsonl") -> tuple[Path, Path]:
    config = write_job(tmp_path / "job", review_rows(rows))
    data = tmp_path / "job" / "job.jsonl"
    if fmt == "csv":
        csv_path = data.with_suffix(".csv")
        lines = ["review_id,stars,text"] + [f"{r['review_id']},{r['stars']},{r['text']}" for r in review_rows(rows)]
        csv_path.write_text("\n".join(lines) + "\n")
        text = config.read_text().replace("path: job.jsonl", "path: job.csv")
        config.write_text(text)
        data = csv_path
    return config, data


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_digest_is_the_sha_of_the_bytes_read(tmp_path, fmt):
    config, data = reader_job(tmp_path, fmt=fmt)
    digest = InputDigest()
    assert len(list(iter_rows(load_config(config).input, digest))) == 3
    assert (digest.bytes, digest.sha256) == (data.stat().st_size, hashlib.sha256(data.read_bytes()).hexdigest())


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_file_cut_short_while_it_is_read_is_refused(tmp_path, fmt):
    config, data = reader_job(tmp_path, fmt=fmt)
    rows = iter_rows(load_config(config).input, InputDigest())
    next(rows)
    with open(data, "r+b") as f:  # rewritten in place, shorter: the reader still holds the old bytes
        f.truncate(10)
    with pytest.raises(InputError, match="changed while it was being read"):
        list(rows)


def test_a_file_replaced_while_it_is_read_is_refused(tmp_path):
    config, data = reader_job(tmp_path)
    rows = iter_rows(load_config(config).input, InputDigest())
    next(rows)
    fresh = data.with_name("fresh.jsonl")
    fresh.write_bytes(data.read_bytes())  # same bytes, another file: an export that was redone
    os.replace(fresh, data)
    with pytest.raises(InputError, match="changed while it was being read"):
        list(rows)


def test_rows_appended_while_the_file_is_read_are_refused_or_hashed_with_what_was_parsed(tmp_path):
    config, data = reader_job(tmp_path)
    digest = InputDigest()
    rows = iter_rows(load_config(config).input, digest)
    seen = [next(rows)]
    with open(data, "ab") as f:
        f.write(jsonl(review_rows(4)[3:]))
    try:
        seen += list(rows)
    except InputError as exc:  # the file's mtime moved while it was read
        assert "changed while it was being read" in str(exc)
        return
    # Not refused: then the appended row was parsed, and the digest covers it.
    assert [r.data["review_id"] for r in seen] == ["r0001", "r0002", "r0003", "r0004"]
    assert digest.sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
