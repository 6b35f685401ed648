"""The service URL: credentials in it are never stored or shown (issue 11, item 6); a URL that
never answered the API binds nothing, and an HTML answer is a clear error (item 7)."""

from __future__ import annotations

import json

from conftest import read_jsonl, review_rows, write_job

SECRET = "hunter2-url-secret"


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://someone:{SECRET}@")


def test_credentials_in_the_base_url_are_never_written_or_printed(cli, emulator, runs_dir, tmp_path, monkeypatch):
    emulator.options.accept_basic_auth = True  # a gateway that takes the URL's credentials
    monkeypatch.setenv("OPENAI_BASE_URL", with_credentials(emulator.base_url))
    config = write_job(tmp_path / "job", review_rows(6), limits={"max_requests_per_shard": 3})
    shown = [
        cli("doctor", config).output,
        cli.json("doctor", config),
        cli("run", config, "--run", "cred", "--wait", "--poll-interval", "0").output,
        cli("status", "cred").output,
        cli.json("status", "cred"),
        cli("recover", "cred").output,
    ]
    assert len(read_jsonl(runs_dir / "cred" / "output.jsonl")) == 6
    # the same run pointed at another service: the refusal names both URLs, without the secret
    monkeypatch.setenv("OPENAI_BASE_URL", with_credentials("http://127.0.0.1:9/v1"))
    refused = cli("recover", "cred", code=2)
    shown += [refused.output, cli("doctor", config, code=1).output, cli.json("doctor", config, code=1)]
    assert "127.0.0.1:9" in refused.output
    for text in shown:
        assert SECRET not in str(text)
    stored = [p for p in runs_dir.rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if SECRET.encode() in p.read_bytes()]
    assert json.loads((runs_dir / "cred" / "state.json").read_text())["run"]["base_url"] == emulator.base_url


def test_a_url_that_never_answered_binds_nothing(cli, emulator, runs_dir, tmp_path, monkeypatch):
    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "wrong")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # a closed port
    cli("submit", "wrong", code=1)
    monkeypatch.setenv("OPENAI_BASE_URL", emulator.base_url)  # the user fixes the URL
    cli("run", "wrong", "--wait", "--poll-interval", "0")
    assert len(read_jsonl(runs_dir / "wrong" / "output.jsonl")) == 4
    assert json.loads((runs_dir / "wrong" / "state.json").read_text())["run"]["base_url"] == emulator.base_url


def test_an_html_answer_is_a_clear_error_not_a_traceback(cli, emulator, runs_dir, tmp_path, monkeypatch):
    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    cli("create", config, "--run", "portal")
    emulator.options.html_answer = True
    said = f"the service at {emulator.base_url} answered with an HTML page, not the OpenAI API"
    doctor = cli.json("doctor", config, code=1)
    service = next(c for c in doctor["data"]["checks"] if c["name"] == "service")
    assert said in service["detail"] and "OPENAI_BASE_URL" in service["fix"]
    for args in (("run", "portal", "--wait", "--poll-interval", "0"), ("submit", "portal"), ("recover", "portal")):
        result = cli(*args, code=1)
        assert said in result.output and "OPENAI_BASE_URL" in result.output, result.output
        assert "Traceback" not in result.output
    emulator.options.html_answer = False
    cli("run", "portal", "--wait", "--poll-interval", "0")  # the proxy page bound nothing
    assert len(read_jsonl(runs_dir / "portal" / "output.jsonl")) == 4


def test_an_html_answer_after_the_batches_were_made(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", review_rows(4), limits={"max_requests_per_shard": 4})
    emulator.options.validating_seconds = 3600
    cli("run", config, "--run", "later", code=3)
    emulator.options.html_answer = True
    for args in (("status", "later"), ("recover", "later"), ("cancel", "later")):
        result = cli(*args, code=1)
        assert "answered with an HTML page" in result.output and "Traceback" not in result.output
