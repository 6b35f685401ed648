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
from batchpipe.ledger.model import RUNNING_STATUSES, TOKEN_LIMIT_CODE, Batch, Run, Shard, ShardState, Upload
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import record_provider
from batchpipe.providers import Provider, RemoteBatch, RemoteFile

T = TypeVar("T")

TRIES = 5


def upload_tag(run: Run, shard: Shard) -> str:
    return f"{run.id}--{shard.id}--{shard.file.sha256[:12]}--{run.nonce}.jsonl"


def batch_tag(run: Run, shard: Shard) -> dict[str, str]:
    return {"batchpipe_run": run.id, "batchpipe_shard": shard.id, "batchpipe_sha": shard.file.sha256[:12],
            "batchpipe_nonce": run.nonce}


def backoff(attempt: int, exc: ProviderError | None = None) -> float:
    """Seconds to wait before try `attempt + 1`: what the service asked for, else exponential."""
    if exc is not None and exc.retry_after is not None and exc.retry_after <= 120:
        return exc.retry_after
    return min(0.5 * 2.0**attempt, 30.0)


def _send(
    send: Callable[[], T],
    *,
    sleep: Callable[[float], None],
    also_retry: Callable[[ProviderError], bool] = lambda e: False,
) -> T | ProviderError:
    """Send a mutating call, again after errors that say nothing happened; an error after which
    something may have happened (5xx, timeout, dropped connection) is returned, not raised: the
    caller must look the tag up before sending again."""
    for attempt in range(TRIES):
        try:
            return send()
        except ProviderError as exc:
            if exc.outcome_unknown:
                return exc
            if attempt == TRIES - 1 or not (exc.retryable or also_retry(exc)):
                raise
            sleep(backoff(attempt, exc))
    raise AssertionError("unreachable")


def _once(send: Callable[[], T], lookup: Callable[[], T | None], *, sleep: Callable[[float], None]) -> T:
    """Send a mutating call; after an unknown outcome, adopt what the lookup finds before resending."""
    for attempt in range(TRIES):
        outcome = _send(send, sleep=sleep)
        if not isinstance(outcome, ProviderError):
            return outcome
        found = lookup()
        if found is not None:
            return found
        if attempt == TRIES - 1:
            raise outcome
        sleep(backoff(attempt, outcome))
    raise AssertionError("unreachable")


def ensure_uploaded(ledger: Ledger, shard: Shard, provider: Provider, *, sleep=time.sleep) -> None:
    """PREPARED -> UPLOADED: upload the shard file once, or adopt the upload a crash left behind.

    A file is this shard's if it has the intent's name (run id, shard, content sha, run nonce)
    and, where the service reports sizes, the shard file's size.
    """
    path = ledger.verify(shard.file)

    def lookup() -> RemoteFile | None:
        found = provider.find_file(upload.filename, upload.intent_at, shard.file.bytes)
        ledger.log({"event": "remote", "call": "lookup_file", "shard": shard.id, "found": found and found.id})
        return found

    fresh = shard.upload is None
    if fresh:
        shard.upload = Upload(filename=upload_tag(ledger.run, shard), intent_at=time.time())
        ledger.commit({"event": "intent", "shard": shard.id, "call": "upload", "filename": shard.upload.filename})
    upload = shard.upload
    found = None if fresh else lookup()  # an intent left open by an earlier process: it may have happened
    if found is None:
        crash.point("upload:before")
        found = _once(lambda: provider.upload(path, upload.filename), lookup, sleep=sleep)
        crash.point("upload:after")
    record_provider(ledger, provider)  # the run's first remote object binds it to this service
    ledger.log({"event": "remote", "call": "upload", "shard": shard.id, "file_id": found.id})
    ledger.advance(shard, ShardState.UPLOADED, upload=Upload(upload.filename, upload.intent_at, found.id))


def is_tagged(batch: RemoteBatch, shard: Shard) -> bool:
    """Is `batch` one of this shard attempt's?

    It carries the whole tag the intent recorded: run id, shard, content sha and the run's nonce
    (a run id used again, or the same job in another runs dir, has another nonce or sha). A
    service that drops metadata is matched by the input file, which was found by its own tag.
    """
    assert shard.batch is not None
    if "batchpipe_run" in batch.metadata:
        return all(batch.metadata.get(k) == v for k, v in shard.batch.metadata.items())
    return shard.upload is not None and shard.upload.file_id is not None and batch.input_file_id == shard.upload.file_id


def tagged_batches(shard: Shard, found: list[RemoteBatch]) -> list[RemoteBatch]:
    """This attempt's batches among `found`, oldest first.

    Batches in the shard's history (an earlier create that failed on the enqueued-token limit)
    are not this attempt's. Any other one carrying its tag is, whatever its status: it was paid
    for, or failed for a reason a second create would meet too.
    """
    earlier = {h.get("id") for h in shard.history}
    mine = (b for b in found if b.id not in earlier and is_tagged(b, shard))
    return sorted(mine, key=lambda b: (b.created_at, b.id))


def find_tagged(provider: Provider, shards: list[Shard]) -> dict[str, list[RemoteBatch]]:
    """Each shard's batches (tagged_batches), from one pass through the service's batch list.

    In a busy organisation the list is many pages long: the intents of a pass are matched
    against one listing together, never one listing each.
    """
    listed = provider.list_batches(min(s.batch.intent_at for s in shards))
    return {s.id: tagged_batches(s, listed) for s in shards}


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


def file_not_found(exc: ProviderError) -> bool:
    """A create answered that it cannot find the input file: right after an upload the service
    may not see the file yet (reference/openai-batch-api.md §1.4), or the file is gone."""
    return exc.status_code in (400, 404) and exc.param in ("file_id", "input_file_id")


class BatchCreates:
    """The batch creates of one submit pass (UPLOADED -> SUBMITTED), each made exactly once.

    A create may have made a batch although its answer was lost, and so may one a crash
    interrupted: such an intent is looked up by its tag before anything is sent again. A lookup
    is a pass through the service's batch list, many pages long in a busy organisation, so the
    intents are looked up together: those an earlier process left open with one listing before
    the pass (`look_up_open`), those whose answer this pass lost with one listing per round at
    its end (`settle`).
    """

    def __init__(self, ledger: Ledger, provider: Provider, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.ledger, self.provider, self.sleep = ledger, provider, sleep
        self.submitted: list[str] = []
        self.notes: list[str] = []  # duplicates found and cancelled
        self._unknown: list[tuple[Shard, ProviderError]] = []  # sent, outcome unknown: to look up
        self._looked_up: set[str] = set()  # open intents looked up this pass and not found: send them

    def look_up_open(self) -> None:
        """Adopt what the open intents of earlier processes made, with one listing."""
        open_ = [s for s in self.ledger.shards if s.state == ShardState.UPLOADED and s.batch is not None]
        if not open_:
            return
        for shard_id, mine in self._look_up(open_).items():
            if not mine:
                self._looked_up.add(shard_id)

    def add(self, shard: Shard) -> None:
        """Create `shard`'s batch (once), unless an open intent of it is still to be looked up."""
        assert shard.state == ShardState.UPLOADED and shard.upload is not None and shard.upload.file_id is not None
        if shard.batch is None:
            shard.batch = Batch(metadata=batch_tag(self.ledger.run, shard), intent_at=time.time())
            self.ledger.commit({"event": "intent", "shard": shard.id, "call": "batch_create", "metadata": shard.batch.metadata})
        elif shard.id not in self._looked_up:
            self.look_up_open()  # (callers look up first; this keeps `add` safe on its own)
            if shard.state != ShardState.UPLOADED:
                return
        self._send(shard)

    def settle(self) -> None:
        """Look up the creates whose answer was lost, together; send again those not found.

        Up to TRIES rounds; what is still unknown after that stays an open intent (looked up by
        the next pass) and its error is raised.
        """
        for round_ in range(TRIES):
            if not self._unknown:
                return
            if round_:
                self.sleep(backoff(round_ - 1, self._unknown[-1][1]))
            unknown, self._unknown = self._unknown, []
            found = self._look_up([shard for shard, _ in unknown])
            for shard, _ in unknown:
                if not found[shard.id]:
                    self._send(shard)
        if self._unknown:
            raise self._unknown[-1][1]

    def _look_up(self, shards: list[Shard]) -> dict[str, list[RemoteBatch]]:
        found = find_tagged(self.provider, shards)
        for shard in shards:
            mine = found[shard.id]
            self.ledger.log({"event": "remote", "call": "lookup_batches", "shard": shard.id, "found": [b.id for b in mine]})
            if mine:
                self._adopt(shard, mine[0], mine)
        return found

    def _send(self, shard: Shard) -> None:
        run, file_id, tag = self.ledger.run, shard.upload.file_id, shard.batch.metadata
        crash.point("batch_create:before")
        # "file not found" is waited out only while the Files API still has the file; a file it no
        # longer has is uploaded again instead (ops/submit.py, ops/lost.py)
        outcome = _send(lambda: self.provider.create_batch(file_id, run.endpoint, tag), sleep=self.sleep,
                        also_retry=lambda exc: file_not_found(exc) and self.provider.file_exists(file_id))
        if isinstance(outcome, ProviderError):
            self._unknown.append((shard, outcome))
            return
        crash.point("batch_create:after")
        self._adopt(shard, outcome, [])

    def _adopt(self, shard: Shard, batch: RemoteBatch, seen: list[RemoteBatch]) -> None:
        """Record `batch` as the shard's; cancel (and report) any other one a lookup found."""
        assert shard.batch is not None
        ledger = self.ledger
        ledger.log({"event": "remote", "call": "batch_create", "shard": shard.id, "batch_id": batch.id})
        ledger.advance(shard, ShardState.SUBMITTED, batch=batch_record(shard.batch.metadata, shard.batch.intent_at, batch))
        self.submitted.append(shard.id)
        self.notes += [cancel_duplicate(ledger, shard, self.provider, dup) for dup in seen if dup.id != batch.id]


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
