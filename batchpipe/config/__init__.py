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
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

# The models (pydantic) are imported where a config is validated, not here: a run's own snapshot
# is read without them (snapshot_config), and `status` and `process` start faster for it (issue 9).
from batchpipe.config.constants import (
    DEFAULT_ENDPOINT,
    ENDPOINTS,
    INPUT_FORMATS,
    MAX_BYTES_PER_SHARD,
    MAX_REQUESTS_PER_SHARD,
    NO_SYSTEM_ENDPOINTS,
    RESERVED_PARAMS,
    TRUNCATED_POLICIES,
    asks_for_json,
)
from batchpipe.config.yamlfile import (
    MAX_ALIAS_VALUES,
    Locator,
    Problem,
    duplicate_keys,
    parse_yaml,
    raise_problems,
    read_text,
    show,
)
from batchpipe.errors import ConfigError
from batchpipe.pipeline.hooks import is_hook

if TYPE_CHECKING:
    from batchpipe.config.models import JobFile

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
    "StepConfig",
    "SyncConfig",
    "TurnConfig",
    "config_to_dict",
    "json_schema",
    "load_config",
    "snapshot_config",
    "snapshot_yaml",
    "step_config",
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
class TurnConfig:
    """One earlier exchange of a dialogue: the user's message (and images) and the assistant's answer, as templates."""

    user: str
    assistant: str
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptConfig:
    """The prompt templates (see batchpipe.pipeline.template for the syntax). `images`: templates
    of image URLs or local paths sent with the user message; `history`: earlier turns sent before it
    (a step's `history: true` is expanded here into the earlier steps' turns)."""

    system: str | None
    user: str
    images: tuple[str, ...] = ()
    history: tuple[TurnConfig, ...] = ()
    images_dir: Path | None = None  # where a relative local image path is read from; set when images are used


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
class StepConfig:
    """One step of a multi-step job, resolved: the top-level defaults are filled in."""

    name: str
    model: str
    endpoint: str
    prompt: PromptConfig
    params: Mapping[str, Any]
    output: OutputConfig


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
    # A multi-step job's steps (empty for a one-step job); model, endpoint, prompt, params and
    # output above are then those of the first step.
    steps: tuple[StepConfig, ...] = ()

    def hook_directory(self) -> Path:
        """The directory the job's hooks are imported from."""
        return self.hooks_dir or self.source.parent


# --------------------------------------------------------------------------------------
# Loading


def load_config(path: Path | str, *, check_hooks: bool = False) -> JobConfig:
    """Read and validate the job config at `path`; raises ConfigError listing every problem.

    `check_hooks`: also import every `module:function` hook it names (create does; a run's
    snapshot is read without importing them, so a finished run's status needs no hook code)."""
    from pydantic import ValidationError

    from batchpipe.config.models import JobFile
    from batchpipe.config.problems import Translator

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
    cfg = _job_config(job, Path(os.path.abspath(path)))
    if cfg.steps:  # a typo in step 3 must show before step 1 is paid for
        raise_problems(name, _unknown_placeholders(job, cfg, locator))
    return cfg


def _unknown_placeholders(job: JobFile, cfg: JobConfig, locator: Locator) -> list[Problem]:
    """Placeholders of a step that are neither a field of the input's first row nor an earlier
    step's answer. (Every row is checked by `create`; this names the config line at once.)"""
    from batchpipe.pipeline.inputs import display_path, iter_rows  # here: pipeline modules import this one
    from batchpipe.pipeline.template import compile_template

    try:
        first = next(iter_rows(cfg.input))
    except Exception:  # an unreadable or empty input is for create to report, with its line
        return []
    problems: list[Problem] = []
    known = set(first.data)
    for i, (step, written) in enumerate(zip(cfg.steps, job.steps or ())):
        where = ("steps", i, "prompt") if written.prompt.model_fields_set else ("prompt",)
        templates = [("system", step.prompt.system), ("user", step.prompt.user)]
        templates += [(f"images.{n}", t) for n, t in enumerate(step.prompt.images)]
        if written.prompt.history is not True and (written.prompt.history or (job.prompt and job.prompt.history)):
            templates += [(f"history.{n}.{part}", getattr(turn, part))
                          for n, turn in enumerate(step.prompt.history) for part in ("user", "assistant")]
        for field_name, text in templates:
            if text is None:
                continue
            for placeholder in compile_template(text).fields:
                if placeholder.split(".")[0] in known:
                    continue
                earlier = [s.output.key for s in cfg.steps[:i]]
                answers = f"nor the answer of an earlier step ({', '.join(earlier)})" if earlier else \
                    "and step 1 has no earlier answers to use"
                problems.append(Problem(
                    locator.line((*where, *(int(x) if x.isdigit() else x for x in field_name.split(".")))),
                    f"step {i + 1} ({step.name}): prompt.{field_name} uses {{{placeholder}}}, which is neither a field "
                    f"of the input ({display_path(cfg.input.path)} line {first.line_no} has "
                    f"{', '.join(sorted(first.data)) or 'no fields'}) {answers}",
                    "check the spelling; a step can use the input's fields and the output.key of the steps before it",
                ))  # fmt: skip
        key = step.output.key
        known |= {key, f"{key}_attempts", f"{key}_finish_reason"}
    return problems


def _prompt_config(prompt: Any, source: Path, history: tuple[TurnConfig, ...] = ()) -> PromptConfig:
    turns = history if prompt.history is True else tuple(
        TurnConfig(t.user, t.assistant, tuple(t.images or ())) for t in prompt.history or ()
    )
    images = tuple(prompt.images or ())
    # Resolved now, against the config's directory: a run's snapshot lives elsewhere.
    has_images = images or any(t.images for t in turns)
    images_dir = Path(prompt.images_dir) if prompt.images_dir else source.parent
    return PromptConfig(system=prompt.system, user=prompt.user, images=images, history=turns,
                        images_dir=images_dir if has_images else None)


def _steps(job: JobFile, source: Path) -> tuple[StepConfig, ...]:
    """Each step with the top-level defaults filled in, and `history: true` expanded into the
    earlier steps' turns: each one's user message (and images), then its answer."""
    from batchpipe.config.models import step_prompt

    steps: list[StepConfig] = []
    for step in job.steps or ():
        earlier = tuple(TurnConfig(s.prompt.user, "{" + s.output.key + "}", s.prompt.images) for s in steps)
        prompt = _prompt_config(step_prompt(job.prompt, step.prompt), source, earlier)
        output = job.output.model_copy(update={k: getattr(step.output, k) for k in step.output.model_fields_set})
        steps.append(StepConfig(
            name=step.name, model=step.model or job.model, endpoint=step.endpoint or job.endpoint, prompt=prompt,
            params=MappingProxyType(copy.deepcopy(job.params | (step.params or {}))), output=_output_config(output),
        ))  # fmt: skip
    return tuple(steps)


def _job_config(job: JobFile, source: Path) -> JobConfig:
    """The frozen view the rest of batchpipe reads, from the validated file."""
    steps = _steps(job, source)
    first = steps[0] if steps else None
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
        prompt=first.prompt if first else _prompt_config(job.prompt, source),
        params=first.params if first else MappingProxyType(copy.deepcopy(job.params)),
        output=first.output if first else _output_config(job.output),
        limits=Limits(**job.limits.model_dump()),
        provider=ProviderConfig(**job.provider.model_dump()),
        source=source,
        pricing=Pricing(**job.pricing.model_dump()) if job.pricing is not None else None,
        hooks_dir=Path(job.hooks_dir) if job.hooks_dir else source.parent if job.output.hooks() else None,
        mode=job.mode,
        sync=SyncConfig(**job.sync.model_dump()),
        steps=steps,
    )


def _output_config(out: Any) -> OutputConfig:
    """The frozen view of an output section (the job's, or a step's merged over it)."""
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


def step_config(cfg: JobConfig, index: int, input_cfg: InputConfig) -> JobConfig:
    """Step `index` (0-based) of a multi-step job as a one-step job reading `input_cfg`.

    The job's pricing goes with it only for a step that uses the job's model (the price is for
    that model); a step with another model is priced from the shipped table.
    """
    step = cfg.steps[index]
    return replace(
        cfg, model=step.model, endpoint=step.endpoint, input=input_cfg, prompt=step.prompt, params=step.params,
        output=step.output, steps=(), pricing=cfg.pricing if step.model == cfg.model else None,
    )  # fmt: skip


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a job config file (draft 2020-12), for editors and other tools."""
    from batchpipe.config.models import JobFile

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
        # A multi-step job writes each step whole (defaults filled in) under steps: instead.
        **({} if cfg.steps else {"prompt": _prompt_dict(cfg.prompt)}),
        "params": copy.deepcopy(dict(cfg.params)),
        "output": _output_dict(cfg.output, cfg.params),
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
    } | ({"hooks_dir": str(cfg.hooks_dir)} if cfg.hooks_dir is not None else {}) | _sync_fields(cfg) | (
        {"steps": [_step_dict(step) for step in cfg.steps]} if cfg.steps else {})


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


def _default_parse(params: Mapping[str, Any]) -> str:
    """What `output.parse` resolves to when not written: written only when it differs."""
    return "json" if asks_for_json(params) else "text"


def _prompt_dict(prompt: PromptConfig) -> dict[str, Any]:
    # images and history only when given: a config that does not use them keeps its snapshot
    out: dict[str, Any] = {"system": prompt.system, "user": prompt.user}
    if prompt.images:
        out["images"] = list(prompt.images)
    if prompt.images_dir is not None:
        out["images_dir"] = str(prompt.images_dir)
    if prompt.history:
        out["history"] = [
            {"user": t.user, "assistant": t.assistant} | ({"images": list(t.images)} if t.images else {})
            for t in prompt.history
        ]
    return out


def _output_dict(output: OutputConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    # Each field only when it is not the default: a config that does not use it keeps the
    # snapshot (and so the config hash and the default run id) it had before the field existed.
    return (
        {"key": output.key}
        | ({"truncated": output.truncated} if output.truncated != OutputConfig.truncated else {})
        | ({"parse": output.parse} if output.parse != _default_parse(params) else {})
        | ({"explode": output.explode} if output.explode is not False else {})
        | _answer_fields(output)
    )


def _step_dict(step: StepConfig) -> dict[str, Any]:
    return {"name": step.name, "model": step.model, "endpoint": step.endpoint, "prompt": _prompt_dict(step.prompt),
            "params": copy.deepcopy(dict(step.params)), "output": _output_dict(step.output, step.params)}


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


# --------------------------------------------------------------------------------------
# Reading a run's snapshot back, without validating it again


def snapshot_config(content: bytes, source: Path) -> JobConfig | None:
    """The config of a run's snapshot `content` (read from `source`), without the models (pydantic).

    It validates nothing: it is for a snapshot `create` validated and wrote, unchanged since (its
    caller checks that: the sha256 the run's ledger recorded). Of that, it gives what load_config
    gives, without importing pydantic. None for what it cannot read so: a text that is not what
    snapshot_yaml writes for the config it describes (an older batchpipe's, say), a multi-step job
    (its steps inherit from the top level), an input file that is not there now (load_config checks
    that each time). Then call load_config, which says what is wrong, with file, line and field.
    """
    try:
        text = content.decode("utf-8-sig")  # (as read_text)
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when there
        cfg = _snapshot_job(data, source)
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):  # (UnicodeDecodeError is a ValueError)
        return None
    if cfg is None or config_to_dict(cfg) != data:
        return None
    if cfg.input.path is not None and not cfg.input.path.is_file():  # (load_config checks it on every read)
        return None
    return cfg


def _snapshot_job(data: dict[str, Any], source: Path) -> JobConfig | None:
    """A one-step snapshot's data as load_config builds it (from the models, via _job_config)."""
    if not isinstance(data, dict) or "steps" in data:
        return None  # a multi-step job's steps inherit from the top level: load_config knows how
    data = _set(data)
    inp, out, params = _set(data["input"]), _set(data["output"]), data["params"]
    check = _set(out["validate"]) if "validate" in out else None
    names_hook = any(is_hook(ref) for ref in (out.get("parse"), out.get("fallback"), (check or {}).get("function")))
    return JobConfig(
        model=data["model"],
        endpoint=data["endpoint"],
        input=InputConfig(
            path=Path(inp["path"]) if "path" in inp else None,
            format=inp.get("format", ""),
            id=inp.get("id", "index" if "count" in inp else None),
            count=inp.get("count"),
            records=inp.get("records"),
            record_id=inp.get("record_id"),
        ),
        prompt=_snapshot_prompt(_set(data["prompt"]), source),
        params=MappingProxyType(params),
        output=OutputConfig(
            key=out.get("key", OutputConfig.key),
            truncated=out.get("truncated", OutputConfig.truncated),
            parse=out.get("parse", _default_parse(params)),
            fields=tuple(out.get("fields", ())),
            meta=out.get("meta", False),
            validate=None if check is None else ValidateConfig(
                json=check.get("json", False), json_schema=check.get("json_schema"), regex=check.get("regex"),
                choices=tuple(check["choices"]) if "choices" in check else None, function=check.get("function"),
            ),
            on_invalid=out.get("on_invalid", OutputConfig.on_invalid),
            fallback=out.get("fallback"),
            explode=out.get("explode", False),
        ),
        limits=Limits(**_set(data["limits"])),
        provider=ProviderConfig(**_set(data["provider"])),
        source=source,
        pricing=Pricing(**_set(data["pricing"])) if "pricing" in data else None,
        hooks_dir=Path(data["hooks_dir"]) if data.get("hooks_dir") else source.parent if names_hook else None,
        mode=data.get("mode", JobConfig.mode),
        sync=SyncConfig(**_set(data["sync"])) if "sync" in data else SyncConfig(),
    )  # fmt: skip


def _set(section: dict[str, Any]) -> dict[str, Any]:
    """A section's fields without those written null: not set, as the models read them."""
    return {key: value for key, value in section.items() if value is not None}


def _snapshot_prompt(prompt: dict[str, Any], source: Path) -> PromptConfig:
    """As _prompt_config."""
    turns = tuple(TurnConfig(t["user"], t["assistant"], tuple(t.get("images") or ())) for t in prompt.get("history", ()))
    images = tuple(prompt.get("images", ()))
    has_images = images or any(t.images for t in turns)
    images_dir = Path(prompt["images_dir"]) if prompt.get("images_dir") else source.parent
    return PromptConfig(system=prompt.get("system"), user=prompt["user"], images=images, history=turns,
                        images_dir=images_dir if has_images else None)
