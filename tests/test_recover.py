"""`recover` after damage on disk: it repairs what it can and says exactly what to do about the rest."""

from __future__ import annotations

from pathlib import Path

from conftest import read_jsonl, review_rows, write_job


def finished_run(cli, tmp_path: Path, run_id: str = "rec") -> None:
    cli("run", write_job(tmp_path / "job", review_rows(6)), "--run", run_id, "--wait", "--poll-interval", "0")


def test_a_lost_result_file_is_downloaded_again(cli, emulator, runs_dir, tmp_path):
    finished_run(cli, tmp_path)
    result_file = runs_dir / "rec" / "results" / "00001.a1.output.jsonl"
    original = result_file.read_bytes()
    result_file.unlink()
    result = cli("recover", "rec")
    assert "shard 00001.a1: downloaded 00001.a1.output.jsonl again" in result.stdout
    assert result_file.read_bytes() == original
    assert "consistent" in cli("recover", "rec").stdout


def test_a_damaged_output_is_rewritten_by_process(cli, emulator, runs_dir, tmp_path):
    finished_run(cli, tmp_path)
    output = runs_dir / "rec" / "output.jsonl"
    good = output.read_bytes()
    output.write_bytes(good[:-40])
    result = cli("recover", "rec")
    assert "will be written again by `batchpipe process rec`" in result.stdout
    cli("process", "rec")
    assert output.read_bytes() == good


def test_stray_temp_files_are_removed(cli, emulator, runs_dir, tmp_path):
    finished_run(cli, tmp_path)
    stray = runs_dir / "rec" / ".state.json.abc123.tmp"
    stray.write_bytes(b'{"half": ')
    result = cli("recover", "rec")
    assert "removed .state.json.abc123.tmp" in result.stdout
    assert not stray.exists()


def test_a_damaged_unsent_shard_needs_a_person(cli, emulator, runs_dir, tmp_path):
    cli("create", write_job(tmp_path / "job", review_rows(6)), "--run", "rec")
    shard = runs_dir / "rec" / "shards" / "00002.a1.jsonl"
    shard.write_bytes(b"")
    # and it cannot be rendered again from the input (recover would otherwise repair it)
    (tmp_path / "job" / "job.jsonl").write_text("{}\n")
    result = cli.json("recover", "rec", code=5)
    [problem] = result["data"]["problems"]
    assert "shard 00002.a1" in problem and "missing" not in problem and "changed" in problem
    assert "batchpipe create CONFIG --run NEW_ID" in problem
    assert emulator.counts["uploads"] == 0


def test_recover_on_a_healthy_run_does_nothing(cli, emulator, runs_dir, tmp_path):
    finished_run(cli, tmp_path)
    before = emulator.counts
    result = cli("recover", "rec")
    assert "nothing to do" in result.stdout
    after = emulator.counts
    assert (after["uploads"], after["batch_creates"], after["cancels"]) == (before["uploads"], before["batch_creates"], before["cancels"])
    assert len(read_jsonl(runs_dir / "rec" / "output.jsonl")) == 6


def test_a_result_file_changed_after_download_is_refused_by_process_and_nothing_is_merged(cli, emulator, runs_dir,
                                                                                          tmp_path):
    config = write_job(tmp_path / "job", review_rows(6))
    cli("create", config, "--run", "rec")
    cli("submit", "rec")
    cli("download", "rec")
    result_file = runs_dir / "rec" / "results" / "00001.a1.output.jsonl"
    good = result_file.read_bytes()
    result_file.write_bytes(good.replace(b"echo: ", b"ECHO: ", 1))  # same size, other bytes: read, then refused

    result = cli("process", "rec", code=None)
    assert result.exit_code != 0
    assert "00001.a1.output.jsonl has changed since batchpipe wrote it" in result.stderr
    assert "batchpipe recover rec" in result.stderr and "Traceback" not in result.output
    assert not (runs_dir / "rec" / "output.jsonl").exists()
    assert all(s["state"] != "merged" for s in cli.json("status", "rec")["data"]["shards"])

    result_file.write_bytes(good)
    cli("process", "rec")
    assert [r["verdict"] for r in read_jsonl(runs_dir / "rec" / "output.jsonl")][0].startswith("echo: ")
