"""The command line itself: help, exit codes, clear errors, the lock, the emulator command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_job
from filelock import FileLock

from batchpipe.cli import app
from batchpipe.errors import ExitCode

COMMANDS = ["create", "submit", "status", "download", "process", "recover", "run", "tick", "cancel", "estimate", "doctor", "list", "emulator", "demo", "init", "schema", "export", "import"]
README = Path(__file__).resolve().parent.parent / "README.md"


def test_help_lists_every_command(cli):
    out = cli("--help").stdout
    for name in COMMANDS:
        assert re.search(rf"\b{name}\b", out), name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(cli, name):
    out = cli(name, "--help").stdout
    assert "Example" in out and f"batchpipe {name}" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name):
    assert f"batchpipe {name}" in README.read_text(encoding="utf-8")


def test_registered_commands_are_the_documented_ones():
    assert sorted(c.name for c in app.registered_commands) == sorted(COMMANDS)


@pytest.mark.parametrize("bad", ["../etc", "a/b", "x" * 65, ".hidden"])
def test_a_bad_run_id_is_refused_before_touching_disk(cli, runs_dir, bad):
    result = cli("status", bad, code=2)
    assert "invalid run id" in result.stderr
    assert not runs_dir.exists()


def test_an_unknown_run_says_where_it_looked(cli, runs_dir):
    result = cli("submit", "nope", code=2)
    assert f"no run 'nope' in {runs_dir}" in result.stderr
    assert "batchpipe list" in result.stderr


def test_missing_api_key_is_a_clear_error(cli, tmp_path):
    cli("create", write_job(tmp_path / "job"), "--run", "nokey")
    result = cli("submit", "nokey", code=2)
    assert "OPENAI_API_KEY is not set" in result.stderr and ".env" in result.stderr


def test_key_from_dot_env_in_the_working_directory(cli, emulator, tmp_path, monkeypatch, runs_dir):
    monkeypatch.delenv("OPENAI_API_KEY")
    (tmp_path / ".env").write_text("OPENAI_API_KEY='sk-from-dotenv-SECRET'\n")
    cli("run", write_job(tmp_path / "job"), "--run", "dotenv", "--wait", "--poll-interval", "0")
    assert all(b"SECRET" not in p.read_bytes() for p in (runs_dir / "dotenv").rglob("*") if p.is_file())


def test_json_errors_are_an_envelope(cli, runs_dir):
    doc = cli.json("status", "nope", code=2)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["error"]["type"] == "RunNotFound"


def test_list_shows_runs(cli, emulator, tmp_path):
    assert "no runs yet" in cli("list").stdout
    cli("run", write_job(tmp_path / "job"), "--run", "one", "--wait", "--poll-interval", "0")
    cli("create", write_job(tmp_path / "job2", name="other"), "--run", "two")
    runs = cli.json("list")["data"]["runs"]
    assert [(r["run"], r["done"], r["requests"]) for r in runs] == [("one", True, 12), ("two", False, 12)]


def _batchpipe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchpipe", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_a_locked_run_exits_with_the_lock_code(cli, emulator, runs_dir, tmp_path):
    cli("create", write_job(tmp_path / "job"), "--run", "busy")
    # Another process holds the lock (the test's own process, through filelock, as batchpipe would).
    lock = FileLock(runs_dir / "busy" / ".lock")
    with lock:
        result = _batchpipe("submit", "busy", env={"BATCHPIPE_LOCK_TIMEOUT": "0.2"})
    assert result.returncode == ExitCode.LOCKED, result.stderr
    assert "run busy is busy" in result.stderr and "Traceback" not in result.stderr
    assert emulator.counts["uploads"] == 0
    # Once released, the same command works.
    assert _batchpipe("submit", "busy").returncode == 0
    assert emulator.counts["batch_creates"] == 3


def test_status_of_a_locked_run_shows_the_ledger_without_waiting(cli, slow_emulator, runs_dir, tmp_path):
    cli("create", write_job(tmp_path / "job"), "--run", "busy")
    cli("submit", "busy")  # running batches to refresh (a run with none is read without the lock at all)
    with FileLock(runs_dir / "busy" / ".lock"):
        result = _batchpipe("status", "busy")
    assert result.returncode == 0
    assert "another batchpipe process" in result.stderr


def test_version(cli):
    assert cli("--version").stdout.startswith("batchpipe ")


def test_a_runs_dir_that_cannot_be_written_is_a_message_not_a_traceback(cli, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the runs dir should be")
    result = cli("--runs-dir", blocker, "create", write_job(tmp_path / "job"), code=1)
    assert "not-a-dir" in result.stderr and "Traceback" not in result.output
