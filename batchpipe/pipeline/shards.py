"""Split a stream of request lines into shards within the service's limits. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

R = TypeVar("R")

def shard_id(index: int, attempt: int) -> str:
    """'00001.a1' for shard 1, attempt 1: sorts by shard, names the attempt."""
    return f"{index:05d}.a{attempt}"


def assign_shards(
    items: Iterable[tuple[R, int, int]], max_requests: int, max_bytes: int, max_tokens: int | None = None
) -> Iterator[tuple[int, R]]:
    """Yield (1-based shard index, item) for (item, size in bytes, input tokens) triples, in order.

    A shard closes when one more item would pass `max_requests`, `max_bytes` or `max_tokens`
    (the provider's enqueued-token limit: a bigger shard could never be queued). An item over a
    limit on its own raises ValueError (the caller checks first, to name the row).
    """
    index, count, size, tokens = 1, 0, 0, 0
    for item, nbytes, ntokens in items:
        if nbytes > max_bytes or (max_tokens is not None and ntokens > max_tokens):
            raise ValueError("one request is over a per-shard limit")
        if count and (
            count + 1 > max_requests
            or size + nbytes > max_bytes
            or (max_tokens is not None and tokens + ntokens > max_tokens)
        ):
            index, count, size, tokens = index + 1, 0, 0, 0
        count += 1
        size += nbytes
        tokens += ntokens
        yield index, item
