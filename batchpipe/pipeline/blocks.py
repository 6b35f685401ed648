"""A JSONL input rendered in blocks (requests.BlockRenderer), by a worker process per core when
it is big: `create`'s render pass, the one part of it that needs the CPU more than the disk.

Blocks are whole lines of about inputs.BLOCK_BYTES, read and hashed here in file order; a
worker (forked: it starts with the config and the renderer) reads its block again from the file and
leaves its requests in a file of the build dir, so that the bytes go through neither a pipe nor
pickle. At most a few blocks are in flight: memory stays flat.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import orjson

from batchpipe.config import JobConfig
from batchpipe.errors import BatchpipeError
from batchpipe.forked import end_with_parent
from batchpipe.pipeline.inputs import InputDigest, numbered_blocks, rows_in
from batchpipe.pipeline.requests import Block, BlockRenderer

__all__ = ["PARALLEL_MIN_BYTES", "rendered_blocks"]

# An input of at least this many bytes is rendered by a worker process per core; below it,
# starting them costs more than they save.
PARALLEL_MIN_BYTES = 8 << 20


def rendered_blocks(cfg: JobConfig, render: BlockRenderer, digest: InputDigest, scratch: Path) -> Iterator[Block]:
    """The input's blocks rendered, in file order: by worker processes, a block each, when the
    input is big enough to be worth them (forked: they start with the config and the renderer),
    else here. The caller holds at most a few blocks at a time: memory stays flat.

    A worker reads its block from the input file and leaves its requests in a file under
    `scratch`: the bytes do not go through a pipe, nor through pickle, twice each.
    """
    path = Path(cfg.input.path)
    numbered = _numbered(numbered_blocks(path, digest), numbered_rows=cfg.input.id is None)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # read here: numbered_blocks says what is wrong with the file
    workers = os.cpu_count() or 1
    if workers < 2 or size < PARALLEL_MIN_BYTES or "fork" not in multiprocessing.get_all_start_methods():
        for block, first_line, _, first_row in numbered:
            yield render(block, first_line, first_row)
        return
    scratch.mkdir()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_renderer_start,
                               initargs=(render,))
    try:
        pending: deque[tuple[Future[tuple[Block, bytes]], Path]] = deque()
        for n, (block, first_line, offset, first_row) in enumerate(numbered):
            part = scratch / f"{n}.jsonl"
            pending.append((pool.submit(_render_in_worker, offset, len(block), first_line, first_row, part), part))
            if len(pending) > 2 * workers:
                yield _fetched(render, *pending.popleft())
        while pending:
            yield _fetched(render, *pending.popleft())
    except BrokenProcessPool:
        raise BatchpipeError(
            "a process rendering the input died (killed, or out of memory): nothing was created",
            hint="run the same create again",
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)  # what an error left there


def _numbered(blocks: Iterator[tuple[bytes, int, int]], numbered_rows: bool) -> Iterator[tuple[bytes, int, int, int]]:
    """(block, its first line, its offset, its first row number): rows are counted only for a job
    whose custom_ids are row numbers (without input.id); another's is 0."""
    row = 1
    for block, first_line, offset in blocks:
        yield block, first_line, offset, row if numbered_rows else 0
        if numbered_rows:
            row += rows_in(block)


def _fetched(render: BlockRenderer, future: Future[tuple[Block, bytes]], part: Path) -> Block:
    """A block a worker rendered: its requests read from its file (then removed), its ids from
    their JSON, and the texts its tokenizer refused counted here (for the notes)."""
    block, ids = future.result()
    render.counter.too_long += len(block.by_bytes)
    data = part.read_bytes()
    part.unlink()
    return block._replace(data=data, ids=orjson.loads(ids))


_RENDERER: BlockRenderer | None = None  # a render worker's (see rendered_blocks)


def _renderer_start(render: BlockRenderer) -> None:
    global _RENDERER
    _RENDERER = render
    end_with_parent()


def _render_in_worker(offset: int, size: int, first_line: int, first_row: int, part: Path) -> tuple[Block, bytes]:
    """Render a block of the input in a worker: its requests go to the file `part`, its ids as
    one JSON array (cheaper to send than a pickled list), the rest in the Block."""
    assert _RENDERER is not None
    with open(_RENDERER.cfg.input.path, "rb") as f:
        block = os.pread(f.fileno(), size, offset)
    rendered = _RENDERER(block, first_line, first_row)
    with open(part, "wb") as out:
        out.write(rendered.data)
    return rendered._replace(data=b"", ids=[]), orjson.dumps(rendered.ids)
