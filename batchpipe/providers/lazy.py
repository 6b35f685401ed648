"""A provider that opens its client on the first remote call.

Opening the OpenAI provider means importing `openai` (about a second of CPU, more on a busy
machine) and building a client. A pass with nothing remote to do (a finished run, a cron
`tick` while batches run for hours, `process`) must not pay for that, so `open_provider`
returns this stand-in: it knows its name and base URL at once and builds the real provider,
in providers/openai_batch.py (still the only `openai` importer), when a call needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from batchpipe.providers.base import Provider, RemoteBatch, RemoteFile

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
    """The OpenAI Batch provider, built (and `openai` imported) at the first remote call."""

    name = "openai"

    def __init__(self, *, api_key: str, base_url: str | None = None) -> None:
        self._api_key = api_key
        self._base_url = base_url
        self.base_url = normal_base_url(base_url)
        self._real: Provider | None = None

    @property
    def opened(self) -> bool:
        return self._real is not None

    def _open(self) -> Provider:
        if self._real is None:
            from batchpipe.providers.openai_batch import OpenAIBatchProvider

            self._real = OpenAIBatchProvider(api_key=self._api_key, base_url=self._base_url)
        return self._real

    def upload(self, path: Path, filename: str) -> RemoteFile:
        return self._open().upload(path, filename)

    def find_file(self, filename: str, since: float) -> RemoteFile | None:
        return self._open().find_file(filename, since)

    def create_batch(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        return self._open().create_batch(file_id, endpoint, metadata)

    def find_batches(
        self, metadata: dict[str, str], since: float, input_file_ids: frozenset[str] = frozenset()
    ) -> list[RemoteBatch]:
        return self._open().find_batches(metadata, since, input_file_ids)

    def get_batch(self, batch_id: str) -> RemoteBatch:
        return self._open().get_batch(batch_id)

    def cancel_batch(self, batch_id: str) -> RemoteBatch:
        return self._open().cancel_batch(batch_id)

    def iter_file_content(self, file_id: str) -> Iterator[bytes]:
        return self._open().iter_file_content(file_id)

    def ping(self) -> None:
        self._open().ping()
