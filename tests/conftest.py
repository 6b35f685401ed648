"""Shared fixtures: an isolated runs dir, a live emulator on loopback, a job factory, the CLI.

Tests drive the real `openai` client over HTTP against the emulator: nothing of ours is
mocked and the client is not patched. The emulator's timeline is set to zero seconds, so a
batch is finished the first time it is looked at after its create: no sleeping in tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from typer.testing import CliRunner

from batchpipe.cli import app
from batchpipe.emulator import Emulator, EmulatorOptions, ManualClock

# The suite starts the real batchpipe in a process of its own some 150 times. Where the
# environment sets PYTHONDONTWRITEBYTECODE, each of them would compile every module of batchpipe
# again: they share compiled bytecode instead, kept out of the source tree.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "batchpipe-tests-pycache"))

INSTANT = EmulatorOptions(validating_seconds=0.0, in_progress_seconds=0.0, finalizing_seconds=0.0, shuffle_seed=7)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cwd and runs dir, and no key or base URL from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "BATCHPIPE_DEBUG",
                 "BATCHPIPE_PRICES", "BATCHPIPE_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    runs = tmp_path / "runs"
    monkeypatch.setenv("BATCHPIPE_RUNS_DIR", str(runs))
    monkeypatch.setenv("BATCHPIPE_LOCK_TIMEOUT", "1")
    return runs


@pytest.fixture
def runs_dir(isolated: Path) -> Path:
    return isolated


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """A live emulator; OPENAI_BASE_URL and OPENAI_API_KEY point the CLI at it."""
    with Emulator(options=INSTANT, host="127.0.0.1", port=0) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-do-not-store")
        yield emu


@pytest.fixture
def slow_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """An emulator whose clock only the test moves: batches run exactly as long as it says."""
    clock = ManualClock(start=time.time())  # agrees with the local clock, as a real service does
    options = EmulatorOptions(validating_seconds=1, in_progress_seconds=1, finalizing_seconds=1)
    with Emulator(options=options, port=0, clock=clock) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        emu.clock = clock
        yield emu


def review_rows(n: int) -> list[dict[str, Any]]:
    return [{"review_id": f"r{i:04d}", "stars": i % 5 + 1, "text": f"review number {i}"} for i in range(1, n + 1)]


def write_job(
    directory: Path,
    rows: list[dict[str, Any]] | None = None,
    *,
    name: str = "job",
    **overrides: Any,
) -> Path:
    """A config + JSONL input in `directory`; keyword overrides replace top-level config sections."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = review_rows(12) if rows is None else rows
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return write_config(directory / f"{name}.yaml", review_job(data.name), **overrides)


def review_job(input_path: str, max_requests_per_shard: int = 5) -> dict[str, Any]:
    """The review-judging job config the tests share, over the JSONL file `input_path`."""
    return {
        "model": "gpt-4o-mini",
        "input": {"path": input_path, "id": "review_id"},
        "prompt": {"system": "You judge film reviews.", "user": "Review ({stars} stars): {text}"},
        "params": {"temperature": 0, "max_tokens": 20},
        "output": {"key": "verdict"},
        "limits": {"max_requests_per_shard": max_requests_per_shard},
    }


def write_config(path: Path, config: dict[str, Any], **overrides: Any) -> Path:
    """`config` as a YAML job file at `path`, its top-level sections replaced by `overrides`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config | overrides, sort_keys=False), encoding="utf-8")
    return path


def expected_answer(row: dict[str, Any]) -> str:
    """The emulator's answer for a review row: it echoes the user message."""
    return f"echo: Review ({row['stars']} stars): {row['text']}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Cli:
    """The real `batchpipe` app, invoked in-process as a user would call it."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int | None = 0):
        result = self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, f"exit {result.exit_code}, wanted {code}\n{result.output}"
        return result

    def json(self, *args: str, code: int | None = 0) -> dict[str, Any]:
        result = self(*args, "--json", code=code)
        return json.loads(result.stdout)


@pytest.fixture
def cli() -> Cli:
    return Cli()


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def sdk(emu: Emulator | str, max_retries: int = 0) -> openai.OpenAI:
    """A real `openai` client for an emulator (or a base URL), retries off by default; closed after the test."""
    base_url = emu if isinstance(emu, str) else emu.base_url
    client = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=max_retries)
    _clients.append(client)
    return client


PYTHON = sys.executable


# As in a terminal, Ctrl-C must reach the command: a process started from a background job inherits
# SIGINT ignored (and Python then never raises KeyboardInterrupt), so the child takes the default
# handler back before it runs the real command.
_CTRL_C_BOOTSTRAP = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                     "sys.argv[0] = 'batchpipe'; runpy.run_module('batchpipe', run_name='__main__', alter_sys=True)")


def ctrl_c_when(ready, *args: str) -> tuple[int, str]:
    """Start the real `batchpipe *args`, send it Ctrl-C once `ready()` is true (checked every 10 ms,
    up to 90 s: only a hang comes near it), and return its exit code and stderr."""
    import signal

    proc = subprocess.Popen([PYTHON, "-c", _CTRL_C_BOOTSTRAP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 90
    while not ready():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    return proc.returncode, stderr


def batchpipe(*args: str, crash_at: str | None = None, runs_dir: Path | None = None, preexec_fn=None,
              **env: str) -> subprocess.CompletedProcess:
    """The real `batchpipe` in a process of its own (so that a named crash point can kill it:
    BATCHPIPE_CRASH_AT), with the test's environment plus `env`; a hang fails after 120 s."""
    environ = {**os.environ, "BATCHPIPE_CRASH_AT": crash_at or "", **env}
    if runs_dir is not None:
        environ["BATCHPIPE_RUNS_DIR"] = str(runs_dir)
    return subprocess.run([PYTHON, "-m", "batchpipe", *args], env=environ, capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec_fn)
