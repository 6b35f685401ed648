"""The job config file, declared once: typed pydantic models of what a user may write.

Validation, defaults, the JSON Schema (`batchpipe schema`) and the field reference the README
is checked against all come from these classes. Each field's `description` is its user
documentation. The checks that types cannot say (an endpoint without a system message, an
input file that must exist, a template's syntax) are validators here that raise
`PydanticCustomError` with the message a user reads; batchpipe.config.problems turns every
error into a message with the file, the line and the field.

YAML null means "not set" for every field (`id:` or `id: null`): each section drops its null
values before validation, so the default applies.
"""

from __future__ import annotations

import json as _json_module
import math
import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from batchpipe.config.constants import (
    DEFAULT_ENDPOINT,
    ENDPOINTS,
    MAX_BYTES_PER_SHARD,
    MAX_REQUESTS_PER_SHARD,
    NO_SYSTEM_ENDPOINTS,
    NO_TEXT_ENDPOINTS,
    RESERVED_PARAMS,
    SUFFIX_FORMATS,
    asks_for_json,
)
from batchpipe.pipeline.hooks import HOOK_PATTERN, HookError, is_hook, load_hook
from batchpipe.pipeline.template import TemplateSyntaxError, check_field, compile_template


def config_dir(info: ValidationInfo) -> Path | None:
    """The directory of the config file being loaded (relative paths in it start there); None when
    a config is validated without a file (a path is then kept as written, not looked up)."""
    config_file = (info.context or {}).get("config_file")
    return None if config_file is None else Path(os.path.abspath(config_file)).parent


def _problem(message: str, **ctx: Any) -> PydanticCustomError:
    """An error whose message is the one the user reads (ctx may carry `hint`, `sub`, `field`)."""
    return PydanticCustomError("batchpipe", "{message}", {"message": message, **ctx})


# --------------------------------------------------------------------------------------
# Field types


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "is empty")
    return value


def _template(value: str) -> str:
    try:
        compile_template(value)
    except TemplateSyntaxError as exc:
        raise PydanticCustomError("template", "template error", {"column": exc.column, "detail": exc.message}) from None
    return value


def _field_path(value: str, name: str = "input.id") -> str:
    try:
        check_field(value)
    except TemplateSyntaxError as exc:
        raise _problem(f"{name} is not a valid field path: {exc.message}") from None
    return value


def _param_key(key: str) -> str:
    if key in RESERVED_PARAMS:
        raise _problem(f"params.{key} cannot be set: {RESERVED_PARAMS[key]}", hint=f"remove params.{key}")
    return key


def _not_json(sub: tuple[Any, ...], text: str) -> PydanticCustomError:
    return PydanticCustomError("json_value", "{text}", {"sub": sub, "text": text})


def _json_value(value: Any, sub: tuple[Any, ...] = ()) -> Any:
    """Only JSON data can go into a request body (the first value that is not, with its sub-path)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise _not_json(sub, f"is too large a number for JSON (got {value})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _not_json(sub, f"must be a finite number (got {value})")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PydanticCustomError("json_key", "has a key that is not text", {"sub": sub, "key": key})
            _json_value(item, (*sub, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_value(item, (*sub, i))
    else:
        raise PydanticCustomError("json_value", "not JSON", {"sub": sub, "value": value})
    return value


# `pattern` says "not blank" to the JSON Schema; the validator says it to the loader.
Text = Annotated[str, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": r"\S"})]
Template = Annotated[Text, AfterValidator(_template)]
ParamKey = Annotated[str, AfterValidator(_param_key)]
ParamValue = Annotated[Any, AfterValidator(lambda value: _json_value(value))]


def _null_is_not_set(schema: dict[str, Any]) -> None:
    """In the JSON Schema too, an optional field may be written empty (YAML null): not set."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if name in required or any(v.get("type") == "null" for v in prop.get("anyOf", [prop])):
            continue
        docs = {k: prop.pop(k) for k in ("title", "description", "default", "examples") if k in prop}
        variant = dict(prop)
        prop.clear()
        prop.update(docs, anyOf=[variant, {"type": "null"}])


class Section(BaseModel):
    """A mapping of the config: unknown keys are errors, types are strict (YAML `yes` is not text)."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_null_is_not_set)

    @model_validator(mode="before")
    @classmethod
    def _null_means_not_set(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


# --------------------------------------------------------------------------------------
# Sections


class InputSection(Section):
    """Where the rows come from."""

    path: Text | None = Field(
        None,
        description="The dataset. A relative path is read from the config file's directory (not from the "
        "current directory); `~` is expanded. The file must exist when the config is loaded. Exactly one of "
        "`path` and `count`.",
        examples=["reviews.jsonl"],
    )
    count: int | None = Field(
        None, ge=1, examples=[500],
        description="A generation job, with no dataset: this many rows `{\"index\": 0}` to `{\"index\": N-1}`, "
        "`{index}` in templates; each row's id is its index. Exactly one of `path` and `count`.",
    )  # fmt: skip
    records: Annotated[Text, AfterValidator(lambda v: _field_path(v, "input.records"))] | None = Field(
        None,
        description="A field (or dotted path) of each line holding a list of records (JSON objects): one request "
        "per record, `{record.x}` in templates is a field of the record and `{x}` one of the line; each answer is "
        "written into its record, the rest of the line as it was. A line whose list is empty is written "
        "unchanged. jsonl input only.",
        examples=["tweets"],
    )
    record_id: Annotated[Text, AfterValidator(lambda v: _field_path(v, "input.record_id"))] | None = Field(
        None,
        description="With `records`: the field of each record whose value (a non-empty string without `#`, or a "
        "whole number) names it in its request's `custom_id`, `<line id>#<record id>`, unique within its line. "
        "Not set: the record's 0-based position in the list.",
        examples=["tweet_id"],
    )
    format: Literal["jsonl", "csv"] | None = Field(
        None,
        description="`jsonl` (one JSON object per line) or `csv` (a header row, then one row per record; every "
        "value is text). Default from the file name: `.jsonl` and `.ndjson` are jsonl, `.csv` is csv; any other "
        "suffix needs this field.",
    )
    id: Annotated[Text, AfterValidator(_field_path)] | None = Field(
        None,
        description="The field (or dotted path such as `meta.id`) whose value becomes each request's "
        "`custom_id`, which joins the results back to the rows: a non-empty string or a whole number, unique. "
        "Without it, rows are numbered from 1 in file order (blank lines not counted).",
        examples=["review_id"],
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, raw: str | None, info: ValidationInfo) -> str | None:
        """Absolute and resolved, from the config's directory; checked only when loading a file."""
        base = config_dir(info)
        if base is None or raw is None:
            return raw
        candidate = Path(os.path.expanduser(raw))
        resolved = (base / candidate).resolve()  # an absolute candidate stays itself
        if not resolved.exists():
            note = "" if candidate.is_absolute() else f" (a relative path is read from the config's directory, {base})"
            raise _problem(
                f"input.path: file not found: {resolved}{note}",
                hint="check the file name; relative paths start at the config file's directory, not the current one",
            )
        if not resolved.is_file():
            raise _problem(f"input.path is not a file: {resolved}", hint="point it at a .jsonl or .csv file")
        return str(resolved)

    @model_validator(mode="after")
    def _format_from_suffix(self) -> InputSection:
        if self.path is None and self.count is None:
            raise _problem(
                "input.path is required: the dataset (or input.count: N, a generation job with no dataset)",
                hint="add the dataset file, for example: path: rows.jsonl", field=("input", "path"),
            )
        if self.path is not None and self.count is not None:
            raise _problem(
                "input.path and input.count cannot both be set: a job reads a dataset (path) or makes its rows "
                "(count, a generation job)",
                hint="remove input.count, or input.path", field=("input", "count"),
            )
        if self.count is not None:
            for name in ("format", "records", "record_id"):
                if getattr(self, name) is not None:
                    raise _problem(f"input.{name} cannot be used with input.count: a generation job has no dataset",
                                   hint=f"remove input.{name}", field=("input", name))
            return self
        if self.record_id is not None and self.records is None:
            raise _problem("input.record_id needs input.records (the list whose records it names)",
                           hint="add input.records, or remove input.record_id", field=("input", "record_id"))
        if self.format is None:
            suffix = Path(self.path).suffix.lower()
            if suffix not in SUFFIX_FORMATS:
                raise _problem(
                    f"input.format is not set and the suffix of '{Path(self.path).name}' does not tell it "
                    "(.jsonl, .ndjson and .csv do)",
                    hint="add input.format: jsonl or input.format: csv",
                    field=("input", "path"),
                )
            self.format = SUFFIX_FORMATS[suffix]
        if self.records is not None and self.format != "jsonl":
            raise _problem(
                "input.records needs jsonl input: a csv cell holds text, not a list of records",
                hint="convert the file to jsonl, or remove input.records", field=("input", "records"),
            )
        return self


class Turn(Section):
    """One earlier exchange of a dialogue (see `prompt.history`)."""

    user: Template = Field(description="The user's message of this turn, a template.")
    assistant: Template = Field(description="The assistant's answer of this turn, a template (`{caption}`).")
    images: list[Template] | None = Field(None, description="Images sent with this turn's user message.")


class PromptSection(Section):
    """The prompt templates: `{field}` inserts a field of the row (see the README's Placeholders)."""

    system: Template | None = Field(
        None,
        description="The system message (chat completions) or instructions (responses); a template like "
        "`prompt.user`. Embeddings, completions and moderations have no system message.",
        examples=["You judge film reviews."],
    )
    user: Template = Field(
        description="The user message, a template: `{field}` inserts a field of the row, `{a.b}` a nested field, "
        "`{tags.0}` an item of a list, `{{` and `}}` literal braces. Quote a template that starts with `{`.",
        examples=["Review ({stars} stars): {text}"],
    )
    images: list[Template] | None = Field(
        None,
        description="Images sent with the user message (chat completions only): a list of templates, each giving "
        "an image URL (`https://...`, or a `data:` URL) or the path of a local image file, which is sent inline "
        "as a base64 `data:` URL (a relative path is read from the config's directory). The user message then "
        "becomes a list of parts: its text, then one `image_url` part per image.",
        examples=[["{image_url}"]],
    )
    images_dir: Text | None = Field(
        None,
        description="Where a local image path given by `prompt.images` is read from when it is relative (default: "
        "the config file's directory). A relative images_dir is read from the config file's directory.",
        examples=["images"],
    )
    history: bool | list[Turn] | None = Field(
        None,
        description="Earlier turns of the dialogue, sent as chat messages between the system message and the user "
        "message (chat completions only). In a step, `true` replays every earlier step: its user message (images "
        "included) and its answer. Anywhere, a list of turns, each `{user: TEMPLATE, assistant: TEMPLATE}` "
        "(optionally `images:`), written in order.",
        examples=[True],
    )

    @field_validator("images_dir")
    @classmethod
    def _absolute(cls, raw: str | None, info: ValidationInfo) -> str | None:
        """Absolute, from the config's directory (the run's snapshot records it so)."""
        base = config_dir(info)
        if raw is None or base is None:
            return raw
        return str(base / os.path.expanduser(raw))  # an absolute path stays itself

    @field_validator("images")
    @classmethod
    def _some_images(cls, images: list[str] | None) -> list[str] | None:
        if images is not None and not images:
            raise _problem("prompt.images is an empty list", hint="list at least one image, or remove prompt.images")
        return images


def _hook_or(name: str, *words: str) -> Any:
    """A check for the field `name` that takes one of `words` or a `module:function` hook."""

    def check(value: str) -> str:
        if value not in words and not is_hook(value):
            choices = " or ".join(f"`{w}`" for w in words)
            raise _problem(
                f"{name} must be {choices + ' or ' if words else ''}a hook written module:function (got {value!r})",
                hint="a hook names a function in a Python file beside the config, e.g. hooks:check for "
                "def check(...) in hooks.py",
            )
        return value

    return AfterValidator(check)


def _hook(name: str) -> Any:
    return Annotated[str, _hook_or(name), Field(json_schema_extra={"pattern": HOOK_PATTERN})]


ParseChoice = Annotated[
    str, _hook_or("output.parse", "text", "json"), Field(json_schema_extra={"pattern": f"^(text|json)$|{HOOK_PATTERN}"})
]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise _problem(f"output.validate.regex is not a valid regular expression: {exc}",
                       hint="Python `re` syntax; in YAML, single-quote it: regex: '^\\d+$'") from None  # fmt: skip
    return value


# Fields named as a user writes them (`validate`, `json`, `copy`) hide pydantic's deprecated
# BaseModel methods of those names, which batchpipe never calls: pydantic's note about it is
# silenced for these classes only.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r'Field name "(validate|json|copy)" in ".*" shadows')

    class CopyFallback(Section):
        """The fallback that copies a field of the input row."""

        copy: Text = Field(  # type: ignore[assignment]
            description="The field (or dotted path, `user.name`) of the input row whose value becomes the fallback "
            "value.",
            examples=["full_text"],
        )

        @field_validator("copy")
        @classmethod
        def _path(cls, value: str) -> str:
            try:
                check_field(value)
            except TemplateSyntaxError as exc:
                raise _problem(f"output.fallback.copy is not a valid field path: {exc.message}") from None
            return value

    class ValidateSection(Section):
        """Checks an answer must pass (all that are given); an answer that fails one is invalid."""

        json: bool = Field(  # type: ignore[assignment]
            False,
            description="`true`: the answer must be JSON (a text answer is checked; an `output.parse: json` answer "
            "already is). Error code `invalid_json`.",
        )
        json_schema: Text | dict[str, Any] | None = Field(
            None,
            description="A JSON Schema the answer's JSON value must fit (a text answer is parsed for the check): "
            "inline, or the path of a .json file (from the config's directory). The schema itself is checked when "
            "the config is loaded; the run's config snapshot keeps it inline. Error code `invalid_schema`.",
            examples=["verdict.schema.json"],
        )
        regex: Annotated[str, AfterValidator(_regex)] | None = Field(
            None,
            description="A regular expression the whole answer must match (Python `re.fullmatch`; an answer that is "
            "not text fails it). Error code `invalid_regex`.",
            examples=["^(yes|no)$"],
        )
        choices: list[str | int | float | bool] | None = Field(
            None,
            min_length=1,
            description="The answer must be one of these values, exactly. Error code `invalid_choices`.",
            examples=[["positive", "negative"]],
        )
        function: _hook("output.validate.function") | None = Field(  # type: ignore[valid-type]
            None,
            description="A `module:function` hook called with the answer's value: it returns True (valid), or False "
            "or a reason string (invalid); a hook that raises makes the answer invalid too. Error code "
            "`invalid_function`.",
            examples=["hooks:check"],
        )

        @field_validator("json_schema")
        @classmethod
        def _schema(cls, value: str | dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
            """A file is read (from the config's directory); file or inline, it is checked as a JSON Schema."""
            if value is None:
                return None
            if isinstance(value, str):
                base = config_dir(info)
                if base is None:  # not loading a file (as for input.path): the path is not looked up
                    return value  # type: ignore[return-value]
                path = base / os.path.expanduser(value)
                try:
                    value = _json_module.loads(path.read_text(encoding="utf-8"))
                except OSError as exc:
                    raise _problem(f"output.validate.json_schema: cannot read {path}: {exc.strerror or exc}",
                                   hint="a relative path is read from the config file's directory",
                                   ) from None  # fmt: skip
                except ValueError as exc:
                    raise _problem(f"output.validate.json_schema: {path} is not JSON: {exc}",
                                   hint="write the schema as JSON, or inline under json_schema:") from None  # fmt: skip
                if not isinstance(value, dict):
                    raise _problem(f"output.validate.json_schema: {path} holds no JSON Schema (a schema is an object)")
            import jsonschema  # here: only a config that uses it pays for the import

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.path)
                raise _problem(f"output.validate.json_schema is not a valid JSON Schema: {exc.message}"
                               + (f" (at {where})" if where else ""),
                               hint="see json-schema.org; the answer's value is checked against it",
                               ) from None  # fmt: skip
            return value

    class OutputSection(Section):
        """Where each row's result goes in the merged output, and what makes an answer valid."""

        key: Text = Field("response", description="The key under which each row's result is written.")
        parse: ParseChoice | None = Field(
            None,
            description="How an answer becomes the value under `key`: `text` writes the answer as the model gave "
            "it; `json` parses it and writes the JSON value (an answer that does not parse is invalid, error code "
            "`invalid_json`; its raw text stays in the run's results/); a `module:function` hook is called with the "
            "answer's text and returns the value (a hook that raises makes the answer invalid, error code "
            "`invalid_function`). Not set: `json` when `params.response_format` (responses: `params.text.format`) "
            "asks for json_object or json_schema, else `text`. Only for endpoints that answer with text (chat "
            "completions, responses, completions).",
            examples=["json"],
        )
        fields: list[Text] | None = Field(
            None,
            min_length=1,
            description="Fields of the answer's JSON object to also write as top-level fields of the row (the whole "
            "value stays under `key`; a field of the same name in the input row is replaced; null on a row without "
            "a value). An answer that is not an object or lacks one of them is invalid (error code "
            "`invalid_fields`). Needs `parse` json or a hook.",
            examples=[["sentiment", "score"]],
        )
        meta: bool = Field(
            False,
            description="`true`: every row also gets `<key>_usage` (the tokens the service reported for its "
            "answer; null when the request failed) and `<key>_finish_reason`.",
        )
        validate: ValidateSection | None = Field(  # type: ignore[assignment]
            None, description="Checks every answer must pass; an answer that fails one is invalid (see on_invalid)."
        )
        on_invalid: Literal["retry", "drop", "fallback"] = Field(
            "retry",
            description="What happens to an invalid answer: `retry` sends the request again (up to "
            "`limits.max_attempts`, then the row is failed, or filled by `output.fallback` if set); `drop` leaves "
            "the row out of the output (counted); `fallback` fills it from `output.fallback` at once. Invalid "
            "answers are counted per error code.",
        )
        fallback: _hook("output.fallback") | CopyFallback | None = Field(  # type: ignore[valid-type]
            None,
            description="What fills a row whose request finally failed or whose answer stayed invalid: a "
            "`module:function` hook called with the input row (returns the value), or `{copy: FIELD}`. Every row "
            "then gets `<key>_source`: `model` or `fallback` (null: no value at all); a fallback row keeps its "
            "`<key>_error`. A hook that raises, or a missing field, leaves the row failed (error code "
            "`fallback_failed`).",
            examples=["hooks:mask"],
        )
        explode: bool | Text = Field(
            False,
            description="`true`: an answer whose value (after `parse`) is a list becomes one output line per item, "
            "each with its row's fields, `<key>` = the item, `<key>_parent` = the request's `custom_id` and "
            "`<key>_index` = its 0-based position; a FIELD name: the list is that field of a JSON object answer "
            "(a json_schema response format must have an object at the top). An answer without such a list is "
            "invalid (error code `invalid_explode`). Each item then goes through `validate` and `fields` on its "
            "own: an invalid item is left out and counted by its code. Not with `input.records`.",
            examples=["items"],
        )
        truncated: Literal["keep", "fail"] = Field(
            "keep",
            description="An answer the service cut at the output limit (`finish_reason: length`, or `status: "
            "incomplete` for responses): `keep` writes it as the answer; `fail` makes the row failed (error code "
            "`truncated`). Either way the row is marked `<key>_finish_reason: length`; it is not retried "
            "automatically (`process --retry-failed` sends failed rows again).",
        )

        @field_validator("fallback", mode="before")
        @classmethod
        def _one_fallback(cls, value: Any) -> Any:
            """Text must be a hook (one message, not one per kind of fallback)."""
            if isinstance(value, str) and not is_hook(value):
                raise _problem(f"output.fallback must be a hook written module:function or {{copy: FIELD}} "
                               f"(got {value!r})",
                               hint="for example: fallback: hooks:mask, or fallback: {copy: text}")  # fmt: skip
            return value

        @model_validator(mode="after")
        def _consistent(self) -> OutputSection:
            if self.on_invalid == "fallback" and self.fallback is None:
                raise _problem("output.on_invalid is fallback but output.fallback is not set",
                               hint="set output.fallback (module:function or {copy: FIELD}), or use retry or drop",
                               field=("output", "on_invalid"))  # fmt: skip
            for name in self.fields or ():
                if name == self.key or name.startswith(f"{self.key}_"):
                    raise _problem(f"output.fields: {name!r} would overwrite what batchpipe writes under the key "
                                   f"{self.key!r}", hint="set output.key to another name",
                                   field=("output", "fields"))  # fmt: skip
            if len(set(self.fields or ())) != len(self.fields or ()):
                raise _problem("output.fields names a field twice", field=("output", "fields"))
            return self

        def hooks(self) -> dict[tuple[str, ...], str]:
            """Every `module:function` hook this section names, by the path of its field."""
            found = {("output", "parse"): self.parse, ("output", "fallback"): self.fallback,
                     ("output", "validate", "function"): self.validate.function if self.validate else None}  # fmt: skip
            return {path: ref for path, ref in found.items() if isinstance(ref, str) and is_hook(ref)}


STEP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


class StepPromptSection(PromptSection):
    """A step's prompt: every field it leaves out comes from the top-level `prompt`."""

    user: Template | None = Field(  # type: ignore[assignment]
        None, description="The step's user message template (default: the top-level prompt.user)."
    )


class StepOutputSection(OutputSection):
    """A step's output: `key` is required (each step writes its own); the rest default to the top-level output."""

    key: Text = Field(description="The key under which this step's answer is written (unique among the steps).")


class StepSection(Section):
    """One step of a multi-step job: it reads the previous step's output rows."""

    name: str = Field(
        description="The step's name: 1-32 letters, digits, `_` or `-`, starting with a letter or digit; unique. "
        "It names the step's run directory (`runs/<id>/steps/<n>-<name>/`).",
        examples=["caption"],
        json_schema_extra={"pattern": f"^{STEP_NAME_RE.pattern}$"},
    )
    model: Text | None = Field(None, description="The model of this step (default: the top-level model).")
    endpoint: Literal[ENDPOINTS] | None = Field(  # type: ignore[valid-type]
        None, description="The endpoint of this step (default: the top-level endpoint)."
    )
    prompt: StepPromptSection = Field(
        default_factory=StepPromptSection,
        description="This step's prompt (`system`, `user`, `images`, `history`); a field it leaves out comes from "
        "the top-level prompt. Its templates can use the answers of earlier steps (`{caption}`).",
    )
    params: dict[ParamKey, ParamValue] | None = Field(
        None, description="Request fields for this step, merged over the top-level params (a key here wins)."
    )
    output: StepOutputSection = Field(
        description="Where this step's answer goes: `key` (required), and `truncated` (default: the top-level one)."
    )

    @field_validator("name")
    @classmethod
    def _run_id_safe(cls, name: str) -> str:
        if not STEP_NAME_RE.fullmatch(name):
            raise _problem(
                f"step name {name!r} must be 1-32 letters, digits, '_' or '-', starting with a letter or digit",
                hint="for example: name: caption",
            )
        return name


class LimitsSection(Section):
    """Shard sizes, attempts, the cost budget and the enqueued-token limit."""

    max_requests_per_shard: int = Field(
        MAX_REQUESTS_PER_SHARD, ge=1, le=MAX_REQUESTS_PER_SHARD,
        description="At most this many requests go in one batch file (the Batch API allows 50,000).",
    )  # fmt: skip
    max_bytes_per_shard: int = Field(
        MAX_BYTES_PER_SHARD, ge=1, le=MAX_BYTES_PER_SHARD,
        description="At most this many bytes go in one batch file (the Batch API allows 200 MB).",
    )  # fmt: skip
    max_attempts: int = Field(
        3, ge=1, description="How many times a request is sent in total before its failure is final (1 = never retry)."
    )
    budget_usd: float | None = Field(
        None, gt=0, allow_inf_nan=False, examples=[25],
        description="The most this job may cost, in US dollars. Not set: no budget.",
    )  # fmt: skip
    enqueued_tokens: int | None = Field(
        None, ge=1, examples=[2000000],
        description="The most input tokens this job may have waiting at the service at once (the Batch API's "
        "enqueued-token limit of your organisation for the model). Not set: no limit.",
    )  # fmt: skip
    target: int | None = Field(
        None, ge=1, examples=[1500],
        description="Stop once this many valid records exist (answered rows, or with `output.explode` items): "
        "shards not yet sent are not sent, running batches are cancelled (what they finished is still merged), "
        "and the output holds the first `target` valid records in row order (the rest stay in results/). "
        "Not set: every row is sent.",
    )  # fmt: skip


class SyncSection(Section):
    """How sync mode sends requests to the regular (synchronous) endpoint."""

    max_workers: int = Field(
        8, ge=1, le=256, description="Requests in flight at once in sync mode.", examples=[8]
    )
    requests_per_minute: int | None = Field(
        None, ge=1, examples=[500],
        description="The most requests batchpipe sends per minute in sync mode. Not set: no limit of its own; the "
        "service's `x-ratelimit-*` headers (and its 429 answers) are followed either way.",
    )  # fmt: skip
    tokens_per_minute: int | None = Field(
        None, ge=1, examples=[200000],
        description="The most tokens per minute in sync mode, counted as the service counts them: each request's "
        "input tokens plus its output bound (`max_tokens`). Not set: no limit of its own.",
    )  # fmt: skip


class PricingSection(Section):
    """The job's own price for its model, in US dollars per 1M tokens at Batch API prices."""

    input_per_million: float = Field(
        ge=0, allow_inf_nan=False, examples=[0.075], description="US dollars per 1M input tokens, Batch API price."
    )
    output_per_million: float = Field(
        ge=0, allow_inf_nan=False, examples=[0.30],
        description="US dollars per 1M output tokens, Batch API price (embeddings: 0).",
    )  # fmt: skip


class ProviderSection(Section):
    """Which batch service runs the job, and where it lives."""

    name: Literal["openai"] = Field("openai", description="The batch service; `openai` is the only one so far.")
    base_url: Text | None = Field(
        None,
        description="Where the OpenAI-compatible API lives, e.g. `http://127.0.0.1:8080/v1` for the emulator. "
        "Not set: `OPENAI_BASE_URL`, then OpenAI's default. No user name or password (the config is copied into "
        "the run directory); the API key always comes from the environment.",
        examples=["http://127.0.0.1:8080/v1"],
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise _problem(
                f"provider.base_url must be an http:// or https:// URL (got {value!r})",
                hint="for example: base_url: http://127.0.0.1:8080/v1",
            )
        if parts.username is not None or parts.password is not None:
            raise _problem(
                "provider.base_url must not contain a user name or password (the config is copied into the "
                "run directory)",
                hint="remove them from the URL; the API key is read from OPENAI_API_KEY",
            )
        return value


def _prompt_or_steps_schema(schema: dict[str, Any]) -> None:
    _null_is_not_set(schema)
    schema["anyOf"] = [{"required": ["prompt"]}, {"required": ["steps"]}]


class JobFile(Section):
    """A batchpipe job config (YAML), format version 1."""

    model_config = ConfigDict(title="batchpipe job config", json_schema_extra=_prompt_or_steps_schema)

    model: Text = Field(
        description="The model every request uses. One job, one model: the Batch API takes one model per batch file.",
        examples=["gpt-4o-mini"],
    )
    endpoint: Literal[ENDPOINTS] = Field(  # type: ignore[valid-type]
        DEFAULT_ENDPOINT,
        description="The API the requests go to; it decides the request body: chat completions get `messages` "
        "(system, then user); responses get `input` and `instructions`; embeddings and moderations get `input`; "
        "completions get `prompt`.",
    )
    mode: Literal["batch", "sync"] = Field(
        "batch",
        description="`batch` (default): the requests go through the Batch API. `sync`: the same requests go to the "
        "provider's regular endpoint, concurrently (see `sync:`): for small jobs, and for OpenAI-compatible servers "
        "without a batch API (vLLM, Ollama, llama.cpp). `batchpipe run --sync` does the same for one run.",
    )
    sync: SyncSection = Field(default_factory=SyncSection, description="Sync mode's concurrency and rate limits.")
    input: InputSection = Field(description="The dataset.")
    prompt: PromptSection | None = Field(
        None, description="The prompt templates (required unless `steps:` gives each step its own)."
    )
    params: dict[ParamKey, ParamValue] = Field(
        default_factory=dict,
        description="Extra fields merged into every request body (`temperature`, `max_tokens`, "
        "`response_format`, `seed`, ...), sent as written. batchpipe sets "
        + ", ".join(f"`{k}`" for k in RESERVED_PARAMS)
        + " itself, so those keys are errors here.",
        json_schema_extra={"propertyNames": {"not": {"enum": list(RESERVED_PARAMS)}}},
        examples=[{"temperature": 0, "max_tokens": 20}],
    )
    output: OutputSection = Field(default_factory=OutputSection, description="Where the answers go.")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="Sizes, attempts and budgets.")
    pricing: PricingSection | None = Field(
        None,
        description="This job's model price, replacing the shipped price table (batchpipe/prices.json); both "
        "prices required. Not set: the shipped table's price for `model`.",
    )
    provider: ProviderSection = Field(default_factory=ProviderSection, description="The batch service.")
    hooks_dir: Text | None = Field(
        None,
        description="The directory `module:function` hooks (output.parse, output.validate.function, "
        "output.fallback) are imported from. Not set: the config file's directory. The run's config snapshot "
        "records it as an absolute path: the hooks are imported from there (not copied) whenever answers are "
        "processed.",
        examples=["hooks"],
    )

    @field_validator("hooks_dir")
    @classmethod
    def _hooks_dir(cls, raw: str | None, info: ValidationInfo) -> str | None:
        """Absolute, from the config's directory; must exist where hooks are checked (create, estimate)."""
        base = config_dir(info)
        if raw is None or base is None:
            return raw
        resolved = (base / os.path.expanduser(raw)).resolve()
        if (info.context or {}).get("check_hooks") and not resolved.is_dir():
            raise _problem(f"hooks_dir is not a directory: {resolved}",
                           hint="a relative path is read from the config file's directory")  # fmt: skip
        return str(resolved)

    @model_validator(mode="after")
    def _parse_default(self) -> JobFile:
        """`output.parse` follows the response format when not set; JSON needs a text answer."""
        if self.output.parse is None:
            self.output.parse = "json" if asks_for_json(self.params) else "text"
        elif self.output.parse != "text" and self.endpoint in NO_TEXT_ENDPOINTS:
            raise _problem(
                f"output.parse: {self.output.parse} cannot be used with endpoint {self.endpoint}: its answers are "
                "not text",
                hint="remove output.parse, or use a chat completions, responses or completions endpoint",
                field=("output", "parse"),
            )
        if self.output.fields and self.output.parse == "text":
            raise _problem(
                "output.fields needs a JSON answer: set output.parse: json (or a hook that returns an object)",
                hint="or ask for JSON with params.response_format, which makes output.parse json by default",
                field=("output", "fields"),
            )
        return self

    @model_validator(mode="after")
    def _hooks_load(self, info: ValidationInfo) -> JobFile:
        """With `check_hooks` in the context (create, estimate), every hook must import from its directory."""
        context = info.context or {}
        if not context.get("check_hooks") or context.get("config_file") is None:
            return self
        directory = Path(self.hooks_dir or os.path.dirname(os.path.abspath(context["config_file"])))
        for path, ref in self.output.hooks().items():
            try:
                load_hook(ref, directory)
            except HookError as exc:
                raise _problem(f"{'.'.join(path)}: cannot load hook {ref}: {exc}",
                               hint=f"hooks are imported from {directory} (hooks_dir; default: the config's "
                               "directory)", field=path) from None  # fmt: skip
        return self

    @model_validator(mode="after")
    def _explode_needs_rows(self) -> JobFile:
        """An exploded answer becomes whole output lines: a record inside a line has no line of its own."""
        if self.output.explode is not False and self.input.records is not None:
            raise _problem(
                "output.explode cannot be used with input.records: an exploded answer becomes output lines of "
                "its own, and a record's answer is written inside its line",
                hint="remove one of output.explode and input.records", field=("output", "explode"),
            )
        if self.limits.target is not None and self.input.records is not None:
            raise _problem(
                "limits.target cannot be used with input.records: the output is written line by line, and a "
                "line whose records were not all sent would be written half answered",
                hint="remove limits.target, or input.records", field=("limits", "target"),
            )
        if self.output.explode is not False and self.endpoint in NO_TEXT_ENDPOINTS:
            raise _problem(f"output.explode cannot be used with endpoint {self.endpoint}: its answers are not lists",
                           hint="remove output.explode", field=("output", "explode"))
        return self
    steps: list[StepSection] | None = Field(
        None,
        description="A multi-step job: the steps in order, each with its own `name`, `prompt` and `output.key` "
        "(and optionally `model`, `endpoint`, `params`). Step 1 reads the input; each later step reads the "
        "previous step's output rows, so its templates can use earlier answers. The top-level model, endpoint, "
        "prompt, params and output are the defaults of every step.",
    )

    @field_validator("prompt")
    @classmethod
    def _system_needs_an_endpoint_with_one(
        cls, prompt: PromptSection | None, info: ValidationInfo
    ) -> PromptSection | None:
        endpoint = info.data.get("endpoint")
        if prompt is not None and prompt.system is not None and endpoint in NO_SYSTEM_ENDPOINTS:
            raise _problem(
                f"prompt.system cannot be used with endpoint {endpoint}: it has no system message",
                hint="remove prompt.system, or move its text into prompt.user",
                field=("prompt", "system"),
            )
        return prompt

    @model_validator(mode="after")
    def _prompt_or_steps(self) -> JobFile:
        if self.steps is None:
            if self.prompt is None:
                raise _problem("'prompt' is required", hint='add it, for example:\nprompt:\n  user: "Summarise: {text}"',
                               field=("prompt",))
            if self.prompt.history is True:
                raise _problem(
                    "prompt.history: true replays earlier steps, and this config has no steps:",
                    hint="give the earlier turns as a list ({user: ..., assistant: ...}), or add steps:",
                    field=("prompt", "history"),
                )
            _check_chat_only(self.endpoint, self.prompt, ("prompt",))
            return self
        if not self.steps:
            raise _problem("steps is an empty list", hint="list at least one step, or remove steps:", field=("steps",))
        # A step reads the previous step's output rows one for one: a job whose requests or output
        # lines are not one per row (generation, nested records, explode, a target) is one step.
        for path, used in ((("input", "count"), self.input.count is not None),
                           (("input", "records"), self.input.records is not None),
                           (("limits", "target"), self.limits.target is not None),
                           (("output", "explode"), self.output.explode is not False
                            or any(s.output.explode is not False for s in self.steps))):  # fmt: skip
            if used:
                raise _problem(f"{'.'.join(path)} cannot be used with steps: a step reads the previous step's output "
                               "rows one for one", hint=f"run it as a job of its own, or remove {'.'.join(path)}",
                               field=path)  # fmt: skip
        names: dict[str, int] = {}
        keys: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            where = ("steps", i)
            if step.name in names:
                raise _problem(f"step name {step.name!r} is used twice (steps {names[step.name] + 1} and {i + 1})",
                               hint="give every step its own name", field=(*where, "name"))
            names[step.name] = i
            if step.output.key in keys:
                raise _problem(
                    f"steps {keys[step.output.key] + 1} and {i + 1} both write output.key {step.output.key!r}",
                    hint="give every step its own output.key: a later step would overwrite an earlier answer",
                    field=(*where, "output", "key"),
                )
            keys[step.output.key] = i
            endpoint = step.endpoint or self.endpoint
            merged = step_prompt(self.prompt, step.prompt)
            if merged.user is None:
                raise _problem(f"step {step.name!r} has no prompt.user (and there is no top-level prompt.user)",
                               hint='add, for example:\n  prompt:\n    user: "Describe: {text}"',
                               field=(*where, "prompt", "user"))
            if merged.system is not None and endpoint in NO_SYSTEM_ENDPOINTS:
                raise _problem(f"step {step.name!r}: prompt.system cannot be used with endpoint {endpoint}",
                               hint="remove prompt.system, or move its text into prompt.user",
                               field=(*where, "prompt", "system"))
            _check_chat_only(endpoint, merged, (*where, "prompt"))
        return self


def step_prompt(top: PromptSection | None, step: StepPromptSection) -> StepPromptSection:
    """A step's prompt with every field it leaves out taken from the top-level prompt."""
    inherited = {k: getattr(top, k) for k in PromptSection.model_fields if top is not None and k in top.model_fields_set}
    return StepPromptSection.model_construct(**(inherited | {k: getattr(step, k) for k in step.model_fields_set}))


def _check_chat_only(endpoint: str, prompt: PromptSection, where: tuple[Any, ...]) -> None:
    """Images and dialogue turns are parts of chat messages: only chat completions has them."""
    for name in ("images", "history"):
        if getattr(prompt, name, None) not in (None, False) and endpoint != DEFAULT_ENDPOINT:
            raise _problem(
                f"prompt.{name} needs endpoint {DEFAULT_ENDPOINT} (this one is {endpoint})",
                hint=f"remove prompt.{name}, or use endpoint: {DEFAULT_ENDPOINT}",
                field=(*where, name),
            )


def sections() -> dict[str, type[Section]]:
    """The config's sections (mapping-valued top-level keys) by name."""
    out = {}
    for name, info in JobFile.model_fields.items():
        for cls in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(cls, type) and issubclass(cls, Section):
                out[name] = cls
    return out
