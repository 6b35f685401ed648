"""A canary: the first N requests go alone, and the rest wait for their verdict.

`submit --canary N` (before anything of the run was sent) moves the first N requests of the
first shard into a shard of their own, `00000.a1`, and submits only that. When it is merged,
the run goes on if every canary request was answered; otherwise the run is held with what went
wrong, so a broken prompt costs N requests, not the budget. A person looks, then resumes with
`batchpipe run RUN` (which lifts the hold) or fixes the config and starts again.

The split is crash-safe: both new files are written before the index names their lines (keyed
by file), and the ledger switches to them in one commit. Until that commit, the old shard
file is still the one the ledger names, and its index entries are untouched.
"""

from __future__ import annotations

import hashlib
from itertools import islice

import orjson

from batchpipe import crash, fsio
from batchpipe.errors import UsageError
from batchpipe.ledger.index import Index
from batchpipe.ledger.model import FileRef, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.create import unbounded_output_tokens
from batchpipe.ops.lost import lost_files
from batchpipe.pipeline.shards import shard_id
from batchpipe.pipeline.tokens import max_output_tokens

CANARY_INDEX = 0


def _write(ledger: Ledger, name: str, lines: list[bytes]) -> FileRef:
    path = ledger.paths.shards_dir / name
    size, sha = fsio.write_lines_atomic(path, lines)
    return ledger.file_ref(path, size, sha)


def split_canary(ledger: Ledger, n: int) -> Shard:
    """Make the canary shard from the first `n` requests (nothing of the run may have been sent)."""
    if any(s.state != ShardState.PREPARED for s in ledger.shards):
        raise UsageError(
            f"run {ledger.run.id} has already sent shards: a canary only makes sense before the first submit",
            hint=f"a canary needs a run of its own: `batchpipe run CONFIG --run NEW_ID --canary {n}` (without "
            "--run, a config that was run before finds that run); or go on without --canary",
        )
    first = ledger.shards[0]
    with open(ledger.verify(first.file), "rb") as f:
        lines = list(islice(f, n)) if n < first.requests else None
        rest = f.readlines() if lines is not None else None
    canary_id = shard_id(CANARY_INDEX, 1)
    if lines is None:  # the first shard is no bigger than the canary: it is the canary
        ledger.run.canary, ledger.run.canary_state = first.id, "pending"
        ledger.commit({"event": "canary", "shard": first.id, "requests": first.requests})
        return first
    # Input tokens: the canary's share of the shard's count, by bytes (as a retry's share is), so
    # that a split needs no tokenizer (loading one costs a second). Output bounds are in the bodies.
    fallback = unbounded_output_tokens(ledger.run.model)
    tokens = -(-first.est_tokens * sum(map(len, lines)) // max(first.file.bytes, 1))
    output = 0
    for line in lines:
        bound = max_output_tokens(orjson.loads(line)["body"], ledger.run.model, ledger.run.endpoint)
        output += fallback if bound is None else bound
    canary_ref = _write(ledger, f"{canary_id}.jsonl", lines)
    # a new name for the rest: the file the ledger names now must stay as it is until the commit
    rest_ref = _write(ledger, f"{first.id}.after-canary-{hashlib.sha256(b''.join(rest)).hexdigest()[:8]}.jsonl", rest)
    crash.point("canary:after_files")
    with Index(ledger.paths.index) as index:
        ids = [cid for _, cid in index.shard_ids(first.file.path)]
        index.add_shard_file(canary_ref.path, ids[:n])
        index.add_shard_file(rest_ref.path, ids[n:])
    crash.point("canary:after_index")
    canary = Shard(id=canary_id, index=CANARY_INDEX, attempt=1, state=ShardState.PREPARED, file=canary_ref,
                   requests=n, est_tokens=tokens, max_output_tokens=output)
    first.file, first.requests = rest_ref, first.requests - n
    first.est_tokens, first.max_output_tokens = first.est_tokens - tokens, first.max_output_tokens - output
    ledger.state.shards.insert(0, canary)
    ledger.run.canary, ledger.run.canary_state = canary_id, "pending"
    ledger.commit({"event": "canary", "shard": canary_id, "requests": n})
    return canary


def canary_gate(ledger: Ledger) -> str | None:
    """Why shards other than the canary must wait (None: they may go). Settles the verdict once."""
    if ledger.run.canary is None or ledger.run.canary_state != "pending":
        return None
    canary = ledger.state.shard(ledger.run.canary)
    if canary.state != ShardState.MERGED:
        return f"waiting for the canary ({canary.requests} requests in shard {canary.id}) before the rest"
    failed = (canary.merged or {}).get("failed", 0)
    if lost_files(canary):  # its answers are gone (and sent again), but the service counted how they went
        failed = canary.batch.request_counts.get("failed", 0)
    ran = canary.mode == "sync" or (canary.batch is not None and canary.batch.status == "completed")
    if failed == 0 and ran:
        ledger.run.canary_state = "passed"
        ledger.commit({"event": "canary", "shard": canary.id, "verdict": "passed"})
        return None
    ledger.run.canary_state = "failed"
    ledger.run.hold = (
        f"canary failed: {failed} of {canary.requests} requests in shard {canary.id} failed "
        f"({f'batch {canary.batch.status}' if canary.batch else canary.mode or 'batch ?'}); see `batchpipe status {ledger.run.id}`"
    )
    ledger.commit({"event": "canary", "shard": canary.id, "verdict": "failed", "failed": failed})
    return ledger.run.hold
