"""What batchpipe needs from a batch service, independent of any vendor's client.

ops/ talks to this protocol only; providers/openai_batch.py implements it with the `openai`
client. Mutating calls (upload, create_batch, cancel_batch) are made exactly once: they raise
ProviderError(outcome_unknown=True) when the service may have acted without answering, and
the caller then finds the object by its tag (find_file / list_batches) before trying again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class RemoteFile:
    id: str
    filename: str
    bytes: int
    created_at: int


@dataclass(frozen=True)
class RemoteBatch:
    id: str
    status: str
    input_file_id: str
    created_at: int
    request_counts: dict[str, int] = field(default_factory=dict)  # total, completed, failed
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # code, message, param, line
    metadata: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class SyncAnswer:
    """One answer of the regular (synchronous) endpoint, whatever its status (sync mode)."""

    status_code: int
    body: Any  # the parsed JSON body (an error answer: {"error": {...}}); None if it was not JSON
    request_id: str | None
    headers: dict[str, str]  # lower-cased names: x-ratelimit-*, retry-after, retry-after-ms


class Provider(Protocol):
    name: str
    base_url: str

    def upload(self, path: Path, filename: str) -> RemoteFile: ...

    def find_file(self, filename: str, since: float, size: int | None = None) -> RemoteFile | None: ...

    def create_batch(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch: ...

    def list_batches(self, since: float) -> list[RemoteBatch]:
        """Every batch created since `since` (one listing; the caller matches its tags against it)."""
        ...

    def recent_batches(self, limit: int) -> list[RemoteBatch]:
        """The `limit` newest batches of the account, newest first (`list --remote`)."""
        ...

    def get_batch(self, batch_id: str) -> RemoteBatch: ...

    def cancel_batch(self, batch_id: str) -> RemoteBatch: ...

    def iter_file_content(self, file_id: str) -> Iterator[bytes]:
        """The file's bytes; raises RemoteNotFound if the service no longer has the file."""
        ...

    def file_exists(self, file_id: str) -> bool:
        """False if the service answers that it has no such file (deleted or expired)."""
        ...

    def call(self, endpoint: str, body: dict[str, Any]) -> SyncAnswer:
        """POST one request to the regular endpoint, once (no retries: the caller owns them).

        Any HTTP answer is returned; raises ProviderError (retryable) only when no answer came
        (connection failed, timeout).
        """
        ...

    def ping(self) -> None:
        """A cheap authenticated read (raises ProviderError if the service or the key is not right)."""
        ...
