"""`cancel`: stop a run's running batches and hold the run, keeping it resumable.

Whatever the cancelled batches finished is downloaded and merged as usual (the service bills
it); the requests they did not run go into new attempts that `tick` (cron) will not submit
while the run is held. A person resumes it with `batchpipe run RUN` (or `submit`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from batchpipe import crash, fsio
from batchpipe.errors import ProviderError
from batchpipe.ledger.model import ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import bind_provider
from batchpipe.ops.remote import RUNNING_STATUSES, batch_record
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider


@dataclass
class Cancelled:
    run_id: str
    cancelled: list[str] = field(default_factory=list)  # batch ids asked to stop


def cancel(paths: RunPaths, provider: Provider) -> Cancelled:
    result = Cancelled(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        if ledger.run.hold is None:
            ledger.run.hold = time.strftime("cancelled at %Y-%m-%d %H:%M:%S")
            ledger.commit({"event": "hold", "reason": ledger.run.hold})
        result.cancelled = cancel_running(ledger, provider)
    return result


def cancel_running(ledger: Ledger, provider: Provider, why: str | None = None) -> list[str]:
    """Ask the service to stop every running batch of the run (the caller holds the run lock);
    return their ids. What they finished is downloaded and merged as usual."""
    cancelled = []
    for shard in ledger.shards:
        if shard.state != ShardState.SUBMITTED or shard.batch.status not in RUNNING_STATUSES:
            continue
        bind_provider(ledger, provider)
        ledger.log({"event": "intent", "call": "cancel", "shard": shard.id, "batch_id": shard.batch.id}
                   | ({"why": why} if why else {}))
        crash.point("cancel:before")
        try:
            b = provider.cancel_batch(shard.batch.id)
        except ProviderError as exc:
            if exc.status_code != 409:  # 409: it finished meanwhile; its results will be downloaded
                raise
            continue
        crash.point("cancel:after")
        shard.batch = batch_record(shard.batch.metadata, shard.batch.intent_at, b)
        ledger.commit({"event": "remote", "call": "cancel", "shard": shard.id, "batch_id": b.id, "status": b.status})
        cancelled.append(b.id)
    return cancelled


def release_hold(ledger: Ledger) -> str | None:
    """A person asked to submit: lift a hold (cancel) and say what it was."""
    hold = ledger.run.hold
    if hold is not None:
        ledger.run.hold = None
        ledger.commit({"event": "resume", "was": hold})
    return hold
