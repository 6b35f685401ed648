"""What a model costs per token, and what a number of tokens costs. No network, no printing.

Prices come from one of two places:

* the job config's `pricing:` section (`input_per_million`, `output_per_million`), which wins;
* else the price table shipped with batchpipe, `batchpipe/prices.json`: US dollars per 1M tokens
  at OpenAI **Batch API** prices (half the synchronous price), with the date the figures were
  taken (`as_of`) and where they come from (`source`). The table is compiled by hand: prices
  change, so every estimate says which table it used and when it was made.

A table entry per model: `input_per_million`, `output_per_million` (0 for embeddings, which have
no output), and `max_output_tokens`, the model's documented maximum output per request (used for
the worst case of a request with no output limit). A price table file given to `load_table`
must have the same shape.

Model names: an exact entry wins; else a dated snapshot resolves to its base model, the longest
entry `m` such that the name is `m-YYYY-MM-DD` or `m-MMDD` (`gpt-4o-mini-2024-07-18` ->
`gpt-4o-mini`, `gpt-3.5-turbo-0125` -> `gpt-3.5-turbo`). Nothing else is guessed: `o3-pro`,
`gpt-4o-audio-preview` or a fine-tuned `ft:...` model cost something other than `o3` or
`gpt-4o`, so an unknown name is an error (exit code 2) that says how to give its price, never a
silent zero.
"""

from __future__ import annotations

import os

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from batchpipe.errors import ConfigError

if TYPE_CHECKING:  # an annotation only: `--help` and `list` need not load the config module (and yaml)
    from batchpipe.config import JobConfig

__all__ = [
    "ModelPrice", "Price", "PriceTable", "UnknownModelPrice", "cost_usd", "format_usd", "load_table", "price_for",
    "resolve_model",
]  # fmt: skip

TABLE_RESOURCE = "prices.json"
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_PRICING_TEMPLATE = (
    "pricing:\n  input_per_million: <USD per 1M input tokens>\n  output_per_million: <USD per 1M output tokens>"
)


class UnknownModelPrice(ConfigError):
    """The model has no price: not in the price table and no `pricing:` in the config (exit code 2)."""


@dataclass(frozen=True)
class ModelPrice:
    """One entry of a price table."""

    input_per_million: float
    output_per_million: float
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    source: str
    models: Mapping[str, ModelPrice]
    origin: str  # where the table was read from, for messages


@dataclass(frozen=True)
class Price:
    """The price a job is estimated with: US dollars per 1M tokens, and where it comes from.

    `source` says where it comes from ("price table batchpipe/prices.json of 2026-11-01, entry
    gpt-4o-mini" or "pricing: in /path/job.yaml"); `as_of` and `note` are the table's date and
    its own word on where its figures come from (None for a config's own price);
    `max_output_tokens` is the model's documented maximum output when the table knows the model.
    """

    input_per_million: float
    output_per_million: float
    source: str
    as_of: str | None = None
    model: str | None = None  # the table entry the price was found under
    max_output_tokens: int | None = None
    note: str | None = None


# Prices are Batch API prices; the regular endpoint that sync mode uses costs twice as much
# (the Batch API's discount is 50%).
SYNC_PRICE_FACTOR = 2.0


def sync_price(price: Price) -> Price:
    """The regular endpoint's price (sync mode) from a Batch API price."""
    return replace(
        price,
        input_per_million=price.input_per_million * SYNC_PRICE_FACTOR,
        output_per_million=price.output_per_million * SYNC_PRICE_FACTOR,
        source=f"{price.source}, times {SYNC_PRICE_FACTOR:g} for sync mode (the regular endpoint's price)",
    )


def cost_usd(price: Price, input_tokens: int, output_tokens: int) -> float:
    """US dollars for `input_tokens` in and `output_tokens` out at `price`."""
    return (input_tokens * price.input_per_million + output_tokens * price.output_per_million) / 1_000_000


def format_usd(amount: float) -> str:
    """Dollars for people: cents from $1 up, three significant digits below ($0.0123, $0.000185)."""
    if amount >= 1 or amount <= 0:
        return f"${amount:,.2f}"
    decimals = max(2, 2 - math.floor(math.log10(amount)))
    return f"${amount:.{decimals}f}"


def load_table(path: Path | str | None = None) -> PriceTable:
    """The price table at `path`, else at $BATCHPIPE_PRICES, else the shipped one.

    A user's own table (same format as batchpipe/prices.json) overrides the shipped one for every
    job; `pricing:` in a config overrides both for that job. A bad file is a ConfigError.
    """
    path = path or os.environ.get("BATCHPIPE_PRICES") or None
    if path is None:
        return _shipped_table()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the price table ({exc.strerror or exc})") from None
    return _parse_table(text, str(path))


@lru_cache(maxsize=1)
def _shipped_table() -> PriceTable:
    text = resources.files("batchpipe").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    return _parse_table(text, f"batchpipe/{TABLE_RESOURCE}")


def _parse_table(text: str, origin: str) -> PriceTable:
    def bad(what: str) -> ConfigError:
        return ConfigError(
            f"{origin}: not a valid price table: {what}",
            hint='the format is {"as_of": "YYYY-MM-DD", "source": "...", "models": {"<model>": '
            '{"input_per_million": 0.075, "output_per_million": 0.3, "max_output_tokens": 16384}}}',
        )

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise bad("no 'models' mapping")
    for key in ("as_of", "source"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise bad(f"'{key}' must be text")
    models: dict[str, ModelPrice] = {}
    for name, entry in data["models"].items():
        if not isinstance(entry, dict):
            raise bad(f"model '{name}' must be a mapping")
        figures = [entry.get("input_per_million"), entry.get("output_per_million")]
        if not all(_is_number(v) and v >= 0 for v in figures):
            raise bad(f"model '{name}' needs input_per_million and output_per_million, numbers of at least 0")
        max_out = entry.get("max_output_tokens")
        if max_out is not None and not (isinstance(max_out, int) and not isinstance(max_out, bool) and max_out >= 0):
            raise bad(f"model '{name}': max_output_tokens must be a whole number of at least 0")
        models[name] = ModelPrice(float(figures[0]), float(figures[1]), max_out)
    return PriceTable(as_of=data["as_of"], source=data["source"], models=MappingProxyType(models), origin=origin)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def resolve_model(model: str, table: PriceTable) -> str | None:
    """The table entry for `model`: itself, or the base model of a dated snapshot; None if neither."""
    if model in table.models:
        return model
    candidates = [m for m in table.models if model.startswith(m + "-") and _SNAPSHOT_SUFFIX.fullmatch(model[len(m):])]
    return max(candidates, key=len) if candidates else None


def price_for(model: str, cfg: JobConfig | None = None, *, table: PriceTable | None = None) -> Price:
    """The price of `model`: the config's `pricing:` if it has one, else the price table's entry.

    Raises UnknownModelPrice (exit code 2) naming the model and how to give its price.
    """
    table = table or load_table()
    entry_name = resolve_model(model, table)
    entry = table.models[entry_name] if entry_name is not None else None
    max_out = entry.max_output_tokens if entry is not None else None
    if cfg is not None and cfg.pricing is not None:
        return Price(
            cfg.pricing.input_per_million,
            cfg.pricing.output_per_million,
            source=f"pricing: in {cfg.source}",
            model=entry_name,
            max_output_tokens=max_out,
        )
    if entry is None or entry_name is None:
        close = difflib.get_close_matches(_SNAPSHOT_SUFFIX.sub("", model), list(table.models), n=1, cutoff=0.75)
        guess = f" (did you mean '{close[0]}'?)" if close else ""
        where = f" to {cfg.source}" if cfg is not None else " to the job config"
        raise UnknownModelPrice(
            f"no price known for model '{model}'{guess}: it is not in the price table {table.origin} "
            f"(as of {table.as_of})",
            hint=f"add its Batch API price (US dollars per 1M tokens){where}:\n{_PRICING_TEMPLATE}\n"
            f"the table knows: {', '.join(sorted(table.models))}",
        )
    what = entry_name if entry_name == model else f"{entry_name}, for the snapshot {model}"
    return Price(
        entry.input_per_million,
        entry.output_per_million,
        source=f"price table {table.origin} of {table.as_of}, entry {what}",
        as_of=table.as_of,
        model=entry_name,
        max_output_tokens=max_out,
        note=table.source,
    )
