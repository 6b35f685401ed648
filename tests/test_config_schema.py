"""The declarative config schema: `batchpipe schema`, `batchpipe init`, the README's field
reference, and the run-dir snapshot (which must not change for existing configs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from batchpipe.config import load_config, snapshot_yaml
from batchpipe.config.models import JobFile, Section, sections
from batchpipe.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def schema_from_cli(cli) -> dict[str, Any]:
    schema = json.loads(cli("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)  # raises SchemaError on a bad schema
    return schema


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(document)]


def readme_job_config() -> str:
    """The annotated YAML block at the top of the README's "Job config" section."""
    section = README.read_text(encoding="utf-8").split("\n## Job config\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def field_paths(cls: type[Section], prefix: str = "") -> set[str]:
    """Every field a user can write, as dotted paths (params is free-form: its keys are not fields)."""
    paths = set()
    subsections = sections() if cls is JobFile else {}
    for name in cls.model_fields:
        paths.add(prefix + name)
        if name in subsections:
            paths |= field_paths(subsections[name], f"{prefix}{name}.")
    return paths


def written_paths(data: dict[str, Any]) -> set[str]:
    paths = set()
    for key, value in data.items():
        paths.add(key)
        if isinstance(value, dict) and key != "params":
            paths |= {f"{key}.{sub}" for sub in value}
    return paths


# --------------------------------------------------------------------------------------
# batchpipe schema


def test_schema_is_a_json_schema_every_shipped_config_passes(cli) -> None:
    schema = schema_from_cli(cli)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == {"model", "input"}
    assert schema["anyOf"] == [{"required": ["prompt"]}, {"required": ["steps"]}]  # a prompt, or steps with theirs
    shipped_configs = [*(REPO / "configs").glob("*.yaml"), *(REPO / "batchpipe" / "examples").glob("*.yaml")]
    assert len(shipped_configs) >= 2
    for path in shipped_configs:
        assert schema_errors(schema, yaml.safe_load(path.read_text(encoding="utf-8"))) == [], path
    shipped = yaml.safe_load((REPO / "configs" / "reviews.yaml").read_text(encoding="utf-8"))
    # It checks, too: the mistakes the loader refuses are refused by an editor as well.
    assert schema_errors(schema, {**shipped, "promt": {"user": "x"}})  # unknown key
    assert schema_errors(schema, {**shipped, "endpoint": "/chat/completions"})
    assert schema_errors(schema, {**shipped, "limits": {"max_requests_per_shard": 50001}})
    assert schema_errors(schema, {**shipped, "params": {"stream": True}})
    assert schema_errors(schema, {**shipped, "output": {"truncated": "drop"}})
    assert schema_errors(schema, {**shipped, "model": "  "})
    # YAML null means "not set" for an optional field, to the schema as to the loader
    assert schema_errors(schema, {**shipped, "endpoint": None, "limits": {"max_attempts": None}}) == []


def test_every_field_has_a_description_for_editors(cli) -> None:
    schema = schema_from_cli(cli)
    objects = [schema, *schema["$defs"].values()]
    described = {name for obj in objects for name, prop in obj["properties"].items() if prop.get("description")}
    everything = {name for obj in objects for name in obj["properties"]}
    assert everything - described == set()


# --------------------------------------------------------------------------------------
# The README documents every field, and nothing that is not one


def test_the_readme_job_config_lists_every_field() -> None:
    block = readme_job_config()
    written = written_paths(yaml.safe_load(block))
    declared = field_paths(JobFile)
    assert declared - written == set(), "fields missing from the README's Job config block"
    assert written - declared == set(), "the README's Job config block names fields that do not exist"
    # every line that sets a field says what it is
    for line in block.splitlines():
        if re.match(r"\s*\w+:", line) and not line.rstrip().endswith(":"):
            assert "#" in line or line.startswith("params:"), line


def test_the_readme_job_config_is_valid() -> None:
    JobFile.model_validate(yaml.safe_load(readme_job_config()))  # no file: input.path is not looked up


# --------------------------------------------------------------------------------------
# batchpipe init


def test_init_writes_a_starter_that_validates_estimates_and_creates(cli, tmp_path: Path) -> None:
    result = cli("init", "tickets.yaml")
    assert "wrote tickets.yaml and tickets.jsonl" in result.stdout
    config = tmp_path / "tickets.yaml"
    text = config.read_text(encoding="utf-8")
    assert sum("#" in line for line in text.splitlines()) >= 15  # commented, for a person to edit
    assert schema_errors(schema_from_cli(cli), yaml.safe_load(text)) == []
    cfg = load_config(config)
    assert cfg.input.path == tmp_path / "tickets.jsonl"
    estimate = cli.json("estimate", "tickets.yaml")["data"]
    assert estimate["requests"] == 3
    created = cli.json("create", "tickets.yaml")["data"]
    assert created["created"] and created["requests"] == 3
    assert (Path(created["path"]) / "config.yaml").is_file()


def test_init_in_a_directory_keeps_existing_rows(cli, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    rows = tmp_path / "configs" / "job.jsonl"
    rows.write_text('{"id": "x1", "text": "mine"}\n', encoding="utf-8")
    result = cli("init", "configs/job.yaml")
    assert "which was there already" in result.stdout
    assert rows.read_text(encoding="utf-8") == '{"id": "x1", "text": "mine"}\n'
    assert load_config(tmp_path / "configs" / "job.yaml").input.path == rows


def test_init_never_overwrites(cli, tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("model: mine\n", encoding="utf-8")
    result = cli("init", "job.yaml", code=2)
    assert "job.yaml already exists" in result.output
    assert config.read_text(encoding="utf-8") == "model: mine\n"
    assert not (tmp_path / "job.jsonl").exists()


def test_init_default_path(cli, tmp_path: Path) -> None:
    cli("init")
    load_config(tmp_path / "job.yaml")


# --------------------------------------------------------------------------------------
# What users had before the schema became declarative


def test_a_typo_still_gets_did_you_mean_line_and_exit_2(cli, tmp_path: Path) -> None:
    cli("init", "job.yaml")
    config = tmp_path / "job.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("prompt:", "promt:").replace("  max_attempts:",
                      "  max_atempts:"), encoding="utf-8")  # fmt: skip
    result = cli("estimate", "job.yaml", code=2)
    assert "job.yaml has 2 problems:" in result.output
    assert "job.yaml line 13: unknown key 'promt' — did you mean 'prompt'?" in result.output
    assert "unknown key 'limits.max_atempts' — did you mean 'max_attempts'?" in result.output
    assert "is required" not in result.output
    assert "Traceback" not in result.output


# The snapshot written into a run dir, as batchpipe wrote it before the models: the config hash
# (and so the default run id) of an existing job depends on every byte of it.
GOLDEN_SNAPSHOT = """\
# batchpipe job config, resolved (defaults filled in, input.path absolute).
# This copy is what every step of the run reads; edit the original config instead.
model: gpt-4o-mini
endpoint: /v1/responses
input:
  path: {rows}
  format: jsonl
  id: id
prompt:
  system: |
    You judge film reviews.
    Be brief.
  user: 'Review: {{text}}'
params:
  temperature: 0
  max_output_tokens: 20
  text:
    format:
      type: json_object
output:
  key: verdict
  truncated: fail
limits:
  max_requests_per_shard: 10
  max_bytes_per_shard: 200000000
  max_attempts: 3
  budget_usd: 25.0
  enqueued_tokens: 2000000
pricing:
  input_per_million: 0.0
  output_per_million: 0.3
provider:
  name: openai
  base_url: http://127.0.0.1:8080/v1
"""

EVERY_FIELD = """\
model: gpt-4o-mini
endpoint: /v1/responses
input:
  path: rows.jsonl
  id: id
prompt:
  system: |
    You judge film reviews.
    Be brief.
  user: "Review: {text}"
params: {temperature: 0, max_output_tokens: 20, text: {format: {type: json_object}}}
output:
  key: verdict
  truncated: fail
limits:
  max_requests_per_shard: 10
  budget_usd: 25
  enqueued_tokens: 2_000_000
pricing:
  input_per_million: 0
  output_per_million: 0.3
provider:
  base_url: http://127.0.0.1:8080/v1
"""


@pytest.mark.parametrize("text", [EVERY_FIELD, EVERY_FIELD.replace("  truncated: fail\n", "")])
def test_the_snapshot_is_byte_identical_to_before(tmp_path: Path, text: str) -> None:
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "x"}\n', encoding="utf-8")
    (tmp_path / "job.yaml").write_text(text, encoding="utf-8")
    expected = GOLDEN_SNAPSHOT.format(rows=tmp_path.resolve() / "rows.jsonl")
    if "truncated" not in text:
        expected = expected.replace("  truncated: fail\n", "")
    assert snapshot_yaml(load_config(tmp_path / "job.yaml")) == expected


MINIMAL = 'model: gpt-4o-mini\ninput:\n  path: rows.jsonl\nprompt:\n  user: "Review: {text}"\n'


@pytest.mark.parametrize(
    ("extra", "message", "hint"),
    [
        ("endpoint: ''\n", "line 6: endpoint is empty", None),
        ("endpoint: 5\n", "line 6: endpoint must be text (got 5)", 'put the value in quotes: endpoint: "5"'),
        ("output:\n  truncated: 5\n", "line 7: output.truncated must be keep or fail (got 5)", "keep writes"),
        ("output:\n  truncated: no\n", "(got false) — YAML reads yes/no/true/false as a boolean", "keep writes"),
        ("provider:\n  name: ' '\n", "line 7: provider.name is empty", None),
        ("pricing:\n  input_per_million: 1\n  output_per_million: x\n", "output_per_million must be a number",
         "for example: output_per_million: 0.30 (US dollars per 1M tokens)"),
    ],
)  # fmt: skip
def test_messages_of_the_hand_written_checker_are_kept(tmp_path: Path, extra: str, message: str, hint) -> None:
    """Found by loading 496 mutated configs with the old checker and the models and comparing."""
    (tmp_path / "rows.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    (tmp_path / "job.yaml").write_text(MINIMAL + extra, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "job.yaml")
    assert message in info.value.message
    assert (info.value.hint or "").startswith(hint or "")
    if hint is None:
        assert info.value.hint is None
