"""Logs fit for cron: piped, `run --wait` and `tick` write one timestamped line per change.

CliRunner's stderr is not a terminal, as under cron: what these tests see is what a log file gets.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from conftest import review_rows, write_job

from batchpipe.emulator import Emulator, EmulatorOptions
from batchpipe.ops.run import MAX_FAILED_PASSES

# local time, ISO 8601 with its UTC offset, to the second; then the run id
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


def log_lines(text: str, run: str) -> list[str]:
    """The lines of a log, each checked for its timestamp and run id, without them."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        assert re.fullmatch(rf"{STAMP} {re.escape(run)} .+", line), f"not a log line: {line!r}"
    return [line.split(" ", 2)[2] for line in lines]



def test_run_wait_piped_writes_a_timestamped_line_per_change_and_no_bar(cli, emulator, tmp_path):
    config = write_job(tmp_path / "job", review_rows(7))  # 2 shards of at most 5
    result = cli("run", config, "--run", "nightly", "--wait", "--poll-interval", "0")
    lines = log_lines(result.stderr, "nightly")
    assert lines[0].startswith("created: 7 requests in 2 shard(s)")
    for shard, n in (("00001.a1", 5), ("00002.a1", 2)):
        batch = next(b["id"] for b in emulator.batches if b["metadata"]["batchpipe_shard"] == shard)
        assert f"shard {shard} submitted: batch {batch}, {n} request(s)" in lines
        assert f"shard {shard} downloaded: batch {batch} completed, {n}/{n} requests done, 0 failed" in lines
        assert f"shard {shard} merged: {n} ok, 0 failed" in lines
    assert lines[-1] == "done: 7 answered, 0 failed; output at " + str(tmp_path / "runs" / "nightly" / "output.jsonl")
    assert len(lines) == len(set(lines))  # each change once
    assert "━" not in result.stderr  # no progress bar drawn into the log (log_lines checked every line)


def test_tick_piped_logs_only_what_changed_since_the_last_pass(cli, slow_emulator, tmp_path):
    # a known queue limit: every shard goes in the first tick (an unknown one is probed batch by batch)
    job = write_job(tmp_path / "job", review_rows(7), limits={"max_requests_per_shard": 5, "enqueued_tokens": 10**6})
    cli("create", job, "--run", "cronjob")

    first = cli("tick", "cronjob", code=3)
    changes = log_lines(first.stderr, "cronjob")
    assert [c.split(":")[0] for c in changes] == [
        "shard 00001.a1 uploaded", "shard 00001.a1 submitted", "shard 00002.a1 uploaded", "shard 00002.a1 submitted",
    ]
    assert log_lines(first.stdout, "cronjob") == ["pending: 0/7 requests finished"]  # the summary is stamped too

    second = cli("tick", "cronjob", code=3)
    assert second.stderr == ""  # nothing changed, nothing logged

    slow_emulator.clock.advance(1.5)
    third = log_lines(cli("tick", "cronjob", code=3).stderr, "cronjob")
    assert len(third) == 2 and all("validating -> in_progress" in c for c in third)

    slow_emulator.clock.advance(10)
    data = cli.json("tick", "cronjob")["data"]["runs"][0]  # --json carries the changes too
    assert data["outcome"] == "done"
    assert data["changes"][-1].startswith("done: 7 answered, 0 failed")
    assert [c for c in data["changes"] if "merged" in c] == ["shard 00001.a1 merged: 5 ok, 0 failed",
                                                               "shard 00002.a1 merged: 2 ok, 0 failed"]

    again = cli("tick", "cronjob")
    assert again.stderr == "" and log_lines(again.stdout, "cronjob") == ["done: 7 requests, 0 failed"]


def test_run_wait_logs_each_problem_it_retries(cli, tmp_path, monkeypatch):
    options = EmulatorOptions(validating_seconds=0, in_progress_seconds=0, finalizing_seconds=0,
                              transient_error_rate=1.0)  # every call answers 503/500/429
    with Emulator(options=options, port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        result = cli("run", write_job(tmp_path / "job", review_rows(3)), "--run", "flaky", "--wait",
                     "--poll-interval", "0", code=1)
    logged = [line for line in result.stderr.splitlines() if re.match(STAMP, line)]
    problems = [line for line in log_lines("\n".join(logged), "flaky") if line.startswith("problem: ")]
    assert len(problems) == MAX_FAILED_PASSES  # each failed pass, then it gives up with the error
    assert all(line.endswith("; trying again") for line in problems)
    assert [line for line in result.stderr.splitlines() if line not in logged][0].startswith("error: ")


def test_piped_tables_keep_long_ids_whole(cli, emulator, tmp_path):
    run = "a-rather-long-run-id-for-the-nightly-review-job-of-november-2026"  # 64 characters, the most allowed
    cli("run", write_job(tmp_path / "job", review_rows(7)), "--run", run)
    listed = cli("list").stdout
    assert run in listed
    status = cli("status", run).stdout
    assert run in status
    for batch in emulator.batches:
        assert batch["id"] in status
    assert "…" not in listed + status


def _times(doc, found):
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key.endswith("_at"):
                found.append((key, value, doc.get(f"{key}_iso", "missing")))
            _times(value, found)
    elif isinstance(doc, list):
        for value in doc:
            _times(value, found)
    return found


def test_json_times_come_as_iso_8601_beside_the_epoch(cli, emulator, tmp_path):
    cli("run", write_job(tmp_path / "job", review_rows(3)), "--run", "j")
    found = []
    for args in (("status", "j"), ("status", "--all"), ("list",), ("run", "j")):
        found += _times(cli.json(*args), [])
    assert {key for key, _, _ in found} >= {"created_at", "started_at"}
    for key, epoch, iso in found:
        want = None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
        assert iso == want, key
