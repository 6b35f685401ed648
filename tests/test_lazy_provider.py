"""A pass with nothing remote to do does not open the provider: `openai` is never imported.

Importing `openai` costs about a second of CPU (more on a busy machine); a cron `tick` over
finished runs, or `run --wait` on a finished run, must not pay for it. The real command runs in
a subprocess under `python -X importtime`, which lists every module the process imported.
"""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pytest
from conftest import write_job

from batchpipe.providers import open_provider
from batchpipe.providers.lazy import normal_base_url
from batchpipe.providers.openai_batch import OpenAIBatchProvider


def imports_of(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `batchpipe ARGS` and return it with the names of every module it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "batchpipe", *args],
                            capture_output=True, text=True, env=dict(os.environ), timeout=100)
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, modules


def test_a_pass_with_nothing_to_do_never_imports_openai(cli, emulator, tmp_path):
    cli("run", write_job(tmp_path / "job"), "--run", "finished", "--wait", "--poll-interval", "0")
    requests = emulator.counts["requests"]
    for args in (["run", "finished", "--wait"], ["tick", "finished"], ["tick", "--all"], ["process", "finished"],
                 ["status", "finished"]):
        result, modules = imports_of(*args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert "batchpipe.cli" in modules, args  # the listing works
        assert not {m for m in modules if m == "openai" or m.startswith("openai.")}, args
    assert emulator.counts["requests"] == requests  # and nothing was asked of the service

    # The same check sees the import when there is remote work: a fresh run's first tick.
    cli("create", write_job(tmp_path / "other", name="other"), "--run", "fresh")
    result, modules = imports_of("tick", "fresh")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "openai" in modules
    assert emulator.counts["batch_creates"] == 3 + 3


@pytest.mark.parametrize("url", [
    None, "http://127.0.0.1:8089/v1", "http://127.0.0.1:8089/v1/", "HTTP://LocalHost:80/v1", "https://Example.com:443/v1",
    "https://example.com:8443/openai/v1", "http://[::1]:8089/v1", "https://user:pw@example.com/v1",
])
def test_the_base_url_is_known_before_the_client_is_built_and_is_the_clients(url, monkeypatch):
    # The ledger records provider.base_url at the first remote call and refuses another service
    # later, so the stand-in must report exactly what the real client will use.
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    client = openai.OpenAI(api_key="k", base_url=url)
    provider = open_provider(base_url=url, api_key="k")
    assert normal_base_url(url) == str(client.base_url)
    real = OpenAIBatchProvider(api_key="k", base_url=url)
    assert provider.base_url == real.base_url and "pw" not in provider.base_url  # shown and recorded without credentials
    assert not provider.opened
    client.close()
