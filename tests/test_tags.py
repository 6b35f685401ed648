"""Tag lookups find this run's own objects only, and cost one batch listing per pass (issue 11, items 1 and 17).

A run id can be used again (the run dir removed, the same job in another runs dir): a lookup must
never adopt or cancel a batch of the other run. And in an organisation whose batch list is many
pages long, the open intents of a pass are looked up together, with one listing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from conftest import INSTANT, batchpipe, expected_answer, read_jsonl, review_rows, write_job

from batchpipe import crash
from batchpipe.emulator import Emulator



def state(runs_dir: Path, run_id: str) -> dict:
    return json.loads((runs_dir / run_id / "state.json").read_text())


def test_recover_never_adopts_the_batch_of_an_earlier_run_with_the_same_id(cli, emulator, runs_dir, tmp_path):
    v1 = write_job(tmp_path / "v1", review_rows(4), limits={"max_requests_per_shard": 4})
    rows2 = [{**r, "text": r["text"] + ", second version"} for r in review_rows(4)]
    v2 = write_job(tmp_path / "v2", rows2, limits={"max_requests_per_shard": 4})
    cli("create", v1, "--run", "test")
    cli("submit", "test")
    first = state(runs_dir, "test")["shards"][0]["batch"]["id"]
    shutil.rmtree(runs_dir / "test")

    cli("create", v2, "--run", "test")  # the same id and row ids, other text
    killed = batchpipe("submit", "test", crash_at="batch_create:after")
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    cli("recover", "test")
    cli("run", "test", "--wait", "--poll-interval", "0")

    assert [r["verdict"] for r in read_jsonl(runs_dir / "test" / "output.jsonl")] == [expected_answer(r) for r in rows2]
    assert state(runs_dir, "test")["shards"][0]["batch"]["id"] != first
    assert emulator.counts["batch_creates"] == 2 and emulator.counts["cancels"] == 0


def test_two_runs_dirs_with_the_same_job_never_touch_each_others_batches(cli, emulator, tmp_path):
    emulator.options.validating_seconds = 3600  # both batches stay live: a "duplicate" would be cancelled
    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    dir_a, dir_b = tmp_path / "runs-a", tmp_path / "runs-b"
    cli("--runs-dir", dir_a, "create", config, "--run", "same")
    cli("--runs-dir", dir_a, "submit", "same")
    cli("--runs-dir", dir_b, "create", config, "--run", "same")
    killed = batchpipe("submit", "same", crash_at="batch_create:after", runs_dir=dir_b)
    assert killed.returncode == crash.EXIT_CODE, killed.stderr

    cli("--runs-dir", dir_b, "recover", "same")
    cli("--runs-dir", dir_a, "recover", "same")
    cli("--runs-dir", dir_b, "submit", "same")

    batch_a = state(dir_a, "same")["shards"][0]["batch"]["id"]
    batch_b = state(dir_b, "same")["shards"][0]["batch"]["id"]
    assert batch_a != batch_b
    assert {b["id"]: b["status"] for b in emulator.batches} == {batch_a: "validating", batch_b: "validating"}
    assert emulator.counts["cancels"] == 0 and emulator.counts["duplicate_creates"] == 0
    # each upload carries its run's nonce: neither dir adopted the other's file
    file_a = state(dir_a, "same")["shards"][0]["upload"]
    file_b = state(dir_b, "same")["shards"][0]["upload"]
    assert file_a["file_id"] != file_b["file_id"] and file_a["filename"] != file_b["filename"]


def test_a_file_of_the_same_name_but_other_content_is_not_adopted(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "up")
    killed = batchpipe("submit", "up", crash_at="upload:before")
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    # Something else uploaded a file under this intent's name (a truncated copy, say).
    name = state(runs_dir, "up")["shards"][0]["upload"]["filename"]
    from conftest import sdk

    impostor = sdk(emulator).files.create(file=(name, b'{"custom_id": "x"}\n', "application/jsonl"), purpose="batch")
    cli("run", "up", "--wait", "--poll-interval", "0")
    assert state(runs_dir, "up")["shards"][0]["upload"]["file_id"] != impostor.id
    assert len(read_jsonl(runs_dir / "up" / "output.jsonl")) == 4


def test_a_run_from_before_the_nonce_is_migrated_and_its_open_intent_still_found(cli, emulator, runs_dir, tmp_path):
    """A schema-1 ledger (no nonce) with an open batch intent: the lookup uses the tag it recorded."""
    from batchpipe.ledger.store import _checksum

    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "old")
    killed = batchpipe("submit", "old", crash_at="batch_create:after")
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    # Make it what an older batchpipe wrote: schema 1, no nonce, a tag without one, a URL with credentials.
    doc = state(runs_dir, "old")
    batch = next(b for b in emulator.batches)
    doc["schema_version"] = 1
    del doc["checksum"]
    nonce = doc["run"].pop("nonce", None)
    doc["run"]["base_url"] = doc["run"]["base_url"].replace("http://", "http://user:hunter2@")
    doc["shards"][0]["batch"]["metadata"] = {k: v for k, v in batch["metadata"].items() if k != "batchpipe_nonce"}
    doc["checksum"] = _checksum(doc)
    (runs_dir / "old" / "state.json").write_text(json.dumps(doc))
    assert nonce is not None  # (this batchpipe records one)

    cli("run", "old", "--wait", "--poll-interval", "0")
    migrated = state(runs_dir, "old")
    assert migrated["schema_version"] >= 2 and migrated["run"]["nonce"]
    assert "hunter2" not in migrated["run"]["base_url"]
    assert migrated["shards"][0]["batch"]["id"] == batch["id"]  # adopted by its recorded tag, not sent again
    assert emulator.counts["batch_creates"] == 1


def test_the_open_intents_of_a_pass_are_looked_up_with_one_listing(cli, runs_dir, tmp_path, monkeypatch):
    # 1,000 batches of other users, and every create's answer lost: each create must be looked up.
    options = dataclasses.replace(INSTANT, foreign_batches=1000)
    with Emulator(options) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        # a known queue limit, so all four creates go in one pass (an unknown one is probed batch by batch)
        config = write_job(tmp_path / "job", review_rows(12), limits={"max_requests_per_shard": 3, "enqueued_tokens": 10**6})
        cli("create", config, "--run", "busy")
        emu.options.lost_answer_rate = 1.0
        result = cli("submit", "busy")
        emu.options.lost_answer_rate = 0.0
        assert emu.counts["lost_answers_by_op"]["create"] == 4
        # one listing of all 1,004 batches (11 pages of 100) for the four lost answers together
        assert emu.counts["batch_list_pages"] == 11, result.output
        assert emu.counts["batch_creates"] == 4 and emu.counts["duplicate_creates"] == 0
        assert [s["state"] for s in state(runs_dir, "busy")["shards"]] == ["submitted"] * 4
        cli("run", "busy", "--wait", "--poll-interval", "0")
        assert len(read_jsonl(runs_dir / "busy" / "output.jsonl")) == 12


def test_recover_looks_up_every_shard_with_one_listing(cli, runs_dir, tmp_path, monkeypatch):
    options = dataclasses.replace(INSTANT, foreign_batches=500)
    with Emulator(options) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        config = write_job(tmp_path / "job", review_rows(12), limits={"max_requests_per_shard": 3})
        cli("create", config, "--run", "rec")
        cli("submit", "rec")
        before = emu.counts["batch_list_pages"]
        cli("recover", "rec")
        assert emu.counts["batch_list_pages"] - before == 6  # 504 batches, 100 a page


def test_a_lagging_batch_list_costs_a_duplicate_that_recover_cancels(cli, emulator, runs_dir, tmp_path):
    """The list may not show a new batch at once: the create is sent again, and recover cancels the twin."""
    emulator.options.validating_seconds = 3600
    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "lag")
    emulator.options.batch_list_lag = 1
    killed = batchpipe("submit", "lag", crash_at="batch_create:after")
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    cli("submit", "lag")  # the lookup does not see the first batch yet
    emulator.options.batch_list_lag = 0
    kept = state(runs_dir, "lag")["shards"][0]["batch"]["id"]
    result = cli("recover", "lag")
    assert "cancelled duplicate batch" in result.stdout and f"kept {kept}" in result.stdout
    statuses = {b["id"]: b["status"] for b in emulator.batches}
    assert statuses.pop(kept) == "validating"
    assert list(statuses.values()) in (["cancelling"], ["cancelled"])  # exactly one twin, and it was cancelled
