"""Job config: one YAML file per job, read into frozen dataclasses.

The file's format is declared once, as typed models in batchpipe.config.models: validation,
defaults, the JSON Schema (`batchpipe schema`) and the README's field reference (checked by
tests/test_config_schema.py) come from them. Every problem found in a config is reported with
the file, the line and the field, all problems together in one ConfigError (exit code 2), so a
user fixes them in one pass before anything is paid for. Nothing here touches the network or
prints.

The rest of batchpipe reads the frozen dataclasses below (JobConfig and its parts), built from
the validated model; `snapshot_yaml` writes the resolved config into a run directory, byte for
byte as it always has (the config hash, and so the default run id, depends on it).

Adding a field: declare it in models.py (type, bounds, default, description), carry it into
its dataclass here, write it in config_to_dict only when it is not the default (so existing
configs keep their snapshot and run id, as `output.truncated` does), and add it to the README's
Job config block (tests/test_config_schema.py fails until it is there).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from batchpipe.config.models import (
    DEFAULT_ENDPOINT,
    ENDPOINTS,
    INPUT_FORMATS,
    MAX_BYTES_PER_SHARD,
    MAX_REQUESTS_PER_SHARD,
    NO_SYSTEM_ENDPOINTS,
    RESERVED_PARAMS,
    TRUNCATED_POLICIES,
    JobFile,
    asks_for_json,
)
from batchpipe.config.problems import Translator
from batchpipe.config.yamlfile import (
    MAX_ALIAS_VALUES,
    Locator,
    duplicate_keys,
    parse_yaml,
    raise_problems,
    read_text,
    show,
)
from batchpipe.errors import ConfigError

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINTS",
    "INPUT_FORMATS",
    "MAX_ALIAS_VALUES",
    "MAX_BYTES_PER_SHARD",
    "MAX_REQUESTS_PER_SHARD",
    "NO_SYSTEM_ENDPOINTS",
    "RESERVED_PARAMS",
    "TRUNCATED_POLICIES",
    "InputConfig",
    "ValidateConfig",
    "JobConfig",
    "Limits",
    "OutputConfig",
    "Pricing",
    "PromptConfig",
    "ProviderConfig",
    "SyncConfig",
    "config_to_dict",
    "json_schema",
    "load_config",
    "snapshot_yaml",
]


@dataclass(frozen=True)
class InputConfig:
    """Where the rows come from. `path` is absolute and resolved; `format` is `jsonl` or
    `csv`; `id` is the field (or dotted path) holding each row's id, or None to number rows."""

    path: Path | None  # None: a generation job (`count`)
    format: str
    id: str | None = None
    count: int | None = None  # a generation job: rows {"index": 0..count-1}, no file
    records: str | None = None  # dotted path to a list of records in each line: one request per record
    record_id: str | None = None  # field of a record naming it in its custom_id (None: its position)


@dataclass(frozen=True)
class PromptConfig:
    """The prompt templates (see batchpipe.pipeline.template for the syntax)."""

    system: str | None
    user: str


@dataclass(frozen=True)
class ValidateConfig:
    """`output.validate`: the checks every answer must pass (None / False: not asked for).
    `json_schema` is always the schema itself (a file named in the config is read at load)."""

    json: bool = False
    json_schema: Mapping[str, Any] | None = None
    regex: str | None = None
    choices: tuple[Any, ...] | None = None
    function: str | None = None  # module:function


@dataclass(frozen=True)
class OutputConfig:
    """`key`: the key under which each row's result is written in the merged output;
    `truncated`: `keep` or `fail` an answer cut at the output limit (see `output.truncated`);
    `parse`: `text`, `json` or a `module:function` hook, how an answer becomes the value under `key`;
    `fields`, `meta`, `validate`, `on_invalid`, `fallback`: see the models' descriptions.
    `fallback` is a `module:function` hook, `{"copy": FIELD}`, or None."""

    key: str = "response"
    truncated: str = "keep"
    parse: str = "text"  # resolved at load: `json` when params ask for JSON and it was not set
    fields: tuple[str, ...] = ()
    meta: bool = False
    validate: ValidateConfig | None = None
    on_invalid: str = "retry"
    fallback: str | Mapping[str, str] | None = None
    explode: bool | str = False  # True, or the field of an object answer holding the list


@dataclass(frozen=True)
class Limits:
    """Shard sizes, the retry budget, the cost budget and the enqueued-token limit (see the
    module docstring for the ranges). None means "no limit"."""

    max_requests_per_shard: int = MAX_REQUESTS_PER_SHARD
    max_bytes_per_shard: int = MAX_BYTES_PER_SHARD
    max_attempts: int = 3
    budget_usd: float | None = None
    enqueued_tokens: int | None = None
    target: int | None = None  # stop once this many valid records exist


@dataclass(frozen=True)
class SyncConfig:
    """Sync mode's concurrency and client-side limits (None: no limit of batchpipe's own)."""

    max_workers: int = 8
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


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
    mode: str = "batch"  # batch | sync: the Batch API, or the regular endpoint (ops/sync.py)
    sync: SyncConfig = SyncConfig()
    # Where `module:function` hooks are imported from: `hooks_dir` as written, else (when the config
    # names a hook) the config file's directory; None: neither. See hook_directory().
    hooks_dir: Path | None = None

    def hook_directory(self) -> Path:
        """The directory the job's hooks are imported from."""
        return self.hooks_dir or self.source.parent


# --------------------------------------------------------------------------------------
# Loading


def load_config(path: Path | str, *, check_hooks: bool = False) -> JobConfig:
    """Read and validate the job config at `path`; raises ConfigError listing every problem.

    `check_hooks`: also import every `module:function` hook it names (create does; a run's
    snapshot is read without importing them, so a finished run's status needs no hook code)."""
    path = Path(path)
    name = str(path)
    root, data = parse_yaml(read_text(path, name), name)
    locator = Locator(root)
    if data is None:  # a lone `---` or `~`
        raise ConfigError(
            f"{name} line 1: the config file is empty",
            hint="write at least model:, input: path and prompt: user (see the README)",
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name} line {locator.line(())}: the top level must be a mapping of keys such as "
            f"model:, input: and prompt: (got {show(data)})",
            hint="see the README for a complete example config",
        )
    problems = duplicate_keys(root)
    try:
        job = JobFile.model_validate(data, context={"config_file": path, "check_hooks": check_hooks})
    except ValidationError as exc:
        problems += Translator(locator, data).translate(exc.errors())
        job = None
    raise_problems(name, problems)
    assert job is not None  # no problems means it validated
    return _job_config(job, Path(os.path.abspath(path)))


def _job_config(job: JobFile, source: Path) -> JobConfig:
    """The frozen view the rest of batchpipe reads, from the validated file."""
    return JobConfig(
        model=job.model,
        endpoint=job.endpoint,
        input=InputConfig(
            path=Path(job.input.path) if job.input.path is not None else None,
            format=job.input.format or "",
            # a generation job's rows are named by their index (0-based, as `{index}` shows it)
            id=job.input.id if job.input.count is None or job.input.id is not None else "index",
            count=job.input.count,
            records=job.input.records,
            record_id=job.input.record_id,
        ),
        prompt=PromptConfig(system=job.prompt.system, user=job.prompt.user),
        params=MappingProxyType(copy.deepcopy(job.params)),
        output=_output_config(job),
        limits=Limits(**job.limits.model_dump()),
        provider=ProviderConfig(**job.provider.model_dump()),
        source=source,
        pricing=Pricing(**job.pricing.model_dump()) if job.pricing is not None else None,
        hooks_dir=Path(job.hooks_dir) if job.hooks_dir else source.parent if job.output.hooks() else None,
        mode=job.mode,
        sync=SyncConfig(**job.sync.model_dump()),
    )


def _output_config(job: JobFile) -> OutputConfig:
    out = job.output
    check = out.validate
    fallback = out.fallback if isinstance(out.fallback, str) or out.fallback is None else {"copy": out.fallback.copy}
    return OutputConfig(
        key=out.key,
        truncated=out.truncated,
        parse=out.parse or "text",
        fields=tuple(out.fields or ()),
        meta=out.meta,
        validate=None if check is None else ValidateConfig(
            json=check.json, json_schema=check.json_schema, regex=check.regex,
            choices=tuple(check.choices) if check.choices is not None else None, function=check.function,
        ),
        on_invalid=out.on_invalid,
        fallback=fallback,
        explode=out.explode,
    )  # fmt: skip


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a job config file (draft 2020-12), for editors and other tools."""
    schema = JobFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def json_schema_text() -> str:
    """json_schema() as the text `batchpipe schema` prints."""
    return json.dumps(json_schema(), indent=2) + "\n"


# --------------------------------------------------------------------------------------
# Writing back


def config_to_dict(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as plain data (input.path absolute, as text); no `source`.

    Keys come in the order of the documented format, so the output is stable.
    """
    return {
        "model": cfg.model,
        "endpoint": cfg.endpoint,
        "input": _input_dict(cfg),
        "prompt": {"system": cfg.prompt.system, "user": cfg.prompt.user},
        "params": copy.deepcopy(dict(cfg.params)),
        # `truncated` only when it is not the default: a config that does not use it keeps the
        # snapshot (and so the config hash and the default run id) it had before the field existed.
        "output": {"key": cfg.output.key}
        | ({"truncated": cfg.output.truncated} if cfg.output.truncated != OutputConfig.truncated else {})
        | ({"parse": cfg.output.parse} if cfg.output.parse != _default_parse(cfg) else {})
        | ({"explode": cfg.output.explode} if cfg.output.explode is not False else {})
        | _answer_fields(cfg.output),
        "limits": {
            "max_requests_per_shard": cfg.limits.max_requests_per_shard,
            "max_bytes_per_shard": cfg.limits.max_bytes_per_shard,
            "max_attempts": cfg.limits.max_attempts,
            "budget_usd": cfg.limits.budget_usd,
            "enqueued_tokens": cfg.limits.enqueued_tokens,
        }
        | ({"target": cfg.limits.target} if cfg.limits.target is not None else {}),
        "pricing": (
            {"input_per_million": cfg.pricing.input_per_million, "output_per_million": cfg.pricing.output_per_million}
            if cfg.pricing is not None
            else None
        ),
        "provider": {"name": cfg.provider.name, "base_url": cfg.provider.base_url},
        # Only with hooks: the absolute directory they are imported from, so that every later step
        # of the run (which reads this snapshot from the run dir) finds the same code.
    } | ({"hooks_dir": str(cfg.hooks_dir)} if cfg.hooks_dir is not None else {}) | _sync_fields(cfg)


def _sync_fields(cfg: JobConfig) -> dict[str, Any]:
    """`mode` and `sync` only when not the defaults: a batch config keeps its snapshot and run id."""
    fields: dict[str, Any] = {}
    if cfg.mode != JobConfig.mode:
        fields["mode"] = cfg.mode
    if cfg.sync != SyncConfig():
        fields["sync"] = {"max_workers": cfg.sync.max_workers, "requests_per_minute": cfg.sync.requests_per_minute,
                          "tokens_per_minute": cfg.sync.tokens_per_minute}
    return fields


def _answer_fields(out: OutputConfig) -> dict[str, Any]:
    """The output fields about answers (fields, meta, validate, on_invalid, fallback), each only when
    set: a config that uses none of them keeps its snapshot (and its run id)."""
    written: dict[str, Any] = {}
    if out.fields:
        written["fields"] = list(out.fields)
    if out.meta:
        written["meta"] = True
    if out.validate is not None:
        check = out.validate
        written["validate"] = {
            k: v for k, v in (
                ("json", check.json or None),
                ("json_schema", copy.deepcopy(dict(check.json_schema)) if check.json_schema is not None else None),
                ("regex", check.regex),
                ("choices", list(check.choices) if check.choices is not None else None),
                ("function", check.function),
            ) if v is not None
        }  # fmt: skip
    if out.on_invalid != OutputConfig.on_invalid:
        written["on_invalid"] = out.on_invalid
    if out.fallback is not None:
        written["fallback"] = out.fallback if isinstance(out.fallback, str) else dict(out.fallback)
    return written


def _input_dict(cfg: JobConfig) -> dict[str, Any]:
    """input: as written before generation jobs and records existed, their fields only when set."""
    inp = cfg.input
    if inp.count is not None:
        return {"count": inp.count, "id": inp.id}
    out = {"path": str(inp.path), "format": inp.format, "id": inp.id}
    return out | {k: v for k, v in (("records", inp.records), ("record_id", inp.record_id)) if v is not None}


def _default_parse(cfg: JobConfig) -> str:
    """What `output.parse` resolves to when not written: written only when it differs."""
    return "json" if asks_for_json(cfg.params) else "text"


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
