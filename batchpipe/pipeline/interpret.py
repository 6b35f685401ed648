"""What an answer means: the raw answer of a successful request -> the value a row gets.

Interpretation happens once per answer, when its shard is merged (ops/process.py), so the
results index holds the interpreted value, every later step reads it from there, and an answer
that does not mean anything usable (text that should be JSON and is not, a value a validator
refuses) becomes a failed outcome with its reason (an `invalid_*` error code), handled as
`output.on_invalid` says. The raw answer is never lost: it stays in the run's results/ files.

The steps, each a small function, in this order:

    parse      output.parse: `text` keeps the answer, `json` parses it, a hook returns the value
    explode    output.explode: the list the answer holds; each item then goes through the steps
               below on its own, and an invalid item is dropped (counted by its code), not the answer
    validate   output.validate: json, json_schema, regex, choices, function (all must pass)
    fields     output.fields: the answer must be an object holding each of them

Pure but for the job's own hooks (batchpipe.pipeline.hooks), which are loaded once, when the
Interpreter is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchpipe.config import OutputConfig
from batchpipe.errors import ConfigError
from batchpipe.pipeline.hooks import HookError, is_hook, load_hook
from batchpipe.pipeline.validators import Validator, json_value, quote, validators

# Error codes of answers that came back but mean nothing usable (counted per code).
INVALID_CODES = ("invalid_json", "invalid_schema", "invalid_regex", "invalid_choices", "invalid_function",
                 "invalid_fields", "invalid_explode")  # fmt: skip


@dataclass(frozen=True)
class Interpreted:
    ok: bool
    value: Any = None
    error: dict[str, Any] | None = None  # {"code": "invalid_...", "message": ...} when not ok
    # with output.explode: the items left out because they were invalid, by error code
    dropped: dict[str, int] = field(default_factory=dict)


def invalid(code: str, message: str) -> Interpreted:
    return Interpreted(False, None, {"code": code, "message": message})


def is_invalid(error: dict[str, Any] | None) -> bool:
    """Is this the error of an answer that came back but was invalid (not a failed request)?"""
    return bool(error) and error.get("code") in INVALID_CODES


class Interpreter:
    """Built once per `process` from the run's output config; called per answer.

    `hooks_dir`: where `module:function` hooks are imported from (the run's config records it).
    A hook that cannot be loaded is a ConfigError (exit 2) before any answer is looked at, so a
    shard is never merged half-interpreted.
    """

    def __init__(self, output: OutputConfig, hooks_dir: Path | None = None) -> None:
        self.output = output
        directory = hooks_dir or Path.cwd()
        try:
            self.parse = parser(output.parse, directory)
            self.validators = validators(output.validate, directory)
        except HookError as exc:
            raise ConfigError(
                f"a hook of this run cannot be loaded: {exc}",
                hint=f"hooks are imported from {directory}; restore the module there and run `batchpipe process` "
                "again (the answers are kept)",
            ) from None
        # Nothing to do to an answer (text kept as it is, no checks): the caller may skip the call.
        self.as_is = (output.parse == "text" and not self.validators and output.explode is False
                      and not output.fields)

    def __call__(self, answer: Any) -> Interpreted:
        meant = self.parse(answer)
        if not meant.ok:
            return meant
        if self.output.explode is False:
            return self.check(meant.value)
        meant = explode(self.output.explode, meant.value)
        if not meant.ok:
            return meant
        kept, dropped = [], {}
        for item in meant.value:
            checked = self.check(item)
            if checked.ok:
                kept.append(checked.value)
            else:
                code = (checked.error or {}).get("code", "invalid")
                dropped[code] = dropped.get(code, 0) + 1
        return Interpreted(True, kept, dropped=dropped)

    def check(self, value: Any) -> Interpreted:
        """validate, then fields: of one value (with explode, of one item)."""
        bad = validate(self.validators, value)
        if bad is not None:
            return Interpreted(False, None, bad)
        return check_fields(self.output.fields, value)


# -- parse ---------------------------------------------------------------------------------


def parser(parse: str, directory: Path) -> Callable[[Any], Interpreted]:
    """The parse step for `output.parse`: text, json or a `module:function` hook."""
    if parse == "json":
        return parse_json
    if is_hook(parse):
        return parse_hook(parse, load_hook(parse, directory))
    return lambda answer: Interpreted(True, answer)


# -- explode -------------------------------------------------------------------------------


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
    value, bad = json_value(answer)
    return Interpreted(True, value) if bad is None else Interpreted(False, None, bad)


def parse_hook(ref: str, hook: Callable[[Any], Any]) -> Callable[[Any], Interpreted]:
    def parse(answer: Any) -> Interpreted:
        try:
            return Interpreted(True, hook(answer))
        except Exception as exc:  # the hook refused the answer (or failed on it): invalid, in its words
            return invalid("invalid_function", f"output.parse {ref} raised {type(exc).__name__}: {exc}")

    return parse


# -- validate ------------------------------------------------------------------------------


def validate(checks: list[Validator], value: Any) -> dict[str, Any] | None:
    """The first configured check the value fails (its error), or None."""
    for check in checks:
        bad = check(value)
        if bad is not None:
            return bad
    return None


# -- fields --------------------------------------------------------------------------------


def check_fields(fields: tuple[str, ...], value: Any) -> Interpreted:
    """With output.fields, the value must be an object holding each of them (the row gets them at write)."""
    if not fields:
        return Interpreted(True, value)
    if not isinstance(value, dict):
        return invalid("invalid_fields", f"output.fields needs a JSON object, the answer is {quote(value)}")
    missing = [f for f in fields if f not in value]
    if missing:
        return invalid("invalid_fields", f"the answer has no {', '.join(repr(f) for f in missing)} "
                                         f"(output.fields); it is {quote(value)}")  # fmt: skip
    return Interpreted(True, value)
