"""Re-cut a shard the provider's queue can never take into pieces that fit it.

A shard is cut at create to fit `limits.enqueued_tokens`; with no limit configured, the limit
is learned later (ops/queue_limits.py) and may be smaller than a shard. Such a shard (not sent,
or refused for the queue: nothing of it ran) is replaced by new shards of the same requests,
each within the limit, with new shard numbers and `recut_from` naming the shard they replace.
A request over the limit on its own gets a piece of its own (submit decides what to do with it).

Crash-safe like the canary split: the piece files are written, then the index names their
lines (keyed by file), then one ledger commit swaps the shard for its pieces. Until that commit
the old shard and its file are untouched.
"""

from __future__ import annotations

import orjson

from batchpipe import crash, fsio
from batchpipe.ledger.index import Index
from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.create import unbounded_output_tokens
from batchpipe.pipeline.shards import shard_id
from batchpipe.pipeline.tokens import counter_for, max_output_tokens


def _pieces(lines: list[bytes], tokens: list[int], limit: int) -> list[list[int]]:
    """Line numbers (0-based) of each piece, in order: greedy, each within `limit` tokens."""
    pieces: list[list[int]] = []
    total = 0
    for n, t in enumerate(tokens):
        if not pieces or total + t > limit:
            pieces.append([])
            total = 0
        pieces[-1].append(n)
        total += t
    return pieces


def recut(ledger: Ledger, shard: Shard, limit: int) -> list[Shard]:
    """Replace `shard` (prepared, or uploaded with no batch) by pieces within `limit` tokens."""
    assert shard.state in (ShardState.PREPARED, ShardState.UPLOADED) and shard.batch is None
    with open(ledger.verify(shard.file), "rb") as f:
        lines = f.readlines()
    counter, fallback = counter_for(ledger.run.model), unbounded_output_tokens(ledger.run.model)
    bodies = [orjson.loads(line)["body"] for line in lines]
    tokens = [counter.body(ledger.run.endpoint, b) for b in bodies]
    bounds = [max_output_tokens(b, ledger.run.model, ledger.run.endpoint) for b in bodies]
    with Index(ledger.paths.index) as index:
        ids = [cid for _, cid in index.shard_ids(shard.file.path)]
        next_index = max(s.index for s in ledger.shards) + 1
        pieces = []
        for k, lines_of in enumerate(_pieces(lines, tokens, limit)):
            sid = shard_id(next_index + k, shard.attempt)  # not a retry: nothing of these requests ran
            path = ledger.paths.shard_file(sid)
            size, sha = fsio.write_lines_atomic(path, (lines[n] for n in lines_of))
            ref = ledger.file_ref(path, size, sha)
            index.add_shard_file(ref.path, [ids[n] for n in lines_of])
            pieces.append(Shard(
                id=sid, index=next_index + k, attempt=shard.attempt, state=ShardState.PREPARED, file=ref,
                requests=len(lines_of), est_tokens=sum(tokens[n] for n in lines_of),
                max_output_tokens=sum(fallback if bounds[n] is None else bounds[n] for n in lines_of),
                recut_from=shard.id,
            ))
    crash.point("recut:after_index")
    pieces[0].history = list(shard.history)  # the refused batches of these requests stay on record
    at = ledger.shards.index(shard)
    ledger.state.shards[at:at + 1] = pieces
    if ledger.run.canary == shard.id:
        ledger.run.canary = pieces[0].id  # the first piece is the canary; the rest wait for it
    ledger.commit({"event": "recut", "shard": shard.id, "into": [p.id for p in pieces], "limit": limit})
    return pieces
