"""The validator of configs/refusal_dataset.yaml: `output.validate.function: refusal_hooks:check`.

batchpipe finds this file beside the config and calls `check` on each scenario pair of an answer
(after `output.explode`), as its shard is merged. The seed kept a pair only if its two prompts
differ in exactly one token, with several tokenizers; this stand-in needs no tokenizer: the two
prompts have the same number of words and differ in exactly one. It returns True, or the reason
the pair is invalid (batchpipe counts invalid answers per reason and, with `on_invalid: drop`,
leaves them out).
"""

from __future__ import annotations

from typing import Any


def _pairs(value: Any) -> list[Any]:
    """The scenario pairs in `value`: one pair, a list of them, or the whole answer object."""
    if isinstance(value, dict) and isinstance(value.get("scenarios"), list):
        return value["scenarios"]
    return value if isinstance(value, list) else [value]


def check(value: Any) -> bool | str:
    for n, pair in enumerate(_pairs(value), 1):
        if not isinstance(pair, dict):
            return f"scenario {n} is not an object"
        harmful, benign = pair.get("harmful_prompt"), pair.get("benign_prompt")
        if not isinstance(harmful, str) or not isinstance(benign, str):
            return f"scenario {n} lacks harmful_prompt or benign_prompt"
        a, b = harmful.split(), benign.split()
        if len(a) != len(b):
            return f"scenario {n}: the prompts have {len(a)} and {len(b)} words, not the same number"
        differ = sum(x != y for x, y in zip(a, b))
        if differ != 1:
            return f"scenario {n}: the prompts differ in {differ} words, not exactly 1"
    return True
