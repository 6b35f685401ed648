"""Remote side effects made exactly once (DESIGN.md §4).

Before an upload or a batch create the ledger records the intent and a deterministic tag.
The call is sent once (no client retries). If its outcome is unknown (5xx, timeout, dropped
connection), the tag is looked up first and what is found is adopted; only if nothing is
there is the call tried again. A command that meets an intent left open by a crash does the
same lookup before sending anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TypeVar

from batchpipe import crash
from batchpipe.errors import ProviderError
from batchpipe.ledger.model import Batch, Shard, ShardState, Upload
from batchpipe.ledger.store import Ledger
from batchpipe.providers import Provider, RemoteBatch, RemoteFile

T = TypeVar("T")

TRIES = 5
TOKEN_LIMIT_CODE = "token_limit_exceeded"
RUNNING_STATUSES = frozenset({"validating", "in_progress", "finalizing"})


def upload_tag(run_id: str, shard: Shard) -> str:
    return f"{run_id}--{shard.id}--{shard.file.sha256[:12]}.jsonl"


def batch_tag(run_id: str, shard: Shard) -> dict[str, str]:
    return {"batchpipe_run": run_id, "batchpipe_shard": shard.id, "batchpipe_sha": shard.file.sha256[:12]}


def backoff(attempt: int, exc: ProviderError | None = None) -> float:
    """Seconds to wait before try `attempt + 1`: what the service asked for, else exponential."""
    if exc is not None and exc.retry_after is not None and exc.retry_after <= 120:
        return exc.retry_after
    return min(0.5 * 2.0**attempt, 30.0)


def _once(
    send: Callable[[], T],
    lookup: Callable[[], T | None],
    *,
    sleep: Callable[[float], None],
    also_retry: Callable[[ProviderError], bool] = lambda e: False,
) -> T:
    """Send a mutating call; after an unknown outcome, adopt what the lookup finds before resending."""
    for attempt in range(TRIES):
        try:
            return send()
        except ProviderError as exc:
            if exc.outcome_unknown:
                found = lookup()
                if found is not None:
                    return found
            if attempt == TRIES - 1 or not (exc.retryable or also_retry(exc)):
                raise
            sleep(backoff(attempt, exc))
    raise AssertionError("unreachable")


def ensure_uploaded(ledger: Ledger, shard: Shard, provider: Provider, *, sleep=time.sleep) -> None:
    """PREPARED -> UPLOADED: upload the shard file once, or adopt the upload a crash left behind."""
    path = ledger.verify(shard.file)

    def lookup() -> RemoteFile | None:
        found = provider.find_file(upload.filename, upload.intent_at)
        ledger.log({"event": "remote", "call": "lookup_file", "shard": shard.id, "found": found and found.id})
        return found

    fresh = shard.upload is None
    if fresh:
        shard.upload = Upload(filename=upload_tag(ledger.run.id, shard), intent_at=time.time())
        ledger.commit({"event": "intent", "shard": shard.id, "call": "upload", "filename": shard.upload.filename})
    upload = shard.upload
    found = None if fresh else lookup()  # an intent left open by an earlier process: it may have happened
    if found is None:
        crash.point("upload:before")
        found = _once(lambda: provider.upload(path, upload.filename), lookup, sleep=sleep)
        crash.point("upload:after")
    ledger.log({"event": "remote", "call": "upload", "shard": shard.id, "file_id": found.id})
    ledger.advance(shard, ShardState.UPLOADED, upload=Upload(upload.filename, upload.intent_at, found.id))


def tagged_batches(shard: Shard, found: list[RemoteBatch]) -> list[RemoteBatch]:
    """This attempt's batches among those carrying its tag, oldest first.

    Batches in the shard's history (an earlier create that failed on the enqueued-token limit)
    are not this attempt's. Any other one is, whatever its status: it was paid for, or failed
    for a reason a second create would meet too.
    """
    earlier = {h.get("id") for h in shard.history}
    return sorted((b for b in found if b.id not in earlier), key=lambda b: (b.created_at, b.id))


def _adopt(shard: Shard, found: list[RemoteBatch]) -> RemoteBatch | None:
    mine = tagged_batches(shard, found)
    return mine[0] if mine else None


def cancel_duplicate(ledger: Ledger, shard: Shard, provider: Provider, batch: RemoteBatch) -> str:
    """Cancel a second batch of one shard while it runs; report one that already finished."""
    if batch.status in ("completed", "expired"):
        message = f"shard {shard.id}: duplicate batch {batch.id} had already {batch.status} (it was billed); its results are not used"
    elif batch.status not in RUNNING_STATUSES:
        message = f"shard {shard.id}: duplicate batch {batch.id} is {batch.status}; nothing to cancel"
    else:
        ledger.log({"event": "intent", "call": "cancel", "shard": shard.id, "batch_id": batch.id})
        crash.point("cancel:before")
        try:
            provider.cancel_batch(batch.id)
        except ProviderError as exc:
            if exc.status_code != 409:  # 409: it finished meanwhile; nothing left to cancel
                raise
        crash.point("cancel:after")
        message = f"shard {shard.id}: cancelled duplicate batch {batch.id} (kept {shard.batch.id if shard.batch else '?'})"
    ledger.log({"event": "duplicate", "shard": shard.id, "batch_id": batch.id, "status": batch.status})
    return message


def _file_not_visible(exc: ProviderError) -> bool:
    # Right after an upload the service may not see the file yet and answers 400 for it
    # (reference/openai-batch-api.md §1.4); that is worth another try, unlike other 400s.
    return exc.status_code in (400, 404) and exc.param in ("file_id", "input_file_id")


def ensure_submitted(ledger: Ledger, shard: Shard, provider: Provider, *, sleep=time.sleep) -> list[str]:
    """UPLOADED -> SUBMITTED: create the shard's batch once, or adopt the one a crash left behind.

    Returns what had to be reported: if a lookup ever finds two batches for this shard, the
    oldest is kept and the other cancelled.
    """
    assert shard.upload is not None and shard.upload.file_id is not None
    tag = batch_tag(ledger.run.id, shard)
    seen: list[RemoteBatch] = []

    def lookup() -> RemoteBatch | None:
        found = provider.find_batches(tag, intent_at, frozenset({shard.upload.file_id}))
        seen[:] = tagged_batches(shard, found)
        ledger.log({"event": "remote", "call": "lookup_batches", "shard": shard.id, "found": [b.id for b in seen]})
        return seen[0] if seen else None

    if shard.batch is None:
        shard.batch = Batch(metadata=tag, intent_at=time.time())
        ledger.commit({"event": "intent", "shard": shard.id, "call": "batch_create", "metadata": tag})
        intent_at = shard.batch.intent_at
        found = None
    else:  # an intent left open by an earlier process: the create may have happened
        intent_at = shard.batch.intent_at
        found = lookup()
    if found is None:
        file_id = shard.upload.file_id
        crash.point("batch_create:before")
        found = _once(
            lambda: provider.create_batch(file_id, ledger.run.endpoint, tag),
            lookup,
            sleep=sleep,
            # "file not found" is waited out only while the Files API still has the file; a file it
            # no longer has is uploaded again instead (ops/submit.py, ops/lost.py)
            also_retry=lambda exc: _file_not_visible(exc) and provider.file_exists(file_id),
        )
        crash.point("batch_create:after")
    ledger.log({"event": "remote", "call": "batch_create", "shard": shard.id, "batch_id": found.id})
    ledger.advance(shard, ShardState.SUBMITTED, batch=batch_record(tag, intent_at, found))
    return [cancel_duplicate(ledger, shard, provider, dup) for dup in seen if dup.id != found.id]


def batch_record(tag: dict[str, str], intent_at: float, b: RemoteBatch) -> Batch:
    return Batch(
        metadata=tag,
        intent_at=intent_at,
        id=b.id,
        status=b.status,
        request_counts=dict(b.request_counts),
        output_file_id=b.output_file_id,
        error_file_id=b.error_file_id,
        errors=list(b.errors),
        usage=b.usage,
        created_at=b.created_at,
        refreshed_at=time.time(),
    )


def refresh(ledger: Ledger, shard: Shard, provider: Provider) -> bool:
    """Update a submitted shard's remote status; return True if anything changed.

    A batch that failed only because the provider's enqueued-token queue was full goes back
    to UPLOADED, to be submitted again later: nothing ran, nothing was billed.
    """
    assert shard.batch is not None and shard.batch.id is not None
    b = provider.get_batch(shard.batch.id)
    new = batch_record(shard.batch.metadata, shard.batch.intent_at, b)
    if b.status == "failed" and any(e.get("code") == TOKEN_LIMIT_CODE for e in b.errors):
        history = [*shard.history, asdict(new)]
        ledger.advance(shard, ShardState.UPLOADED, batch=None, history=history)
        return True
    old = asdict(shard.batch)
    changed = {k: v for k, v in asdict(new).items() if k != "refreshed_at" and old.get(k) != v}
    if changed:
        shard.batch = new
        ledger.commit({"event": "remote_status", "shard": shard.id, "status": b.status, "counts": b.request_counts})
    return bool(changed)
