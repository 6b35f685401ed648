"""The index and the shard files are derived data: a lost or damaged one is made again from the
run's files, never an empty index that zeroes the paid results, never a traceback."""

from __future__ import annotations

import resource
import sqlite3
import signal
from pathlib import Path

from conftest import batchpipe, read_jsonl, review_rows, write_job

from batchpipe import crash


def job_rows() -> list[dict]:
    rows = review_rows(10)
    rows[4]["text"] += " [[fail:500]]"  # retried at every attempt: the run has retry shards
    rows[7]["text"] += " [[fail:400]]"
    return rows



def finished(cli, tmp_path: Path, runs_dir: Path, run_id: str = "idx") -> list[dict]:
    """A run to done; two rows fail for good (a 400, and a 500 past max_attempts): exit 6."""
    config = write_job(tmp_path / "job", job_rows(), limits={"max_requests_per_shard": 4})
    cli("run", config, "--run", run_id, "--wait", "--poll-interval", "0", code=6)
    return read_jsonl(runs_dir / run_id / "output.jsonl")


def test_a_lost_index_is_rebuilt_by_process_and_nothing_paid_is_lost(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", job_rows(), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "idx")
    cli("submit", "idx")
    cli("download", "idx")
    (runs_dir / "idx" / "index.sqlite").unlink()

    result = cli.json("process", "idx", code=3)  # retries are planned: not done yet
    assert any("index.sqlite is missing: rebuilt it" in w for w in result["data"]["warnings"])
    shards = cli.json("status", "idx")["data"]["shards"]
    merged = {s["shard"]: s["merged"] for s in shards if s["state"] == "merged"}
    assert merged["00001.a1"] == {"ok": 4, "failed": 0, "truncated": 0}  # not zeroed
    assert all(s["usage"]["output_tokens"] > 0 for s in shards if s["state"] == "merged")

    cli("run", "idx", "--wait", "--poll-interval", "0", code=6)
    rows = read_jsonl(runs_dir / "idx" / "output.jsonl")
    assert [r["review_id"] for r in rows] == [f"r{i:04d}" for i in range(1, 11)]
    assert sum(r["verdict"] is not None for r in rows) == 8
    assert emulator.counts["duplicate_creates"] == 0


def test_recover_rebuilds_a_lost_index_of_a_finished_run_with_its_retries(cli, emulator, runs_dir, tmp_path):
    good = finished(cli, tmp_path, runs_dir)
    run = runs_dir / "idx"
    assert (run / "shards" / "00002.a3.jsonl").is_file()  # the run has retry attempts
    (run / "index.sqlite").unlink()
    (run / "output.jsonl").unlink()

    result = cli("recover", "idx")
    assert "index.sqlite is missing: rebuilt it from the input, the config snapshot" in result.stdout
    assert "consistent" in result.stdout
    cli("process", "idx", code=6)  # the output is written again from the rebuilt index alone
    assert read_jsonl(run / "output.jsonl") == good
    assert "nothing to do" in cli("recover", "idx").stdout


def test_a_truncated_index_is_rebuilt_not_a_traceback(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", job_rows(), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "idx")
    cli("submit", "idx")
    cli("download", "idx")
    index = runs_dir / "idx" / "index.sqlite"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 3])

    result = cli.json("process", "idx", code=3)
    assert any("index.sqlite" in w and "rebuilt it" in w for w in result["data"]["warnings"])
    cli("run", "idx", "--wait", "--poll-interval", "0", code=6)
    assert sum(r["verdict"] is not None for r in read_jsonl(runs_dir / "idx" / "output.jsonl")) == 8


def test_a_full_disk_inside_sqlite_is_a_message_and_nothing_half_written(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", job_rows(), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "idx")
    cli("submit", "idx")
    cli("download", "idx")
    state_before = (runs_dir / "idx" / "state.json").read_bytes()

    def no_room() -> None:  # writes past 1 KB fail (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    # No bytecode written either: a .pyc cut at 1 KB would be left in the suite's shared cache.
    full = batchpipe("process", "idx", preexec_fn=no_room, PYTHONDONTWRITEBYTECODE="1")
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr and "index.sqlite" in full.stderr
    assert "free disk space" in full.stderr
    assert (runs_dir / "idx" / "state.json").read_bytes() == state_before

    cli("run", "idx", "--wait", "--poll-interval", "0", code=6)
    assert sum(r["verdict"] is not None for r in read_jsonl(runs_dir / "idx" / "output.jsonl")) == 8


def crashed_before_retry(cli, emulator, runs_dir, tmp_path) -> Path:
    """Shard 2 merged with a failure to retry, killed before the retry was planned."""
    config = write_job(tmp_path / "job", job_rows(), limits={"max_requests_per_shard": 4})
    killed = batchpipe("run", str(config), "--run", "rs", "--wait", "--poll-interval", "0",
                       crash_at="retry:after_shard_file")
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    shard = runs_dir / "rs" / "shards" / "00002.a1.jsonl"
    shard.write_bytes(shard.read_bytes()[:50])  # truncated
    return shard


def test_a_truncated_shard_file_that_a_retry_needs_is_rendered_again(cli, emulator, runs_dir, tmp_path):
    shard = crashed_before_retry(cli, emulator, runs_dir, tmp_path)
    result = cli("recover", "rs")
    assert "shard 00002.a1" in result.stdout and "rendered it again" in result.stdout
    cli("run", "rs", "--wait", "--poll-interval", "0", code=6)
    rows = read_jsonl(runs_dir / "rs" / "output.jsonl")
    assert rows[4]["verdict_attempts"] == 3  # the retries did happen
    assert sum(r["verdict"] is not None for r in rows) == 8
    assert emulator.counts["duplicate_creates"] == 0
    assert len(shard.read_bytes()) > 50


def test_process_renders_a_truncated_shard_file_again_by_itself(cli, emulator, runs_dir, tmp_path):
    crashed_before_retry(cli, emulator, runs_dir, tmp_path)
    result = cli.json("process", "rs", code=3)
    assert any("00002.a1" in w and "rendered it again" in w for w in result["data"]["warnings"])
    cli("run", "rs", "--wait", "--poll-interval", "0", code=6)
    assert read_jsonl(runs_dir / "rs" / "output.jsonl")[4]["verdict_attempts"] == 3


def test_a_shard_file_that_cannot_be_rendered_again_says_what_is_lost(cli, emulator, runs_dir, tmp_path):
    crashed_before_retry(cli, emulator, runs_dir, tmp_path)
    # the config snapshot no longer renders the same requests (as if it had been edited)
    snapshot = runs_dir / "rs" / "config.yaml"
    original = snapshot.read_text()
    snapshot.write_text(original.replace("You judge film reviews.", "You judge films."))

    result = cli.json("recover", "rs", code=5)
    [problem] = result["data"]["problems"]
    assert "shard 00002.a1" in problem and "sha256 differs" in problem
    assert "1 failed request(s) (ids r0005)" in problem
    # and the run still finishes: the lost retry keeps its error, nothing hangs on it
    processed = cli.json("process", "rs", code=None)
    assert any("cannot be retried" in w for w in processed["data"]["warnings"])
    cli("run", "rs", "--wait", "--poll-interval", "0", code=6)
    rows = read_jsonl(runs_dir / "rs" / "output.jsonl")
    assert rows[4]["verdict"] is None and rows[4]["verdict_error"] and rows[4]["verdict_attempts"] == 1
    assert cli.json("process", "rs", code=6)["data"]["warnings"] == []  # said once, not re-rendered on every tick

    # once the snapshot is put back, recover makes the file again and the retries go ahead after all
    snapshot.write_text(original)
    result = cli("recover", "rs")
    assert "rendered it again" in result.stdout and "will retry its 1 failed request(s)" in result.stdout
    cli("run", "rs", "--wait", "--poll-interval", "0", code=6)
    assert read_jsonl(runs_dir / "rs" / "output.jsonl")[4]["verdict_attempts"] == 3


def test_a_lost_index_and_a_damaged_retry_file_are_both_made_again(cli, emulator, runs_dir, tmp_path):
    good = finished(cli, tmp_path, runs_dir)
    run = runs_dir / "idx"
    retry_file = run / "shards" / "00002.a2.jsonl"
    whole = retry_file.read_bytes()
    retry_file.write_bytes(b"")
    (run / "index.sqlite").unlink()
    (run / "output.jsonl").unlink()

    result = cli("recover", "idx")
    assert "rebuilt it" in result.stdout
    assert retry_file.read_bytes() == whole  # the retry's lines, cut again from attempt 1 and checked
    cli("process", "idx", code=6)
    assert read_jsonl(run / "output.jsonl") == good


def test_a_seq_flipped_on_disk_is_caught_by_its_check_never_joined_to_the_wrong_row(cli, emulator, runs_dir, tmp_path):
    good = finished(cli, tmp_path, runs_dir)
    run = runs_dir / "idx"
    (run / "output.jsonl").unlink()
    with sqlite3.connect(run / "index.sqlite") as db:  # one digit for another: still JSON, still as long
        db.execute("UPDATE shard_files SET seqs = CAST(replace(CAST(seqs AS TEXT), '[1,2,', '[1,3,') AS BLOB) "
                   "WHERE file = 'shards/00001.a1.jsonl'")
        assert db.execute("SELECT changes()").fetchone()[0] == 1
    db.close()

    result = cli("process", "idx", code=None)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "index.sqlite is damaged (the lines of shards/00001.a1.jsonl no longer match their check)" in result.stderr
    assert "batchpipe recover idx" in result.stderr
    assert not (run / "output.jsonl").exists()  # no row got another's answer

    recovered = cli("recover", "idx").stdout
    damaged = "index.sqlite is damaged (the lines of shards/00001.a1.jsonl do not read back as written)"
    assert f"{damaged}: rebuilt it" in recovered
    cli("process", "idx", code=6)
    assert read_jsonl(run / "output.jsonl") == good
    assert "nothing to do" in cli("recover", "idx").stdout


def test_an_answer_changed_in_the_index_is_caught_and_recover_rebuilds_it(cli, emulator, runs_dir, tmp_path):
    good = finished(cli, tmp_path, runs_dir)
    run = runs_dir / "idx"
    with sqlite3.connect(run / "index.sqlite") as db:  # an answer's text changed, the JSON sound
        db.execute("UPDATE results SET outcomes = CAST(replace(CAST(outcomes AS TEXT), 'echo', 'ECHO') AS BLOB) "
                   "WHERE shard = '00001.a1'")
    db.close()

    recovered = cli("recover", "idx").stdout
    assert "index.sqlite is damaged (the outcomes of 00001.a1 do not read back as written): rebuilt it" in recovered
    (run / "output.jsonl").unlink()
    cli("process", "idx", code=6)
    assert read_jsonl(run / "output.jsonl") == good
