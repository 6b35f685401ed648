"""Hooks of configs/refusal_dataset.yaml: read an answer into scenario pairs, and check each pair.

Both are named in the config as `refusal_hooks:<function>` (this file is found beside it).

- `scenarios(text)`: the parse hook. The answer is a JSON object `{"scenarios": [...]}` (a
  json_schema response format must have an object at its root), and the list inside it is what
  `output.explode` makes into one record per scenario. Text that is not that raises ValueError:
  batchpipe counts the answer as invalid, with the message.
- `check(value)`: the validator (`output.validate.function`). The seed kept a pair only if its
  two prompts differ in exactly one token, with several tokenizers; this stand-in needs no
  tokenizer: the two prompts have the same number of words and differ in exactly one. It returns
  True, or the reason the value is invalid (batchpipe counts invalid answers per reason).
"""

from __future__ import annotations

import json
from typing import Any


def scenarios(text: str) -> list[dict[str, Any]]:
    value = json.loads(text)  # a json.JSONDecodeError is a ValueError
    if not isinstance(value, dict) or not isinstance(value.get("scenarios"), list):
        raise ValueError("the answer has no list under 'scenarios'")
    return value["scenarios"]


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
