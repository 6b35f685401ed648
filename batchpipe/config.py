"""Job config: one YAML file per job, read into frozen dataclasses.

Every problem found in a config is reported with the file, the line and the field, and all
problems are reported together in one ConfigError (exit code 2), so a user fixes them in
one pass before anything is paid for. Nothing here touches the network or prints.

Config format, version 1
------------------------
```yaml
model: gpt-4o-mini                      # required
endpoint: /v1/chat/completions          # optional, this is the default
input:
  path: reviews.jsonl                   # required
  format: jsonl                         # optional: jsonl | csv
  id: review_id                         # optional
prompt:
  system: You judge film reviews.       # optional
  user: "Review ({stars} stars): {text}"  # required
params: {temperature: 0, max_tokens: 20}  # optional
output:
  key: verdict                          # optional, default: response
  truncated: keep                       # optional: keep | fail, default keep
limits:
  max_requests_per_shard: 50000         # optional, default 50000
  max_bytes_per_shard: 200000000        # optional, default 200000000
  max_attempts: 3                       # optional, default 3
  budget_usd: null                      # optional, default null (no budget)
  enqueued_tokens: null                 # optional, default null (no limit)
pricing:                                # optional, default: the shipped price table
  input_per_million: 0.075              # USD per 1M input tokens, Batch API price
  output_per_million: 0.30              # USD per 1M output tokens, Batch API price
provider:
  name: openai                          # optional, default openai
  base_url: null                        # optional
```

Fields
------
`model` (required, text)
    The model every request uses, e.g. `gpt-4o-mini`. One job, one model: the Batch API
    accepts a single model per batch file.

`endpoint` (default `/v1/chat/completions`)
    The API the requests go to: `/v1/chat/completions`, `/v1/responses`, `/v1/embeddings`,
    `/v1/completions` or `/v1/moderations`. It decides the request body:
    chat completions get `messages` (system, then user); responses get `input` (the user
    text) and `instructions` (the system text); embeddings and moderations get `input`;
    completions get `prompt`. Embeddings, completions and moderations have no system
    message, so `prompt.system` is an error with them.

`input.path` (required, text)
    The dataset. A relative path is read from the config file's directory (not from the
    current directory); `~` is expanded. The file must exist when the config is loaded.

`input.format` (optional: `jsonl` or `csv`)
    Default from the file name: `.jsonl` and `.ndjson` are jsonl, `.csv` is csv; any other
    suffix needs this field. jsonl: one JSON object per line. csv: a header row, then one
    row per record; every value is text.

`input.id` (optional, a field name or a dotted path such as `meta.id`)
    The field whose value becomes each request's `custom_id`, which joins the results back
    to the rows. The value must be a non-empty string or a whole number, and unique.
    Without it, rows are numbered from 1 in file order (blank lines not counted).

`prompt.user` (required, text)
    The user message, a template: `{field}` inserts a field of the row, `{a.b}` a nested
    field, `{tags.0}` an item of a list, `{{` and `}}` literal braces. No format specs,
    no expressions. A field that is missing or null in a row is an error naming the row.
    Quote a template that starts with `{` (`user: "{text}"`): unquoted, YAML reads it as
    a mapping.

`prompt.system` (optional, text)
    The system message (chat completions) or instructions (responses); same template
    syntax as `prompt.user`.

`params` (optional mapping)
    Extra fields merged into every request body: `temperature`, `max_tokens`,
    `response_format`, `seed`, ... Sent as written. batchpipe sets `model`, `messages`,
    `input`, `prompt` and `instructions` itself, and the Batch API refuses `stream`, so
    those six keys are errors here.

`output.key` (default `response`)
    The key under which each row's result is written in the merged output.

`output.truncated` (default `keep`: `keep` or `fail`)
    What to do with an answer the service cut at the output limit (`max_tokens`,
    `max_completion_tokens`, `max_output_tokens`: chat and completions say
    `finish_reason: length`, responses `status: incomplete`). `keep` writes it as the answer;
    `fail` makes the row failed, with `null` under the key and the error code `truncated`.
    Either way the row is marked `<key>_finish_reason: length` and the run counts it. A
    truncated request is not retried automatically (the same limit would cut it again);
    `batchpipe process RUN --retry-failed` sends failed rows again when a person asks.

`limits.max_requests_per_shard` (default 50000, from 1 to 50000)
    At most this many requests go in one batch file (the Batch API allows 50,000).

`limits.max_bytes_per_shard` (default 200000000, from 1 to 200000000)
    At most this many bytes go in one batch file (the Batch API allows 200 MB).

`limits.max_attempts` (default 3, at least 1)
    How many times a request is sent in total before its failure is final (1 = never retry).

`limits.budget_usd` (optional, a number greater than 0, in US dollars)
    The most this job may cost. Not set (the default): no budget. `batchpipe estimate`
    shows the expected and worst-case cost of a job against it.

`limits.enqueued_tokens` (optional, a whole number of at least 1)
    The most input tokens this job may have waiting at the service at once (the Batch
    API's enqueued-token limit of your organisation for the model). Not set (the
    default): no limit.

`pricing` (optional mapping: `input_per_million` and `output_per_million`, both required)
    The price of this job's model in US dollars per 1 million tokens, at **Batch API**
    prices (half the synchronous price), each a number of at least 0. It replaces the
    price table shipped with batchpipe (batchpipe/prices.json) for this job: use it for a
    model the table does not know (a fine-tuned model, a new model) or when prices have
    changed. Embeddings have no output price: write `output_per_million: 0`. The figures
    are written into the run's config snapshot, so a run keeps the prices it was created
    with. Not set (the default): the shipped table's price for `model`.

`provider.name` (default `openai`)
    Which batch service runs the job; `openai` is the only one so far.

`provider.base_url` (optional, an http:// or https:// URL)
    Where the OpenAI-compatible API lives, e.g. `http://127.0.0.1:8080/v1` for the
    emulator. When not set: the `OPENAI_BASE_URL` environment variable, then OpenAI's
    default. It must not contain a user name or password (the config is copied into the
    run directory); the API key always comes from the environment.

An optional field may also be written with an empty value (`id:` or `id: null`), which
means "not set". YAML anchors and aliases (`&fmt` ... `*fmt`) work; all the aliases of a
file together may stand for at most 10,000 values, and an alias may not be used inside the
value it names. Keys are checked: an unknown key is an error that suggests the closest
valid one. The same key twice in one mapping is an error (YAML would silently keep the
last one).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from batchpipe.errors import ConfigError
from batchpipe.pipeline.template import TemplateSyntaxError, check_field, compile_template

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINTS",
    "INPUT_FORMATS",
    "MAX_BYTES_PER_SHARD",
    "MAX_REQUESTS_PER_SHARD",
    "NO_SYSTEM_ENDPOINTS",
    "RESERVED_PARAMS",
    "InputConfig",
    "JobConfig",
    "Limits",
    "OutputConfig",
    "Pricing",
    "PromptConfig",
    "ProviderConfig",
    "config_to_dict",
    "load_config",
    "snapshot_yaml",
]

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
# Endpoints the Batch API accepts but batchpipe does not build requests for (yet).
_UNSUPPORTED_ENDPOINTS = ("/v1/images/generations", "/v1/images/edits", "/v1/videos")

INPUT_FORMATS: tuple[str, ...] = ("jsonl", "csv")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

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

_TOP_KEYS = ("model", "endpoint", "input", "prompt", "params", "output", "limits", "pricing", "provider")
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("path", "format", "id"),
    "prompt": ("system", "user"),
    "output": ("key", "truncated"),
    "limits": ("max_requests_per_shard", "max_bytes_per_shard", "max_attempts", "budget_usd", "enqueued_tokens"),
    "pricing": ("input_per_million", "output_per_million"),
    "provider": ("name", "base_url"),
}
TRUNCATED_POLICIES: tuple[str, ...] = ("keep", "fail")
_PRICING_EXAMPLE = "pricing:\n  input_per_million: 0.075\n  output_per_million: 0.30"
# Request parameters people put at the top level by mistake; they belong under params:.
_COMMON_PARAMS = frozenset(
    {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "max_output_tokens", "seed", "n",
        "stop", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias",
        "response_format", "reasoning_effort", "reasoning", "text", "tools", "tool_choice",
        "dimensions", "encoding_format", "metadata", "store", "service_tier",
    }
)  # fmt: skip


@dataclass(frozen=True)
class InputConfig:
    """Where the rows come from. `path` is absolute and resolved; `format` is `jsonl` or
    `csv`; `id` is the field (or dotted path) holding each row's id, or None to number rows."""

    path: Path
    format: str
    id: str | None = None


@dataclass(frozen=True)
class PromptConfig:
    """The prompt templates (see batchpipe.pipeline.template for the syntax)."""

    system: str | None
    user: str


@dataclass(frozen=True)
class OutputConfig:
    """`key`: the key under which each row's result is written in the merged output;
    `truncated`: `keep` or `fail` an answer cut at the output limit (see `output.truncated`)."""

    key: str = "response"
    truncated: str = "keep"


@dataclass(frozen=True)
class Limits:
    """Shard sizes, the retry budget, the cost budget and the enqueued-token limit (see the
    module docstring for the ranges). None means "no limit"."""

    max_requests_per_shard: int = MAX_REQUESTS_PER_SHARD
    max_bytes_per_shard: int = MAX_BYTES_PER_SHARD
    max_attempts: int = 3
    budget_usd: float | None = None
    enqueued_tokens: int | None = None


@dataclass(frozen=True)
class Pricing:
    """The job's own price for its model: US dollars per 1M tokens at Batch API prices."""

    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class ProviderConfig:
    """`name`: the batch service (only `openai`); `base_url`: None means OPENAI_BASE_URL,
    then the OpenAI default (resolved by the provider, not here)."""

    name: str = "openai"
    base_url: str | None = None


@dataclass(frozen=True)
class JobConfig:
    """A whole job config, validated. `params` is read-only at the top level (its nested
    values are plain dicts and lists: do not mutate them). `source` is the absolute path of
    the file it was loaded from. Equality compares every field, `source` included; the
    object is not hashable (params is a mapping)."""

    model: str
    endpoint: str
    input: InputConfig
    prompt: PromptConfig
    params: Mapping[str, Any]
    output: OutputConfig
    limits: Limits
    provider: ProviderConfig
    source: Path
    pricing: Pricing | None = None  # None: the shipped price table (batchpipe.pricing)


# --------------------------------------------------------------------------------------
# Loading


def load_config(path: Path | str) -> JobConfig:
    """Read and validate the job config at `path`; raises ConfigError listing every problem."""
    path = Path(path)
    name = str(path)
    text = _read_text(path, name)
    root, data = _parse_yaml(text, name)
    checker = _Checker(name, _Locator(root), path)
    checker.problems.extend(_duplicate_keys(root))
    cfg = checker.job(data)
    checker.raise_if_any()
    assert cfg is not None  # no problems means every part was built
    return cfg


def _read_text(path: Path, name: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{name}: config file not found", hint=f"check the path (looked for {path.absolute()})"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file", hint="give the path of a .yaml file") from None
    except PermissionError:
        raise ConfigError(f"{name}: permission denied", hint="make the config file readable") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{name} line {line}: the config file is not valid UTF-8", hint="save the file as UTF-8"
        ) from None


# The most values YAML aliases may add to a config, all aliases of the file together. A config
# of a few hundred values is normal; a file whose aliases list aliases (a "billion laughs")
# expands to billions and would take every byte of memory while the config is checked.
MAX_ALIAS_VALUES = 10_000


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts, while it composes, how many values each alias stands for.

    An alias is composed as a second reference to its anchor's node, so nothing grows while
    parsing; it is everything afterwards (checking, copying, writing every request) that
    expands it. Counting here stops a bomb before any of that, with the line of the alias.
    """

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self._name = name
        self._values: dict[int, int] = {}  # id(node) -> values in it, every alias inside expanded
        self._open: set[str] = set()  # anchors whose node is being composed
        self._aliased = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1
            if event.anchor in self._open:
                raise ConfigError(
                    f"{self._name} line {line}: alias *{event.anchor} refers to itself (it is used inside "
                    f"the value &{event.anchor} names), which JSON cannot carry",
                    hint="write the value out instead of the alias",
                )
            node = super().compose_node(parent, index)
            self._aliased += self._values.get(id(node), 1)
            if self._aliased > MAX_ALIAS_VALUES:
                raise ConfigError(
                    f"{self._name} line {line}: YAML aliases here expand to more than {MAX_ALIAS_VALUES:,} values "
                    "(all aliases of the file together)",
                    hint="write the values out, or use fewer aliases; aliases that repeat aliases multiply "
                    "(a 'billion laughs' file) and would take all the memory of the machine",
                )
            return node
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        self._open.discard(anchor)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self._values[id(node)] = 1 + sum(self._values.get(id(child), 1) for child in children)
        return node


def _parse_yaml(text: str, name: str) -> tuple[yaml.Node, Any]:
    """Compose the node tree (for line numbers) and construct the data with the safe loader.

    This is exactly what yaml.safe_load does, done in two visible steps so that the node
    tree is kept: SafeLoader only builds plain data (no Python objects, no code). Aliases
    are counted as they are composed (_BoundedLoader).
    """
    loader = _BoundedLoader(text, name)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(
                f"{name} line 1: the config file is empty",
                hint="write at least model:, input: path and prompt: user (see the README)",
            )
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        where = f" at column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(
            f"{name}{line}: not valid YAML: {problem}{where}",
            hint="check the indentation and quoting on that line (or the one before); quote text that "
            "contains ': ' or starts with '{', '[', '*', '&', '!', '%', '@' or '`'",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return root, data


@dataclass(frozen=True)
class _Problem:
    line: int
    text: str
    hint: str | None = None


class _Locator:
    """Maps a field path (tuple of keys) to its key and value nodes in the YAML tree."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root
        self.nodes: dict[tuple[Any, ...], tuple[yaml.Node, yaml.Node]] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._walk(root, (), depth=0)

    def _walk(self, node: yaml.Node, path: tuple[Any, ...], depth: int) -> None:
        if depth > 50:  # recursive aliases (`&a [*a]`) would never end
            return
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = _scalar_key(self._constructor, key_node)
                self.nodes[(*path, key)] = (key_node, value_node)
                self._walk(value_node, (*path, key), depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.nodes[(*path, i)] = (item, item)
                self._walk(item, (*path, i), depth + 1)

    def line(self, path: tuple[Any, ...]) -> int:
        """The line of the key at `path`, else of its nearest existing parent."""
        while path:
            if path in self.nodes:
                return self.nodes[path][0].start_mark.line + 1
            path = path[:-1]
        return self.root.start_mark.line + 1

    def value_node(self, path: tuple[Any, ...]) -> yaml.Node | None:
        found = self.nodes.get(path)
        return found[1] if found else None


def _scalar_key(constructor: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> Any:
    """The Python value SafeLoader gives a scalar key (`yes` is True, `1` is 1)."""
    try:
        return constructor.construct_object(node)
    except yaml.YAMLError:
        return node.value


def _duplicate_keys(root: yaml.Node) -> list[_Problem]:
    """The same key twice in one mapping: YAML keeps the last silently; we refuse it."""
    problems: list[_Problem] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    ident = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if ident in first:
                        problems.append(
                            _Problem(
                                line,
                                f"key '{key_node.value}' appears twice in the same mapping (first on line "
                                f"{first[ident]})",
                                "keep one of them; YAML would silently use the last",
                            )
                        )
                    else:
                        first[ident] = line
                walk(value_node)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(root)
    return problems


def _show(value: Any) -> str:
    """A value as the user wrote it, for 'got ...' in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, datetime):
        return f"the date-time {value.isoformat()}"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return str(value)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


class _Checker:
    """Validates the constructed data section by section, collecting every problem."""

    def __init__(self, name: str, locator: _Locator, path: Path) -> None:
        self.name = name
        self.loc = locator
        self.path = path
        self.problems: list[_Problem] = []
        # Fields an unknown key was taken for ("did you mean 'prompt'?"): their "is required"
        # would repeat the same problem, so it is left out.
        self.suggested: set[str] = set()

    # -- reporting ----------------------------------------------------------------------

    def add(self, path: tuple[Any, ...], text: str, hint: str | None = None, line: int | None = None) -> None:
        self.problems.append(_Problem(line if line is not None else self.loc.line(path), text, hint))

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        problems = sorted(dict.fromkeys(self.problems), key=lambda p: p.line)  # stable: keeps order within a line
        if len(problems) == 1:
            (p,) = problems
            raise ConfigError(f"{self.name} line {p.line}: {p.text}", hint=p.hint)
        lines = [f"{self.name} has {len(problems)} problems:"]
        lines += [f"  {self.name} line {p.line}: {p.text}" for p in problems]
        hints = [f"line {p.line}: {p.hint}" for p in problems if p.hint]
        raise ConfigError("\n".join(lines), hint="\n".join(hints) or None)

    # -- generic field readers ----------------------------------------------------------

    def unknown_keys(self, data: Mapping[Any, Any], path: tuple[Any, ...], valid: tuple[str, ...]) -> None:
        for key in data:
            if key in valid:
                continue
            where = f"{_dotted(path)}." if path else ""
            self.add((*path, key), f"unknown key '{where}{key}'{self._suggest(key, path, valid)}")

    def _suggest(self, key: Any, path: tuple[Any, ...], valid: tuple[str, ...]) -> str:
        text = str(key)
        close = difflib.get_close_matches(text, valid, n=1, cutoff=0.6)
        if close:
            self.suggested.add(_dotted((*path, close[0])))
            return f" — did you mean '{close[0]}'?"
        if not path:
            # A section's field written at the top level (`user:` for `prompt.user`).
            for section, keys in _SECTION_KEYS.items():
                if text in keys:
                    return f" — did you mean '{section}.{text}' (under '{section}:')?"
            if text in _COMMON_PARAMS:
                return f" — request parameters go under 'params:' (params.{text})"
            for section, keys in _SECTION_KEYS.items():
                close = difflib.get_close_matches(text, keys, n=1, cutoff=0.75)
                if close:
                    return f" — did you mean '{section}.{close[0]}'?"
        return f" (valid keys: {', '.join(valid)})"

    def section(self, data: Mapping[Any, Any], key: str, *, required: bool, example: str) -> dict[Any, Any] | None:
        """A nested mapping; None when absent/null (and a problem if required) or not a mapping."""
        value = data.get(key)
        if value is None:
            if required and key not in self.suggested:
                self.add((key,) if key in data else (), f"'{key}' is required", hint=f"add it, for example:\n{example}")
            return None if required else {}
        if not isinstance(value, dict):
            hint = f"write it as a mapping, for example:\n{example}"
            self.add((key,), f"'{key}' must be a mapping of keys (got {_show(value)})", hint=hint)
            return None
        self.unknown_keys(value, (key,), _SECTION_KEYS[key])
        return value

    def text(
        self,
        data: Mapping[Any, Any],
        path: tuple[str, ...],
        *,
        required: bool = False,
        what: str = "text",
        hint: str | None = None,
    ) -> str | None:
        """A string field. Absent or null: None (a problem if required). Blank: a problem."""
        field_name = _dotted(path)
        value = data.get(path[-1])
        if value is None:
            if required and field_name not in self.suggested:
                self.add(path, f"{field_name} is required", hint=hint)
            return None
        if not isinstance(value, str):
            node = self.loc.value_node(path)
            extra = None
            if isinstance(node, yaml.MappingNode) and node.flow_style:
                extra = (
                    f"YAML reads a value that starts with '{{' as a mapping: quote it, as in "
                    f"{path[-1]}: \"{{text}} ...\""
                )
            elif isinstance(node, yaml.ScalarNode):
                extra = f"put the value in quotes: {path[-1]}: \"{node.value}\""
            self.add(path, f"{field_name} must be {what} (got {_show(value)})", hint=extra or hint)
            return None
        if not value.strip():
            self.add(path, f"{field_name} is empty", hint=hint)
            return None
        return value

    def integer(self, data: Mapping[Any, Any], path: tuple[str, ...], default: int, lo: int, hi: int | None) -> int:
        value = data.get(path[-1])
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value and (hi is None or value <= hi):
            return value
        rule = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        self.add(
            path,
            f"{_dotted(path)} must be a whole number {rule} (got {_show(value)})",
            hint=f"for example: {path[-1]}: {default}",
        )
        return default

    def number(
        self, data: Mapping[Any, Any], path: tuple[str, ...], *, minimum: float, inclusive: bool, example: str,
        meaning: str,
    ) -> float | None:
        """An optional number (whole or decimal), as a float. Absent or null: None. Wrong: a problem, None."""
        value = data.get(path[-1])
        if value is None:
            return None
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = None
        if number is not None and math.isfinite(number) and (number >= minimum if inclusive else number > minimum):
            return number
        rule = f"of at least {minimum:g}" if inclusive else f"greater than {minimum:g}"
        hint = f"for example: {path[-1]}: {example} ({meaning})"
        if isinstance(value, str) and value.strip().startswith("$"):
            hint = f"write the number without the $ sign, for example: {path[-1]}: {example} ({meaning})"
        self.add(path, f"{_dotted(path)} must be a number {rule} (got {_show(value)})", hint=hint)
        return None

    def whole_or_none(
        self, data: Mapping[Any, Any], path: tuple[str, ...], lo: int, *, example: str, meaning: str
    ) -> int | None:
        """An optional whole number of at least `lo`. Absent or null: None. Wrong: a problem, None."""
        value = data.get(path[-1])
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= lo:
            return value
        self.add(
            path,
            f"{_dotted(path)} must be a whole number of at least {lo} (got {_show(value)})",
            hint=f"for example: {path[-1]}: {example} ({meaning})",
        )
        return None

    # -- sections -----------------------------------------------------------------------

    def job(self, data: Any) -> JobConfig | None:
        if data is None:  # a lone `---` or `~`
            raise ConfigError(
                f"{self.name} line 1: the config file is empty",
                hint="write at least model:, input: path and prompt: user (see the README)",
            )
        if not isinstance(data, dict):
            raise ConfigError(
                f"{self.name} line {self.loc.line(())}: the top level must be a mapping of keys such as "
                f"model:, input: and prompt: (got {_show(data)})",
                hint="see the README for a complete example config",
            )
        self.unknown_keys(data, (), _TOP_KEYS)
        model = self.text(data, ("model",), required=True, hint="add, for example: model: gpt-4o-mini")
        endpoint = self.endpoint(data)
        input_cfg = self.input(data)
        prompt = self.prompt(data, endpoint)
        params = self.params(data)
        output = self.output(data)
        limits = self.limits(data)
        pricing = self.pricing(data)
        provider = self.provider(data)
        if self.problems:
            return None
        assert model is not None and endpoint is not None and input_cfg is not None and prompt is not None
        return JobConfig(
            model=model,
            endpoint=endpoint,
            input=input_cfg,
            prompt=prompt,
            params=MappingProxyType(params),
            output=output,
            limits=limits,
            provider=provider,
            source=Path(os.path.abspath(self.path)),
            pricing=pricing,
        )

    def endpoint(self, data: Mapping[Any, Any]) -> str | None:
        if data.get("endpoint") is None:
            return DEFAULT_ENDPOINT
        value = self.text(data, ("endpoint",))
        if value is None:
            return None
        if value in ENDPOINTS:
            return value
        listing = ", ".join(ENDPOINTS)
        if value in _UNSUPPORTED_ENDPOINTS:
            self.add(("endpoint",), f"endpoint '{value}' is not supported by batchpipe yet (use one of {listing})")
            return None
        guess = "/v1/" + value.strip().lstrip("/").removeprefix("v1/")
        close = [guess] if guess in ENDPOINTS else difflib.get_close_matches(value, ENDPOINTS, n=1, cutoff=0.6)
        suggestion = f" — did you mean '{close[0]}'?" if close else ""
        self.add(("endpoint",), f"endpoint must be one of {listing} (got {_show(value)}){suggestion}")
        return None

    def input(self, data: Mapping[Any, Any]) -> InputConfig | None:
        sec = self.section(data, "input", required=True, example="input:\n  path: rows.jsonl")
        if sec is None:
            if isinstance(data.get("input"), str):
                # `input: rows.jsonl`: say exactly what to write instead.
                self.problems[-1] = _Problem(
                    self.problems[-1].line,
                    self.problems[-1].text,
                    f"write it as:\ninput:\n  path: {data['input']}",
                )
            return None
        raw_path = self.text(
            sec, ("input", "path"), required=True, hint="add the dataset file, for example: path: rows.jsonl"
        )
        fmt = self.input_format(sec, raw_path)
        id_field = self.text(sec, ("input", "id"), hint="name the field that holds each row's id, or remove input.id")
        if id_field is not None:
            try:
                check_field(id_field)
            except TemplateSyntaxError as exc:
                self.add(("input", "id"), f"input.id is not a valid field path: {exc.message}")
                id_field = None
        resolved = self.input_path(raw_path) if raw_path is not None else None
        if resolved is None or fmt is None or (sec.get("id") is not None and id_field is None):
            return None
        return InputConfig(path=resolved, format=fmt, id=id_field)

    def input_format(self, sec: Mapping[Any, Any], raw_path: str | None) -> str | None:
        if sec.get("format") is None:
            if raw_path is None:
                return None
            suffix = Path(raw_path).suffix.lower()
            if suffix in _SUFFIX_FORMATS:
                return _SUFFIX_FORMATS[suffix]
            self.add(
                ("input", "path"),
                f"input.format is not set and the suffix of '{raw_path}' does not tell it "
                "(.jsonl, .ndjson and .csv do)",
                hint="add input.format: jsonl or input.format: csv",
            )
            return None
        value = self.text(sec, ("input", "format"), hint="use jsonl or csv")
        if value is None:
            return None
        if value in INPUT_FORMATS:
            return value
        close = difflib.get_close_matches(value.lower(), INPUT_FORMATS, n=1, cutoff=0.6)
        suggestion = f" — did you mean '{close[0]}'?" if close else ""
        self.add(("input", "format"), f"input.format must be jsonl or csv (got {_show(value)}){suggestion}")
        return None

    def input_path(self, raw: str) -> Path | None:
        base = Path(os.path.abspath(self.path)).parent
        candidate = Path(os.path.expanduser(raw))
        resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
        relative_note = (
            "" if candidate.is_absolute() else f" (a relative path is read from the config's directory, {base})"
        )
        if not resolved.exists():
            self.add(
                ("input", "path"),
                f"input.path: file not found: {resolved}{relative_note}",
                hint="check the file name; relative paths start at the config file's directory, not the current one",
            )
            return None
        if not resolved.is_file():
            self.add(
                ("input", "path"), f"input.path is not a file: {resolved}", hint="point it at a .jsonl or .csv file"
            )
            return None
        return resolved

    def prompt(self, data: Mapping[Any, Any], endpoint: str | None) -> PromptConfig | None:
        sec = self.section(data, "prompt", required=True, example='prompt:\n  user: "Summarise: {text}"')
        if sec is None:
            return None
        ok = True
        system = None
        if sec.get("system") is not None:
            system = self.text(sec, ("prompt", "system"), hint="remove prompt.system, or write the system message")
            ok = system is not None
            if system is not None and endpoint in NO_SYSTEM_ENDPOINTS:
                self.add(
                    ("prompt", "system"),
                    f"prompt.system cannot be used with endpoint {endpoint}: it has no system message",
                    hint="remove prompt.system, or move its text into prompt.user",
                )
                ok = False
        user = self.text(
            sec, ("prompt", "user"), required=True, hint='add the user message template, e.g. user: "Summarise: {text}"'
        )
        for key, template in (("system", system), ("user", user)):
            if template is not None and not self.template(("prompt", key), template):
                ok = False
        if not ok or user is None:
            return None
        return PromptConfig(system=system, user=user)

    def template(self, path: tuple[str, ...], text: str) -> bool:
        try:
            compile_template(text)
        except TemplateSyntaxError as exc:
            line = self.loc.line(path)
            before = text[: max(exc.column - 1, 0)]
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
                f"{_dotted(path)} has a template error at {where}: {exc.message}",
                hint="placeholders look like {field} or {a.b}; write {{ and }} for literal braces",
                line=line,
            )
            return False
        return True

    def params(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        value = data.get("params")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(
                ("params",),
                f"'params' must be a mapping of request fields (got {_show(value)})",
                hint="for example:\nparams:\n  temperature: 0\n  max_tokens: 20",
            )
            return {}
        for key, item in value.items():
            path = ("params", key)
            if not isinstance(key, str):
                self.add(path, f"params key {_show(key)} must be text", hint=f'quote it: "{_show(key)}": ...')
            elif key in RESERVED_PARAMS:
                self.add(path, f"params.{key} cannot be set: {RESERVED_PARAMS[key]}", hint=f"remove params.{key}")
            else:
                self.json_value(path, item)
        return copy.deepcopy(value)

    def json_value(self, path: tuple[Any, ...], value: Any) -> None:
        """Only JSON data can go into a request body."""
        if value is None or isinstance(value, (str, bool)):
            return
        if isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                self.add(path, f"{_dotted(path)} is too large a number for JSON (got {value})")
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                self.add(path, f"{_dotted(path)} must be a finite number (got {value})")
            return
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.add((*path, key), f"{_dotted(path)} has a key that is not text ({_show(key)})",
                             hint=f'quote the key: "{_show(key)}"')  # fmt: skip
                else:
                    self.json_value((*path, key), item)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                self.json_value((*path, i), item)
            return
        self.add(
            path,
            f"{_dotted(path)} is {_show(value)} to YAML, which JSON cannot carry",
            hint="put the value in quotes to send it as text",
        )

    def output(self, data: Mapping[Any, Any]) -> OutputConfig:
        sec = self.section(data, "output", required=False, example="output:\n  key: response")
        if not sec:
            return OutputConfig()
        key = None
        if sec.get("key") is not None:
            key = self.text(sec, ("output", "key"), hint="name the key results are written under, e.g. key: response")
        return OutputConfig(key=key or OutputConfig.key, truncated=self.truncated(sec))

    def truncated(self, sec: Mapping[Any, Any]) -> str:
        path = ("output", "truncated")
        if sec.get("truncated") is None:
            return OutputConfig.truncated
        value = sec["truncated"]
        if value in TRUNCATED_POLICIES:
            return value
        hint = "keep writes a truncated answer as it is; fail makes its row failed (error code truncated)"
        close = [] if isinstance(value, bool) else difflib.get_close_matches(str(value).lower(), TRUNCATED_POLICIES)
        suggestion = f" — did you mean '{close[0]}'?" if close else ""
        if isinstance(value, bool):
            suggestion = " — YAML reads yes/no/true/false as a boolean: write keep or fail"
        self.add(path, f"output.truncated must be keep or fail (got {_show(value)}){suggestion}", hint=hint)
        return OutputConfig.truncated

    def limits(self, data: Mapping[Any, Any]) -> Limits:
        sec = self.section(data, "limits", required=False, example="limits:\n  max_requests_per_shard: 50000")
        if not sec:
            return Limits()
        return Limits(
            max_requests_per_shard=self.integer(
                sec, ("limits", "max_requests_per_shard"), MAX_REQUESTS_PER_SHARD, 1, MAX_REQUESTS_PER_SHARD
            ),
            max_bytes_per_shard=self.integer(
                sec, ("limits", "max_bytes_per_shard"), MAX_BYTES_PER_SHARD, 1, MAX_BYTES_PER_SHARD
            ),
            max_attempts=self.integer(sec, ("limits", "max_attempts"), 3, 1, None),
            budget_usd=self.number(
                sec, ("limits", "budget_usd"), minimum=0, inclusive=False, example="25",
                meaning="US dollars; remove it for no budget",
            ),
            enqueued_tokens=self.whole_or_none(
                sec, ("limits", "enqueued_tokens"), 1, example="2000000", meaning="remove it for no limit"
            ),
        )

    def pricing(self, data: Mapping[Any, Any]) -> Pricing | None:
        if data.get("pricing") is None:
            return None
        sec = self.section(data, "pricing", required=False, example=_PRICING_EXAMPLE)
        if sec is None:  # not a mapping (reported)
            return None
        values: dict[str, float | None] = {}
        for key in _SECTION_KEYS["pricing"]:
            path = ("pricing", key)
            if sec.get(key) is None:
                self.add(
                    path,
                    f"pricing.{key} is required when pricing: is given",
                    hint=f"give both prices, in US dollars per 1M tokens at Batch API prices:\n{_PRICING_EXAMPLE}\n"
                    "(embeddings have no output price: write output_per_million: 0)",
                )
                values[key] = None
                continue
            values[key] = self.number(
                sec, path, minimum=0, inclusive=True, example="0.075" if key.startswith("input") else "0.30",
                meaning="US dollars per 1M tokens",
            )
        inp, outp = values["input_per_million"], values["output_per_million"]
        if inp is None or outp is None:
            return None
        return Pricing(input_per_million=inp, output_per_million=outp)

    def provider(self, data: Mapping[Any, Any]) -> ProviderConfig:
        sec = self.section(data, "provider", required=False, example="provider:\n  name: openai")
        if not sec:
            return ProviderConfig()
        name = "openai"
        if sec.get("name") is not None:
            value = self.text(sec, ("provider", "name"))
            if value is not None and value != "openai":
                self.add(
                    ("provider", "name"),
                    f"provider.name must be 'openai', the only provider so far (got {_show(value)})",
                    hint="for another OpenAI-compatible service, keep name: openai and set provider.base_url",
                )
        base_url = None
        if sec.get("base_url") is not None:
            base_url = self.text(sec, ("provider", "base_url"))
            if base_url is not None:
                base_url = self.base_url(base_url)
        return ProviderConfig(name=name, base_url=base_url)

    def base_url(self, value: str) -> str | None:
        path = ("provider", "base_url")
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(
                path,
                f"provider.base_url must be an http:// or https:// URL (got {_show(value)})",
                hint="for example: base_url: http://127.0.0.1:8080/v1",
            )
            return None
        if parts.username is not None or parts.password is not None:
            self.add(
                path,
                "provider.base_url must not contain a user name or password (the config is copied into the "
                "run directory)",
                hint="remove them from the URL; the API key is read from OPENAI_API_KEY",
            )
            return None
        return value


# --------------------------------------------------------------------------------------
# Writing back


def config_to_dict(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as plain data (input.path absolute, as text); no `source`.

    Keys come in the order of the documented format, so the output is stable.
    """
    return {
        "model": cfg.model,
        "endpoint": cfg.endpoint,
        "input": {"path": str(cfg.input.path), "format": cfg.input.format, "id": cfg.input.id},
        "prompt": {"system": cfg.prompt.system, "user": cfg.prompt.user},
        "params": copy.deepcopy(dict(cfg.params)),
        # `truncated` only when it is not the default: a config that does not use it keeps the
        # snapshot (and so the config hash and the default run id) it had before the field existed.
        "output": {"key": cfg.output.key}
        | ({"truncated": cfg.output.truncated} if cfg.output.truncated != OutputConfig.truncated else {}),
        "limits": {
            "max_requests_per_shard": cfg.limits.max_requests_per_shard,
            "max_bytes_per_shard": cfg.limits.max_bytes_per_shard,
            "max_attempts": cfg.limits.max_attempts,
            "budget_usd": cfg.limits.budget_usd,
            "enqueued_tokens": cfg.limits.enqueued_tokens,
        },
        "pricing": (
            {"input_per_million": cfg.pricing.input_per_million, "output_per_million": cfg.pricing.output_per_million}
            if cfg.pricing is not None
            else None
        ),
        "provider": {"name": cfg.provider.name, "base_url": cfg.provider.base_url},
    }


class _SnapshotDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line text as literal blocks and never emits aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # The emitter falls back to a quoted style by itself when a literal block cannot hold
    # the text exactly (trailing spaces, special characters), so this never loses data.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_SnapshotDumper.add_representer(str, _represent_str)

_SNAPSHOT_HEADER = (
    "# batchpipe job config, resolved (defaults filled in, input.path absolute).\n"
    "# This copy is what every step of the run reads; edit the original config instead.\n"
)


def snapshot_yaml(cfg: JobConfig) -> str:
    """YAML text of config_to_dict(cfg): safe types only, stable key order.

    load_config on this text (written anywhere) gives a config equal to `cfg` except
    `source`.
    """
    body = yaml.dump(
        config_to_dict(cfg),
        Dumper=_SnapshotDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100_000,
    )
    return _SNAPSHOT_HEADER + body
