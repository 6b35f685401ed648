"""The provider's enqueued-token limit when the config names none: learned from the service.

Most users do not know their limit (it differs per model and usage tier, and grows with the
account). When a batch fails with `token_limit_exceeded`, the service's message usually states
it ("... Limit: 2,000,000 enqueued tokens. ..."): that number is kept, per service and model,
for the whole runs dir, so every run and every later tick schedules with it exactly as with a
configured `limits.enqueued_tokens` (which always wins). A message without a number teaches a
working limit instead: the tokens that were in flight when the batch was refused (or, with
nothing in flight, half the refused shard), and a pause before the next try that grows up to
the poll interval's ceiling.

The learned limits live in `<runs dir>/.queue-limits.json`, written atomically and fsynced
(fsio) under a lock file beside it, so concurrent runs and ticks never lose each other's
updates. Delete the file to make batchpipe learn again (after the account's limit was raised).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from batchpipe import fsio

FILE_NAME = ".queue-limits.json"
LOCK_NAME = ".queue-limits.lock"
CONFIGURED = "limits.enqueued_tokens in the config"
STATED = "the service's token_limit_exceeded message"
SCALED = "the service's message (limit {stated:,}), below it by our token counts, which run low"
IN_FLIGHT = "tokens in flight when the service refused a batch (its message named no limit)"
HALF_SHARD = "half a shard the service refused with nothing else in flight (its message named no limit)"
# While nothing of the model was in flight, the pause after a refusal without a number doubles
# from one poll interval up to this many (the same ceiling as `run --wait`'s own backoff).
MAX_PAUSE_POLLS = 8

# "Limit: 2,000,000 enqueued tokens" (OpenAI) or "the configured limit of 30K" (Azure).
_STATED = re.compile(r"\blimit(?::| of)\s*([0-9][0-9,._]*)\s*([km]?)\b", re.IGNORECASE)


def parse_limit(message: str | None) -> int | None:
    """The limit a `token_limit_exceeded` message states, or None if it states none."""
    m = _STATED.search(message or "")
    if m is None:
        return None
    digits = re.sub(r"[,_ ]", "", m.group(1)).rstrip(".")
    try:
        value = float(digits)
    except ValueError:
        return None
    value *= {"k": 1_000, "m": 1_000_000}.get(m.group(2).lower(), 1)
    return int(value) if value >= 1 else None


def service_key(base_url: str | None, model: str) -> str:
    """`<model> @ <base URL>`, the URL without credentials (user:secret@ never reaches the disk)."""
    url = (base_url or "https://api.openai.com/v1").rstrip("/")
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{model} @ {urlunsplit((parts.scheme, netloc, parts.path, '', ''))}"


@dataclass(frozen=True)
class Limit:
    """The enqueued-token limit in force for one model at one service."""

    tokens: int | None  # None: not known (yet)
    source: str
    definitive: bool = False  # the config or the service said so: a request over it can never be queued
    learned_at: float | None = None
    paused_until: float | None = None  # no create of this model before then (a refusal with nothing in flight)
    floor: int = 0  # while not known: tokens the service has accepted together (the limit is at least that)

    def describe(self) -> str:
        if self.tokens is None:
            return f"not known: {self.source}"
        when = time.strftime(" on %Y-%m-%d %H:%M UTC", time.gmtime(self.learned_at)) if self.learned_at else ""
        return f"{self.tokens:,} tokens ({self.source}{when})"


def _path(runs_dir: Path) -> Path:
    return Path(runs_dir) / FILE_NAME


def load_all(runs_dir: Path) -> dict[str, dict[str, Any]]:
    """Every learned limit of the runs dir. A damaged file counts as nothing learned: it is
    only a cache of what the service said, and the next refusal writes it again."""
    try:
        data = orjson.loads(_path(runs_dir).read_bytes())
    except (FileNotFoundError, NotADirectoryError, orjson.JSONDecodeError):
        return {}  # (a runs dir that does not exist, or cannot: doctor says so in its own check)
    limits = data.get("limits") if isinstance(data, dict) else None
    return limits if isinstance(limits, dict) else {}


def in_force(runs_dir: Path, base_url: str | None, model: str, configured: int | None,
             poll_interval: float = 30.0) -> Limit:
    """The limit to schedule with: the configured one, else the learned one, else none."""
    if configured is not None:
        return Limit(configured, CONFIGURED, definitive=True)
    entry = load_all(runs_dir).get(service_key(base_url, model))
    if not entry or (entry.get("tokens") is None and not entry.get("pauses")):
        return Limit(None, "learned from the service's first token_limit_exceeded", floor=(entry or {}).get("floor", 0))
    paused_until = None
    if entry.get("pauses"):
        paused_until = entry["rejected_at"] + min(poll_interval * 2 ** (entry["pauses"] - 1),
                                                  poll_interval * MAX_PAUSE_POLLS)
    return Limit(entry.get("tokens"), entry.get("source", "learned"), definitive=bool(entry.get("definitive")),
                 learned_at=entry.get("learned_at"), paused_until=paused_until, floor=entry.get("floor", 0))


def _update(runs_dir: Path, base_url: str | None, model: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
            ) -> dict[str, Any] | None:
    """Change the model's entry under the lock (`change` gets the entry as stored, or a new one,
    and returns it changed, or None to leave the file alone); return what was stored."""
    with fsio.file_lock(Path(runs_dir) / LOCK_NAME, "the learned queue limits"):
        limits = load_all(runs_dir)
        key = service_key(base_url, model)
        entry = change({**limits.get(key, {}), "model": model, "service": key.split(" @ ", 1)[1]})
        if entry is not None:
            limits[key] = entry
            fsio.write_bytes_atomic(_path(runs_dir), orjson.dumps({"limits": limits}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        return entry


def raise_floor(runs_dir: Path, base_url: str | None, model: str, accepted: int) -> None:
    """Remember that the service has held `accepted` tokens of the model at once (limit unknown)."""
    _update(runs_dir, base_url, model, lambda entry: None if accepted <= entry.get("floor", 0) else {**entry, "floor": accepted})


def learn(runs_dir: Path, base_url: str | None, model: str, *, message: str | None, in_flight: int,
          shard_tokens: int, shard_requests: int, run_id: str) -> dict[str, Any]:
    """Record what a `token_limit_exceeded` teaches; return the entry as now stored."""
    def change(old: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        entry: dict[str, Any] = {**old, "rejected_at": now, "run": run_id, "message": (message or "")[:300]}
        stated = parse_limit(message)
        if stated is not None and in_flight + shard_tokens > stated:
            entry |= {"tokens": stated, "source": STATED, "definitive": True, "learned_at": now, "pauses": 0}
        elif stated is not None:
            # By our counts it fitted, yet it was refused: the service counts more tokens than we do
            # (bytes/4 without a tokenizer, say). Schedule below what was refused, in our units.
            entry |= {"tokens": max(1, in_flight + shard_tokens - 1), "source": SCALED.format(stated=stated),
                      "definitive": False, "learned_at": now, "pauses": 0}
        elif old.get("definitive"):
            # The service stated the limit before: this refusal is someone else's share of the
            # queue. Keep the number, and wait a little before the next try.
            entry["pauses"] = old.get("pauses", 0) + 1
        elif in_flight > 0:
            entry |= {"tokens": in_flight, "source": IN_FLIGHT, "definitive": False, "learned_at": now, "pauses": 0}
        else:
            entry["pauses"] = old.get("pauses", 0) + 1
            if shard_requests > 1:
                entry |= {"tokens": max(1, shard_tokens // 2), "source": HALF_SHARD, "definitive": False,
                          "learned_at": now}
        return entry

    return _update(runs_dir, base_url, model, change)
