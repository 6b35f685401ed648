"""Hooks of configs/masking.yaml: the deterministic masker batchpipe falls back to.

`output.fallback: masking_hooks:mask` names `mask` (this file is found beside the config). batchpipe
calls it for a tweet whose request finally failed (a 4xx, or a 5xx after limits.max_attempts), and
marks that tweet `masked_text_source: "fallback"`, so a fallback is never silent (the seed's
masker fell back without saying so). No model, no network: a small word list, the same every time.
"""

from __future__ import annotations

import re

# Opinion words (adjectives, verbs, loaded nouns, comparatives, intensifiers): the kinds the seed's
# prompt names. Small on purpose; the model does the real work, this only stands in when it can't.
OPINION_WORDS = frozenset("""
    absolutely amazing awful bad beautiful best better boring brilliant completely disgusting
    excellent extremely fantastic genius good great hate hero horrible idiot incredible love
    lovely nice perfect poor stupid terrible ugly villain wonderful worse worst
""".split())

MASK = "[MASKED]"
WORD = re.compile(r"[A-Za-z']+")


def mask_text(text: str) -> str:
    """`text` with every opinion word (any case) replaced by [MASKED]; everything else kept."""
    return WORD.sub(lambda m: MASK if m.group(0).lower() in OPINION_WORDS else m.group(0), text)


def mask(row: dict) -> str:
    """The fallback value of `masked_text` for one row: batchpipe passes the tweet (the nested
    record, with `full_text`); a whole row holding the tweet under `record` is read too."""
    record = row if "full_text" in row else row.get("record", {})
    return mask_text(record["full_text"])
