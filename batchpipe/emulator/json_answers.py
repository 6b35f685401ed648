"""JSON answers: what the emulated model says to a request that asks for JSON.

A chat request with `response_format` `{"type": "json_object"}` (responses: `text.format`) is
answered with ``{"echo": <last user text>}``; one with a `json_schema` response format gets a
value that fits the schema, derived from the request as the echo is (same request, same value),
so validators, explode and targets can be rehearsed offline:

* objects get every property (required or not), in the schema's order;
* arrays get between `minItems` (default 1) and `maxItems` (default minItems + 2) items, the
  count picked from the request's hash;
* strings are ``"<name>: <user text>"`` (`name` is the property, or the parent's name and the
  item's position), or an `enum` / `const` value picked from the hash;
* integers and numbers lie in [minimum, maximum] (default 0..100), booleans from the hash;
* `$ref` to `#/$defs/...` (or `#/definitions/...`) is followed; `anyOf` / `oneOf` take the first
  branch that is not null; a list `type` takes its first type that is not "null".

Two markers in a request's text make an answer wrong on purpose: `[[invalid-json]]` gives JSON
cut in half (does not parse), `[[off-schema]]` gives ``{"unexpected": <user text>}`` (parses,
fits no schema with required properties). The emulator's `invalid_json_share` switch breaks a
pseudo-random share of JSON answers in batches the first way, decided by (fault_seed, custom_id,
how often that custom_id has run): a retry decides afresh, and a seeded run is the same every time.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

INVALID_MARKER = "[[invalid-json]]"
OFF_SCHEMA_MARKER = "[[off-schema]]"


def json_format(endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON response format the request asks for (`{"type": ..., "schema": ...}`), or None."""
    if endpoint == "/v1/chat/completions":
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            inner = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else {}
            return {"type": "json_schema", "schema": inner.get("schema") if isinstance(inner, dict) else None}
    elif endpoint == "/v1/responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return {"type": "json_schema", "schema": fmt.get("schema")}
    else:
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object", "schema": None}
    return None


def json_text(fmt: dict[str, Any], user_text: str, *, broken: bool = False) -> str:
    """The answer's text for a request in JSON mode (see the module docstring)."""
    if OFF_SCHEMA_MARKER in user_text:
        value: Any = {"unexpected": user_text}
    elif fmt["type"] == "json_schema" and isinstance(fmt.get("schema"), dict):
        value = _Fitter(fmt["schema"], user_text).fit(fmt["schema"], "value", ())
    else:
        value = {"echo": user_text}
    text = json.dumps(value, ensure_ascii=False)
    if broken or INVALID_MARKER in user_text:
        return text[: max(1, len(text) // 2)]
    return text


class _Fitter:
    def __init__(self, root: dict[str, Any], text: str) -> None:
        self.root = root
        self.text = text

    def _pick(self, path: tuple[Any, ...], n: int) -> int:
        """A number in [0, n) from the request text and the place in the value."""
        digest = hashlib.sha256(json.dumps([self.text, list(path)], ensure_ascii=False).encode()).digest()
        return int.from_bytes(digest[:8], "big") % max(n, 1)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while isinstance(schema.get("$ref"), str) and seen < 32:
            ref = schema["$ref"]
            target: Any = self.root
            if not ref.startswith("#/"):
                return {}
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            schema, seen = target if isinstance(target, dict) else {}, seen + 1
        for key in ("anyOf", "oneOf"):
            branches = [b for b in schema.get(key, []) if isinstance(b, dict) and b.get("type") != "null"]
            if branches:
                return self._resolve(branches[0])
        return schema

    def fit(self, schema: Any, name: str, path: tuple[Any, ...]) -> Any:
        schema = self._resolve(schema) if isinstance(schema, dict) else {}
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][self._pick(path, len(schema["enum"]))]
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
            return {key: self.fit(sub, key, (*path, key)) for key, sub in props.items()}
        if kind == "array":
            low = int(schema.get("minItems", 1))
            high = int(schema.get("maxItems", low + 2))
            count = low + self._pick((*path, "#"), max(high - low, 0) + 1)
            return [self.fit(schema.get("items", {}), f"{name} {i + 1}", (*path, i)) for i in range(count)]
        if kind in ("integer", "number"):
            low = schema.get("minimum", 0)
            high = schema.get("maximum", max(low, 0) + 100)
            value = low + self._pick(path, int(high - low) + 1)
            return int(value) if kind == "integer" else float(value)
        if kind == "boolean":
            return bool(self._pick(path, 2))
        if kind == "null":
            return None
        return f"{name}: {self.text}"
