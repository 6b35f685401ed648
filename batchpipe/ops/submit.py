"""`submit`: upload prepared shards and create their batches, each exactly once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from batchpipe import fsio
from batchpipe.ledger.model import ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.canary import canary_gate, split_canary
from batchpipe.ops.cancel import release_hold
from batchpipe.ops.common import bind_provider, run_config
from batchpipe.ops.remote import BatchCreates, ensure_uploaded
from batchpipe.ops.schedule import Schedule
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider


@dataclass
class Submitted:
    run_id: str
    uploaded: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # duplicates found and cancelled, holds lifted
    held: str | None = None  # why nothing was submitted (tick on a held run)
    over_budget: list[str] = field(default_factory=list)  # shards the budget keeps back (a person must act)
    queued: list[str] = field(default_factory=list)  # shards waiting for room in the provider's queue


@dataclass(frozen=True)
class SubmitOptions:
    """What the caller asks of `submit` beyond the run's own config (`run` and `tick` pass it on)."""

    respect_hold: bool = False  # leave a held (cancelled) run alone: what unattended `tick` wants
    budget_usd: float | None = None  # replace the run's budget, from now on
    canary: int | None = None  # send the first N requests alone first (see ops/canary.py)


def submit(
    paths: RunPaths, provider: Provider, options: SubmitOptions = SubmitOptions(), *, sleep=time.sleep
) -> Submitted:
    """Upload every prepared shard and create a batch for every uploaded one, in shard order.

    Shard by shard, so the first batch starts while later shards are still uploading, and a
    crash loses at most the step in flight. A held (cancelled) run is resumed unless
    `options.respect_hold`. Shards the budget or the queue keep back are reported, not sent.
    """
    result = Submitted(paths.run_id)
    budget_usd, canary = options.budget_usd, options.canary
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        if ledger.run.hold is not None:
            if options.respect_hold:
                result.held = ledger.run.hold
                return result
            result.notes.append(f"resuming run {paths.run_id} ({release_hold(ledger)})")
        if budget_usd is not None and budget_usd != ledger.run.budget_usd:
            ledger.run.budget_usd = budget_usd
            ledger.commit({"event": "budget", "budget_usd": budget_usd})
        if canary and ledger.run.canary is None:
            split_canary(ledger, canary)
        waiting = canary_gate(ledger)
        if ledger.run.hold is not None:  # the canary just failed: stop here, a person must look
            result.held = ledger.run.hold
            return result
        cfg = run_config(paths)
        schedule = Schedule.of(ledger, ledger.run.budget_usd, cfg.limits.enqueued_tokens, cfg)
        canary_index = ledger.state.shard(ledger.run.canary).index if ledger.run.canary else None
        creates = BatchCreates(ledger, provider, sleep=sleep)
        if any(s.state == ShardState.UPLOADED and s.batch is not None for s in ledger.shards):
            bind_provider(ledger, provider)
            creates.look_up_open()  # intents an earlier process left open: one listing for all of them
        for shard in ledger.shards:
            if waiting and shard.index != canary_index and shard.state in (ShardState.PREPARED, ShardState.UPLOADED):
                result.queued.append(f"shard {shard.id}: {waiting}")
                continue
            if shard.state == ShardState.PREPARED:
                if why := schedule.over_budget(shard):
                    result.over_budget.append(why)
                    continue
                bind_provider(ledger, provider)
                ensure_uploaded(ledger, shard, provider, sleep=sleep)
                result.uploaded.append(shard.id)
            if shard.state == ShardState.UPLOADED:
                if why := schedule.queue_full(shard):
                    result.queued.append(why)
                    continue
                bind_provider(ledger, provider)
                creates.add(shard)
        try:
            creates.settle()  # the creates whose answer was lost: looked up together
        finally:
            result.submitted, result.notes = creates.submitted, result.notes + creates.notes
    return result
