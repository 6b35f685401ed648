"""`status`: refresh the remote status of submitted shards and report the run."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchpipe import fsio
from batchpipe.errors import RunLocked
from batchpipe.ledger.model import TERMINAL_BATCH_STATUSES, TOKEN_LIMIT_CODE, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import Progress, bind_provider
from batchpipe.ops.remote import refresh
from batchpipe.ops.schedule import learn_from_rejection, queued_here
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider, api_key_from_env


# Stands for the provider that `status` did not open: the run has no batch running (see status()).
_NOTHING_TO_REFRESH: Any = object()


@dataclass
class Status:
    ledger: Ledger
    progress: Progress
    refreshed: bool
    note: str | None = None  # why the status was not refreshed, if it was not


def running(shard: Shard) -> bool:
    """Is the shard's batch still running at the service, as last seen (so worth asking about)?

    A batch seen finished (completed, failed, expired, cancelled) never changes again: asking
    about it once more is a call for nothing, and a finished run's `status` needs no client. (A
    batch refused for the queue is the exception: refresh() has not put its shard back yet.)"""
    if shard.state != ShardState.SUBMITTED:
        return False
    batch = shard.batch
    refused = batch.status == "failed" and any(e.get("code") == TOKEN_LIMIT_CODE for e in batch.errors)
    return batch.status not in TERMINAL_BATCH_STATUSES or refused


def refresh_submitted(ledger: Ledger, provider: Provider) -> int:
    """Refresh every submitted shard whose batch is still running; return how many changed."""
    changed = 0
    before = queued_here(ledger)
    for shard in ledger.shards:
        if running(shard):
            bind_provider(ledger, provider)
            changed += refresh_shard(ledger, shard, provider, before)
    return changed


def refresh_shard(ledger: Ledger, shard: Shard, provider: Provider, before: dict[str, int] | None = None) -> bool:
    """Refresh one submitted shard; a batch refused for the queue teaches the queue's limit."""
    before = queued_here(ledger) if before is None else before
    changed = refresh(ledger, shard, provider)
    if shard.state == ShardState.UPLOADED:
        learn_from_rejection(ledger, shard, before)
    return changed


def status(paths: RunPaths, provider: Provider | Callable[[], Provider | None] | None) -> Status:
    """The run as the ledger knows it, refreshed from the provider when possible.

    Refreshing writes the ledger, so it needs the run lock; if another process holds it (a
    `run --wait` in another terminal, say), the last recorded state is shown instead of waiting.
    A run with no batch running has nothing to refresh: it is read without the lock, so the
    status of a finished run works on a read-only disk and creates no file.

    `provider` may be a function that opens it (None: no API key): it is then called only when
    a batch is running, so the status of a run whose batches have all finished (downloaded or
    not) never loads the provider's client.
    """
    ledger = Ledger.load(paths)
    if callable(provider):
        live = any(running(s) for s in ledger.shards)
        provider = provider() if live else (None if api_key_from_env() is None else _NOTHING_TO_REFRESH)
    if provider is None:
        return Status(ledger, Progress.of(ledger, with_cost=True), False, "not refreshed: no API key")
    if provider is _NOTHING_TO_REFRESH or not any(running(s) for s in ledger.shards):
        return Status(ledger, Progress.of(ledger, with_cost=True), True)
    try:
        with fsio.run_lock(paths.root, timeout=0):
            ledger = Ledger.load(paths)
            refresh_submitted(ledger, provider)
    except RunLocked:
        ledger = Ledger.load(paths)
        return Status(ledger, Progress.of(ledger, with_cost=True), False, "not refreshed: another batchpipe process is working on this run")
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        ledger = Ledger.load(paths)  # a read-only run dir: show what is recorded
        return Status(ledger, Progress.of(ledger, with_cost=True), False,
                      f"not refreshed: the run dir cannot be written ({exc.strerror})")
    return Status(ledger, Progress.of(ledger, with_cost=True), True)
