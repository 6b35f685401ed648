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

import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from batchpipe.pipeline.template import TemplateSyntaxError, check_field, compile_template

ENDPOINTS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
)
DEFAULT_ENDPOINT = "/v1/chat/completions"
# Endpoints whose request body has no place for a system message.
NO_SYSTEM_ENDPOINTS: frozenset[str] = frozenset({"/v1/embeddings", "/v1/completions", "/v1/moderations"})
# Endpoints whose answer is not text (a vector, a moderation result): `output.parse` does not apply.
NO_TEXT_ENDPOINTS: frozenset[str] = frozenset({"/v1/embeddings", "/v1/moderations"})
# Endpoints the Batch API accepts but batchpipe does not build requests for (yet).
UNSUPPORTED_ENDPOINTS = ("/v1/images/generations", "/v1/images/edits", "/v1/videos")

INPUT_FORMATS: tuple[str, ...] = ("jsonl", "csv")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
TRUNCATED_POLICIES: tuple[str, ...] = ("keep", "fail")

MAX_REQUESTS_PER_SHARD = 50_000  # the Batch API's limit per batch
MAX_BYTES_PER_SHARD = 200_000_000  # the Batch API's 200 MB input file limit

# Body keys batchpipe owns, and why a user may not set them in params.
RESERVED_PARAMS: Mapping[str, str] = MappingProxyType(
    {
        "model": "the model is set by the top-level 'model:' key",
        "messages": "batchpipe builds the messages from prompt.system and prompt.user",
        "input": "batchpipe builds the input from prompt.user",
        "prompt": "batchpipe builds the prompt from prompt.user",
        "instructions": "batchpipe builds the instructions from prompt.system",
        "stream": "the Batch API refuses streaming requests",
    }
)


def asks_for_json(params: Mapping[str, Any]) -> bool:
    """Does the request body ask the model for JSON (chat `response_format`, responses `text.format`)?"""
    text = params.get("text")
    for fmt in (params.get("response_format"), text.get("format") if isinstance(text, dict) else None):
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            return True
    return False


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
        config_file = (info.context or {}).get("config_file")
        if config_file is None or raw is None:
            return raw
        base = Path(os.path.abspath(config_file)).parent
        candidate = Path(os.path.expanduser(raw))
        resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
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


class OutputSection(Section):
    """Where each row's result goes in the merged output."""

    key: Text = Field("response", description="The key under which each row's result is written.")
    parse: Literal["text", "json"] | None = Field(
        None,
        description="How an answer becomes the value under `key`: `text` writes the answer as the model gave it; "
        "`json` parses it and writes the JSON value (an answer that does not parse is a failed row, error code "
        "`invalid_json`, retried like a failed request; its raw text stays in the run's results/). Not set: `json` "
        "when `params.response_format` (responses: `params.text.format`) asks for json_object or json_schema, else "
        "`text`. Only for endpoints that answer with text (chat completions, responses, completions).",
    )
    explode: bool | Text = Field(
        False,
        description="`true`: an answer whose value (after `parse`) is a list becomes one output line per item, "
        "each with its row's fields, `<key>` = the item, `<key>_parent` = the request's `custom_id` and "
        "`<key>_index` = its 0-based position; a FIELD name: the list is that field of a JSON object answer "
        "(a json_schema response format must have an object at the top). An answer without such a list is "
        "invalid (error code `invalid_explode`), retried like a failed request. Not with `input.records`.",
        examples=["items"],
    )
    truncated: Literal["keep", "fail"] = Field(
        "keep",
        description="An answer the service cut at the output limit (`finish_reason: length`, or `status: "
        "incomplete` for responses): `keep` writes it as the answer; `fail` makes the row failed (error code "
        "`truncated`). Either way the row is marked `<key>_finish_reason: length`; it is not retried "
        "automatically (`process --retry-failed` sends failed rows again).",
    )


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


class JobFile(Section):
    """A batchpipe job config (YAML), format version 1."""

    model_config = ConfigDict(title="batchpipe job config")

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
    input: InputSection = Field(description="The dataset.")
    prompt: PromptSection = Field(description="The prompt templates.")
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

    @model_validator(mode="after")
    def _parse_default(self) -> JobFile:
        """`output.parse` follows the response format when not set; JSON needs a text answer."""
        if self.output.parse is None:
            self.output.parse = "json" if asks_for_json(self.params) else "text"
        elif self.output.parse == "json" and self.endpoint in NO_TEXT_ENDPOINTS:
            raise _problem(
                f"output.parse: json cannot be used with endpoint {self.endpoint}: its answers are not text",
                hint="remove output.parse, or use a chat completions, responses or completions endpoint",
                field=("output", "parse"),
            )
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

    @field_validator("prompt")
    @classmethod
    def _system_needs_an_endpoint_with_one(cls, prompt: PromptSection, info: ValidationInfo) -> PromptSection:
        endpoint = info.data.get("endpoint")
        if prompt.system is not None and endpoint in NO_SYSTEM_ENDPOINTS:
            raise _problem(
                f"prompt.system cannot be used with endpoint {endpoint}: it has no system message",
                hint="remove prompt.system, or move its text into prompt.user",
                field=("prompt", "system"),
            )
        return prompt


def sections() -> dict[str, type[Section]]:
    """The config's sections (mapping-valued top-level keys) by name."""
    out = {}
    for name, info in JobFile.model_fields.items():
        for cls in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(cls, type) and issubclass(cls, Section):
                out[name] = cls
    return out
