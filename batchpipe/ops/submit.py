"""`submit`: upload prepared shards and create their batches, each exactly once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from batchpipe import fsio
from batchpipe.ledger.model import ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.cancel import release_hold
from batchpipe.ops.common import bind_provider
from batchpipe.ops.remote import ensure_submitted, ensure_uploaded
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider


@dataclass
class Submitted:
    run_id: str
    uploaded: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # duplicates found and cancelled, holds lifted
    held: str | None = None  # why nothing was submitted (tick on a held run)


def submit(paths: RunPaths, provider: Provider, *, sleep=time.sleep, respect_hold: bool = False) -> Submitted:
    """Upload every prepared shard and create a batch for every uploaded one, in shard order.

    Shard by shard, so the first batch starts while later shards are still uploading, and a
    crash loses at most the step in flight. A held (cancelled) run is resumed, unless
    `respect_hold` (what unattended `tick` passes).
    """
    result = Submitted(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        if ledger.run.hold is not None:
            if respect_hold:
                result.held = ledger.run.hold
                return result
            result.notes.append(f"resuming run {paths.run_id} ({release_hold(ledger)})")
        for shard in ledger.shards:
            if shard.state == ShardState.PREPARED:
                bind_provider(ledger, provider)
                ensure_uploaded(ledger, shard, provider, sleep=sleep)
                result.uploaded.append(shard.id)
            if shard.state == ShardState.UPLOADED:
                bind_provider(ledger, provider)
                result.notes += ensure_submitted(ledger, shard, provider, sleep=sleep)
                result.submitted.append(shard.id)
    return result
