"""What `submit` may send now: the budget and the provider's enqueued-token queue.

Budget: a shard is uploaded only if the run's worst-case spend stays within the budget with it:
every shard already sent counts at what the service reported it cost (once merged) or else at
its worst case (every input token, every request using its whole output bound), plus the new
shard's worst case. So the bill can never pass the budget, whatever the model answers.

Queue: a batch is created only while the input tokens of unfinished batches of the same model
at the same service, in every run under the runs dir, stay within `limits.enqueued_tokens`.
Shards are cut to fit the queue at create, so each one fits alone; as batches finish, the next
ones go. A `token_limit_exceeded` from the service (another tool sharing the queue, a smaller
real limit) sends the shard back to wait, without counting as an attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchpipe.errors import ConfigError, LedgerError
from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.remote import RUNNING_STATUSES
from batchpipe.paths import RunPaths
from batchpipe.pricing import Price, cost_usd, format_usd, price_for

# a batch in these states still holds its tokens in the provider's queue
QUEUED_STATUSES = RUNNING_STATUSES | {"cancelling"}


def worst_case_usd(price: Price, shard: Shard) -> float:
    return cost_usd(price, shard.est_tokens, shard.max_output_tokens)


def committed_usd(price: Price, shards: list[Shard]) -> float:
    """What the shards already sent can cost at most: reported usage once merged, else the worst case."""
    total = 0.0
    for s in shards:
        if s.state == ShardState.PREPARED:
            continue
        if s.state == ShardState.MERGED and s.usage is not None:
            total += cost_usd(price, s.usage.get("input_tokens", 0), s.usage.get("output_tokens", 0))
        else:
            total += worst_case_usd(price, s)
    return total


def _queued_tokens(ledger: Ledger) -> int:
    return sum(
        s.est_tokens for s in ledger.shards
        if s.state == ShardState.SUBMITTED and s.batch is not None and s.batch.status in QUEUED_STATUSES
    )


def queued_elsewhere(ledger: Ledger) -> int:
    """Tokens that other runs of the same model at the same service hold in the queue now."""
    total = 0
    for state in Path(ledger.paths.root.parent).glob("*/state.json"):
        if state.parent == ledger.paths.root or state.parent.name.startswith("."):
            continue
        try:
            other = Ledger.load(RunPaths(state.parent))
        except LedgerError:
            continue  # a damaged run is for `recover` to report, not for the scheduler
        if other.run.model == ledger.run.model and other.run.base_url in (None, ledger.run.base_url):
            total += _queued_tokens(other)
    return total


@dataclass
class Schedule:
    """The limits of one submit pass, and what they held back."""

    ledger: Ledger
    budget_usd: float | None
    queue_limit: int | None
    price: Price | None
    elsewhere: int = 0

    @classmethod
    def of(cls, ledger: Ledger, budget_usd: float | None, queue_limit: int | None, cfg) -> Schedule:  # noqa: ANN001
        price = None
        if budget_usd is not None:
            try:
                price = price_for(ledger.run.model, cfg)
            except ConfigError as exc:
                raise ConfigError(
                    f"limits.budget_usd needs the price of {ledger.run.model}: {exc.message}", hint=exc.hint
                ) from None
        elsewhere = queued_elsewhere(ledger) if queue_limit is not None else 0
        return cls(ledger, budget_usd, queue_limit, price, elsewhere)

    def over_budget(self, shard: Shard) -> str | None:
        """Why `shard` may not be uploaded (None: it may)."""
        if self.budget_usd is None or self.price is None:
            return None
        spent = committed_usd(self.price, self.ledger.shards)
        worst = worst_case_usd(self.price, shard)
        if spent + worst <= self.budget_usd:
            return None
        return (
            f"shard {shard.id} held back: its worst case ({format_usd(worst)}) would take the run to "
            f"{format_usd(spent + worst)}, over the budget of {format_usd(self.budget_usd)}"
        )

    def queue_full(self, shard: Shard) -> str | None:
        """Why `shard`'s batch may not be created now (None: it may)."""
        if self.queue_limit is None:
            return None
        queued = self.elsewhere + _queued_tokens(self.ledger)
        if queued == 0 or queued + shard.est_tokens <= self.queue_limit:
            return None  # an empty queue takes any shard: create cut them all to fit
        return (
            f"shard {shard.id} waits for the queue: {queued} of {self.queue_limit} enqueued tokens are in use "
            f"and it needs {shard.est_tokens}"
        )
