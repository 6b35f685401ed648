"""`output.validate`: the checks an answer's value must pass, one small function each.

Each validator takes the value (after `output.parse`; with explode, one item) and returns None
when it passes, or an error `{"code": "invalid_...", "message": ...}` saying what failed. The
Interpreter runs every configured one in the order of the config's documentation and stops at
the first that fails. Pure, except `function`, which is the job's own code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from batchpipe.config import ValidateConfig
from batchpipe.pipeline.hooks import load_hook

Error = dict[str, Any]
Validator = Callable[[Any], Error | None]

QUOTE_CHARS = 60


def quote(value: Any) -> str:
    """The start of a value, for a message."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode("utf-8")
    return repr(text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "...")


def error(code: str, message: str) -> Error:
    return {"code": code, "message": message}


def json_value(value: Any) -> tuple[Any, Error | None]:
    """The JSON value of an answer: text is parsed, anything else already is one."""
    if not isinstance(value, str):
        return value, None
    try:
        return orjson.loads(value), None
    except orjson.JSONDecodeError as exc:
        return None, error("invalid_json", f"the answer is not valid JSON ({exc}); it starts {quote(value)}")


def check_json(value: Any) -> Error | None:
    return json_value(value)[1]


def schema_check(schema: Mapping[str, Any]) -> Validator:
    import jsonschema  # here: only a job that validates against a schema imports it

    checker = jsonschema.validators.validator_for(schema)(schema)

    def check_schema(value: Any) -> Error | None:
        data, bad = json_value(value)
        if bad is not None:
            return bad
        problem = jsonschema.exceptions.best_match(checker.iter_errors(data))
        if problem is None:
            return None
        where = "/".join(str(p) for p in problem.absolute_path) or "the top level"
        return error("invalid_schema", f"the answer does not fit output.validate.json_schema at {where}: "
                                       f"{problem.message}")  # fmt: skip

    return check_schema


def regex_check(pattern: str) -> Validator:
    compiled = re.compile(pattern)

    def check_regex(value: Any) -> Error | None:
        if not isinstance(value, str):
            return error("invalid_regex", f"the answer is not text, so it cannot match output.validate.regex "
                                          f"(got {quote(value)})")  # fmt: skip
        if compiled.fullmatch(value) is None:
            return error("invalid_regex", f"the answer {quote(value)} does not match output.validate.regex {pattern!r}")
        return None

    return check_regex


def choices_check(choices: tuple[Any, ...]) -> Validator:
    def check_choices(value: Any) -> Error | None:
        # bool is an int to Python: True must not pass for a choice of 1
        if any(type(value) is type(c) and value == c for c in choices):
            return None
        shown = ", ".join(quote(c) for c in choices)
        return error("invalid_choices", f"the answer {quote(value)} is not one of output.validate.choices ({shown})")

    return check_choices


def function_check(ref: str, directory: Path) -> Validator:
    hook = load_hook(ref, directory)

    def check_function(value: Any) -> Error | None:
        try:
            verdict = hook(value)
        except Exception as exc:  # the hook's own failure: this answer is invalid, with the hook's words
            return error("invalid_function", f"output.validate.function {ref} raised {type(exc).__name__}: {exc}")
        if verdict is True:
            return None
        if isinstance(verdict, str) and verdict:
            return error("invalid_function", f"{ref}: {verdict}")
        if verdict is False:
            return error("invalid_function", f"{ref} returned False for {quote(value)}")
        return error("invalid_function", f"{ref} returned {verdict!r} (a validator returns True, False or a reason "
                                         "string)")  # fmt: skip

    return check_function


def validators(spec: ValidateConfig | None, directory: Path) -> list[Validator]:
    """The configured checks, in order: json, json_schema, regex, choices, function."""
    if spec is None:
        return []
    found: list[Validator] = []
    if spec.json:
        found.append(check_json)
    if spec.json_schema is not None:
        found.append(schema_check(spec.json_schema))
    if spec.regex is not None:
        found.append(regex_check(spec.regex))
    if spec.choices is not None:
        found.append(choices_check(spec.choices))
    if spec.function is not None:
        found.append(function_check(spec.function, directory))
    return found
