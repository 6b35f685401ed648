"""What an answer means: the raw answer of a successful request -> the value a row gets.

Interpretation happens once per answer, when its shard is merged (ops/process.py), so the
results index holds the interpreted value, every later step reads it from there, and an answer
that does not mean anything usable (text that should be JSON and is not) becomes a failed
outcome with its reason, retried like a failed request. The raw answer is never lost: it stays in
the run's results/ files. Pure: no I/O.

`output.parse`: `text` keeps the answer as the model gave it; `json` parses it. Then
`output.explode` takes the list the answer holds (`explode`): its items become output records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchpipe.config import OutputConfig

# How much of a bad answer an error message quotes.
QUOTE_CHARS = 60


@dataclass(frozen=True)
class Interpreted:
    ok: bool
    value: Any = None
    error: dict[str, Any] | None = None  # {"code": "invalid_...", "message": ...} when not ok


def invalid(code: str, message: str) -> Interpreted:
    return Interpreted(False, None, {"code": code, "message": message})


def quote(value: Any) -> str:
    """The start of an answer, for a message."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode("utf-8")
    return repr(text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "...")


class Interpreter:
    """Built once per `process` from the run's output config; called per answer."""

    def __init__(self, output: OutputConfig) -> None:
        self.output = output

    def __call__(self, answer: Any) -> Interpreted:
        meant = parse_json(answer) if self.output.parse == "json" else Interpreted(True, answer)
        # (validators of the whole answer go here, before explode)
        if meant.ok and self.output.explode is not False:
            meant = explode(self.output.explode, meant.value)
            # Seam for per-item validators: with explode they are meant to run on each item of
            # `meant.value`, dropping the invalid ones (counted by reason) rather than failing the
            # whole answer; the kept items stay the value, in their order.
        return meant


def explode(how: bool | str, value: Any) -> Interpreted:
    """`output.explode`: the list an answer becomes one output record per item of.

    `True`: the value itself must be a list. A field name: the value must be a JSON object with
    a list under that field (a json_schema response format needs an object at the top). The
    interpreted value is then the list alone, so the results index holds the items.
    """
    if how is True:
        if isinstance(value, list):
            return Interpreted(True, value)
        return invalid("invalid_explode", f"output.explode needs a list answer, got {quote(value)}")
    if isinstance(value, dict) and isinstance(value.get(how), list):
        return Interpreted(True, value[how])
    if isinstance(value, dict) and how in value:
        return invalid("invalid_explode", f"output.explode: field '{how}' of the answer is not a list "
                       f"(got {quote(value[how])})")
    return invalid("invalid_explode", f"output.explode needs an object answer with a list under '{how}', "
                   f"got {quote(value)}")


def parse_json(answer: Any) -> Interpreted:
    if not isinstance(answer, str):
        return invalid("invalid_json", f"the answer is not text, so not JSON (got {quote(answer)})")
    try:
        return Interpreted(True, orjson.loads(answer))
    except orjson.JSONDecodeError as exc:
        return invalid("invalid_json", f"the answer is not valid JSON ({exc}); it starts {quote(answer)}")
