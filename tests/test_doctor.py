"""`doctor`: every check passes against a live service, and each failure says what to fix."""

from __future__ import annotations

from conftest import write_job


def test_all_checks_pass_and_the_key_is_never_shown(cli, emulator, tmp_path):
    config = write_job(tmp_path / "job")
    result = cli("doctor", config)
    assert "sk-test-SECRET" not in result.output
    doc = cli.json("doctor", config)
    checks = {c["name"]: c for c in doc["data"]["checks"]}
    assert {name: c["ok"] for name, c in checks.items()} == {
        "api key": True, "service": True, "config": True, "runs dir": True, "tokenizer": True, "queue limit": True,
    }
    assert emulator.base_url in checks["service"]["detail"]
    assert "SECRET" not in str(doc)


def test_missing_key_and_bad_config_say_what_to_fix(cli, tmp_path):
    config = write_job(tmp_path / "job", model=None)
    doc = cli.json("doctor", config, code=2)  # README "Exit codes": missing key, bad config
    checks = {c["name"]: c for c in doc["data"]["checks"]}
    assert not checks["api key"]["ok"] and ".env" in checks["api key"]["fix"]
    assert not checks["config"]["ok"] and "model" in checks["config"]["detail"]


def test_a_service_that_does_not_answer(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # discard port: nothing listens
    doc = cli.json("doctor", code=1)
    service = next(c for c in doc["data"]["checks"] if c["name"] == "service")
    assert not service["ok"] and "connection" in service["detail"]
