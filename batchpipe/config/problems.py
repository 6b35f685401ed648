"""Pydantic's validation errors, told the way a user fixes them: line, field, what to write.

Every error of one validation becomes one Problem (the line of the field it is about, a
message naming the field, and a hint); batchpipe.config.yamlfile.raise_problems reports them
all at once. The wording of the type and range messages comes from the field's declaration
(its type, bounds and examples in batchpipe.config.models), so a new field gets them free.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, get_args, get_origin

import annotated_types
import yaml
from pydantic.fields import FieldInfo

from batchpipe.config.constants import ENDPOINTS, UNSUPPORTED_ENDPOINTS
from batchpipe.config.models import JobFile, Section, sections
from batchpipe.config.yamlfile import Locator, Problem, dotted, show

# Request parameters people put at the top level by mistake; they belong under params:.
_COMMON_PARAMS = frozenset(
    {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "max_output_tokens", "seed", "n",
        "stop", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias",
        "response_format", "reasoning_effort", "reasoning", "text", "tools", "tool_choice",
        "dimensions", "encoding_format", "metadata", "store", "service_tier",
    }
)  # fmt: skip

_PRICING_EXAMPLE = "pricing:\n  input_per_million: 0.075\n  output_per_million: 0.30"
# How to write each section, shown when it is missing or not a mapping.
_SECTION_EXAMPLES = {
    "input": "input:\n  path: rows.jsonl",
    "prompt": 'prompt:\n  user: "Summarise: {text}"',
    "params": "params:\n  temperature: 0\n  max_tokens: 20",
    "output": "output:\n  key: response",
    "limits": "limits:\n  max_requests_per_shard: 50000",
    "pricing": _PRICING_EXAMPLE,
    "provider": "provider:\n  name: openai",
}
# What to do about a text field that is missing, empty or not text.
_HINTS = {
    "model": "add, for example: model: gpt-4o-mini",
    "input.path": "add the dataset file, for example: path: rows.jsonl",
    "input.format": "use jsonl or csv",
    "input.id": "name the field that holds each row's id, or remove input.id",
    "prompt.system": "remove prompt.system, or write the system message",
    "prompt.user": 'add the user message template, e.g. user: "Summarise: {text}"',
    "output.key": "name the key results are written under, e.g. key: response",
}
# What each choice means, shown with a value that is not one of them.
_CHOICE_HINTS = {
    "output.truncated": "keep writes a truncated answer as it is; fail makes its row failed (error code truncated)",
}
# Examples written as a person writes them (the declared example is a float: 0.3).
_EXAMPLES = {"pricing.output_per_million": "0.30"}
# What a number means, after its example in the hint.
_MEANINGS = {
    "limits.budget_usd": "US dollars; remove it for no budget",
    "limits.enqueued_tokens": "remove it for no limit",
    "pricing.input_per_million": "US dollars per 1M tokens",
    "pricing.output_per_million": "US dollars per 1M tokens",
}
_NUMBER_ERRORS = {"int_type", "float_type", "finite_number", "greater_than", "greater_than_equal",
                  "less_than_equal", "less_than", "int_from_float", "int_parsing", "float_parsing"}  # fmt: skip


def field_info(path: tuple[Any, ...]) -> FieldInfo | None:
    """The declaration of the field at `path` (None for a path that is not a declared field)."""
    cls: type[Section] | None = JobFile
    info = None
    for part in path:
        if cls is None or part not in cls.model_fields:
            return None
        info = cls.model_fields[part]
        cls = _section_class(info)
    return info


def _section_class(info: FieldInfo) -> type[Section] | None:
    for cls in (info.annotation, *get_args(info.annotation)):
        if isinstance(cls, type) and issubclass(cls, Section):
            return cls
    return None


def _base_types(info: FieldInfo) -> set[Any]:
    ann = info.annotation
    return {ann, *get_args(ann)}


def _literals(info: FieldInfo | None) -> tuple[Any, ...]:
    if info is None:
        return ()
    for arg in (info.annotation, *get_args(info.annotation)):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


class Translator:
    """Turns the errors of one validation into Problems (collect with `add`, read `problems`)."""

    def __init__(self, locator: Locator, data: dict[Any, Any]) -> None:
        self.loc = locator
        self.data = data
        self.problems: list[Problem] = []
        # Fields an unknown key was taken for ("did you mean 'prompt'?"): their "is required"
        # would repeat the same problem, so it is left out.
        self.suggested: set[str] = set()

    def add(self, path: tuple[Any, ...], text: str, hint: str | None = None, line: int | None = None) -> None:
        self.problems.append(Problem(line if line is not None else self.loc.line(path), text, hint))

    def translate(self, errors: list[dict[str, Any]]) -> list[Problem]:
        unknown = [e for e in errors if e["type"] in ("extra_forbidden", "invalid_key")]
        for e in unknown:  # first, so that "is required" can be left out for a misspelt key
            self.unknown_key(tuple(e["loc"]))
        for e in errors:
            if e not in unknown:
                self.error(e)
        return self.problems

    # -- one error --------------------------------------------------------------------

    def error(self, e: dict[str, Any]) -> None:
        kind, path, value, ctx = e["type"], tuple(e["loc"]), e.get("input"), e.get("ctx") or {}
        name = dotted(path)
        info = field_info(path)
        if kind == "batchpipe":
            self.add(tuple(ctx.get("field", path)), ctx["message"], ctx.get("hint"))
        elif kind == "missing":
            self.missing(path)
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            self.not_a_mapping(path, value)
        elif path and path[-1] == "[key]":
            self.add(path[:-1], f"{dotted(path[:-2])} key {show(path[-2])} must be text",
                     hint=f'quote it: "{show(path[-2])}": ...')  # fmt: skip
        elif kind in ("json_value", "json_key"):
            self.json_value(path, ctx)
        elif kind == "blank":
            self.add(path, f"{name} is empty", hint=_HINTS.get(name))
        elif kind == "template":
            self.template(path, value, ctx)
        elif kind == "literal_error":
            self.choice(path, value, _literals(info))
        elif kind == "string_type":
            self.not_text(path, value)
        elif kind in _NUMBER_ERRORS and info is not None:
            self.number(path, value, info)
        else:  # a rule with no message of our own yet: pydantic's words, still with line and field
            self.add(path, f"{name}: {e['msg']} (got {show(value)})")

    def unknown_key(self, path: tuple[Any, ...]) -> None:
        key, parent = path[-1], path[:-1]
        cls = _section_class(field_info(parent)) if parent else JobFile
        valid = tuple(cls.model_fields) if cls is not None else ()
        where = f"{dotted(parent)}." if parent else ""
        self.add(path, f"unknown key '{where}{key}'{self.suggest(key, parent, valid)}")

    def suggest(self, key: Any, parent: tuple[Any, ...], valid: tuple[str, ...]) -> str:
        text = str(key)
        close = difflib.get_close_matches(text, valid, n=1, cutoff=0.6)
        if close:
            self.suggested.add(dotted((*parent, close[0])))
            return f" — did you mean '{close[0]}'?"
        if not parent:
            # A section's field written at the top level (`user:` for `prompt.user`).
            fields = {name: tuple(cls.model_fields) for name, cls in sections().items()}
            for section, keys in fields.items():
                if text in keys:
                    return f" — did you mean '{section}.{text}' (under '{section}:')?"
            if text in _COMMON_PARAMS:
                return f" — request parameters go under 'params:' (params.{text})"
            for section, keys in fields.items():
                close = difflib.get_close_matches(text, keys, n=1, cutoff=0.75)
                if close:
                    return f" — did you mean '{section}.{close[0]}'?"
        return f" (valid keys: {', '.join(valid)})"

    def missing(self, path: tuple[Any, ...]) -> None:
        name = dotted(path)
        if name in self.suggested:
            return
        if len(path) == 1 and path[0] in _SECTION_EXAMPLES:
            self.add(path, f"'{name}' is required", hint=f"add it, for example:\n{_SECTION_EXAMPLES[path[0]]}")
        elif path[0] == "pricing":
            self.add(
                path,
                f"{name} is required when pricing: is given",
                hint=f"give both prices, in US dollars per 1M tokens at Batch API prices:\n{_PRICING_EXAMPLE}\n"
                "(embeddings have no output price: write output_per_million: 0)",
            )
        else:
            self.add(path, f"{name} is required", hint=_HINTS.get(name))

    def not_a_mapping(self, path: tuple[Any, ...], value: Any) -> None:
        key = dotted(path)
        example = _SECTION_EXAMPLES.get(key, "")
        if key == "params":
            self.add(path, f"'params' must be a mapping of request fields (got {show(value)})",
                     hint=f"for example:\n{example}")  # fmt: skip
            return
        hint = f"write it as a mapping, for example:\n{example}"
        if key == "input" and isinstance(value, str):  # `input: rows.jsonl`: say exactly what to write instead
            hint = f"write it as:\ninput:\n  path: {value}"
        self.add(path, f"'{key}' must be a mapping of keys (got {show(value)})", hint=hint)

    def not_text(self, path: tuple[Any, ...], value: Any) -> None:
        node = self.loc.value_node(path)
        hint = _HINTS.get(dotted(path))
        if isinstance(node, yaml.MappingNode) and node.flow_style:
            hint = (
                f"YAML reads a value that starts with '{{' as a mapping: quote it, as in {path[-1]}: \"{{text}} ...\""
            )
        elif isinstance(node, yaml.ScalarNode):
            hint = f'put the value in quotes: {path[-1]}: "{node.value}"'
        self.add(path, f"{dotted(path)} must be text (got {show(value)})", hint=hint)

    def number(self, path: tuple[Any, ...], value: Any, info: FieldInfo) -> None:
        bounds = {type(m).__name__: m for m in info.metadata if isinstance(m, annotated_types.BaseMetadata)}
        lo = bounds["Ge"].ge if "Ge" in bounds else None
        hi = bounds["Le"].le if "Le" in bounds else None
        example = _EXAMPLES.get(dotted(path)) or (info.examples[0] if info.examples else info.default)
        meaning = _MEANINGS.get(dotted(path))
        hint = f"for example: {path[-1]}: {example}" + (f" ({meaning})" if meaning else "")
        if int in _base_types(info):
            rule = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
            self.add(path, f"{dotted(path)} must be a whole number {rule} (got {show(value)})", hint=hint)
            return
        rule = f"greater than {bounds['Gt'].gt:g}" if "Gt" in bounds else f"of at least {lo:g}"
        if isinstance(value, str) and value.strip().startswith("$"):
            hint = f"write the number without the $ sign, {hint}"
        self.add(path, f"{dotted(path)} must be a number {rule} (got {show(value)})", hint=hint)

    def choice(self, path: tuple[Any, ...], value: Any, options: tuple[Any, ...]) -> None:
        name = dotted(path)
        if path == ("output", "truncated"):
            pass  # any value gets the choices (and a word on YAML's booleans)
        elif not isinstance(value, str):
            self.not_text(path, value)
            return
        elif not value.strip():
            self.add(path, f"{name} is empty", hint=_HINTS.get(name))
            return
        if len(options) == 1:  # provider.name
            self.add(
                path,
                f"{name} must be '{options[0]}', the only provider so far (got {show(value)})",
                hint="for another OpenAI-compatible service, keep name: openai and set provider.base_url",
            )
            return
        if path == ("endpoint",) and value in UNSUPPORTED_ENDPOINTS:
            self.add(path, f"endpoint '{value}' is not supported by batchpipe yet (use one of {', '.join(ENDPOINTS)})")
            return
        close: list[str] = []
        if isinstance(value, str):
            guess = "/v1/" + value.strip().lstrip("/").removeprefix("v1/")
            close = [guess] if path == ("endpoint",) and guess in options else []
            close = close or difflib.get_close_matches(value.lower(), options, n=1, cutoff=0.6)
        suggestion = f" — did you mean '{close[0]}'?" if close else ""
        if isinstance(value, bool):
            suggestion = f" — YAML reads yes/no/true/false as a boolean: write {' or '.join(options)}"
        rule = " or ".join(options) if len(options) == 2 else f"one of {', '.join(options)}"
        self.add(path, f"{name} must be {rule} (got {show(value)}){suggestion}", hint=_CHOICE_HINTS.get(name))

    def json_value(self, path: tuple[Any, ...], ctx: dict[str, Any]) -> None:
        path = (*path, *ctx.get("sub", ()))
        name = dotted(path)
        if "key" in ctx:
            key = ctx["key"]
            self.add((*path, key), f"{name} has a key that is not text ({show(key)})",
                     hint=f'quote the key: "{show(key)}"')  # fmt: skip
        elif "value" in ctx:
            self.add(path, f"{name} is {show(ctx['value'])} to YAML, which JSON cannot carry",
                     hint="put the value in quotes to send it as text")  # fmt: skip
        else:
            self.add(path, f"{name} {ctx['text']}")

    def template(self, path: tuple[Any, ...], text: str, ctx: dict[str, Any]) -> None:
        line = self.loc.line(path)
        before = text[: max(ctx["column"] - 1, 0)]
        t_line = before.count("\n")
        t_col = len(before) - (before.rfind("\n") + 1) + 1
        node = self.loc.value_node(path)
        if isinstance(node, yaml.ScalarNode) and node.style == "|":
            line = node.start_mark.line + 2 + t_line  # literal block: the text starts on the next line
            where = f"column {t_col}"
        elif t_line:
            where = f"template line {t_line + 1}, column {t_col}"
        else:
            where = f"column {t_col}"
        self.add(
            path,
            f"{dotted(path)} has a template error at {where}: {ctx['detail']}",
            hint="placeholders look like {field} or {a.b}; write {{ and }} for literal braces",
            line=line,
        )
