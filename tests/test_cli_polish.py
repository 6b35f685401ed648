"""Small defects a new user met in the first hour, each driven through the real command.

.env inline comments, `doctor` without a key, help text eaten by markdown, global options after
the command, usage errors under --json, shell completion, and `-V`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import expected_answer, read_jsonl, review_rows, write_job

from batchpipe.cli import app

# --- .env -------------------------------------------------------------------------------------


def test_an_inline_comment_in_dot_env_is_not_part_of_the_value(cli, emulator, tmp_path, monkeypatch, runs_dir):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    (tmp_path / ".env").write_text(
        "# the emulator, for a rehearsal\n"
        f"export OPENAI_BASE_URL={emulator.base_url}   # local, free\n"
        "OPENAI_API_KEY=sk-dotenv-key # test key, not a secret\n"
    )
    checks = {c["name"]: c for c in cli.json("doctor")["data"]["checks"]}
    assert checks["api key"]["detail"] == f"set ({tmp_path / '.env'}, {len('sk-dotenv-key')} characters)"
    assert checks["service"]["ok"] and emulator.base_url in checks["service"]["detail"]

    rows = review_rows(6)
    cli("run", write_job(tmp_path / "job", rows), "--run", "dotenv", "--wait", "--poll-interval", "0")
    assert [r["verdict"] for r in read_jsonl(runs_dir / "dotenv" / "output.jsonl")] == [expected_answer(r) for r in rows]


# --- doctor -----------------------------------------------------------------------------------


def test_doctor_without_a_key_exits_2_and_creates_nothing(cli, tmp_path, runs_dir):
    before = sorted(tmp_path.rglob("*"))
    doc = cli.json("doctor", code=2)
    assert doc["exit_code"] == 2 and not doc["ok"]
    checks = {c["name"]: c for c in doc["data"]["checks"]}
    assert not checks["api key"]["ok"]
    assert checks["runs dir"]["ok"] and "does not exist yet" in checks["runs dir"]["detail"]
    result = cli("doctor", code=2)
    assert "FAIL api key" in result.stdout
    assert not runs_dir.exists()
    assert sorted(tmp_path.rglob("*")) == before


def test_doctor_with_a_key_but_a_runs_dir_that_cannot_be_made_exits_1(cli, emulator, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    doc = cli.json("--runs-dir", blocker / "runs", "doctor", code=1)
    runs = next(c for c in doc["data"]["checks"] if c["name"] == "runs dir")
    assert not runs["ok"] and "cannot be created" in runs["detail"] and "--runs-dir" in runs["fix"]


# --- help -------------------------------------------------------------------------------------


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_every_help_shows_its_text_in_angle_brackets(cli, monkeypatch):
    # The help is markdown: a bare `<config name>` is an HTML tag to it and vanishes.
    monkeypatch.setenv("COLUMNS", "400")
    group = typer.main.get_command(app)
    checked = 0
    for name, command in [("", group), *group.commands.items()]:
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        shown = _flat(cli(*([name] if name else []), "--help").stdout)
        for text in texts:
            for snippet in re.findall(r"<[^<>`]*>", text):
                assert snippet in shown, f"`batchpipe {name} --help` does not show {snippet}"
                checked += 1
    assert checked >= 2  # create's default run id, the emulator's answer


# --- global options after the command ---------------------------------------------------------


def test_runs_dir_is_accepted_after_the_command_too(cli, emulator, tmp_path, monkeypatch):
    elsewhere, here = tmp_path / "elsewhere", tmp_path / "here"
    monkeypatch.setenv("BATCHPIPE_RUNS_DIR", str(elsewhere))
    cli("create", write_job(tmp_path / "job"), "--run", "r1", "--runs-dir", here)
    assert (here / "r1" / "state.json").is_file() and not elsewhere.exists()
    assert cli.json("status", "r1", "--runs-dir", here)["data"]["run"] == "r1"
    assert [r["run"] for r in cli.json("list", "--runs-dir", here)["data"]["runs"]] == ["r1"]
    cli("run", "r1", "--wait", "--poll-interval", "0", "--runs-dir", here)
    # the same meaning as before the command; given in both places, the later one wins
    assert cli.json("--runs-dir", here, "status", "r1")["data"]["done"]
    assert cli.json("--runs-dir", elsewhere, "status", "r1", "--runs-dir", here)["data"]["done"]
    assert "no run 'r1'" in cli.json("--runs-dir", here, "status", "r1", "--runs-dir", elsewhere, code=2)["error"]["message"]


def test_every_command_that_uses_the_runs_dir_takes_it_after_its_name(cli):
    # (the emulator, `schema` and `init` have nothing to do with runs)
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        assert ("--runs-dir" in options) == (name not in ("emulator", "schema", "init")), name


# --- usage errors with --json -----------------------------------------------------------------


@pytest.mark.parametrize(("args", "command", "message"), [
    (["status", "r1", "--bogus"], "status", "No such option: --bogus"),
    (["submit"], "submit", "Missing argument 'run'"),
    (["run", "r1", "--poll-interval", "soon"], "run", "Invalid value for '--poll-interval'"),
    (["--bogus", "list"], "batchpipe", "No such option: --bogus"),
    (["stauts", "r1"], "batchpipe", "No such command 'stauts'"),
])
def test_a_usage_error_with_json_is_the_error_envelope(cli, args, command, message):
    result = cli(*args, "--json", code=2)
    doc = json.loads(result.stdout)
    assert doc == {"batchpipe": 1, "command": command, "ok": False, "exit_code": 2, "error": doc["error"]}
    assert doc["error"]["type"] == "UsageError" and message in doc["error"]["message"]
    assert "--help" in doc["error"]["hint"]
    # without --json: the usual human message on stderr, the same exit code
    human = cli(*args, code=2)
    assert human.stdout == "" and message.split(":")[0] in human.stderr


# --- shell completion and -V ------------------------------------------------------------------


def test_shell_completion_installs_and_completes_in_bash(tmp_path):
    batchpipe = Path(sys.executable).parent / "batchpipe"  # the console script, as a user runs it
    env = {"HOME": str(tmp_path), "PATH": f"{batchpipe.parent}{os.pathsep}{os.environ['PATH']}"}

    def bash(script: str) -> str:
        # `; true`: bash would otherwise exec the last command, and the shell could not be detected
        done = subprocess.run(["bash", "-c", script + "; true"], env=env, capture_output=True, text=True, timeout=100)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "complete -o default -F _batchpipe_completion batchpipe" in bash("batchpipe --show-completion")
    assert "bash completion installed" in bash("batchpipe --install-completion")
    script = tmp_path / ".bash_completions" / "batchpipe.sh"
    assert script.is_file() and str(script) in (tmp_path / ".bashrc").read_text()

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        return bash(f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                    f"_batchpipe_completion batchpipe; printf '%s\\n' \"${{COMPREPLY[@]}}\"").split()

    assert complete("batchpipe", "sta") == ["status"]
    assert "--runs-dir" in complete("batchpipe", "status", "--r")


def test_dash_capital_v_shows_the_version(cli):
    assert cli("-V").stdout == cli("--version").stdout
    assert cli("-V").stdout.startswith("batchpipe ")


def test_the_console_script_leaves_with_every_byte_written_and_the_commands_exit_code(tmp_path, runs_dir):
    # `batchpipe` ends its process without Python's teardown (cli.console): what it said and wrote
    # must be whole all the same, and its exit code the command's.
    batchpipe = Path(sys.executable).parent / "batchpipe"  # the console script, as a user runs it

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([batchpipe, *args], capture_output=True, text=True, timeout=100)

    schema = run("schema")  # a long answer: every byte of it comes out
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"] == "batchpipe job config"
    created = run("create", str(write_job(tmp_path / "job", review_rows(7))), "--run", "r1", "--json")
    assert created.returncode == 0 and json.loads(created.stdout)["data"]["requests"] == 7
    assert len((runs_dir / "r1" / "shards" / "00001.a1.jsonl").read_text().splitlines()) == 5
    pending = run("process", "r1", "--json")  # nothing sent yet: not done, exit 3, as the document says
    assert pending.returncode == json.loads(pending.stdout)["exit_code"] == 3
    missing = run("status", "nosuch")
    assert missing.returncode == 2 and "no run 'nosuch'" in missing.stderr
