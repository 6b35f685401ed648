"""Split a stream of request lines into shards within the service's limits. Pure: no I/O."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate


def shard_id(index: int, attempt: int) -> str:
    """'00001.a1' for shard 1, attempt 1: sorts by shard, names the attempt."""
    return f"{index:05d}.a{attempt}"


class ShardSplit:
    """Places requests, in order, into shards within the limits: `place(bytes, tokens)` returns the
    1-based shard of the next request. A shard closes when one more request would pass
    `max_requests`, `max_bytes` or `max_tokens` (the provider's enqueued-token limit: a bigger
    shard could never be queued). The caller refuses a request over a limit on its own first, to
    name its row. (A class, not a generator: it is called once per request of a million-row job.)
    """

    __slots__ = ("count", "index", "max_bytes", "max_requests", "max_tokens", "size", "tokens")

    def __init__(self, max_requests: int, max_bytes: int, max_tokens: int | None = None) -> None:
        self.max_requests, self.max_bytes, self.max_tokens = max_requests, max_bytes, max_tokens
        self.index, self.count, self.size, self.tokens = 1, 0, 0, 0

    def place(self, nbytes: int, ntokens: int) -> int:
        if self.count and (
            self.count >= self.max_requests
            or self.size + nbytes > self.max_bytes
            or (self.max_tokens is not None and self.tokens + ntokens > self.max_tokens)
        ):
            self.index, self.count, self.size, self.tokens = self.index + 1, 0, 0, 0
        self.count += 1
        self.size += nbytes
        self.tokens += ntokens
        return self.index

    def starts(self, sizes: Sequence[int], tokens: Sequence[int]) -> list[int]:
        """`place` of each of the next requests (their bytes and tokens), at once: where among them
        a new shard starts. Found by bisecting their running sums, not by a step per request."""
        max_requests, max_bytes = self.max_requests, self.max_bytes
        max_tokens = self.max_tokens if self.max_tokens is not None else 1 << 62
        n = len(sizes)
        bytes_to = list(accumulate(sizes, initial=0))  # bytes_to[i]: the bytes of requests before i
        tokens_to = list(accumulate(tokens, initial=0))
        found: list[int] = []
        at = 0  # the first request not yet placed
        count, size, total = self.count, self.size, self.tokens  # what the open shard holds before it
        while True:
            # the first request that would pass a limit of the open shard (an empty one takes at
            # least one: no request is over a limit on its own, the caller refused those first)
            over = min(
                at + max(max_requests - count, 0),
                bisect_right(bytes_to, bytes_to[at] + max_bytes - size, at) - 1,
                bisect_right(tokens_to, tokens_to[at] + max_tokens - total, at) - 1,
            )
            if over >= n:
                break
            found.append(over)
            at, count, size, total = over, 0, 0, 0
        self.index += len(found)
        self.count = count + n - at
        self.size = size + bytes_to[n] - bytes_to[at]
        self.tokens = total + tokens_to[n] - tokens_to[at]
        return found
