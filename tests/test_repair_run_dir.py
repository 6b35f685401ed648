"""Repairs of a run dir: a damaged state.json, a torn events.jsonl, the leftovers of killed creates,
a read-only runs dir and a busy lock. Driven through the real commands against the emulator."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import batchpipe, read_jsonl, review_rows, write_job

from batchpipe import crash



def job(tmp_path: Path, n: int = 6) -> Path:
    return write_job(tmp_path / "job", review_rows(n), limits={"max_requests_per_shard": 3})


# -- item 10: state.json damaged ----------------------------------------------------------------


def test_a_damaged_state_json_is_restored_from_the_last_good_copy(cli, emulator, runs_dir, tmp_path):
    cli("create", job(tmp_path), "--run", "st")
    cli("submit", "st")
    state = runs_dir / "st" / "state.json"
    state.write_bytes(state.read_bytes()[:200])

    refused = cli("status", "st", code=1)
    assert "recover st" in refused.stderr and "state.json.prev" in refused.stderr

    result = cli("recover", "st")
    assert "restored the last good copy from state.json.prev" in result.stdout
    assert (runs_dir / "st" / "state.json.damaged").is_file()
    cli("run", "st", "--wait", "--poll-interval", "0")
    assert len(read_jsonl(runs_dir / "st" / "output.jsonl")) == 6
    assert emulator.counts["duplicate_creates"] == 0
    assert sorted(emulator.counts["creates_by_tag"].values()) == [1, 1]


def test_a_batch_created_by_the_lost_commit_is_adopted_not_paid_twice(cli, emulator, runs_dir, tmp_path):
    config = job(tmp_path)
    killed = batchpipe("run", str(config), "--run", "st", crash_at="batch_create:after:1")
    assert killed.returncode == crash.EXIT_CODE
    # the last commit (the create's intent) is lost with the damage: the good copy is one step older
    state = runs_dir / "st" / "state.json"
    state.write_bytes(b"{")

    result = cli("recover", "st")
    assert "restored the last good copy" in result.stdout
    assert "adopted batch" in result.stdout
    cli("run", "st", "--wait", "--poll-interval", "0")
    assert len(read_jsonl(runs_dir / "st" / "output.jsonl")) == 6
    assert sorted(emulator.counts["creates_by_tag"].values()) == [1, 1]  # not one shard created twice


def test_without_a_good_copy_recover_says_what_it_cannot_do(cli, emulator, runs_dir, tmp_path):
    cli("create", job(tmp_path), "--run", "st")  # no commit since create: nothing to go back to
    (runs_dir / "st" / "state.json").write_bytes(b"garbage")
    result = cli("recover", "st", code=1)
    assert "no good earlier copy" in result.stderr and "cannot repair" in result.stderr
    assert "batchpipe create CONFIG --run NEW_ID" in result.stderr


# -- item 11: a torn last line in events.jsonl ------------------------------------------------------


def test_an_event_after_a_torn_line_starts_a_line_of_its_own(cli, emulator, runs_dir, tmp_path):
    cli("create", job(tmp_path), "--run", "ev")
    events = runs_dir / "ev" / "events.jsonl"
    with open(events, "ab") as f:
        f.write(b'{"ts": 1, "event": "trans')  # a crash cut this line short
    cli("submit", "ev")
    lines = events.read_bytes().splitlines()
    torn = lines.index(b'{"ts": 1, "event": "trans')
    assert [json.loads(line)["event"] for line in lines[torn + 1:]]  # every later event is whole


# -- item 8: build dirs of killed creates ------------------------------------------------------------


def killed_create(tmp_path: Path, run_id: str) -> None:
    killed = batchpipe("create", str(job(tmp_path, 30)), "--run", run_id, crash_at="run_create:before_publish")
    assert killed.returncode == crash.EXIT_CODE


def build_dirs(runs_dir: Path) -> list[str]:
    return sorted(p.name for p in runs_dir.iterdir() if p.name.startswith("."))


def test_list_shows_a_killed_create_and_recover_removes_it(cli, runs_dir, tmp_path):
    killed_create(tmp_path, "big")
    [stray] = build_dirs(runs_dir)
    listed = cli.json("list")["data"]["runs"]
    assert [r["run"] for r in listed] == ["big"]
    assert "interrupted create" in listed[0]["problem"] and stray in listed[0]["problem"]

    result = cli("recover", "big")
    assert f"removed {stray}" in result.stdout and "never published" in result.stdout
    assert build_dirs(runs_dir) == []
    cli("recover", "big", code=2)  # now there is nothing of it: "no run"


def test_the_next_create_removes_the_leftovers_but_not_a_live_create(cli, runs_dir, tmp_path):
    killed_create(tmp_path, "a")
    killed_create(tmp_path, "b")  # itself a create: it removed a's leftover first
    [stray] = build_dirs(runs_dir)
    assert stray.startswith(".b.")
    # another create, still writing (it holds its build dir's lock), must be left alone
    live = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from batchpipe import fsio\n"
         "with fsio.building_dir(Path(sys.argv[1]), 'live') as d:\n    print(d.name, flush=True); sys.stdin.read()",
         str(runs_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live_dir = live.stdout.readline().strip()
        result = cli.json("create", job(tmp_path), "--run", "c")
        assert [stray in note for note in result["data"]["cleaned"]] == [True]
        assert build_dirs(runs_dir) == [live_dir]
        [row] = [r for r in cli.json("list")["data"]["runs"] if r["run"] == "live"]
        assert "being created" in row["problem"]
    finally:
        live.stdin.close()
        live.wait(timeout=30)
    # it stopped without publishing: now it is a leftover like any other
    assert "never published" in cli("recover", "live").stdout
    assert build_dirs(runs_dir) == []


# -- item 16: read-only runs dir, busy lock ------------------------------------------------------


def test_status_of_a_finished_run_creates_no_lock_file(cli, emulator, runs_dir, tmp_path):
    cli("run", job(tmp_path), "--run", "ro", "--wait", "--poll-interval", "0")
    (runs_dir / "ro" / ".lock").unlink()
    assert cli.json("status", "ro")["data"]["done"] is True
    assert not (runs_dir / "ro" / ".lock").exists()


@contextlib.contextmanager
def read_only(path: Path):
    """Make `path` read-only for this process: a read-only bind mount as root (who ignores modes)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_reading_commands_work_on_a_read_only_runs_dir(cli, emulator, runs_dir, tmp_path):
    cli("run", job(tmp_path), "--run", "done", "--wait", "--poll-interval", "0")
    cli("create", job(tmp_path / "other", 3), "--run", "running")
    emulator.options.validating_seconds = 3600
    cli("submit", "running")
    with read_only(runs_dir):
        assert cli.json("status", "done")["data"]["done"] is True
        running = cli.json("status", "running")["data"]
        assert running["refreshed"] is False and "cannot be written" in running["note"]
        assert {r["run"] for r in cli.json("list")["data"]["runs"]} == {"done", "running"}


def test_run_wait_keeps_waiting_for_a_busy_lock(runs_dir, tmp_path, emulator):
    config = job(tmp_path)
    assert batchpipe("create", str(config), "--run", "busy").returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock\n"
         "with FileLock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()",
         str(runs_dir / "busy" / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waiter = subprocess.Popen([sys.executable, "-m", "batchpipe", "run", "busy", "--wait", "--poll-interval", "0.05"],
                              env={**os.environ, "BATCHPIPE_LOCK_TIMEOUT": "0.2"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = waiter.stderr.readline()
        while "busy" not in said and said:
            said = waiter.stderr.readline()
        assert "is busy" in said and "trying again" in said
        assert waiter.poll() is None  # still waiting, not ended by the lock timeout
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    _, rest = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, rest
    assert len(read_jsonl(runs_dir / "busy" / "output.jsonl")) == 6
