"""A run's summary line: answers, records, valid, invalid by reason, success rate.

`process` counts, per shard attempt as it merges it, what the model's answers made of the job
(in the shard's `answers` figures in the ledger): `answers` (successful requests, every attempt),
`records` (one per answer, or with `output.explode` one per item of an answer's list), `valid`
(records whose answer was usable: what the output holds) and `invalid.<code>` (answers that were
not usable, by reason: `invalid_json`, `invalid_explode`, `truncated`, ...). Retried answers are
counted once per attempt: each was a separate answer, paid for. The success rate is
valid / (valid + invalid): the share of what the model produced that could be used.
"""

from __future__ import annotations

from typing import Any

from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger

INVALID_PREFIX = "invalid."


def not_needed(ledger: Ledger, shard: Shard) -> bool:
    """A shard `limits.target` made unnecessary: never sent (nor being sent) when it was reached."""
    if ledger.run.target_reached is None:
        return False
    return shard.state == ShardState.PREPARED or (shard.state == ShardState.UPLOADED and shard.batch is None)


def summary(ledger: Ledger) -> dict[str, Any]:
    """The figures of the summary line, from the merged shards of the ledger."""
    answers = records = valid = 0
    invalid: dict[str, int] = {}
    for shard in ledger.shards:
        merged = shard.answers or {}
        if shard.state != ShardState.MERGED:
            continue
        answers += merged.get("answers", 0)
        records += merged.get("records", 0)
        valid += merged.get("valid", 0)
        for name, n in merged.items():
            if name.startswith(INVALID_PREFIX):
                code = name[len(INVALID_PREFIX) :]
                invalid[code] = invalid.get(code, 0) + n
    bad = sum(invalid.values())
    out: dict[str, Any] = {
        "answers": answers,
        "records": records,
        "valid": valid,
        "invalid": dict(sorted(invalid.items())),
        "success_rate": round(valid / (valid + bad), 4) if valid + bad else None,
    }
    if ledger.run.target_reached is not None:
        out["target_reached"] = ledger.run.target_reached
        out["not_needed_shards"] = sum(not_needed(ledger, s) for s in ledger.shards)
    return out


def summary_line(figures: dict[str, Any], target: int | None = None) -> str:
    """The summary as one line a person reads."""
    invalid = figures["invalid"]
    bad = sum(invalid.values())
    reasons = f" ({', '.join(f'{code} {n}' for code, n in invalid.items())})" if invalid else ""
    rate = figures["success_rate"]
    text = (f"{figures['answers']} answers, {figures['records']} records, {figures['valid']} valid, "
            f"{bad} invalid{reasons}, success rate {'-' if rate is None else f'{rate:.1%}'}")
    if target is not None:
        if figures.get("target_reached") is not None:
            text += f"; target of {target} reached: {figures.get('not_needed_shards', 0)} shard(s) not sent"
        else:
            text += f"; target {target}"
    return text
