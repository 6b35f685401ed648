"""`estimate`: how many tokens a job sends and what it will cost, before anything is paid.

The source is a job config (its requests are rendered in memory, one at a time, and split into
shards exactly as `create` splits them) or an existing run (its attempt-1 shard files and its
config snapshot are read). Nothing is written to disk and nothing is sent.

The figures:

* `input_tokens`: the sum over every request of its input tokens, counted by
  `batchpipe.pipeline.tokens` (exact BPE counts with bpe-openai installed, else bytes/4;
  `token_method` says which).
* `max_output_tokens`: the sum over every request of its output bound (`max_tokens`,
  `max_completion_tokens` or `max_output_tokens`, times `n`). A request without a bound counts
  the model's documented maximum output from the price table, or `DEFAULT_UNBOUNDED_OUTPUT_TOKENS`
  when the table does not know the model; a warning says how many requests that was.
* `cost_usd_input`: the input alone: the least the job can cost.
* `cost_usd_expected`: the input plus **half** of `max_output_tokens` (`EXPECTED_OUTPUT_FRACTION`).
  A planning figure, not a prediction: what a model writes depends on the prompt (a one-word
  label uses a fraction of its bound, a reasoning model may use all of it).
* `cost_usd_worst_case`: the input plus every request using its full output bound: the most
  one attempt of the job can cost.

Each request is counted once: requests that fail are not billed by the service, so retries add
no cost beyond the answers they bring back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchpipe.config import JobConfig, load_config
from batchpipe.errors import InputError, LedgerError
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import run_config
from batchpipe.ops.create import (  # the very split create makes
    DEFAULT_UNBOUNDED_OUTPUT_TOKENS,
    PROGRESS_EVERY,
    OnProgress,
    plan_shards,
)
from batchpipe.paths import RunPaths
from batchpipe.pipeline.inputs import input_name
from batchpipe.pipeline.tokens import TokenCounter, counter_for, max_output_tokens
from batchpipe.pricing import Price, cost_usd, format_usd, price_for, sync_price

__all__ = ["DEFAULT_UNBOUNDED_OUTPUT_TOKENS", "EXPECTED_OUTPUT_FRACTION", "Estimate", "estimate"]

EXPECTED_OUTPUT_FRACTION = 0.5
_LIMIT_PARAM = {
    "/v1/chat/completions": "params.max_tokens (or params.max_completion_tokens)",
    "/v1/responses": "params.max_output_tokens",
    "/v1/completions": "params.max_tokens",
}


@dataclass(frozen=True)
class Estimate:
    source: str  # the config file or the run id
    model: str
    endpoint: str
    requests: int
    shards: int
    input_tokens: int
    max_output_tokens: int
    expected_output_tokens: int
    unbounded_requests: int  # requests with no output bound (counted at `unbounded_output_tokens` each)
    unbounded_output_tokens: int
    largest_shard_input_tokens: int
    cost_usd_input: float
    cost_usd_expected: float
    cost_usd_worst_case: float
    token_method: str
    price: Price
    budget_usd: float | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `estimate --json` (costs rounded to a millionth of a dollar)."""
        p = self.price
        return {
            "source": self.source,
            "model": self.model,
            "endpoint": self.endpoint,
            "requests": self.requests,
            "shards": self.shards,
            "input_tokens": self.input_tokens,
            "max_output_tokens": self.max_output_tokens,
            "expected_output_tokens": self.expected_output_tokens,
            "unbounded_requests": self.unbounded_requests,
            "unbounded_output_tokens": self.unbounded_output_tokens,
            "largest_shard_input_tokens": self.largest_shard_input_tokens,
            "cost_usd_input": round(self.cost_usd_input, 6),
            "cost_usd_expected": round(self.cost_usd_expected, 6),
            "cost_usd_worst_case": round(self.cost_usd_worst_case, 6),
            "token_method": self.token_method,
            "price": {
                "input_per_million": p.input_per_million,
                "output_per_million": p.output_per_million,
                "source": p.source,
                "as_of": p.as_of,
                "note": p.note,
            },
            "budget_usd": self.budget_usd,
            "warnings": list(self.warnings),
        }


def estimate(
    source: Path | str | RunPaths, *, tokenizer: bool = True, on_progress: OnProgress | None = None
) -> Estimate:
    """Estimate the job of a config file (a path) or of an existing run (its RunPaths).

    `tokenizer=False` counts with the bytes/4 estimate even when bpe-openai is installed.
    `on_progress(requests, shards)` is called as the count goes on (every PROGRESS_EVERY requests).
    Raises ConfigError/InputError as `create` would, and UnknownModelPrice (exit code 2) for a
    model with no price.
    """
    if isinstance(source, RunPaths):
        cfg = run_config(source)
        price = price_for(cfg.model, cfg)  # an unknown price stops us before any file is read
        lines = _run_lines(source)
        name = source.run_id
    else:
        cfg = load_config(Path(source), check_hooks=True)
        price = price_for(cfg.model, cfg)
        lines = _config_lines(cfg, counter_for(cfg.model, tokenizer=tokenizer))
        name = str(source)
    sync = (Ledger.load(source).run.mode if isinstance(source, RunPaths) else cfg.mode) == "sync"
    if sync:  # the regular endpoint costs what the Batch API halves
        price = sync_price(price)
    return _tally(cfg, name, lines, price, counter_for(cfg.model, tokenizer=tokenizer), on_progress)


def _config_lines(cfg: JobConfig, counter: TokenCounter) -> Iterator[tuple[int, bytes]]:
    for planned in plan_shards(cfg, counter):
        yield planned.shard, planned.request.line


def _run_lines(paths: RunPaths) -> Iterator[tuple[int, bytes]]:
    ledger = Ledger.load(paths)
    for shard in ledger.shards:
        if shard.attempt != 1:
            continue  # a retry attempt re-sends requests already counted in attempt 1
        path = ledger.verify(shard.file)
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield shard.index, line


def _tally(
    cfg: JobConfig, name: str, lines: Iterator[tuple[int, bytes]], price: Price, counter: TokenCounter,
    on_progress: OnProgress | None = None,
) -> Estimate:
    fallback = price.max_output_tokens if price.max_output_tokens is not None else DEFAULT_UNBOUNDED_OUTPUT_TOKENS
    requests = input_tokens = output_bound = unbounded = 0
    shard_tokens: dict[int, int] = {}
    for index, line in lines:
        try:
            request = orjson.loads(line)
            body, url = request["body"], request.get("url", cfg.endpoint)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise LedgerError(
                f"{name}: shard {index} has a line that is not a request", hint="run `batchpipe recover` on the run"
            ) from None
        tokens = counter.body(url, body)
        bound = max_output_tokens(body, cfg.model, url)
        if bound is None:
            unbounded += 1
            bound = fallback
        requests += 1
        input_tokens += tokens
        output_bound += bound
        shard_tokens[index] = shard_tokens.get(index, 0) + tokens
        if on_progress is not None and requests % PROGRESS_EVERY == 0:
            on_progress(requests, len(shard_tokens))
    if on_progress is not None:
        on_progress(requests, len(shard_tokens))
    if requests == 0:
        raise InputError(f"{input_name(cfg.input)}: no rows to process", hint="check input.path in the config")
    expected_output = round(output_bound * EXPECTED_OUTPUT_FRACTION)
    worst = cost_usd(price, input_tokens, output_bound)
    expected = cost_usd(price, input_tokens, expected_output)
    largest = max(shard_tokens.values())
    warnings = _warnings(cfg, counter, requests, unbounded, fallback, price, expected, worst, shard_tokens)
    return Estimate(
        source=name,
        model=cfg.model,
        endpoint=cfg.endpoint,
        requests=requests,
        shards=len(shard_tokens),
        input_tokens=input_tokens,
        max_output_tokens=output_bound,
        expected_output_tokens=expected_output,
        unbounded_requests=unbounded,
        unbounded_output_tokens=fallback,
        largest_shard_input_tokens=largest,
        cost_usd_input=cost_usd(price, input_tokens, 0),
        cost_usd_expected=expected,
        cost_usd_worst_case=worst,
        token_method=counter.method,
        price=price,
        budget_usd=cfg.limits.budget_usd,
        warnings=tuple(warnings),
    )


def _warnings(
    cfg: JobConfig,
    counter: TokenCounter,
    requests: int,
    unbounded: int,
    fallback: int,
    price: Price,
    expected: float,
    worst: float,
    shard_tokens: Mapping[int, int],
) -> list[str]:
    warnings: list[str] = counter.notes()
    if unbounded:
        param = _LIMIT_PARAM.get(cfg.endpoint, "params.max_tokens")
        why = (
            f"{cfg.model}'s maximum output in the price table"
            if price.max_output_tokens is not None
            else "a default, as the price table does not know this model's maximum output"
        )
        warnings.append(
            f"{unbounded} of {requests} requests have no output limit: the worst case counts {fallback} output "
            f"tokens for each ({why}); set {param} in the config to bound the cost"
        )
    if not counter.exact:
        warnings.append(
            "token counts are estimates (UTF-8 bytes / 4): install the tokenizer for exact counts: "
            'pip install "batchpipe[tokens]"'
        )
    uncounted = [k for k in ("tools", "functions") if k in cfg.params]
    uncounted += [k for k in ("response_format", "text") if "json_schema" in orjson.dumps(cfg.params.get(k)).decode()]
    if uncounted:
        names = ", ".join(f"params.{k}" for k in uncounted)
        warnings.append(f"{names} add prompt tokens the service counts and this estimate does not")
    if cfg.prompt.images or any(t.images for t in cfg.prompt.history):
        warnings.append("the images sent with each request (prompt.images) are not counted: their tokens depend "
                        "on their size and detail, so the input tokens and cost here are too low")
    if cfg.steps:
        warnings.append(f"a job of {len(cfg.steps)} steps: these figures are step 1's; the later steps' depend on "
                        "its answers (each step is a run of its own: `batchpipe estimate RUN` once it exists)")
    budget = cfg.limits.budget_usd
    if budget is not None and worst > budget:
        which = "the expected cost" if expected > budget else "the worst case"
        warnings.append(
            f"{which} ({format_usd(expected if expected > budget else worst)}) is over limits.budget_usd "
            f"({format_usd(budget)})"
        )
    return warnings
