"""`create`'s shard writer: the shard files and their index rows, written on a thread of its own."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import TYPE_CHECKING, BinaryIO

from batchpipe import fsio
from batchpipe.ledger.index import Index
from batchpipe.ledger.model import FileRef, Shard, ShardState
from batchpipe.paths import RunPaths
from batchpipe.pipeline.shards import shard_id

if TYPE_CHECKING:
    from batchpipe.pipeline.requests import Request

__all__ = ["CHUNK_BYTES", "INDEX_BATCH", "MAX_PENDING", "ShardWriter"]

# Requests are handed to the writer thread in chunks of this many bytes or INDEX_BATCH requests,
# whichever comes first; at most MAX_PENDING chunks wait for it.
CHUNK_BYTES = 1 << 20
INDEX_BATCH = 10_000
MAX_PENDING = 8


class ShardWriter:
    """Writes the shard files and their index rows on a thread of its own while the caller renders
    the next requests: writes, sha256, fsync and sqlite release the GIL, so on a second core they
    cost the render loop next to nothing.

    Requests are handed over in order, in chunks of about CHUNK_BYTES, with at most MAX_PENDING
    chunks in flight (memory stays flat). An error in the thread (a duplicate id, a full disk) is
    raised in the caller at a later hand-over, or at `finish`/`flush`; chunks are handed over in
    file order, so the first error raised is the one earliest in the file.
    """

    def __init__(self, paths: RunPaths, index: Index) -> None:
        self.paths, self.index = paths, index
        self.shards: list[Shard] = []  # finished shards (appended by the thread)
        self.shard = 0  # the shard being filled (0: none yet)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batchpipe-create")
        self._pending: deque[Future[None]] = deque()
        self._stack = ExitStack()  # the open shard file (the thread's)
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._new_chunk()

    def _new_chunk(self) -> None:
        # The lines go straight into one buffer: orjson's results kept alive in a list cost several
        # times what making them does (their memory is not reused).
        self._data = bytearray()
        self._ids: list[str] = []
        self._line_nos: list[int] = []
        self._chunk_seq = 0

    # -- the caller's side ---------------------------------------------------------------
    def add(self, request: Request, tokens: int, output_bound: int) -> None:
        """Append a request to the current shard; `start` must have opened it."""
        custom_id, _, line_no, line, _, seq, _ = request  # one unpacking: this runs once per request
        ids = self._ids
        if not ids:
            self._chunk_seq = seq
        self._data += line
        ids.append(custom_id)
        self._line_nos.append(line_no)
        self._count += 1
        self._tokens += tokens
        self._output += output_bound
        if len(self._data) >= CHUNK_BYTES or len(ids) >= INDEX_BATCH:
            self._hand_over()

    def add_run(self, data: memoryview, ids: list[str], line_nos: Sequence[int], first_seq: int, tokens: int,
                output: int) -> None:
        """Append requests already joined (a rendered block's, or part of one) to the current shard."""
        if self._ids:
            self._hand_over()
        if not self._shard_ids:
            self._first_seq = first_seq
        self._shard_ids += ids
        self._bytes += len(data)
        self._count += len(ids)
        self._tokens += tokens
        self._output += output
        self._submit(self._write, data, ids, first_seq, line_nos)

    def start(self, index: int) -> None:
        """Finish the current shard (if any) and open shard `index`."""
        self._finish_shard()
        self.shard = index
        self._sid = shard_id(index, 1)
        self._shard_ids: list[str] = []
        self._first_seq = 0
        self._bytes = self._count = self._tokens = self._output = 0
        self._submit(self._open, self._sid)

    def finish(self) -> None:
        """Finish the last shard and wait until everything is on disk and in the index; raises
        DuplicateId for the first request whose id an earlier one has."""
        self._finish_shard()
        self.flush()
        self.index.end_created()

    def flush(self) -> None:
        """Hand over what is buffered and wait for the thread: raises the first error it met."""
        if self._ids:
            self._hand_over()
        while self._pending:
            self._pending.popleft().result()

    def settle(self) -> None:
        """Before an error further down the input is raised: flush, and raise DuplicateId instead
        for a request so far whose id an earlier one has (the file's first error wins)."""
        self.flush()
        self.index.check_created()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._stack.close()  # the thread is done: an unfinished shard file is removed here

    def _hand_over(self) -> None:
        if not self._shard_ids:
            self._first_seq = self._chunk_seq
        self._shard_ids += self._ids
        self._bytes += len(self._data)
        self._submit(self._write, self._data, self._ids, self._chunk_seq, self._line_nos)
        self._new_chunk()

    def _finish_shard(self) -> None:
        if not self.shard:
            return
        if self._ids:
            self._hand_over()
        seqs = list(range(self._first_seq, self._first_seq + self._count))
        self._submit(self._close, self._sid, self._shard_ids, seqs, self._bytes, self._tokens, self._output)

    def _submit(self, work: Callable[..., None], *args: object) -> None:
        self._pending.append(self._pool.submit(work, *args))
        while self._pending and (len(self._pending) > MAX_PENDING or self._pending[0].done()):
            self._pending.popleft().result()

    # -- the thread's side ---------------------------------------------------------------
    def _open(self, sid: str) -> None:
        self._file = self._stack.enter_context(fsio.atomic_writer(self.paths.shard_file(sid)))
        self._hash = hashlib.sha256()

    def _write(self, data: bytes | bytearray | memoryview, ids: list[str], first_seq: int,
               line_nos: Sequence[int]) -> None:
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)
        self.index.add_created(ids, first_seq, line_nos)

    def _close(self, sid: str, ids: list[str], seqs: list[int], size: int, tokens: int, output: int) -> None:
        self._stack.close()  # fsync + rename: the data is on disk before the ledger names it
        self._file = None
        file = f"shards/{sid}.jsonl"
        self.index.add_shard_file(file, ids, seqs)
        self.shards.append(Shard(
            id=sid, index=len(self.shards) + 1, attempt=1, state=ShardState.PREPARED,
            file=FileRef(file, size, self._hash.hexdigest()), requests=len(ids), est_tokens=tokens,
            max_output_tokens=output,
        ))
