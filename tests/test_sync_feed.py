"""Sync mode at the speed of a plain thread pool (issue 9): the workers run through the shards as one
feed and journal their own answers, the journal's fsyncs shared (fsio.AppendLog).

What must hold as before: at most `max_workers` requests sent but not journaled at any moment (all
a kill can lose), every answer on its own row, every journal whole and turned into its shard's
result file, a Ctrl-C keeping every answer already sent for. What the server saw (the emulator's
counts) and what is on disk prove it.
"""

from __future__ import annotations

import threading

import openai
import pytest
from conftest import batchpipe, ctrl_c_when, expected_answer, read_jsonl, review_rows, write_job

from batchpipe import crash, fsio
from batchpipe.emulator import Emulator, EmulatorOptions, ManualClock
from batchpipe.emulator.sync import limit_tokens
from batchpipe.ops.sync import read_journal


def test_the_workers_carry_on_into_the_next_shard_while_one_ends(cli, emulator, runs_dir, tmp_path):
    # four shards of two requests, four workers: a pool per shard would have two requests out at
    # most; one feed across the shards has all four workers busy
    emulator.options.sync_latency_seconds = 0.3  # each answer takes a while, so requests overlap
    config = write_job(tmp_path / "job", review_rows(8), mode="sync", sync={"max_workers": 4},
                       limits={"max_requests_per_shard": 2})
    cli("run", config, "--run", "fed")
    counts = emulator.counts
    assert counts["sync_answered"] == 8 and counts["sync_duplicate_answers"] == 0
    assert 3 <= counts["sync_max_concurrency"] <= 4
    out = read_jsonl(runs_dir / "fed" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in review_rows(8)]
    shards = cli.json("status", "fed")["data"]["shards"]
    assert [(s["shard"], s["state"], s["mode"]) for s in shards] == [
        (f"0000{n}.a1", "merged", "sync") for n in range(1, 5)]
    assert not list((runs_dir / "fed" / "results").glob("*.journal.jsonl"))


def test_a_kill_across_shards_loses_at_most_the_requests_in_flight(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(12)
    config = write_job(tmp_path / "job", rows, mode="sync", sync={"max_workers": 4},
                       limits={"max_requests_per_shard": 3})
    killed = batchpipe("run", str(config), "--run", "killed", crash_at="sync:after_answer:7")
    assert killed.returncode == crash.EXIT_CODE, killed.stderr
    # exactly the 7 answers journaled before the kill count as finished, in whichever shards they are
    assert cli.json("status", "killed")["data"]["finished"] == 7

    cli("run", "killed")

    counts = emulator.counts
    assert counts["sync_answered"] - counts["sync_duplicate_answers"] == 12
    assert counts["sync_duplicate_answers"] <= 3  # the other workers' requests in flight at the kill, no more
    out = read_jsonl(runs_dir / "killed" / "output.jsonl")
    assert [r["verdict"] for r in out] == [expected_answer(r) for r in rows]  # every answer on its own row
    assert {r["verdict_attempts"] for r in out} == {1}
    shards = cli.json("status", "killed")["data"]["shards"]
    assert {(s["state"], s["mode"]) for s in shards} == {("merged", "sync")} and len(shards) == 4
    assert not list((runs_dir / "killed" / "results").glob("*.journal.jsonl"))


def test_ctrl_c_across_shards_keeps_every_answer_already_sent_for(cli, runs_dir, tmp_path, monkeypatch):
    with Emulator(EmulatorOptions(sync_latency_seconds=0.3), port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        config = write_job(tmp_path / "job", review_rows(20), mode="sync", sync={"max_workers": 3},
                           limits={"max_requests_per_shard": 4})
        code, stderr = ctrl_c_when(lambda: emu.counts["sync_answered"] >= 6, "run", str(config), "--run", "intr")
        assert code == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        # every request the server answered (those in flight at Ctrl-C included) is journaled, or in
        # the result file of a shard it completed
        answered = emu.counts["sync_answered"]
        assert cli.json("status", "intr")["data"]["finished"] == answered < 20

        cli("run", "intr")
        assert emu.counts["sync_answered"] == 20 and emu.counts["sync_duplicate_answers"] == 0
        out = read_jsonl(runs_dir / "intr" / "output.jsonl")
        assert [r["verdict"] for r in out] == [expected_answer(r) for r in review_rows(20)]


def test_a_piped_sync_run_says_its_shards_were_answered_in_sync_mode(cli, emulator, tmp_path):
    config = write_job(tmp_path / "job", review_rows(7), mode="sync")
    piped = batchpipe("run", str(config), "--run", "said")  # stderr is not a terminal: one log line per change
    assert piped.returncode == 0, piped.stderr
    assert "shard 00001.a1 answered in sync mode: 5 request(s)" in piped.stderr
    assert "shard 00002.a1 answered in sync mode: 2 request(s)" in piped.stderr
    assert "imported by hand" not in piped.stderr  # that is what `import` does, not sync mode


def test_the_journal_takes_whole_lines_from_many_threads_in_one_order(tmp_path):
    path = tmp_path / "journal.jsonl"
    log = fsio.AppendLog(path)

    def write(thread: int) -> None:
        for n in range(200):
            log.append(b'{"custom_id": "t%d-%03d"}\n' % (thread, n))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 1600 and len(read_journal(path)) == 1600  # every line whole
    for t in range(8):  # each thread's lines in the order it wrote them
        mine = [line for line in lines if line.startswith(b'{"custom_id": "t%d-' % t)]
        assert mine == sorted(mine) and len(mine) == 200


def test_the_journal_ends_a_torn_line_and_is_not_made_for_nothing(tmp_path):
    unused = fsio.AppendLog(tmp_path / "unused.jsonl")
    unused.close()
    assert not (tmp_path / "unused.jsonl").exists()  # no answer, no journal

    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"custom_id": "a"}\n{"custom_id": "b", "resp')  # a kill cut the last line short
    log = fsio.AppendLog(path)
    log.append(b'{"custom_id": "c"}\n')
    log.close()
    assert path.read_bytes().splitlines()[-1] == b'{"custom_id": "c"}'
    assert list(read_journal(path)) == ["a", "c"]  # the torn line is skipped: "b" is sent again


def test_the_emulators_token_window_lets_old_requests_age_out():
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    weight = limit_tokens("/v1/chat/completions", body)
    clock = ManualClock()
    options = EmulatorOptions(rate_limit_tokens=3 * weight, rate_limit_window_seconds=60)
    with Emulator(options, port=0, clock=clock) as emu:
        client = openai.OpenAI(base_url=emu.base_url, api_key="k", max_retries=0)
        try:
            for n in range(1, 4):  # at 0, 20 and 40 s
                if n > 1:
                    clock.advance(20)
                answer = client.chat.completions.with_raw_response.create(**body)
                assert int(answer.headers["x-ratelimit-remaining-tokens"]) == (3 - n) * weight
            with pytest.raises(openai.RateLimitError):  # three in the last minute: no room for a fourth
                client.chat.completions.create(**body)
            clock.advance(20)  # the first has aged out of the window (60 s ago), the other two not
            answer = client.chat.completions.with_raw_response.create(**body)
            assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 0
        finally:
            client.close()
    assert emu.counts["sync_answered"] == 4 and emu.counts["sync_rate_limited"] == 1
