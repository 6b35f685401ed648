"""The ledger: its transition table, its refusal of damaged or newer files, durable writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import review_rows, write_job

from batchpipe import fsio
from batchpipe.errors import ExitCode, IllegalTransition
from batchpipe.ledger.migrations import SCHEMA_VERSION
from batchpipe.ledger.model import ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ledger.transitions import ALLOWED, check
from batchpipe.paths import RunPaths

S = ShardState


def test_the_lifecycle_table_is_exactly_the_design():
    assert ALLOWED == {
        # COMPLETED: sent in sync mode (every answer journaled), or exported and its results imported by hand
        S.PREPARED: {S.UPLOADED, S.COMPLETED},
        S.UPLOADED: {S.SUBMITTED, S.PREPARED},  # PREPARED: the uploaded file vanished, upload it again
        S.SUBMITTED: {S.COMPLETED, S.UPLOADED},
        S.COMPLETED: {S.MERGED},
        S.MERGED: set(),
    }


def make_run(cli, tmp_path: Path, run_id: str = "led") -> RunPaths:
    cli("create", write_job(tmp_path / "job", review_rows(6)), "--run", run_id)
    return RunPaths(Path(os.environ["BATCHPIPE_RUNS_DIR"]) / run_id)


@pytest.mark.parametrize("src", list(S))
@pytest.mark.parametrize("dst", list(S))
def test_every_transition_outside_the_table_is_refused(cli, tmp_path, src, dst):
    paths = make_run(cli, tmp_path)
    ledger = Ledger.load(paths)
    shard = ledger.shards[0]
    shard.state = src
    if dst in ALLOWED[src]:
        check(shard, dst)
    else:
        with pytest.raises(IllegalTransition, match=f"{src.value} -> {dst.value}"):
            ledger.advance(shard, dst)
        assert Ledger.load(paths).shards[0].state == S.PREPARED  # nothing was committed


def test_state_json_has_schema_version_and_checksum(cli, tmp_path):
    paths = make_run(cli, tmp_path)
    doc = json.loads(paths.state.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["checksum"].startswith("sha256:")
    assert [s["state"] for s in doc["shards"]] == ["prepared", "prepared"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[: len(raw) // 2], "not valid JSON"),
        (lambda raw: raw.replace(b'"requests": 6', b'"requests": 7'), "wrong checksum"),
        (lambda raw: raw.replace(b'"schema_version": %d' % SCHEMA_VERSION, b'"schema_version": 99'), "newer batchpipe"),
    ],
    ids=["truncated", "edited", "newer-schema"],
)
def test_a_damaged_or_newer_ledger_is_refused_not_rewritten(cli, tmp_path, damage, message):
    paths = make_run(cli, tmp_path)
    damaged = damage(paths.state.read_bytes())
    paths.state.write_bytes(damaged)
    result = cli("status", "led", code=int(ExitCode.ERROR))
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert paths.state.read_bytes() == damaged  # left exactly as found


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def boom():
        yield b"partial"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fsio.write_lines_atomic(target, boom())
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_atomic_write_replaces_and_reports_size_and_hash(tmp_path):
    target = tmp_path / "f.jsonl"
    size, sha = fsio.write_lines_atomic(target, [b"a\n", b"b\n"])
    assert target.read_bytes() == b"a\nb\n"
    assert (size, sha) == fsio.sha256_file(target)
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_changed_shard_file_is_caught_before_upload(cli, emulator, tmp_path):
    paths = make_run(cli, tmp_path)
    shard_file = paths.shard_file("00001.a1")
    shard_file.write_bytes(shard_file.read_bytes().replace(b"review", b"REVIEW"))
    result = cli("submit", "led", code=int(ExitCode.ERROR))
    assert "has changed since batchpipe wrote it" in result.stderr
    assert emulator.counts["uploads"] == 0


def test_a_schema_2_run_from_before_sync_handoff_and_targets_is_read_and_finished(cli, emulator, runs_dir, tmp_path):
    """What the previous batchpipe wrote (schema 2, none of the new fields) loads, runs on, and
    is written back as schema 3; a schema-3 ledger is one an older batchpipe refuses as newer."""
    from batchpipe.ledger.store import _checksum

    cli("create", write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 2}), "--run", "v2")
    path = runs_dir / "v2" / "state.json"
    doc = json.loads(path.read_text())
    del doc["checksum"]
    doc["schema_version"] = 2
    for key in ("mode", "target_reached", "imports"):
        doc["run"].pop(key, None)
    for shard in doc["shards"]:
        for key in ("mode", "handoff", "answers"):
            shard.pop(key, None)
    doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc))
    cli("run", "v2", "--wait", "--poll-interval", "0")
    assert SCHEMA_VERSION == 3 and json.loads(path.read_text())["schema_version"] == 3
    assert emulator.counts["batch_creates"] == 2


def test_state_json_is_the_ledgers_dataclasses_field_for_field(cli, emulator, runs_dir, tmp_path):
    """encode() lets orjson walk the dataclasses (fast); what it writes must be what asdict says."""
    import orjson

    from batchpipe.ledger.store import encode

    rows = review_rows(6)
    rows[2]["text"] += " [[fail:500]]"  # a retry: batch records, merged counts, history of attempts
    cli("run", write_job(tmp_path / "job", rows, limits={"max_requests_per_shard": 3}), "--run", "e", "--wait",
        "--poll-interval", "0", code=6)
    state = Ledger.load(RunPaths(runs_dir / "e")).state
    written = orjson.loads(encode(state))
    assert written.pop("checksum").startswith("sha256:")
    assert written == {"schema_version": SCHEMA_VERSION, **orjson.loads(orjson.dumps(state.to_dict()))}
