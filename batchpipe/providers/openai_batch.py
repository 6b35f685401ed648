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

try:  # the HTTP library the `openai` client is built on (httpx2 from openai 3, httpx before)
    from httpx2 import Response as _HttpResponse
except ImportError:  # pragma: no cover - depends on the installed openai
    from httpx import Response as _HttpResponse

from batchpipe.errors import ProviderError, RemoteNotFound
from batchpipe.providers.base import RemoteBatch, RemoteFile, SyncAnswer
from batchpipe.urls import public_url

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
        endpoint=getattr(b, "endpoint", None),
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
        # What is recorded and shown: never the credentials a gateway URL may carry.
        self.base_url = public_url(str(self._client.base_url)).rstrip("/")

    def _api(self, raw: Any, action: str) -> Any:
        """The parsed answer of a raw response, if it is the API's JSON.

        A proxy's sign-in page or a web server at the wrong URL answers 200 with HTML; the client
        would hand that back as a string and fail later with an AttributeError.
        """
        kind = raw.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/json", "") and not kind.endswith("+json"):
            shown = "an HTML page" if kind == "text/html" else f"{kind} content"
            raise ProviderError(
                f"{action}: the service at {self.base_url} answered with {shown}, not the OpenAI API",
                hint="check OPENAI_BASE_URL (or provider.base_url in the config): it must be the API itself, such as https://api.openai.com/v1",
            )
        return raw.parse()

    # -- mutating calls: exactly once -------------------------------------------------------
    def upload(self, path: Path, filename: str) -> RemoteFile:
        action = f"upload of {filename}"
        try:
            with open(path, "rb") as f:
                raw = self._once.files.with_raw_response.create(file=(filename, f, "application/jsonl"), purpose="batch")
            return _file(self._api(raw, action))
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None

    def create_batch(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        action = f"batch create for {file_id}"
        try:
            raw = self._once.batches.with_raw_response.create(
                input_file_id=file_id, endpoint=endpoint, completion_window="24h", metadata=metadata
            )
            return _batch(self._api(raw, action))
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None

    def cancel_batch(self, batch_id: str) -> RemoteBatch:
        action = f"cancel of {batch_id}"
        try:
            return _batch(self._api(self._once.batches.with_raw_response.cancel(batch_id), action))
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None

    def call(self, endpoint: str, body: dict[str, Any]) -> SyncAnswer:
        """One request to the regular endpoint (sync mode), sent once: ops/sync.py owns the retries
        (and their pacing by Retry-After and the rate limits), so the client's own are off."""
        path = endpoint.removeprefix("/v1")  # the base URL ends in /v1 already
        try:
            response = self._once.post(path, cast_to=_HttpResponse, body=body)
        except openai.APIStatusError as exc:
            response = exc.response
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise _error(exc, f"request to {endpoint}") from None
        headers = {k.lower(): v for k, v in response.headers.items()
                   if k.lower().startswith(("x-ratelimit-", "retry-after", "x-request-id", "content-type"))}
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        return SyncAnswer(response.status_code, parsed, headers.get("x-request-id"), headers)

    # -- reads: the client's retries are safe here ---------------------------------------------
    def get_batch(self, batch_id: str) -> RemoteBatch:
        action = f"status of {batch_id}"
        try:
            return _batch(self._api(self._client.batches.with_raw_response.retrieve(batch_id), action))
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None

    def find_file(self, filename: str, since: float, size: int | None = None) -> RemoteFile | None:
        """The newest batch file named `filename` created after `since` (minus clock slack), and of
        `size` bytes where the service reports a size (another upload under the name is not ours)."""
        action = f"looking up file {filename}"
        try:
            # 10,000 a page (the most the service allows): one page is enough for most organisations
            pages = self._api(self._client.files.with_raw_response.list(purpose="batch", order="desc", limit=10_000), action)
            for f in _since(pages, since):
                if f.filename == filename and (size is None or not f.bytes or f.bytes == size):
                    return _file(f)
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None
        return None

    def list_batches(self, since: float) -> list[RemoteBatch]:
        """Every batch created after `since` (minus clock slack): one pass through the batch list,
        which callers match many tags against (a busy organisation's list is many pages long)."""
        action = "looking up batches"
        try:
            return [_batch(b) for b in _since(self._api(self._client.batches.with_raw_response.list(limit=100), action), since)]
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None

    def recent_batches(self, limit: int) -> list[RemoteBatch]:
        """The `limit` newest batches, newest first: the pages the client fetches, no further."""
        action = "listing batches"
        found: list[RemoteBatch] = []
        try:
            for b in self._api(self._client.batches.with_raw_response.list(limit=min(limit, 100)), action):
                found.append(_batch(b))
                if len(found) >= limit:
                    break
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None
        return found

    def ping(self) -> None:
        action = f"reaching {self.base_url}"
        try:
            self._api(self._client.with_options(max_retries=0, timeout=20).batches.with_raw_response.list(limit=1), action)
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None

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
        action = f"download of {file_id}"
        try:
            with self._client.files.with_streaming_response.content(file_id) as response:
                if response.headers.get("content-type", "").lower().startswith("text/html"):
                    self._api(response, action)  # raises: a proxy page is not the file
                yield from response.iter_bytes(1 << 20)
        except openai.OpenAIError as exc:
            raise _error(exc, action) from None
