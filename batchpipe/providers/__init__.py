"""Batch services. `open_provider` picks the implementation and resolves key and base URL."""

from __future__ import annotations

import os
from pathlib import Path

from batchpipe.errors import MissingApiKey
from batchpipe.providers.base import Provider, RemoteBatch, RemoteFile, SyncAnswer
from batchpipe.providers.lazy import LazyOpenAIProvider

__all__ = ["Provider", "RemoteBatch", "RemoteFile", "SyncAnswer", "api_key_from_env", "base_url_from_env", "key_source", "open_provider"]


def _dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file, read by python-dotenv (comments, inline `# comments`,
    `export` and quotes as the shells and other tools that read .env files understand them)."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # here: only a .env that is there is read (issue 9: a faster start)

    try:
        values = dotenv_values(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    return {k: v for k, v in values.items() if v is not None}


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
    """A provider for `name`; base_url: argument (config), then OPENAI_BASE_URL, then the default.

    The key is checked now; the client is built (and `openai` imported) at the first remote call.
    """
    key = api_key or api_key_from_env()
    if not key:
        raise MissingApiKey(
            "OPENAI_API_KEY is not set",
            hint="export OPENAI_API_KEY=... or put OPENAI_API_KEY=... in a .env file in this directory",
        )
    return LazyOpenAIProvider(api_key=key, base_url=base_url or base_url_from_env())
