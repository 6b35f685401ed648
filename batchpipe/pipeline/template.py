"""Prompt templates: `{field}` placeholders filled from a row. Data only, never code.

Syntax
------
- `{field}` inserts the row's value for `field`.
- `{a.b}` looks up `b` inside the object `a`; an all-digit segment indexes a list
  (`{tags.0}` is the first tag). On an object, a digit segment is an ordinary key (`{m.0}`
  reads `m["0"]`).
- `{{` and `}}` are literal braces.
- Nothing else: no format specs (`{x:>10}`), no conversions (`{x!r}`), no `[...]` indexing,
  no attribute access, no expressions. Anything but the forms above is a syntax error, so
  a template can never run code or reach into Python objects.

Values
------
A text value is inserted as is; a number or boolean as JSON (`1.5`, `true`; integers of any
size digit for digit); an object or list as compact JSON with non-ASCII characters kept
(`{"a":"é"}`). A missing field, a list index past the end, or a null value raises
`MissingField`: an empty string silently standing in for a missing field would be paid for
and would be wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "MissingField",
    "Template",
    "TemplateSyntaxError",
    "check_field",
    "compile_template",
    "lookup",
    "render_value",
]

# Characters that would mean something to str.format (or look like they should) and are
# therefore refused inside a placeholder, with the reason shown to the user.
_FORBIDDEN = {
    ":": "format specs like '{x:>10}' are not supported; write '{x}'",
    "!": "conversions like '{x!r}' are not supported; write '{x}'",
    "[": "use a dot to index a list, as in '{tags.0}', not '{tags[0]}'",
    "]": "use a dot to index a list, as in '{tags.0}', not '{tags[0]}'",
}


class TemplateSyntaxError(ValueError):
    """A template (or a field path) cannot be parsed.

    `column` is the 1-based position in the template text (counting every character,
    newlines included) where the problem starts; `message` says what is wrong without
    the position, so the caller can name the place in its own terms (file line, column).
    """

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        return self.message


class MissingField(LookupError):
    """A placeholder or id path has no usable value in a row.

    `field` is the path as written (`user.name`); `reason` completes a sentence about it:
    "is missing", "is null", "is missing (the list 'tags' has 2 items)".
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field '{field}' {reason}")
        self.field = field
        self.reason = reason


def _split(path: str, offset: int = 0) -> tuple[str, ...]:
    """Split and check a field path; `offset` is added to error columns (0-based start)."""
    if path == "" or path.strip() == "":
        raise TemplateSyntaxError("empty placeholder '{}': put a field name inside, as in '{text}'", max(offset, 1))
    for i, ch in enumerate(path):
        if ch in _FORBIDDEN:
            raise TemplateSyntaxError(
                f"'{ch}' is not allowed in placeholder '{{{path}}}': {_FORBIDDEN[ch]}", offset + i + 1
            )
    if path != path.strip():
        raise TemplateSyntaxError(
            f"placeholder '{{{path}}}' has spaces around the field name; write '{{{path.strip()}}}'", offset + 1
        )
    segments = tuple(path.split("."))
    if any(s == "" for s in segments):
        raise TemplateSyntaxError(
            f"placeholder '{{{path}}}' has an empty part; write dotted paths as 'a.b', without leading, "
            "trailing or double dots",
            offset + 1,
        )
    return segments


def check_field(path: str) -> None:
    """Raise TemplateSyntaxError if `path` is not a valid field path (`a`, `a.b`, `tags.0`).

    This is the form `input.id` takes: a placeholder's name, without the braces.
    """
    for i, ch in enumerate(path):
        if ch in "{}":
            raise TemplateSyntaxError(f"write the field name without braces, as in '{path.strip('{} ')}'", i + 1)
    _split(path)


def lookup(row: Any, path: str, segments: tuple[str, ...] | None = None) -> Any:
    """The value at the dotted `path` in `row`; raises MissingField if it is absent or null.

    Each segment is a key of an object (mapping); on a list, an all-digit segment is a
    0-based index. `segments` is `path` already split (saves the work in a hot loop).
    """
    parts = segments if segments is not None else _split(path)
    value: Any = row
    walked: list[str] = []
    for seg in parts:
        where = ".".join(walked)
        if isinstance(value, dict) or isinstance(value, Mapping):  # dict first: the ABC check is slow
            if seg not in value:
                if walked:
                    raise MissingField(path, f"is missing ('{where}' has no key '{seg}')")
                raise MissingField(path, "is missing")
            value = value[seg]
        elif isinstance(value, list):
            if not (seg.isascii() and seg.isdigit()):
                raise MissingField(path, f"is missing ('{where}' is a list; index it with a number, as in '{where}.0')")
            index = int(seg)
            if index >= len(value):
                raise MissingField(path, f"is missing (the list '{where}' has {len(value)} items)")
            value = value[index]
        else:
            raise MissingField(path, f"is missing ('{where}' is {_kind(value)}, not an object)")
        walked.append(seg)
        if value is None and len(walked) < len(parts):
            raise MissingField(path, f"is missing ('{'.'.join(walked)}' is null)")
    if value is None:
        raise MissingField(path, "is null")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def render_value(value: Any) -> str:
    """The text a value becomes inside a prompt (see the module docstring)."""
    if isinstance(value, str):
        return value
    # bool is an int subclass; orjson gives true/false, 1, 1.5 and compact JSON for the rest.
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits, non-string keys: the stdlib copes where orjson refuses.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class Template:
    """A compiled template. `text` is the source; `fields` the placeholder paths, each once,
    in order of first appearance."""

    __slots__ = ("_parts", "fields", "render", "text")

    def __init__(self, text: str, parts: tuple[str | tuple[str, tuple[str, ...]], ...]) -> None:
        self.text = text
        self._parts = parts
        seen: dict[str, None] = {}
        for part in parts:
            if isinstance(part, tuple):
                seen.setdefault(part[0], None)
        self.fields: tuple[str, ...] = tuple(seen)
        # render(row) -> str: fill the placeholders from `row`; raises MissingField for an absent or null field
        self.render = _fast_render(parts, self._render) or self._render

    def _render(self, row: Mapping[str, Any]) -> str:
        if not self.fields:  # a fixed text (a system prompt, often): nothing to fill
            return self.text if not self._parts else self._parts[0]  # type: ignore[return-value]
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, segments = part
            # The common case first, in a hot loop: a top-level field holding text.
            value = row.get(segments[0]) if len(segments) == 1 and type(row) is dict else None
            if value is None:
                value = lookup(row, name, segments)  # nested, or missing/null: lookup says which
            out.append(value if type(value) is str else render_value(value))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _fast_render(parts: tuple[str | tuple[str, tuple[str, ...]], ...], slow: Any) -> Any:
    """For a template whose placeholders are all top-level fields (the usual prompt), a function
    made for it that reads each field once and joins the pieces, at the speed of an f-string: a
    million-row job renders its prompts a million times. Anything unusual (a missing or null
    field, a row that is not a dict) goes to `slow`, which says what is wrong. The function's
    source holds the template's texts and field names only as repr() literals: data, never code.
    """
    fields = [p for p in parts if isinstance(p, tuple)]
    if not fields or any(len(segments) != 1 for _, segments in fields):
        return None
    names = list(dict.fromkeys(name for name, _ in fields))
    var = {name: f"v{i}" for i, name in enumerate(names)}
    fetch = "\n".join(f"        {var[n]} = row[{n!r}]" for n in names)
    nulls = " or ".join(f"{var[n]} is None" for n in names)
    # text and ints go into the f-string as they are (an int's str() is its JSON); the rest is converted
    convert = "\n".join(f"    if type({var[n]}) is not str and type({var[n]}) is not int:\n"
                         f"        {var[n]} = text({var[n]})" for n in names)
    pieces = "".join(p.replace("{", "{{").replace("}", "}}") if isinstance(p, str) else "{" + var[p[0]] + "}"
                     for p in parts)
    source = (
        f"def render(row):\n    try:\n{fetch}\n"
        f"    except (KeyError, TypeError):\n        return slow(row)\n    if {nulls}:\n        return slow(row)\n"
        f"{convert}\n    return f{pieces!r}\n"
    )
    scope: dict[str, Any] = {"slow": slow, "text": render_value}
    exec(compile(source, "<batchpipe template>", "exec"), scope)  # noqa: S102 - see the docstring
    return scope["render"]


def compile_template(text: str) -> Template:
    """Parse `text` into a Template; raises TemplateSyntaxError(message, column)."""
    parts: list[str | tuple[str, tuple[str, ...]]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if i + 1 < n and text[i + 1] == "{":
                literal.append("{")
                i += 2
                continue
            end = i + 1
            while end < n and text[end] not in "{}":
                end += 1
            if end >= n:
                raise TemplateSyntaxError(
                    "'{' is never closed; close the placeholder with '}', or write '{{' for a literal brace",
                    i + 1,
                )
            if text[end] == "{":
                raise TemplateSyntaxError(
                    "'{' opens a placeholder inside another one; write '{{' and '}}' for literal braces",
                    end + 1,
                )
            name = text[i + 1 : end]
            segments = _split(name, offset=i + 1)
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append((name, segments))
            i = end + 1
        elif ch == "}":
            if i + 1 < n and text[i + 1] == "}":
                literal.append("}")
                i += 2
                continue
            raise TemplateSyntaxError("single '}' has no matching '{'; write '}}' for a literal brace", i + 1)
        else:
            # Copy a run of ordinary characters in one step.
            end = i + 1
            while end < n and text[end] not in "{}":
                end += 1
            literal.append(text[i:end])
            i = end
    if literal:
        parts.append("".join(literal))
    return Template(text, tuple(parts))
