"""The shard lifecycle as a table (DESIGN.md §3): anything not listed is illegal."""

from __future__ import annotations

from batchpipe.errors import IllegalTransition
from batchpipe.ledger.model import Shard, ShardState

S = ShardState
ALLOWED: dict[ShardState, frozenset[ShardState]] = {
    # PREPARED -> COMPLETED: sent in sync mode, every request answered in its journal (ops/sync.py), or a
    # shard handed off by `export` whose results a person imported (ops/handoff.py).
    S.PREPARED: frozenset({S.UPLOADED, S.COMPLETED}),
    # back to PREPARED: the service no longer has the uploaded file; it is uploaded again (ops/lost.py).
    S.UPLOADED: frozenset({S.SUBMITTED, S.PREPARED}),
    # back to UPLOADED: the batch failed with token_limit_exceeded and is resubmitted later.
    S.SUBMITTED: frozenset({S.COMPLETED, S.UPLOADED}),
    S.COMPLETED: frozenset({S.MERGED}),
    S.MERGED: frozenset(),
}


def check(shard: Shard, dst: ShardState) -> None:
    if dst not in ALLOWED[shard.state]:
        raise IllegalTransition(shard.id, shard.state.value, dst.value)
