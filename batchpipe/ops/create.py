"""`create`: validate config and input, render requests, split them into shards, write the run.

The run is built in a hidden temp directory and published with one rename, so an error or a
crash never leaves a half-made run dir. The default run id is derived from the config and the
input's content, so creating the same job twice finds the first run instead of making another.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from batchpipe import __version__, crash, fsio
from batchpipe.config import JobConfig, load_config, snapshot_yaml
from batchpipe.errors import ConfigError, InputError, RunExists
from batchpipe.ledger.index import DuplicateId, Index
from batchpipe.ledger.model import Run, RunState
from batchpipe.ledger.store import Ledger, encode
from batchpipe.ops.common import gc_paused
from batchpipe.ops.shard_writer import ShardWriter
from batchpipe.paths import RunPaths, check_run_id
from batchpipe.pipeline.blocks import rendered_blocks
from batchpipe.pipeline.inputs import InputDigest, input_name, input_sha256
from batchpipe.pipeline.requests import Block, BlockRenderer, Request, block_renderer, render_requests, token_base_body
from batchpipe.pipeline.shards import ShardSplit
from batchpipe.pipeline.tokens import TokenCounter, counter_for, max_output_tokens
from batchpipe.pricing import price_for

# Output tokens assumed for a request that sets no max_tokens, when the model's maximum is unknown.
DEFAULT_UNBOUNDED_OUTPUT_TOKENS = 16_384
# `on_progress(rows, shards)` is called after every this many rows (and once at the end).
PROGRESS_EVERY = 1000
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Created:
    run_id: str
    root: Path
    created: bool  # False when the run already existed (the second create is a no-op)
    shards: int
    requests: int
    notes: tuple[str, ...] = ()  # what the user should know about the counts (a text counted by bytes)
    cleaned: list[str] = field(default_factory=list)  # build dirs of interrupted creates removed on the way


def default_run_id(config_path: Path, digest: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", config_path.stem).strip("-._") or "run"
    return f"{stem[:50]}-{digest[:8]}"


def create(
    config_path: Path, *, runs_dir: Path, run_id: str | None = None, on_progress: OnProgress | None = None,
    tag_id: str | None = None,
) -> Created:
    """Create the run of a job config (or find it, if it exists); `on_progress(rows, shards)` for long inputs.

    A config with `steps:` makes a multi-step run (ops/steps.py). `tag_id`: the id the run's
    ledger, tags and messages use, when it is not `run_id` (a step of a multi-step run).
    """
    cfg = load_config(Path(config_path), check_hooks=True)
    if cfg.steps:
        from batchpipe.ops.steps import create_steps  # here: it imports this module

        return create_steps(cfg, runs_dir=runs_dir, run_id=run_id, on_progress=on_progress)
    snapshot = snapshot_yaml(cfg).encode()
    config_sha = hashlib.sha256(snapshot).hexdigest()
    expected_sha = None  # the input's sha read before the run is built, when the run id needs it
    if run_id:
        run_id = check_run_id(run_id)
    else:
        # The default id names the content, so the input is hashed before it is read for the
        # requests; the read must then see the very same bytes (_build checks).
        expected_sha = input_sha256(cfg.input)
        run_id = default_run_id(cfg.source, hashlib.sha256(snapshot + expected_sha.encode()).hexdigest())
    paths = RunPaths.of(runs_dir, run_id)

    if paths.root.exists():
        return _existing(paths, config_sha, expected_sha or input_sha256(cfg.input))

    # Creates killed mid-way leave their build dirs behind (up to a shard each): clear those first.
    cleaned = [f"removed {d.path.name} ({d.bytes:,} bytes), left by an interrupted create"
               for d in fsio.remove_stale_build_dirs(Path(runs_dir))]
    counter = counter_for(cfg.model)
    with fsio.building_dir(Path(runs_dir), run_id) as tmp:
        state = _build(RunPaths(tmp), cfg, snapshot, tag_id or run_id, config_sha, expected_sha, counter, on_progress)
        crash.point("run_create:before_publish")
        try:
            fsio.publish_dir(tmp, paths.root)
        except OSError:
            raise RunExists(f"{paths.root} appeared while this run was being created", hint="run create again") from None
    return Created(run_id, paths.root, True, len(state.shards), state.run.requests, tuple(counter.notes()), cleaned)


def _existing(paths: RunPaths, config_sha: str, input_sha: str) -> Created:
    if not paths.state.is_file():
        raise RunExists(
            f"{paths.root} exists but is not a batchpipe run", hint="choose another --run id or remove that directory"
        )
    ledger = Ledger.load(paths)
    if ledger.run.config_sha256 != config_sha or ledger.run.input["sha256"] != input_sha:
        raise RunExists(
            f"run {paths.run_id!r} already exists with a different config or input",
            hint="choose another --run id, or leave --run out to get an id derived from the config and input",
        )
    return Created(paths.run_id, paths.root, False, len(ledger.shards), ledger.run.requests)


class Planned(NamedTuple):
    """A rendered request with what the shard plan and the ledger need to know of it."""

    shard: int  # 1-based shard index
    request: Request
    tokens: int  # input tokens
    output_bound: int  # the most output tokens it can be billed for


_planned = functools.partial(tuple.__new__, Planned)  # Planned((...)) at a plain tuple's cost (see inputs._row)


def unbounded_output_tokens(model: str) -> int:
    """What a request without max_tokens may produce: the model's maximum, if the price table knows it."""
    try:
        bound = price_for(model).max_output_tokens
    except ConfigError:
        bound = None
    return bound if bound is not None else DEFAULT_UNBOUNDED_OUTPUT_TOKENS


def _output_bound(cfg: JobConfig, body: dict[str, Any]) -> int:
    """The most output tokens a request of the job can be billed for (the same for all: params)."""
    bound = max_output_tokens(body, cfg.model, cfg.endpoint)
    return unbounded_output_tokens(cfg.model) if bound is None else bound


def plan_shards(
    cfg: JobConfig, counter: TokenCounter | None = None, digest: InputDigest | None = None
) -> Iterator[Planned]:
    """The requests of a job in order, each with its shard: the one split `create` and `estimate` share.

    A shard holds at most `limits.max_requests_per_shard` requests, `max_bytes_per_shard` bytes,
    and, when `limits.enqueued_tokens` is set, that many input tokens. A single request over a
    limit is an input error naming its row. Once every request is out, `digest` holds the size
    and sha256 of the input bytes they were rendered from.
    """
    counter = counter or counter_for(cfg.model)
    limits = cfg.limits
    max_bytes, max_tokens = limits.max_bytes_per_shard, limits.enqueued_tokens
    split = ShardSplit(limits.max_requests_per_shard, max_bytes, max_tokens)
    # The usual job's requests differ only in their user text: count that, plus the rest once.
    base_body = token_base_body(cfg)
    base = counter.body(cfg.endpoint, base_body) if base_body is not None else None
    text, body_tokens, endpoint = counter.text, counter.body, cfg.endpoint
    output_bound = None
    for req in render_requests(cfg, digest):
        _, _, _, line, body, _, user = req  # one unpacking: this runs once per request
        too_long = counter.too_long
        tokens = base + text(user) if base is not None else body_tokens(endpoint, body)
        size = len(line)
        if size > max_bytes or (max_tokens is not None and tokens > max_tokens):
            raise _refuse(cfg, req.line_no, req.custom_id, size, tokens, counter.too_long > too_long)
        if output_bound is None:  # the same for every request: it is read from the params alone
            output_bound = _output_bound(cfg, body)
        yield _planned((split.place(size, tokens), req, tokens, output_bound))


def _refuse(cfg: JobConfig, line_no: int, custom_id: str, size: int, tokens: int, by_bytes: bool) -> InputError:
    """A single request over a per-shard limit: it could never be sent."""
    limits = cfg.limits
    where = f"{input_name(cfg.input)} line {line_no} (row id {custom_id})"
    if size > limits.max_bytes_per_shard:
        return InputError(
            f"{where}: the request is {size} bytes, more than limits.max_bytes_per_shard "
            f"({limits.max_bytes_per_shard})",
            hint=f"shorten the row or raise limits.max_bytes_per_shard in {cfg.source}",
        )
    how = " (counted by bytes: too long for the tokenizer)" if by_bytes else ""
    return InputError(
        f"{where}: the request is {tokens} tokens{how}, more than limits.enqueued_tokens "
        f"({limits.enqueued_tokens}): it could never be queued",
        hint=f"shorten the row or raise limits.enqueued_tokens in {cfg.source}",
    )


def _write_rows(
    cfg: JobConfig, counter: TokenCounter, digest: InputDigest, writer: ShardWriter, on_progress: OnProgress | None,
) -> int:
    """Every other job's requests, a row at a time (plan_shards), handed to the writer; returns how many."""
    rows = 0
    for shard, request, tokens, output_bound in plan_shards(cfg, counter, digest):
        if shard != writer.shard:
            writer.start(shard)
        writer.add(request, tokens, output_bound)
        rows += 1
        if on_progress is not None and rows % PROGRESS_EVERY == 0:
            on_progress(rows, writer.shard)
    return rows


def _write_blocks(
    cfg: JobConfig, render: BlockRenderer, digest: InputDigest, writer: ShardWriter, on_progress: OnProgress | None,
) -> int:
    """What plan_shards and the writer's `add` do, for a job rendered in blocks (block_renderer):
    each block's requests placed in shards by the same rule (ShardSplit) and handed to the writer
    a shard's part of a block at a time. Returns the number of requests; raises the first bad
    row's InputError (or a request over a per-shard limit) once every request above it is with
    the writer."""
    limits = cfg.limits
    split = ShardSplit(limits.max_requests_per_shard, limits.max_bytes_per_shard, limits.enqueued_tokens)
    bound = _output_bound(cfg, token_base_body(cfg) or {})
    seq = 0  # requests before the block
    # closed at once on an error, its worker processes too
    with closing(rendered_blocks(cfg, render, digest, writer.paths.root / "rendering")) as blocks:
        for block in blocks:
            n = _refused_at(cfg, block)  # requests of the block that are not over a per-shard limit
            if not writer.shard and n:
                writer.start(1)
            starts = split.starts(block.sizes[:n], block.tokens[:n])
            if on_progress is not None:  # every PROGRESS_EVERY rows, with the shard each is in
                for row in range((seq // PROGRESS_EVERY + 1) * PROGRESS_EVERY, seq + n + 1, PROGRESS_EVERY):
                    on_progress(row, writer.shard + bisect_right(starts, row - seq - 1))
            edges = [0, *starts, n]
            data, offset = memoryview(block.data), 0
            for k, (a, b) in enumerate(zip(edges, edges[1:])):  # each a shard's part of the block
                if a == b:  # the block's first request starts a shard: nothing before it
                    continue
                if k:
                    writer.start(writer.shard + 1)
                size = sum(block.sizes[a:b])
                writer.add_run(data[offset : offset + size], block.ids[a:b], block.line_nos[a:b], seq + a + 1,
                               sum(block.tokens[a:b]), bound * (b - a))
                offset += size
            seq += n
            if n < len(block.ids) or block.error is not None:
                writer.settle()  # a duplicate id above the bad row is the file's first error: it wins
                if n < len(block.ids):
                    raise _refuse(cfg, block.line_nos[n], block.ids[n], block.sizes[n], block.tokens[n],
                                  n in block.by_bytes)
                raise block.error
    return seq


def _refused_at(cfg: JobConfig, block: Block) -> int:
    """The position in `block` of its first request over a per-shard limit (one that could never be
    sent), or its length if none is: checked at C speed first."""
    max_bytes, max_tokens = cfg.limits.max_bytes_per_shard, cfg.limits.enqueued_tokens
    sizes, tokens = block.sizes, block.tokens
    if sizes and (max(sizes) > max_bytes or (max_tokens is not None and max(tokens) > max_tokens)):
        return next(i for i, (s, t) in enumerate(zip(sizes, tokens))
                    if s > max_bytes or (max_tokens is not None and t > max_tokens))
    return len(sizes)


def _id_fields(cfg: JobConfig) -> str:
    """Which config fields make a custom_id, for a message about a duplicate one."""
    if cfg.input.records is None:
        return f"field '{cfg.input.id}'"
    line = f"input.id '{cfg.input.id}'" if cfg.input.id else "the row number"
    record = f"input.record_id '{cfg.input.record_id}'" if cfg.input.record_id else "the position"
    return f"{line} # {record}"


def _build(
    paths: RunPaths,
    cfg: JobConfig,
    snapshot: bytes,
    run_id: str,
    config_sha: str,
    expected_sha: str | None,
    counter: TokenCounter,
    on_progress: OnProgress | None = None,
) -> RunState:
    fsio.write_bytes_atomic(paths.config, snapshot)
    paths.shards_dir.mkdir()
    paths.results_dir.mkdir()
    digest = InputDigest()  # the hash of exactly the bytes the requests are rendered from
    # One pass: each request is rendered, counted and sized once here, and written, hashed and
    # indexed on the writer's thread; the index is a bulk build, as the whole dir is published or
    # thrown away.
    render = block_renderer(cfg, counter)  # the usual JSONL job: rendered in blocks, on every core
    with Index(paths.index, create=True, bulk=True) as index, gc_paused():
        writer = ShardWriter(paths, index)
        try:
            try:
                if render is not None:
                    rows = _write_blocks(cfg, render, digest, writer, on_progress)
                else:
                    rows = _write_rows(cfg, counter, digest, writer, on_progress)
            except InputError:
                writer.settle()  # a duplicate id above the bad row is the file's first error: it wins
                raise
            writer.finish()
            if on_progress is not None:
                on_progress(rows, len(writer.shards))
        except DuplicateId as dup:
            raise InputError(
                f"{input_name(cfg.input)} line {dup.line}: id {dup.custom_id!r} ({_id_fields(cfg)}) "
                f"appears twice, first on line {dup.first_line}",
                hint="ids must be unique: fix the data, or leave input.id out to number rows instead",
            ) from None
        finally:
            writer.close()  # on error the caller removes the whole temp run dir
        if rows == 0:
            raise InputError(f"{input_name(cfg.input)}: no rows to process" + (
                f" (every line's '{cfg.input.records}' list is empty)" if cfg.input.records else ""),
                hint="check input.path in the config")
        if expected_sha is not None and digest.sha256 != expected_sha:
            raise InputError(
                f"{input_name(cfg.input)}: the file changed while the run was being created",
                hint="wait until whatever writes the file has finished (or work on a copy of it), then run create again",
            )
        index.finish_bulk()
    state = RunState(
        run=Run(
            id=run_id,
            created_at=time.time(),
            batchpipe_version=__version__,
            config_sha256=config_sha,
            input={"path": str(cfg.input.path) if cfg.input.path is not None else None, "bytes": digest.bytes,
                   "sha256": digest.sha256, "rows": rows},
            endpoint=cfg.endpoint,
            model=cfg.model,
            requests=rows,
            nonce=secrets.token_hex(6),
            budget_usd=cfg.limits.budget_usd,
            mode=cfg.mode,
        ),
        shards=writer.shards,
    )
    fsio.write_bytes_atomic(paths.state, encode(state))
    Ledger(paths, state).log({"event": "created", "shards": len(writer.shards), "requests": rows})
    return state

