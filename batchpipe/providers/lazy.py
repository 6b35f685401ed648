"""A provider that opens its client on the first remote call.

Opening the OpenAI provider means importing `openai` (about a second of CPU, more on a busy
machine) and building a client. A pass with nothing remote to do (a finished run, a cron
`tick` while batches run for hours, `process`) must not pay for that, so `open_provider`
returns this stand-in: it knows its name and base URL at once and builds the real provider,
in providers/openai_batch.py (still the only `openai` importer), when a call needs it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from batchpipe.providers.base import Provider
from batchpipe.urls import public_url

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normal_base_url(url: str | None) -> str:
    """The base URL as the `openai` client reports it (scheme and host lower-cased, default port
    dropped, one trailing slash), without importing it: the ledger records this string and later
    commands compare against it."""
    parts = urlsplit(url or DEFAULT_BASE_URL)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    netloc = host if parts.port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{parts.port}"
    if parts.username is not None:
        netloc = parts.username + (f":{parts.password}" if parts.password is not None else "") + "@" + netloc
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((scheme, netloc, path, parts.query, ""))


class LazyOpenAIProvider:
    """The OpenAI Batch provider, built (and `openai` imported) at the first remote call.

    Every remote call of the Provider protocol (providers/base.py) is passed on to the real
    provider, opened then: the stand-in never falls behind the protocol.
    """

    name = "openai"

    def __init__(self, *, api_key: str, base_url: str | None = None) -> None:
        self._api_key = api_key
        self._base_url = base_url
        # what is recorded and shown: the real provider's form, without credentials (batchpipe/urls.py)
        self.base_url = public_url(normal_base_url(base_url)).rstrip("/")
        self._real: Provider | None = None

    @property
    def opened(self) -> bool:
        return self._real is not None

    def _open(self) -> Provider:
        if self._real is None:
            from batchpipe.providers.openai_batch import OpenAIBatchProvider

            self._real = OpenAIBatchProvider(api_key=self._api_key, base_url=self._base_url)
        return self._real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never open the client for Python's own probes (copy, pickle, ...)
            raise AttributeError(name)
        return getattr(self._open(), name)
