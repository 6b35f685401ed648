"""The OpenAI Batch API through the official `openai` client: the only module importing it.

Reads (retrieve, list, download) use the client's own retries. Mutating calls use a client
with retries off: the API has no idempotency keys, so a retried create after a lost answer
would be a second, billed batch (reference/openai-batch-api.md §5.3-5.4). Instead, errors are
classified here and the caller looks the tag up before it tries again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

from batchpipe.errors import ProviderError, RemoteNotFound
from batchpipe.providers.base import RemoteBatch, RemoteFile

# Objects created this long before an intent was recorded are still looked at: the local and
# the remote clock may disagree.
CLOCK_SLACK_SECONDS = 600


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """The wait the service asked for (retry-after-ms, then retry-after in seconds), if any."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, ValueError):
            continue
    return None


def _error(exc: Exception, action: str) -> ProviderError:
    """Turn an `openai` exception into a ProviderError that says whether the call may have acted."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(f"{action}: the service did not answer in time", retryable=True, outcome_unknown=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{action}: connection to the service failed ({exc})", retryable=True, outcome_unknown=True)
    if isinstance(exc, openai.AuthenticationError):
        return ProviderError(
            f"{action}: the service refused the API key (401)",
            hint="check OPENAI_API_KEY (environment or .env)",
            status_code=401,
        )
    if isinstance(exc, openai.NotFoundError):
        # Not a hiccup: nothing will be there on another try (a deleted or expired file, say).
        body = exc.body if isinstance(exc.body, dict) else {}
        return RemoteNotFound(
            f"{action}: HTTP 404: {body.get('message') or exc}", status_code=404, code=exc.code, param=exc.param
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or str(exc)
        return ProviderError(
            f"{action}: HTTP {status}: {message}",
            status_code=status,
            code=exc.code,
            param=exc.param,
            retryable=status in (408, 409, 429) or status >= 500,
            # A 5xx or 408 may come after the server already acted; a 4xx means it did not.
            outcome_unknown=status >= 500 or status == 408,
            retry_after=_retry_after(exc),
        )
    return ProviderError(f"{action}: {exc}", retryable=False)


def _batch(b: Any) -> RemoteBatch:
    counts = b.request_counts
    errors = []
    if b.errors is not None and b.errors.data:
        errors = [{"code": e.code, "message": e.message, "param": e.param, "line": e.line} for e in b.errors.data]
    usage = getattr(b, "usage", None)
    return RemoteBatch(
        id=b.id,
        status=b.status,
        input_file_id=b.input_file_id,
        created_at=int(b.created_at or 0),
        request_counts=(
            {"total": counts.total or 0, "completed": counts.completed or 0, "failed": counts.failed or 0}
            if counts is not None
            else {}
        ),
        output_file_id=b.output_file_id or None,  # some services send "" for "none"
        error_file_id=b.error_file_id or None,
        errors=errors,
        metadata=dict(b.metadata or {}),
        usage=usage.model_dump() if usage is not None else None,
    )


# Consecutive objects older than the intent after which a newest-first listing is done.
OLD_STREAK = 20


def _since(items: Any, since: float) -> Any:
    """The listed objects, stopping early once they are surely all older than `since`.

    OpenAI lists newest first, so the first object older than the intent could end the search.
    But a tag lookup that stops too early would miss a batch and pay for a second one, and other
    implementations of the API may list oldest first. So paging stops only after a run of old
    objects in a listing that has been newest-first all along; otherwise it goes to the end.
    """
    cutoff = since - CLOCK_SLACK_SECONDS
    newest_first, previous, streak = True, None, 0
    for item in items:
        created = item.created_at or 0
        if previous is not None and created > previous:
            newest_first = False
        previous = created
        if created and created < cutoff:
            streak += 1
            if newest_first and streak >= OLD_STREAK:
                return
            continue
        streak = 0
        yield item


def _file(f: Any) -> RemoteFile:
    return RemoteFile(id=f.id, filename=f.filename, bytes=int(f.bytes or 0), created_at=int(f.created_at or 0))


class OpenAIBatchProvider:
    name = "openai"

    def __init__(self, *, api_key: str, base_url: str | None = None, timeout: float = 600.0) -> None:
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=2, timeout=timeout)
        self._once = self._client.with_options(max_retries=0)
        self.base_url = str(self._client.base_url)

    # -- mutating calls: exactly once -------------------------------------------------------
    def upload(self, path: Path, filename: str) -> RemoteFile:
        try:
            with open(path, "rb") as f:
                return _file(self._once.files.create(file=(filename, f, "application/jsonl"), purpose="batch"))
        except openai.OpenAIError as exc:
            raise _error(exc, f"upload of {filename}") from None

    def create_batch(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        try:
            return _batch(
                self._once.batches.create(
                    input_file_id=file_id, endpoint=endpoint, completion_window="24h", metadata=metadata
                )
            )
        except openai.OpenAIError as exc:
            raise _error(exc, f"batch create for {file_id}") from None

    def cancel_batch(self, batch_id: str) -> RemoteBatch:
        try:
            return _batch(self._once.batches.cancel(batch_id))
        except openai.OpenAIError as exc:
            raise _error(exc, f"cancel of {batch_id}") from None

    # -- reads: the client's retries are safe here ---------------------------------------------
    def get_batch(self, batch_id: str) -> RemoteBatch:
        try:
            return _batch(self._client.batches.retrieve(batch_id))
        except openai.OpenAIError as exc:
            raise _error(exc, f"status of {batch_id}") from None

    def find_file(self, filename: str, since: float) -> RemoteFile | None:
        """The newest batch file named `filename` created after `since` (minus clock slack)."""
        try:
            pages = self._client.files.list(purpose="batch", order="desc", limit=1000)
            for f in _since(pages, since):
                if f.filename == filename:
                    return _file(f)
        except openai.OpenAIError as exc:
            raise _error(exc, f"looking up file {filename}") from None
        return None

    def find_batches(
        self, metadata: dict[str, str], since: float, input_file_ids: frozenset[str] = frozenset()
    ) -> list[RemoteBatch]:
        """Batches created after `since` (minus clock slack) whose metadata contains `metadata`, or
        whose input file is one of `input_file_ids` (for services that drop metadata)."""
        try:
            return [
                _batch(b) for b in _since(self._client.batches.list(limit=100), since)
                if all((b.metadata or {}).get(k) == v for k, v in metadata.items()) or b.input_file_id in input_file_ids
            ]
        except openai.OpenAIError as exc:
            raise _error(exc, "looking up batches") from None

    def ping(self) -> None:
        try:
            self._client.with_options(max_retries=0, timeout=20).batches.list(limit=1)
        except openai.OpenAIError as exc:
            raise _error(exc, f"reaching {self.base_url}") from None

    def file_exists(self, file_id: str) -> bool:
        """Does the service still have this file? (False only on a 404: deleted or expired.)"""
        try:
            self._client.files.retrieve(file_id)
        except openai.NotFoundError:
            return False
        except openai.OpenAIError as exc:
            raise _error(exc, f"looking up file {file_id}") from None
        return True

    def iter_file_content(self, file_id: str) -> Iterator[bytes]:
        try:
            with self._client.files.with_streaming_response.content(file_id) as response:
                yield from response.iter_bytes(1 << 20)
        except openai.OpenAIError as exc:
            raise _error(exc, f"download of {file_id}") from None
