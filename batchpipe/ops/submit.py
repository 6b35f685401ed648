"""`submit`: upload prepared shards and create their batches, each exactly once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from batchpipe import fsio
from batchpipe.errors import ProviderError, UsageError
from batchpipe.ledger.index import Index
from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.canary import canary_gate, split_canary
from batchpipe.ops.cancel import release_hold
from batchpipe.ops.common import bind_provider, run_config
from batchpipe.ops.lost import back_to_upload, input_file_gone
from batchpipe.ops.recut import recut
from batchpipe.ops.remote import BatchCreates, ensure_uploaded
from batchpipe.ops.schedule import Schedule, queue_refusals
from batchpipe.ops.status import refresh_shard
from batchpipe.ops.summary import not_needed
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider

# A lone request the service refused this many times for the queue, without stating its limit,
# is taken to be too big for it: asking again would only collect more refusals.
MAX_ALONE_REFUSALS = 3


@dataclass
class Submitted:
    run_id: str
    uploaded: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # duplicates found and cancelled, holds lifted
    held: str | None = None  # why nothing was submitted (tick on a held run)
    over_budget: list[str] = field(default_factory=list)  # shards the budget keeps back (a person must act)
    queued: list[str] = field(default_factory=list)  # shards waiting for room in the provider's queue
    too_big: list[str] = field(default_factory=list)  # requests the provider's queue can never take (a person must act)
    handed_off: list[str] = field(default_factory=list)  # shards exported for a person to upload: never sent here


@dataclass(frozen=True)
class SubmitOptions:
    """What the caller asks of `submit` beyond the run's own config (`run` and `tick` pass it on)."""

    respect_hold: bool = False  # leave a held (cancelled) run alone: what unattended `tick` wants
    budget_usd: float | None = None  # replace the run's budget, from now on
    canary: int | None = None  # send the first N requests alone first (see ops/canary.py)
    poll_interval: float = 30.0  # the caller's poll interval: paces retries after a queue refusal
    sync: bool = False  # send to the regular endpoint instead (`run --sync`; see ops/sync.py)


def start_pass(ledger: Ledger, run_id: str, options: SubmitOptions, notes: list[str]) -> tuple[str | None, str | None]:
    """What a pass that sends (submit, or sync mode's send) does first: resume a held run (unless
    `options.respect_hold`), take a new budget, split off the canary. Returns (held, waiting): the
    hold that stops this pass (None: go on), and why shards other than the canary must wait."""
    if ledger.run.hold is not None:
        if options.respect_hold:
            return ledger.run.hold, None
        notes.append(f"resuming run {run_id} ({release_hold(ledger)})")
    if options.budget_usd is not None and options.budget_usd != ledger.run.budget_usd:
        ledger.run.budget_usd = options.budget_usd
        ledger.commit({"event": "budget", "budget_usd": options.budget_usd})
    if options.canary and ledger.run.canary is None:
        if any(s.handoff is not None for s in ledger.shards):  # a canary re-cuts files a person may hold
            raise UsageError(f"run {run_id} has exported shards (batchpipe export): it cannot take a canary",
                             hint="go on without --canary")
        split_canary(ledger, options.canary)
    waiting = canary_gate(ledger)
    return ledger.run.hold, waiting  # a hold now: the canary just failed, a person must look


def submit(
    paths: RunPaths, provider: Provider, options: SubmitOptions = SubmitOptions(), *, sleep=time.sleep
) -> Submitted:
    """Upload every prepared shard and create a batch for every uploaded one, in shard order.

    Shard by shard, so the first batch starts while later shards are still uploading, and a
    crash loses at most the step in flight. A held (cancelled) run is resumed unless
    `options.respect_hold`. Shards the budget or the queue keep back are reported, not sent.
    """
    result = Submitted(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        if ledger.run.mode == "sync":  # its journals hold answered requests: a batch would pay for them twice
            raise UsageError(f"run {paths.run_id} sends in sync mode (to the regular endpoint), not as batches",
                             hint=f"`batchpipe run {paths.run_id}` sends what is left")
        result.held, waiting = start_pass(ledger, paths.run_id, options, result.notes)
        if result.held is not None:
            return result
        cfg = run_config(paths)
        schedule = Schedule.of(ledger, ledger.run.budget_usd, cfg.limits.enqueued_tokens, cfg, options.poll_interval,
                               provider.base_url)
        creates = BatchCreates(ledger, provider, sleep=sleep)
        if any(s.state == ShardState.UPLOADED and s.batch is not None for s in ledger.shards):
            bind_provider(ledger, provider)
            creates.look_up_open()  # intents an earlier process left open: one listing for all of them
        at = 0
        if ledger.run.target_reached is not None:  # limits.target: nothing more is needed
            unsent = sum(not_needed(ledger, s) for s in ledger.shards)
            if unsent:
                result.notes.append(f"limits.target reached ({ledger.run.target_reached} valid records): "
                                    f"{unsent} shard(s) not sent, as they are not needed")
            at = len(ledger.shards)
        while at < len(ledger.shards):  # by position: a re-cut replaces the shard there with its pieces
            shard = ledger.shards[at]
            at += 1
            if shard.handoff is not None and shard.state == ShardState.PREPARED:
                result.handed_off.append(shard.id)  # a person uploads it (ops/handoff.py): never pay twice
                continue
            unsent = shard.batch is None and shard.state in (ShardState.PREPARED, ShardState.UPLOADED)
            if unsent and shard.requests > 1 and schedule.too_big(shard):
                result.notes.append(_recut(ledger, shard, schedule))
                at -= 1
                continue
            if unsent and (why := _never_queued(ledger, shard, schedule)):
                result.too_big.append(why)
                continue
            canary_index = ledger.state.shard(ledger.run.canary).index if ledger.run.canary else None
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
                try:
                    creates.add(shard)
                except ProviderError as exc:
                    if not input_file_gone(shard, provider, exc):
                        raise
                    # The service lost the uploaded file before the batch was made: upload it again, once.
                    note = back_to_upload(ledger, shard)
                    ensure_uploaded(ledger, shard, provider, sleep=sleep)
                    result.notes.append(f"{note}: uploaded it again as {shard.upload.file_id}")
                    creates.add(shard)
                if schedule.limit.tokens is None and shard.state == ShardState.SUBMITTED:
                    # The queue's limit is not known: look at this batch once now. If the service
                    # took it already, the next may go in this pass; if it refused it, the limit
                    # it learned schedules the rest.
                    refresh_shard(ledger, shard, provider)
                    schedule = Schedule.of(ledger, ledger.run.budget_usd, cfg.limits.enqueued_tokens, cfg,
                                           options.poll_interval, provider.base_url)
        try:
            creates.settle()  # the creates whose answer was lost: looked up together
        finally:
            result.submitted, result.notes = creates.submitted, result.notes + creates.notes
    return result


def _recut(ledger: Ledger, shard: Shard, schedule: Schedule) -> str:
    """Re-cut a shard the queue's limit can never take whole; say so."""
    pieces = recut(ledger, shard, schedule.limit.tokens)
    return (f"shard {shard.id} ({shard.est_tokens} tokens) is bigger than the queue limit of {ledger.run.model}, "
            f"{schedule.limit.describe()}: re-cut into {', '.join(p.id for p in pieces)}")


def _never_queued(ledger: Ledger, shard: Shard, schedule: Schedule) -> str | None:
    """Why this shard's lone request can never be queued, naming its row (None: it may be).

    Either it is bigger than a limit the config or the service stated, or the service refused
    it alone MAX_ALONE_REFUSALS times without saying its limit.
    """
    if shard.requests != 1:
        return None
    model, refused = ledger.run.model, queue_refusals(shard)
    if schedule.too_big(shard) and schedule.limit.definitive:
        why = f"more than the queue limit of {model}, {schedule.limit.describe()}: it can never be queued"
    elif refused >= MAX_ALONE_REFUSALS and not (schedule.limit.tokens and schedule.limit.tokens >= shard.est_tokens):
        why = (f"and the service refused it for the queue {refused} times with no limit stated: it is probably "
               f"more than your enqueued-token limit for {model} (see your account's limits page)")
    else:
        return None
    with Index(ledger.paths.index) as index:
        found = index.request_at(shard.file.path, 1)
    where = f"row {found[1]} (id {found[0]}, input line {found[2]})" if found else f"the request of shard {shard.id}"
    return f"{where} is {shard.est_tokens} tokens, {why}; it was not sent (again): shorten it"
