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
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, NoReturn

from batchpipe import __version__, crash, fsio
from batchpipe.config import JobConfig, load_config, snapshot_yaml
from batchpipe.errors import ConfigError, InputError, RunExists
from batchpipe.ledger.index import DuplicateId, Index
from batchpipe.ledger.model import FileRef, Run, RunState, Shard, ShardState
from batchpipe.ledger.store import Ledger, encode
from batchpipe.ops.common import gc_paused
from batchpipe.paths import RunPaths, check_run_id
from batchpipe.pipeline.inputs import InputDigest, input_name, input_sha256
from batchpipe.pipeline.requests import Request, render_requests, token_base_body
from batchpipe.pipeline.shards import ShardSplit, shard_id
from batchpipe.pipeline.tokens import TokenCounter, counter_for, max_output_tokens
from batchpipe.pricing import price_for

# Output tokens assumed for a request that sets no max_tokens, when the model's maximum is unknown.
DEFAULT_UNBOUNDED_OUTPUT_TOKENS = 16_384
# `on_progress(rows, shards)` is called after every this many rows (and once at the end).
PROGRESS_EVERY = 1000
# Requests are handed to the writer thread in chunks of this many bytes or INDEX_BATCH requests,
# whichever comes first; at most MAX_PENDING chunks wait for it.
CHUNK_BYTES = 1 << 20
INDEX_BATCH = 10_000
MAX_PENDING = 8
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
            _refuse(cfg, req, tokens, counter.too_long > too_long)
        if output_bound is None:  # the same for every request: it is read from the params alone
            bound = max_output_tokens(body, cfg.model, endpoint)
            output_bound = unbounded_output_tokens(cfg.model) if bound is None else bound
        yield _planned((split.place(size, tokens), req, tokens, output_bound))


def _refuse(cfg: JobConfig, req: Request, tokens: int, by_bytes: bool) -> NoReturn:
    """A single request over a per-shard limit: it could never be sent."""
    limits = cfg.limits
    where = f"{input_name(cfg.input)} line {req.line_no} (row id {req.custom_id})"
    if len(req.line) > limits.max_bytes_per_shard:
        raise InputError(
            f"{where}: the request is {len(req.line)} bytes, more than limits.max_bytes_per_shard "
            f"({limits.max_bytes_per_shard})",
            hint=f"shorten the row or raise limits.max_bytes_per_shard in {cfg.source}",
        )
    how = " (counted by bytes: too long for the tokenizer)" if by_bytes else ""
    raise InputError(
        f"{where}: the request is {tokens} tokens{how}, more than limits.enqueued_tokens "
        f"({limits.enqueued_tokens}): it could never be queued",
        hint=f"shorten the row or raise limits.enqueued_tokens in {cfg.source}",
    )


class _ShardWriter:
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
        self._lines: list[bytes] = []
        self._ids: list[str] = []
        self._line_nos: list[int] = []
        self._chunk_bytes = 0
        self._chunk_seq = 0

    # -- the caller's side ---------------------------------------------------------------
    def add(self, request: Request, tokens: int, output_bound: int) -> None:
        """Append a request to the current shard; `start` must have opened it."""
        custom_id, _, line_no, line, _, seq, _ = request  # one unpacking: this runs once per request
        lines = self._lines
        if not lines:
            self._chunk_seq = seq
        lines.append(line)
        self._ids.append(custom_id)
        self._line_nos.append(line_no)
        self._chunk_bytes += len(line)
        self._count += 1
        self._tokens += tokens
        self._output += output_bound
        if self._chunk_bytes >= CHUNK_BYTES or len(lines) >= INDEX_BATCH:
            self._hand_over()

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
        """Finish the last shard and wait until everything is on disk and in the index."""
        self._finish_shard()
        self.flush()

    def flush(self) -> None:
        """Hand over what is buffered and wait for the thread: raises the first error it met."""
        if self._lines:
            self._hand_over()
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._stack.close()  # the thread is done: an unfinished shard file is removed here

    def _hand_over(self) -> None:
        if not self._shard_ids:
            self._first_seq = self._chunk_seq
        self._shard_ids += self._ids
        self._bytes += self._chunk_bytes
        self._submit(self._write, b"".join(self._lines), self._ids, self._chunk_seq, self._line_nos)
        self._new_chunk()

    def _finish_shard(self) -> None:
        if not self.shard:
            return
        if self._lines:
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

    def _write(self, data: bytes, ids: list[str], first_seq: int, line_nos: list[int]) -> None:
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
    rows = 0
    digest = InputDigest()  # the hash of exactly the bytes the requests are rendered from
    # One pass: each request is rendered, counted and sized once here, and written, hashed and
    # indexed on the writer's thread; the index is a bulk build, as the whole dir is published or
    # thrown away.
    with Index(paths.index, create=True, bulk=True) as index, gc_paused():
        writer = _ShardWriter(paths, index)
        try:
            try:
                for shard, request, tokens, output_bound in plan_shards(cfg, counter, digest):
                    if shard != writer.shard:
                        writer.start(shard)
                    writer.add(request, tokens, output_bound)
                    rows += 1
                    if on_progress is not None and rows % PROGRESS_EVERY == 0:
                        on_progress(rows, writer.shard)
            except InputError:
                writer.flush()  # a duplicate id above the bad row is the file's first error: it wins
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

