"""Batch services. `open_provider` picks the implementation and resolves key and base URL."""

from __future__ import annotations

import os
from pathlib import Path

from batchpipe.errors import MissingApiKey
from batchpipe.providers.base import Provider, RemoteBatch, RemoteFile

__all__ = ["Provider", "RemoteBatch", "RemoteFile", "api_key_from_env", "base_url_from_env", "key_source", "open_provider"]


def _dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments, `export` and quotes allowed)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def api_key_from_env(name: str = "OPENAI_API_KEY") -> str | None:
    """The key from the environment, else from ./.env; never from a run directory."""
    return key_source(name)[0]


def key_source(name: str = "OPENAI_API_KEY") -> tuple[str | None, str | None]:
    """(the key, where it came from: "environment" or the .env path), or (None, None)."""
    if os.environ.get(name):
        return os.environ[name], "environment"
    dotenv = Path.cwd() / ".env"
    value = _dotenv(dotenv).get(name)
    return (value, str(dotenv)) if value else (None, None)


def base_url_from_env() -> str | None:
    return os.environ.get("OPENAI_BASE_URL") or _dotenv(Path.cwd() / ".env").get("OPENAI_BASE_URL") or None


def open_provider(name: str = "openai", *, base_url: str | None = None, api_key: str | None = None) -> Provider:
    """A provider for `name`; base_url: argument (config), then OPENAI_BASE_URL, then the default."""
    from batchpipe.providers.openai_batch import OpenAIBatchProvider  # the `openai` import is slow

    key = api_key or api_key_from_env()
    if not key:
        raise MissingApiKey(
            "OPENAI_API_KEY is not set",
            hint="export OPENAI_API_KEY=... or put OPENAI_API_KEY=... in a .env file in this directory",
        )
    return OpenAIBatchProvider(api_key=key, base_url=base_url or base_url_from_env())
