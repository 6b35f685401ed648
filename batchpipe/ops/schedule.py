"""What `submit` may send now: the budget and the provider's enqueued-token queue.

Budget: a shard is uploaded only if the run's worst-case spend stays within the budget with it:
every shard already sent counts at what the service reported it cost (once merged) or else at
its worst case (every input token, every request using its whole output bound), plus the new
shard's worst case. So the bill can never pass the budget, whatever the model answers.

Queue: a batch is created only while the input tokens of unfinished batches of the same model
at the same service, in every run under the runs dir, stay within the limit in force:
`limits.enqueued_tokens`, else the one learned from the service (ops/queue_limits.py). Shards
are cut to fit a configured limit at create; a shard bigger than a learned one is re-cut
(ops/recut.py). As batches finish, the next ones go. A `token_limit_exceeded` from the service
sends the shard back to wait, without counting as an attempt, and teaches the limit.
While no limit is known, batches go up to the floor (the tokens the service has been seen to
hold at once, remembered in the runs dir), and beyond it one batch of the model at a time may be
unconfirmed (still `validating`, where the service refuses a batch for the queue): so at most
one batch is refused before the limit is learned. The price is a slower start for a job far
below an unknown limit: one batch per validation until the floor has grown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from batchpipe.errors import ConfigError, LedgerError
from batchpipe.ledger.model import RUNNING_STATUSES, TOKEN_LIMIT_CODE, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops import queue_limits
from batchpipe.ops.queue_limits import Limit
from batchpipe.paths import RunPaths
from batchpipe.pricing import SYNC_PRICE_FACTOR, Price, cost_usd, format_usd, price_for

# Another run's batch last seen `validating` longer ago than this no longer holds back a probe.
STALE_SECONDS = 15 * 60

# a batch in these states still holds its tokens in the provider's queue
QUEUED_STATUSES = RUNNING_STATUSES | {"cancelling"}


def price_factor(shard: Shard, sync: bool = False) -> float:
    """Sync mode pays the regular endpoint's price: twice the Batch API's, which `Price` holds."""
    return SYNC_PRICE_FACTOR if sync or shard.mode == "sync" else 1.0


def worst_case_usd(price: Price, shard: Shard, sync: bool = False) -> float:
    return cost_usd(price, shard.est_tokens, shard.max_output_tokens) * price_factor(shard, sync)


def committed_usd(price: Price, shards: list[Shard]) -> float:
    """What the shards already sent can cost at most: reported usage once merged, else the worst case."""
    total = 0.0
    for s in shards:
        if s.state == ShardState.PREPARED and s.mode is None:  # (a sync shard may be half sent)
            continue
        if s.state == ShardState.MERGED and s.usage is not None:
            total += cost_usd(price, s.usage.get("input_tokens", 0), s.usage.get("output_tokens", 0)) * price_factor(s)
        else:
            total += worst_case_usd(price, s)
    return total


def _queued(shard: Shard) -> bool:
    return shard.state == ShardState.SUBMITTED and shard.batch is not None and shard.batch.status in QUEUED_STATUSES


def _unconfirmed(shard: Shard) -> bool:
    """A batch the service may still refuse for the queue: created (or being created), not yet past validating."""
    return shard.state in (ShardState.UPLOADED, ShardState.SUBMITTED) and shard.batch is not None and (
        shard.batch.status in (None, "validating"))


def _queued_tokens(ledger: Ledger) -> int:
    return sum(s.est_tokens for s in ledger.shards if _queued(s))


def _other_ledgers(ledger: Ledger):  # noqa: ANN202 - the other runs of the same model at the same service
    runs_dir = ledger.paths.runs_dir  # (a step's run is under its run's dir)
    for state in [*runs_dir.glob("*/state.json"), *runs_dir.glob("*/steps/*/state.json")]:  # steps: multi-step runs
        if state.parent == ledger.paths.root or state.parent.name.startswith("."):
            continue
        try:
            other = Ledger.load(RunPaths(state.parent))
        except LedgerError:
            continue  # a damaged run is for `recover` to report, not for the scheduler
        same_service = None in (ledger.run.base_url, other.run.base_url) or other.run.base_url == ledger.run.base_url
        if other.run.model == ledger.run.model and same_service:
            yield other


def queued_elsewhere(ledger: Ledger) -> int:
    """Tokens that other runs of the same model at the same service hold in the queue now."""
    return sum(_queued_tokens(other) for other in _other_ledgers(ledger))


def queued_here(ledger: Ledger) -> dict[str, int]:
    """Shard id -> tokens of this run's batches in the queue, as last seen (taken before a refresh)."""
    return {s.id: s.est_tokens for s in ledger.shards if _queued(s)}


def learn_from_rejection(ledger: Ledger, shard: Shard, before: dict[str, int]) -> None:
    """A batch of `shard` was just refused for the queue: remember what that says about the limit.

    The tokens in flight are those of every other unfinished batch of the model, in every run,
    as last seen before this refresh (`before`, from queued_here): a batch seen finished in the
    same refresh may well have been in the queue when the service refused this one.
    """
    message = next((e.get("message") for e in shard.history[-1].get("errors", []) if e.get("code") == TOKEN_LIMIT_CODE), None)
    in_flight = sum(t for sid, t in before.items() if sid != shard.id) + queued_elsewhere(ledger)
    entry = queue_limits.learn(
        ledger.paths.runs_dir, ledger.run.base_url, ledger.run.model, message=message, in_flight=in_flight,
        shard_tokens=shard.est_tokens, shard_requests=shard.requests, run_id=ledger.run.id,
    )
    ledger.log({"event": "queue_limit", "shard": shard.id, "in_flight": in_flight, "tokens": entry.get("tokens"),
                "source": entry.get("source")})


def queue_refusals(shard: Shard) -> int:
    """Batches of the shard's requests the service refused for the queue (token_limit_exceeded)."""
    return sum(1 for h in shard.history if any(e.get("code") == TOKEN_LIMIT_CODE for e in h.get("errors") or []))


def rejections(ledger: Ledger) -> int:
    """Batches of the run the service refused for the queue."""
    return sum(queue_refusals(s) for s in ledger.shards)


def queue_waited(ledger: Ledger, now: float | None = None) -> float:
    """Seconds during which at least one refused shard waited for a place in the queue.

    Each refused shard waits from its first refused create to the create the service kept
    (or until now); overlapping waits count once.
    """
    now = time.time() if now is None else now
    spans = []
    for s in ledger.shards:
        starts = [h["intent_at"] for h in s.history if "intent_at" in h]
        if starts:
            end = s.batch.intent_at if s.batch is not None else now
            spans.append((min(starts), max(end, min(starts))))
    total, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def limit_in_force(ledger: Ledger, configured: int | None, poll_interval: float = 30.0,
                   base_url: str | None = None) -> Limit:
    """The queue limit `submit` schedules with (`base_url`: the provider's, for a run not yet bound to one)."""
    return queue_limits.in_force(ledger.paths.runs_dir, ledger.run.base_url or base_url, ledger.run.model,
                                 configured, poll_interval)


def queue_figures(ledger: Ledger, configured: int | None) -> dict:
    """What `status` and the run's summary say about the provider's queue."""
    limit = limit_in_force(ledger, configured)
    return {"limit": limit.tokens, "source": limit.source, "learned_at": limit.learned_at,
            "rejected": rejections(ledger), "waited_seconds": round(queue_waited(ledger), 1),
            "recut": sorted({s.recut_from for s in ledger.shards if s.recut_from})}


@dataclass
class Schedule:
    """The limits of one submit pass, and what they held back."""

    ledger: Ledger
    budget_usd: float | None
    limit: Limit
    price: Price | None
    elsewhere: int = 0
    unconfirmed_elsewhere: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ledger: Ledger, budget_usd: float | None, queue_limit: int | None, cfg,  # noqa: ANN001
           poll_interval: float = 30.0, base_url: str | None = None) -> Schedule:
        price = None
        if budget_usd is not None:
            try:
                price = price_for(ledger.run.model, cfg)
            except ConfigError as exc:
                raise ConfigError(
                    f"limits.budget_usd needs the price of {ledger.run.model}: {exc.message}", hint=exc.hint
                ) from None
        limit = limit_in_force(ledger, queue_limit, poll_interval, base_url)
        others = list(_other_ledgers(ledger))
        if limit.tokens is None:
            # What the service holds now, past validating, it has accepted: the limit is at least that.
            accepted = sum(s.est_tokens for o in [ledger, *others] for s in o.shards
                           if _queued(s) and s.batch.status != "validating")
            if accepted > limit.floor:
                queue_limits.raise_floor(ledger.paths.runs_dir, ledger.run.base_url or base_url, ledger.run.model,
                                         accepted)
                limit = replace(limit, floor=accepted)
        elsewhere = sum(_queued_tokens(o) for o in others)
        # Another run's probe counts while its news is fresh: a run nobody polls any more must not
        # hold this one back for ever.
        fresh = time.time() - STALE_SECONDS
        unconfirmed = [f"{o.run.id}/{s.id}" for o in others for s in o.shards
                       if _unconfirmed(s) and max(s.batch.refreshed_at or 0, s.batch.intent_at) > fresh]
        return cls(ledger, budget_usd, limit, price, elsewhere, unconfirmed)

    def over_budget(self, shard: Shard, sync: bool = False) -> str | None:
        """Why `shard` may not be uploaded (or, `sync`, sent in sync mode) (None: it may)."""
        if self.budget_usd is None or self.price is None:
            return None
        spent = committed_usd(self.price, [s for s in self.ledger.shards if s is not shard])
        worst = worst_case_usd(self.price, shard, sync)
        if spent + worst <= self.budget_usd:
            return None
        return (
            f"shard {shard.id} held back: its worst case ({format_usd(worst)}) would take the run to "
            f"{format_usd(spent + worst)}, over the budget of {format_usd(self.budget_usd)}"
        )

    def too_big(self, shard: Shard) -> bool:
        """Is `shard` bigger than the queue's limit (so that it could never be queued whole)?"""
        return self.limit.tokens is not None and shard.est_tokens > self.limit.tokens

    def queue_full(self, shard: Shard) -> str | None:
        """Why `shard`'s batch may not be created now (None: it may)."""
        model = self.ledger.run.model
        if self.limit.paused_until is not None and time.time() < self.limit.paused_until:
            wait = round(self.limit.paused_until - time.time())
            return (f"shard {shard.id} waits for the queue: the service refused a batch of {model} with nothing "
                    f"of ours in flight; next try in {wait} s")
        if self.limit.tokens is None:
            queued = self.elsewhere + _queued_tokens(self.ledger)
            if queued + shard.est_tokens <= self.limit.floor:
                return None  # the service has held this much at once before
            pending = self.unconfirmed_elsewhere + [s.id for s in self.ledger.shards if _unconfirmed(s) and s is not shard]
            if pending:
                return (f"shard {shard.id} waits: the queue limit for {model} is not known yet, so one batch at "
                        f"a time goes until the service has accepted it (waiting for {pending[0]})")
            return None
        queued = self.elsewhere + _queued_tokens(self.ledger)
        if queued == 0 or queued + shard.est_tokens <= self.limit.tokens:
            return None  # an empty queue takes any shard: too big ones were re-cut to fit
        return (
            f"shard {shard.id} waits for the queue: {queued} of {self.limit.tokens} enqueued tokens are in use "
            f"and it needs {shard.est_tokens}"
        )
