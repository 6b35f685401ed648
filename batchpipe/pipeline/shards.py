"""Split a stream of request lines into shards within the service's limits. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

R = TypeVar("R")

# A rough tokens-per-byte figure for the ledger's per-shard estimate (English text averages
# about 4 bytes per token). `batchpipe estimate` will count with a real tokenizer.
BYTES_PER_TOKEN = 4


def shard_id(index: int, attempt: int) -> str:
    """'00001.a1' for shard 1, attempt 1: sorts by shard, names the attempt."""
    return f"{index:05d}.a{attempt}"


def estimate_tokens(nbytes: int) -> int:
    return -(-nbytes // BYTES_PER_TOKEN)


def assign_shards(
    items: Iterable[tuple[R, int]], max_requests: int, max_bytes: int
) -> Iterator[tuple[int, R]]:
    """Yield (1-based shard index, item) for (item, size in bytes) pairs, in order.

    A shard closes when one more item would pass `max_requests` or `max_bytes`. An item larger
    than `max_bytes` on its own raises ValueError (the caller names the row).
    """
    index, count, size = 1, 0, 0
    for item, nbytes in items:
        if nbytes > max_bytes:
            raise ValueError(f"request is {nbytes} bytes, more than max_bytes_per_shard ({max_bytes})")
        if count and (count + 1 > max_requests or size + nbytes > max_bytes):
            index, count, size = index + 1, 0, 0
        count += 1
        size += nbytes
        yield index, item
