"""What several ops share: opening a run and its provider, and a run's progress figures."""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpipe.errors import BatchpipeError, UsageError
from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger, created_config
from batchpipe.ops.schedule import queue_figures
from batchpipe.ops.summary import not_needed, summary
from batchpipe.paths import RunPaths
from batchpipe.pricing import SYNC_PRICE_FACTOR, cost_usd, price_for
from batchpipe.providers import Provider, open_provider

if TYPE_CHECKING:
    from batchpipe.config import JobConfig


def run_paths(runs_dir: Path, run_id: str) -> RunPaths:
    return RunPaths.existing(Path(runs_dir), run_id)


def run_config(paths: RunPaths) -> JobConfig:
    """The config snapshot taken at create (never the original file, which may have changed).

    Parsed once per process and content: `status` asks for it for the price, the queue limit, the
    target and the outcome notes, and parsing and validating it five times was about 5% of the
    command. Keyed on the file's bytes, so a snapshot that changes is read again.

    A snapshot whose sha256 is the one the run's ledger recorded (the ledger has been read) is as
    `create` validated and wrote it: it is read back without validating it again (snapshot_config,
    no pydantic: about 0.1 s of `status` and `process`). Any other is validated, as a config is."""
    try:
        content = paths.config.read_bytes()
    except OSError:  # missing or unreadable: load_config says so, the way it says it
        content = None
    cfg = _parsed_config(paths.config, os.path.abspath(paths.config), content)
    if cfg.input.path is not None and not cfg.input.path.is_file():  # gone since it was parsed: say so,
        from batchpipe.config import load_config  # as load_config does on every read

        return load_config(paths.config)
    return cfg


@functools.lru_cache(maxsize=32)
def _parsed_config(path: Path, where: str, content: bytes | None) -> JobConfig:
    # here: `list` and `--help` read no config (nor load yaml)
    from batchpipe.config import load_config, snapshot_config

    if content is not None and created_config(hashlib.sha256(content).hexdigest()):
        cfg = snapshot_config(content, Path(where))
        if cfg is not None:
            return cfg
    return load_config(path)  # (a JobConfig is frozen: one object can serve every caller)


def provider_for(paths: RunPaths, *, api_key: str | None = None, base_url: str | None = None) -> Provider:
    cfg = run_config(paths)
    return open_provider(cfg.provider.name, base_url=base_url or cfg.provider.base_url, api_key=api_key)


def has_remote_objects(ledger: Ledger) -> bool:
    """Has the service ever accepted a file or a batch of this run?"""
    return any((s.upload is not None and s.upload.file_id) or (s.batch is not None and s.batch.id) or s.history
               for s in ledger.shards)


def bind_provider(ledger: Ledger, provider: Provider) -> None:
    """Refuse to look for this run's files and batches anywhere but where they live.

    Pointing a run with remote objects at another service would make every lookup come back
    empty and every shard be submitted again: paid twice. The service is recorded with the first
    object made there (record_provider), so a URL that never answered binds nothing; a URL an
    older batchpipe recorded before anything existed there is let go.
    """
    recorded = ledger.run.base_url
    if recorded is None or recorded.rstrip("/") == provider.base_url.rstrip("/"):
        return
    if not has_remote_objects(ledger):
        ledger.run.base_url = None
        ledger.commit({"event": "provider", "base_url": None, "was": recorded, "why": "nothing was created there"})
        return
    raise UsageError(
            f"run {ledger.run.id} was submitted to {recorded}, but this command would use {provider.base_url}",
            hint=f"set OPENAI_BASE_URL={recorded} (or provider.base_url in the config) and try again",
        )


def record_provider(ledger: Ledger, provider: Provider) -> None:
    """A remote object of this run now exists at `provider`: bind the run to it (once)."""
    if ledger.run.base_url is None:
        ledger.run.base_url = provider.base_url
        ledger.commit({"event": "provider", "base_url": provider.base_url})


@dataclass(frozen=True)
class Progress:
    """How far a run is, from the ledger alone."""

    requests: int
    finished: int  # requests with a final remote outcome (completed or failed at the service)
    failed: int
    shards: dict[str, int]  # shard state -> count
    done: bool  # every shard merged and the output written
    phases: dict[str, int]  # remote status of running batches -> count (validating, in_progress, finalizing, ...)
    started_at: float | None  # when the first batch was created
    eta_seconds: float | None  # None until there is enough evidence (see estimate_eta)
    cost_usd: float | None = None  # spent so far, from the reported usage (None: not asked for, or no price known)
    # Answers cut at the output limit among the finished requests (kept, or failed by output.truncated: fail).
    truncated: int = 0

    @classmethod
    def of(cls, ledger: Ledger, now: float | None = None, *, with_cost: bool = False) -> Progress:
        """Figures from the ledger; `with_cost` also prices the reported usage (reads the config snapshot)."""
        finished = failed = truncated = 0
        states = {s.value: 0 for s in ShardState}
        phases: dict[str, int] = {}
        for shard in ledger.shards:
            states[shard.state.value] += 1
            if shard.state == ShardState.SUBMITTED and shard.batch.status:
                phases[shard.batch.status] = phases.get(shard.batch.status, 0) + 1
            if shard.state == ShardState.MERGED and shard.merged is not None:
                # requests handed on to a retry attempt are counted there, not here
                retried = shard.merged.get("retried", 0)
                finished += shard.requests - retried
                failed += shard.merged.get("failed", 0) - retried
                truncated += shard.merged.get("truncated", 0) - shard.merged.get("retried_truncated", 0)
            elif shard.mode == "sync" and shard.state == ShardState.PREPARED:
                finished += min(shard.requests, journaled(ledger.paths.journal(shard.id)))  # being sent now
            elif shard.mode == "sync" and shard.state == ShardState.COMPLETED:  # every request answered, not merged yet
                finished += shard.requests
            elif shard.batch is not None:
                counts = shard.batch.request_counts
                finished += min(shard.requests, counts.get("completed", 0) + counts.get("failed", 0))
                failed += counts.get("failed", 0)
        # limits.target reached: the shards it made unnecessary are not waited for
        done = ledger.run.output is not None and all(
            s.state == ShardState.MERGED or not_needed(ledger, s) for s in ledger.shards
        )
        starts = [s.batch.intent_at for s in ledger.shards if s.batch is not None]
        starts += [h["intent_at"] for s in ledger.shards for h in s.history if "intent_at" in h]
        started = min(starts) if starts else None
        eta = estimate_eta(ledger.run.requests, finished, started, time.time() if now is None else now)
        return cls(
            ledger.run.requests, finished, failed, states, done, phases, started, None if done else eta,
            cost_usd=run_cost(ledger).usd if with_cost else None, truncated=truncated,
        )  # fmt: skip


def journaled(path: Path) -> int:
    """Whole lines in a sync shard's journal: its requests answered so far (0 if there is none)."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def estimate_eta(total: int, finished: int, started: float | None, now: float) -> float | None:
    """Seconds left at the rate so far; None until 5% of the requests and a minute have gone by.

    Batches often sit in `validating` and then finish in bursts: an ETA from the first few
    minutes would lie, so none is given until there is some evidence.
    """
    if started is None or finished <= 0 or finished >= total:
        return None
    elapsed = now - started
    if elapsed < 60 or finished < 0.05 * total:
        return None
    return elapsed / finished * (total - finished)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector paused for a bulk pass (create's rendering, process's merge and
    output). Such a pass keeps a shard's worth of parsed objects alive, and every collection walks
    them all: a fifth of `process`'s time. Its objects hold no cycles (JSON values, tuples), so
    reference counting frees them as before; the collector runs again once the pass is over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(input, output) tokens of a reported usage, in any of the service's shapes.

    A Batch object and /v1/responses say input_tokens/output_tokens; chat completions,
    completions and embeddings say prompt_tokens/completion_tokens (embeddings: no output).
    Anything that is not a count of at least 0 counts as 0.
    """
    if type(usage) is not dict and not isinstance(usage, Mapping):  # a dict first: the ABC check is slow
        return 0, 0
    # Written out rather than looped: `process` calls this once per answer of a million-row run.
    # A count is a whole number of at least 0: not a bool, not a float.
    tokens_in = usage.get("input_tokens")
    if type(tokens_in) is not int or tokens_in < 0:
        tokens_in = usage.get("prompt_tokens")
        if type(tokens_in) is not int or tokens_in < 0:
            tokens_in = 0
    tokens_out = usage.get("output_tokens")
    if type(tokens_out) is not int or tokens_out < 0:
        tokens_out = usage.get("completion_tokens")
        if type(tokens_out) is not int or tokens_out < 0:
            tokens_out = 0
    return tokens_in, tokens_out


def shard_usage(shard: Shard) -> dict[str, int] | None:
    """The tokens the service reported for a shard attempt; None if it has reported none yet.

    Once merged: the sum over its successful result lines (recorded by `process`). Before that:
    the batch's own usage, which grows while the batch runs (a running batch may have none).
    Batches in the shard's history failed on the enqueued-token limit and ran nothing.
    """
    if shard.usage is not None:
        return shard.usage
    if shard.batch is not None and shard.batch.usage:
        tokens_in, tokens_out = usage_tokens(shard.batch.usage)
        return {"input_tokens": tokens_in, "output_tokens": tokens_out}
    return None


# Costs are rounded to the nano-dollar: exact for prices given to $0.001 per 1M tokens,
# without the float noise of summing many small amounts.
COST_DECIMALS = 9


@dataclass(frozen=True)
class Cost:
    """What a run has cost so far, from the usage the service reported, at the run's price."""

    usd: float | None  # None: no price is known for the model (see note)
    note: str | None  # why usd is None
    price_source: str | None  # where the price comes from (a config's pricing:, or the price table)
    input_tokens: int
    output_tokens: int
    shards: dict[str, float | None]  # shard id -> USD; None while it has reported no usage (or no price)


def run_cost(ledger: Ledger) -> Cost:
    """The run's actual cost so far: every shard attempt's reported tokens at the run's price.

    The price is the config snapshot's `pricing:` if it has one, else the shipped price table's.
    A model with no price does not fail: the cost is None and the note says why.
    """
    usages = {s.id: shard_usage(s) for s in ledger.shards}
    tokens_in = sum(u["input_tokens"] for u in usages.values() if u is not None)
    tokens_out = sum(u["output_tokens"] for u in usages.values() if u is not None)
    try:
        price = price_for(ledger.run.model, run_config(ledger.paths))
    except BatchpipeError as exc:
        return Cost(None, f"cost unknown: {exc.message}", None, tokens_in, tokens_out, dict.fromkeys(usages))

    def usd(tokens_in: int, tokens_out: int, factor: float = 1.0) -> float:
        return round(cost_usd(price, tokens_in, tokens_out) * factor, COST_DECIMALS)

    # shards sent in sync mode pay the regular endpoint's price (pricing.SYNC_PRICE_FACTOR times the batch price)
    factors = {s.id: SYNC_PRICE_FACTOR if s.mode == "sync" else 1.0 for s in ledger.shards}
    shards = {sid: None if u is None else usd(u["input_tokens"], u["output_tokens"], factors[sid])
              for sid, u in usages.items()}
    sync_in = sum(u["input_tokens"] for sid, u in usages.items() if u is not None and factors[sid] != 1.0)
    sync_out = sum(u["output_tokens"] for sid, u in usages.items() if u is not None and factors[sid] != 1.0)
    total = round(cost_usd(price, tokens_in - sync_in, tokens_out - sync_out)
                  + cost_usd(price, sync_in, sync_out) * SYNC_PRICE_FACTOR, COST_DECIMALS)
    return Cost(total, None, price.source, tokens_in, tokens_out, shards)


def invalid_answers(ledger: Ledger) -> dict[str, int]:
    """Answers that came back invalid, per error code (invalid_json, ...), over every merged shard
    attempt: each answer once, the ones that a retry then got right included."""
    counts: dict[str, int] = {}
    for shard in ledger.shards:
        for key, n in (shard.merged or {}).items():
            if key.startswith("invalid_"):  # (put_results counts invalid answers under their code)
                counts[key] = counts.get(key, 0) + n
    return dict(sorted(counts.items()))


def describe_run(paths: RunPaths) -> dict:
    """describe() of the run as it is on disk now (no network, no lock)."""
    return describe(Ledger.load(paths))


def _configured_queue_limit(ledger: Ledger) -> int | None:
    try:
        return run_config(ledger.paths).limits.enqueued_tokens
    except BatchpipeError:
        return None  # a damaged snapshot is for `recover` to report; the learned limit still shows


def describe(ledger: Ledger) -> dict:
    """The run as plain data: what `status --json` prints and what the status table shows."""
    progress = Progress.of(ledger)
    cost = run_cost(ledger)
    run = ledger.run
    return {
        "run": run.id,
        "model": run.model,
        "endpoint": run.endpoint,
        "created_at": run.created_at,
        "requests": run.requests,
        "finished": progress.finished,
        "failed": progress.failed,
        "truncated": progress.truncated,
        "done": progress.done,
        "shard_states": progress.shards,
        "phases": progress.phases,
        "started_at": progress.started_at,
        "eta_seconds": progress.eta_seconds,
        "output": str(ledger.paths.output) if run.output else None,
        "result_counts": run.result_counts,
        "invalid_answers": invalid_answers(ledger),
        "summary": summary(ledger),
        "hold": run.hold,
        "usage": {"input_tokens": cost.input_tokens, "output_tokens": cost.output_tokens},
        "cost_usd": cost.usd,
        "cost_note": cost.note,
        "price_source": cost.price_source,
        "queue": queue_figures(ledger, _configured_queue_limit(ledger)),
        # shards exported by `batchpipe export` still waiting for `batchpipe import`: never submitted by batchpipe
        "handed_off": [s.id for s in ledger.shards if s.handoff is not None and s.state == ShardState.PREPARED],
        "shards": [
            {
                "shard": s.id,
                "state": s.state.value,
                "requests": s.requests,
                "bytes": s.file.bytes,
                "file_id": s.upload.file_id if s.upload else None,
                "batch_id": s.batch.id if s.batch else None,
                "remote_status": s.batch.status if s.batch else None,
                "mode": s.mode or "batch",
                "request_counts": s.batch.request_counts if s.batch else None,
                "errors": s.batch.errors if s.batch else [],
                "merged": s.merged,
                "usage": shard_usage(s),
                "cost_usd": cost.shards[s.id],
                # exported for a person to upload (ops/handoff.py): {"exported_at", "received"}, else None
                "handoff": {"exported_at": s.handoff.exported_at, "received": s.handoff.received}
                if s.handoff is not None else None,
            }
            for s in ledger.shards
        ],
    }
