"""Job config loading: round trip, defaults, and one test per kind of mistake a user makes.

Every error test checks what a user needs to fix the file without a traceback: the file
name, the line, the field, and exit code 2.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from batchpipe.config import (
    ENDPOINTS,
    RESERVED_PARAMS,
    InputConfig,
    JobConfig,
    Limits,
    OutputConfig,
    Pricing,
    PromptConfig,
    ProviderConfig,
    config_to_dict,
    load_config,
    snapshot_yaml,
)
from batchpipe.errors import ConfigError, ExitCode

FULL = """\
model: gpt-4o-mini
endpoint: /v1/chat/completions
input:
  path: data/reviews.jsonl
  format: jsonl
  id: meta.review_id
prompt:
  system: You judge film reviews.
  user: "Review ({stars} stars): {text}"
params:
  temperature: 0
  max_tokens: 20
  response_format: {type: json_object}
  stop: ["\\n\\n", "END"]
output:
  key: verdict
limits:
  max_requests_per_shard: 1000
  max_bytes_per_shard: 5000000
  max_attempts: 5
provider:
  name: openai
  base_url: http://127.0.0.1:8080/v1
"""

MINIMAL = """\
model: gpt-4o-mini
input:
  path: reviews.jsonl
prompt:
  user: "Review: {text}"
"""


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A directory with an input file next to where the config goes."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reviews.jsonl").write_text('{"text": "fine", "stars": 4}\n', encoding="utf-8")
    (tmp_path / "reviews.jsonl").write_text('{"text": "fine"}\n', encoding="utf-8")
    return tmp_path


def write(directory: Path, text: str, name: str = "job.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.exit_code == ExitCode.BAD_INPUT == 2
    return err


def assert_names(err: ConfigError, path: Path, line: int, *fields: str) -> None:
    """The message names the file and line together, and every given field."""
    assert f"{path} line {line}:" in err.message, err.message
    for f in fields:
        assert f in err.message, (f, err.message)


# --------------------------------------------------------------------------------------
# Valid configs


def test_full_config_loads(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, FULL))
    assert cfg.model == "gpt-4o-mini"
    assert cfg.endpoint == "/v1/chat/completions"
    expected_path = (job_dir / "data" / "reviews.jsonl").resolve()
    assert cfg.input == InputConfig(path=expected_path, format="jsonl", id="meta.review_id")
    assert cfg.input.path.is_absolute()
    assert cfg.prompt == PromptConfig(system="You judge film reviews.", user="Review ({stars} stars): {text}")
    assert dict(cfg.params) == {
        "temperature": 0,
        "max_tokens": 20,
        "response_format": {"type": "json_object"},
        "stop": ["\n\n", "END"],
    }
    assert cfg.output == OutputConfig(key="verdict", parse="json")  # the response format asks for JSON
    assert cfg.limits == Limits(max_requests_per_shard=1000, max_bytes_per_shard=5_000_000, max_attempts=5)
    assert cfg.provider == ProviderConfig(name="openai", base_url="http://127.0.0.1:8080/v1")
    assert cfg.source == (job_dir / "job.yaml").absolute()


def test_defaults(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, MINIMAL))
    assert cfg.endpoint == "/v1/chat/completions"
    assert cfg.input.format == "jsonl"
    assert cfg.input.id is None
    assert cfg.prompt.system is None
    assert dict(cfg.params) == {}
    assert cfg.output == OutputConfig(key="response")
    assert cfg.limits == Limits(max_requests_per_shard=50000, max_bytes_per_shard=200_000_000, max_attempts=3)
    assert cfg.provider == ProviderConfig(name="openai", base_url=None)


def test_null_optional_fields_mean_default(job_dir: Path) -> None:
    cfg = load_config(
        write(
            job_dir,
            MINIMAL + "endpoint:\nparams:\noutput:\nlimits:\n  max_attempts: null\nprovider:\n  base_url: null\n",
        )
    )
    assert cfg == dataclasses.replace(load_config(write(job_dir, MINIMAL, "min.yaml")), source=cfg.source)


def test_config_is_frozen_and_params_read_only(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, FULL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = "other"  # type: ignore[misc]
    assert isinstance(cfg.params, MappingProxyType)
    with pytest.raises(TypeError):
        cfg.params["temperature"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("suffix", "fmt"), [(".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".CSV", "csv")]
)
def test_format_from_suffix(tmp_path: Path, suffix: str, fmt: str) -> None:
    (tmp_path / f"rows{suffix}").write_text("x\n", encoding="utf-8")
    cfg = load_config(write(tmp_path, f"model: m\ninput:\n  path: rows{suffix}\nprompt:\n  user: hi\n"))
    assert cfg.input.format == fmt


def test_explicit_format_overrides_suffix(tmp_path: Path) -> None:
    (tmp_path / "rows.txt").write_text("a\n1\n", encoding="utf-8")
    cfg = load_config(write(tmp_path, "model: m\ninput:\n  path: rows.txt\n  format: csv\nprompt:\n  user: hi\n"))
    assert cfg.input.format == "csv"


def test_input_path_is_relative_to_the_config_dir_not_cwd(job_dir: Path, tmp_path_factory, monkeypatch) -> None:
    (job_dir / "configs").mkdir()
    path = write(job_dir / "configs", MINIMAL.replace("path: reviews.jsonl", "path: ../data/reviews.jsonl"))
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    cfg = load_config(path)
    assert cfg.input.path == (job_dir / "data" / "reviews.jsonl").resolve()


def test_absolute_and_home_input_paths(job_dir: Path, monkeypatch) -> None:
    absolute = job_dir / "data" / "reviews.jsonl"
    cfg = load_config(write(job_dir, MINIMAL.replace("path: reviews.jsonl", f"path: {absolute}")))
    assert cfg.input.path == absolute.resolve()
    monkeypatch.setenv("HOME", str(job_dir))
    cfg = load_config(write(job_dir, MINIMAL.replace("path: reviews.jsonl", "path: ~/data/reviews.jsonl")))
    assert cfg.input.path == absolute.resolve()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_endpoint_is_accepted(job_dir: Path, endpoint: str) -> None:
    cfg = load_config(write(job_dir, MINIMAL + f"endpoint: {endpoint}\n"))
    assert cfg.endpoint == endpoint


def test_system_is_fine_with_responses(job_dir: Path) -> None:
    text = MINIMAL.replace("prompt:\n", "prompt:\n  system: Be brief.\n") + "endpoint: /v1/responses\n"
    cfg = load_config(write(job_dir, text))
    assert cfg.prompt.system == "Be brief."


def test_accepts_a_bom_and_yaml_anchors(job_dir: Path) -> None:
    text = "\ufeff" + MINIMAL + "params:\n  a: &x {k: 1}\n  b: *x\n"
    cfg = load_config(write(job_dir, text))
    assert dict(cfg.params) == {"a": {"k": 1}, "b": {"k": 1}}


# --------------------------------------------------------------------------------------
# Round trip through the snapshot


def assert_round_trip(cfg: JobConfig, elsewhere: Path) -> JobConfig:
    text = snapshot_yaml(cfg)
    again = load_config(write(elsewhere, text, "config.yaml"))
    assert again.source != cfg.source
    assert dataclasses.replace(again, source=cfg.source) == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    return again


def test_full_config_round_trips(job_dir: Path, tmp_path_factory) -> None:
    cfg = load_config(write(job_dir, FULL))
    assert_round_trip(cfg, tmp_path_factory.mktemp("run"))


def test_minimal_config_round_trips(job_dir: Path, tmp_path_factory) -> None:
    cfg = load_config(write(job_dir, MINIMAL))
    assert_round_trip(cfg, tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize(
    "user",
    [
        "line one\nline two {text}\n",
        "no trailing newline\n{text}",
        "  leading spaces\n{text}\n\n\n",
        "\n\nleading blank lines {text}",
        "trailing spaces   \n{text}  ",
        "tab\there\n\t{text}",
        "quotes \" and ' and: colons # and hashes {text}",
        "{text}",
        "yes",
        "1.5",
        "null",
        "émoji 🎬 and 中文 {text}",
        "literal {{braces}} {text}",
        "- a list-looking line\n- {text}",
        "|\n>\n{text}",
        "\u2028 unicode line separator {text}",
        "windows\r\nline ending {text}",
    ],
)
def test_snapshot_round_trips_awkward_text(job_dir: Path, tmp_path_factory, user: str) -> None:
    cfg = load_config(write(job_dir, MINIMAL))
    cfg = dataclasses.replace(cfg, prompt=PromptConfig(system="sys: " + user.replace("{text}", ""), user=user))
    again = assert_round_trip(cfg, tmp_path_factory.mktemp("run"))
    assert again.prompt.user == user


def test_config_to_dict_is_plain_and_complete(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, FULL))
    d = config_to_dict(cfg)
    assert list(d) == ["model", "endpoint", "input", "prompt", "params", "output", "limits", "pricing", "provider"]
    assert d["input"]["path"] == str((job_dir / "data" / "reviews.jsonl").resolve())
    assert "source" not in d
    assert type(d["params"]) is dict
    d["params"]["response_format"]["type"] = "changed"  # a copy: the config is untouched
    assert cfg.params["response_format"]["type"] == "json_object"


def test_snapshot_is_stable_safe_yaml(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, FULL))
    text = snapshot_yaml(cfg)
    assert text == snapshot_yaml(load_config(write(job_dir, FULL, "copy.yaml")))
    assert yaml.safe_load(text)["limits"]["max_attempts"] == 5
    assert "!!" not in text and "&" not in text


# --------------------------------------------------------------------------------------
# Errors: the file itself


def test_missing_file(tmp_path: Path) -> None:
    err = config_error(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in err.message
    assert "not found" in err.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    err = config_error(tmp_path)
    assert "is a directory" in err.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"model: m\nprompt:\n  user: caf\xe9\n")
    err = config_error(path)
    assert_names(err, path, 3, "UTF-8")


def test_yaml_syntax_error_names_the_line(job_dir: Path) -> None:
    path = write(job_dir, 'model: m\ninput:\n  path: reviews.jsonl\nprompt:\n  user: "unclosed\nparams: {a: 1\n')
    err = config_error(path)
    assert f"{path} line " in err.message and "not valid YAML" in err.message
    path = write(job_dir, "model: m\ninput:\n  path: reviews.jsonl\n   bad: indent\n")
    err = config_error(path)
    assert_names(err, path, 4, "not valid YAML")
    assert err.hint and "quot" in err.hint


def test_tab_indentation(job_dir: Path) -> None:
    path = write(job_dir, "model: m\ninput:\n\tpath: reviews.jsonl\n")
    assert_names(config_error(path), path, 3, "not valid YAML")


def test_python_tags_are_refused(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "params:\n  x: !!python/object/apply:os.system ['true']\n")
    err = config_error(path)
    assert_names(err, path, 7, "not valid YAML")


def test_two_documents(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "---\nmodel: other\n")
    assert_names(config_error(path), path, 6, "not valid YAML")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    err = config_error(path)
    assert f"{path} line 1:" in err.message and "empty" in err.message


@pytest.mark.parametrize(("text", "got"), [("- a\n- b\n", "a list"), ("just text\n", "'just text'"), ("42\n", "42")])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    path = write(tmp_path, text)
    err = config_error(path)
    assert_names(err, path, 1, "top level must be a mapping", got)


# --------------------------------------------------------------------------------------
# Errors: keys


def test_unknown_top_level_key_suggests_closest(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("prompt:", "promt:"))
    err = config_error(path)
    assert err.message == f"{path} line 4: unknown key 'promt' — did you mean 'prompt'?"


def test_unknown_nested_key_suggests_closest(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "limits:\n  max_atempts: 2\n")
    err = config_error(path)
    assert_names(err, path, 7, "unknown key 'limits.max_atempts'", "did you mean 'max_attempts'?")


def test_section_field_at_top_level(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "system: Be brief.\n")
    assert_names(config_error(path), path, 6, "unknown key 'system'", "prompt.system")


def test_request_parameter_at_top_level(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "temperature: 0\n")
    assert_names(config_error(path), path, 6, "unknown key 'temperature'", "params")


def test_unknown_key_without_a_match_lists_valid_keys(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "zzzz: 1\n")
    assert_names(config_error(path), path, 6, "unknown key 'zzzz'", "valid keys: model, endpoint")


def test_duplicate_key(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "model: gpt-4o\n")
    assert_names(config_error(path), path, 6, "key 'model' appears twice", "line 1")


# --------------------------------------------------------------------------------------
# Errors: types, ranges, required fields


def test_wrong_type_text(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("model: gpt-4o-mini", "model: [a, b]"))
    assert_names(config_error(path), path, 1, "model must be text", "a list")


def test_unquoted_template_starting_with_a_brace(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace('user: "Review: {text}"', "user: {text}"))
    err = config_error(path)
    assert_names(err, path, 5, "prompt.user must be text", "a mapping")
    assert err.hint and "quote" in err.hint


def test_section_given_as_text(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("input:\n  path: reviews.jsonl", "input: reviews.jsonl"))
    err = config_error(path)
    assert_names(err, path, 2, "'input' must be a mapping", "'reviews.jsonl'")
    assert err.hint and "path: reviews.jsonl" in err.hint


def test_the_example_message_from_the_readme(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "limits:\n  max_requests_per_shard: abc\n")
    err = config_error(path)
    assert err.message == (
        f"{path} line 7: limits.max_requests_per_shard must be a whole number from 1 to 50000 (got 'abc')"
    )


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("max_requests_per_shard", "0", "from 1 to 50000 (got 0)"),
        ("max_requests_per_shard", "50001", "from 1 to 50000 (got 50001)"),
        ("max_requests_per_shard", "1.5", "(got 1.5)"),
        ("max_requests_per_shard", "true", "(got true)"),
        ("max_bytes_per_shard", "200000001", "from 1 to 200000000 (got 200000001)"),
        ("max_bytes_per_shard", "-1", "(got -1)"),
        ("max_attempts", "0", "of at least 1 (got 0)"),
        ("max_attempts", "'3'", "(got '3')"),
    ],
)
def test_limits_out_of_range(job_dir: Path, field: str, value: str, expect: str) -> None:
    path = write(job_dir, MINIMAL + f"limits:\n  {field}: {value}\n")
    assert_names(config_error(path), path, 7, f"limits.{field} must be a whole number", expect)


def test_limits_at_the_edges_are_fine(job_dir: Path) -> None:
    cfg = load_config(
        write(
            job_dir,
            MINIMAL + "limits:\n  max_requests_per_shard: 1\n  max_bytes_per_shard: 200_000_000\n  max_attempts: 1\n",
        )
    )
    assert cfg.limits == Limits(1, 200_000_000, 1)


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (MINIMAL.replace("model: gpt-4o-mini\n", ""), 1, "model is required"),
        (MINIMAL.replace("model: gpt-4o-mini", "model:"), 1, "model is required"),
        (MINIMAL.replace("model: gpt-4o-mini", "model: ''"), 1, "model is empty"),
        (MINIMAL.replace("  path: reviews.jsonl\n", "  format: jsonl\n"), 2, "input.path is required"),
        (MINIMAL.replace('  user: "Review: {text}"\n', "  system: hi\n"), 4, "prompt.user is required"),
        (MINIMAL.replace('  user: "Review: {text}"', "  user: '   '"), 5, "prompt.user is empty"),
        ("model: m\ninput:\n  path: reviews.jsonl\n", 1, "'prompt' is required"),
        ("model: m\nprompt:\n  user: hi\ninput:\n", 4, "'input' is required"),
    ],
)
def test_missing_required_field(job_dir: Path, text: str, line: int, field: str) -> None:
    path = write(job_dir, text)
    assert_names(config_error(path), path, line, field)


# --------------------------------------------------------------------------------------
# Errors: values


def test_endpoint_not_in_the_list(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "endpoint: /chat/completions\n")
    err = config_error(path)
    assert_names(err, path, 6, "endpoint must be one of", "/v1/responses", "did you mean '/v1/chat/completions'?")


def test_endpoint_batchpipe_does_not_support(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "endpoint: /v1/images/generations\n")
    assert_names(config_error(path), path, 6, "endpoint '/v1/images/generations' is not supported")


def test_input_path_missing_on_disk_names_the_resolved_path(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("path: reviews.jsonl", "path: ../missing/rows.jsonl"))
    err = config_error(path)
    assert_names(err, path, 3, "input.path", "not found", str((job_dir.parent / "missing" / "rows.jsonl").resolve()))


def test_input_path_is_a_directory(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("path: reviews.jsonl", "path: data"))
    assert_names(config_error(path), path, 3, "input.path is not a file")


def test_input_format_unknown_suffix(job_dir: Path) -> None:
    (job_dir / "rows.txt").write_text("x", encoding="utf-8")
    path = write(job_dir, MINIMAL.replace("path: reviews.jsonl", "path: rows.txt"))
    err = config_error(path)
    assert_names(err, path, 3, "input.format", "rows.txt")
    assert err.hint and "input.format: jsonl" in err.hint


def test_input_format_bad_value(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("  path: reviews.jsonl\n", "  path: reviews.jsonl\n  format: json\n"))
    assert_names(config_error(path), path, 4, "input.format must be jsonl or csv", "did you mean 'jsonl'?")


@pytest.mark.parametrize("bad_id", ["a..b", "'{x}'", "'x:y'", "'tags[0]'", "5"])
def test_input_id_bad(job_dir: Path, bad_id: str) -> None:
    path = write(job_dir, MINIMAL.replace("  path: reviews.jsonl\n", f"  path: reviews.jsonl\n  id: {bad_id}\n"))
    assert_names(config_error(path), path, 4, "input.id")


@pytest.mark.parametrize("key", sorted(RESERVED_PARAMS))
def test_params_with_a_key_batchpipe_owns(job_dir: Path, key: str) -> None:
    path = write(job_dir, MINIMAL + f"params:\n  temperature: 0\n  {key}: x\n")
    err = config_error(path)
    assert_names(err, path, 8, f"params.{key} cannot be set")
    assert err.hint == f"remove params.{key}"


def test_stream_says_why(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "params:\n  stream: true\n")
    assert "Batch API refuses streaming" in config_error(path).message


def test_params_not_a_mapping(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "params: [temperature, 0]\n")
    assert_names(config_error(path), path, 6, "'params' must be a mapping")


def test_params_values_json_cannot_carry(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "params:\n  metadata:\n    day: 2024-05-01\n  x: .nan\n")
    err = config_error(path)
    assert_names(err, path, 8, "params.metadata.day", "date")
    assert_names(err, path, 9, "params.x must be a finite number")


@pytest.mark.parametrize("endpoint", ["/v1/embeddings", "/v1/completions", "/v1/moderations"])
def test_system_prompt_with_an_endpoint_without_one(job_dir: Path, endpoint: str) -> None:
    text = MINIMAL.replace("prompt:\n", "prompt:\n  system: Be brief.\n") + f"endpoint: {endpoint}\n"
    path = write(job_dir, text)
    err = config_error(path)
    assert_names(err, path, 5, "prompt.system cannot be used", endpoint)


@pytest.mark.parametrize(
    ("user", "expect"),
    [
        ("'Review: {text'", "never closed"),
        ("'Review: text}'", "no matching '{'"),
        ("'Review: {}'", "empty placeholder"),
        ("'Review: {text:>10}'", "format specs"),
        ("'Review: {text!r}'", "conversions"),
        ("'Review: {tags[0]}'", "tags.0"),
        ("'Review: {a{b}}'", "inside another"),
    ],
)
def test_template_syntax_errors(job_dir: Path, user: str, expect: str) -> None:
    path = write(job_dir, MINIMAL.replace('"Review: {text}"', user))
    err = config_error(path)
    assert_names(err, path, 5, "prompt.user has a template error at column", expect)


def test_template_error_in_system(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("prompt:\n", "prompt:\n  system: 'Be {brief'\n"))
    assert_names(config_error(path), path, 5, "prompt.system has a template error at column 4")


def test_template_error_in_a_literal_block_points_at_its_line(job_dir: Path) -> None:
    text = MINIMAL.replace('user: "Review: {text}"', "user: |\n    Review:\n    {text}\n    Stars: {stars\n")
    path = write(job_dir, text)
    # line 5 is `user: |`, the text starts on line 6, `{stars` is on line 8
    assert_names(config_error(path), path, 8, "prompt.user has a template error at column 8", "never closed")


def test_template_error_in_a_multi_line_quoted_value(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace('"Review: {text}"', '"Review:\\n{text}\\n{stars"'))
    assert_names(config_error(path), path, 5, "template line 3, column 1")


@pytest.mark.parametrize("value", ["''", "'  '"])
def test_output_key_empty(job_dir: Path, value: str) -> None:
    path = write(job_dir, MINIMAL + f"output:\n  key: {value}\n")
    assert_names(config_error(path), path, 7, "output.key is empty")


@pytest.mark.parametrize(
    "url", ["localhost:8080", "ftp://example.com", "http://", "'/v1'", "http://host:99999/v1"]
)
def test_base_url_not_http(job_dir: Path, url: str) -> None:
    path = write(job_dir, MINIMAL + f"provider:\n  base_url: {url}\n")
    assert_names(config_error(path), path, 7, "provider.base_url must be an http:// or https:// URL")


def test_base_url_with_credentials(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "provider:\n  base_url: https://user:sk-secret@example.com/v1\n")
    err = config_error(path)
    assert_names(err, path, 7, "provider.base_url must not contain a user name or password")
    assert "sk-secret" not in err.message


def test_provider_name(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "provider:\n  name: anthropic\n")
    assert_names(config_error(path), path, 7, "provider.name must be 'openai'", "'anthropic'")


def test_https_base_url_is_fine(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, MINIMAL + "provider:\n  base_url: https://example.com/openai/v1\n"))
    assert cfg.provider.base_url == "https://example.com/openai/v1"


# --------------------------------------------------------------------------------------
# Budget, enqueued tokens and pricing


COSTED = MINIMAL + """\
limits:
  budget_usd: 25
  enqueued_tokens: 2_000_000
pricing:
  input_per_million: 0.075
  output_per_million: 0.3
"""


def test_budget_enqueued_tokens_and_pricing_load(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, COSTED))
    assert cfg.limits.budget_usd == 25.0 and isinstance(cfg.limits.budget_usd, float)
    assert cfg.limits.enqueued_tokens == 2_000_000
    assert cfg.pricing == Pricing(input_per_million=0.075, output_per_million=0.3)
    assert cfg.limits.max_attempts == 3  # the other limits keep their defaults


def test_budget_enqueued_tokens_and_pricing_default_to_none(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, MINIMAL + "limits:\n  budget_usd: null\n  enqueued_tokens:\npricing:\n"))
    assert cfg.limits.budget_usd is None and cfg.limits.enqueued_tokens is None and cfg.pricing is None
    assert load_config(write(job_dir, MINIMAL)).pricing is None


def test_costed_config_round_trips(job_dir: Path, tmp_path_factory) -> None:
    cfg = load_config(write(job_dir, COSTED))
    again = assert_round_trip(cfg, tmp_path_factory.mktemp("run"))
    assert again.pricing == cfg.pricing and again.limits == cfg.limits
    d = config_to_dict(cfg)
    assert d["limits"]["budget_usd"] == 25.0 and d["limits"]["enqueued_tokens"] == 2_000_000
    assert d["pricing"] == {"input_per_million": 0.075, "output_per_million": 0.3}
    plain = config_to_dict(load_config(write(job_dir, MINIMAL)))
    assert plain["pricing"] is None and plain["limits"]["budget_usd"] is None


def test_zero_prices_are_fine(job_dir: Path) -> None:
    cfg = load_config(write(job_dir, MINIMAL + "pricing:\n  input_per_million: 0.01\n  output_per_million: 0\n"))
    assert cfg.pricing == Pricing(0.01, 0.0)


@pytest.mark.parametrize(
    ("value", "expect"),
    [("0", "(got 0)"), ("-5", "(got -5)"), ("true", "(got true)"), ("'25'", "(got '25')"), (".inf", "(got inf)"),
     ("[25]", "(got a list)")],
)  # fmt: skip
def test_budget_must_be_a_positive_number(job_dir: Path, value: str, expect: str) -> None:
    path = write(job_dir, MINIMAL + f"limits:\n  budget_usd: {value}\n")
    err = config_error(path)
    assert_names(err, path, 7, "limits.budget_usd must be a number greater than 0", expect)
    assert err.hint and "budget_usd: 25" in err.hint


def test_budget_with_a_dollar_sign_says_to_drop_it(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "limits:\n  budget_usd: $25\n")
    err = config_error(path)
    assert_names(err, path, 7, "limits.budget_usd", "(got '$25')")
    assert err.hint and "without the $ sign" in err.hint


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "'1000'", "true"])
def test_enqueued_tokens_must_be_a_whole_number_of_at_least_1(job_dir: Path, value: str) -> None:
    path = write(job_dir, MINIMAL + f"limits:\n  enqueued_tokens: {value}\n")
    assert_names(config_error(path), path, 7, "limits.enqueued_tokens must be a whole number of at least 1")


def test_pricing_needs_both_prices(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "pricing:\n  input_per_million: 0.075\n")
    err = config_error(path)
    assert_names(err, path, 6, "pricing.output_per_million is required")
    assert err.hint and "output_per_million: 0.30" in err.hint and "Batch API" in err.hint


def test_pricing_bad_values_and_keys(job_dir: Path) -> None:
    path = write(
        job_dir, MINIMAL + "pricing:\n  input_per_million: -0.1\n  output_per_million: cheap\n  file: prices.json\n"
    )
    err = config_error(path)
    assert f"{path} line 7: pricing.input_per_million must be a number of at least 0 (got -0.1)" in err.message
    assert f"{path} line 8: pricing.output_per_million must be a number of at least 0 (got 'cheap')" in err.message
    assert f"{path} line 9: unknown key 'pricing.file'" in err.message


def test_pricing_not_a_mapping(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "pricing: 0.075\n")
    err = config_error(path)
    assert_names(err, path, 6, "'pricing' must be a mapping")
    assert err.hint and "input_per_million" in err.hint


def test_budget_at_the_top_level_is_pointed_to_limits(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL + "budget_usd: 10\n")
    assert "did you mean 'limits.budget_usd'" in config_error(path).message


# --------------------------------------------------------------------------------------
# Several problems at once


def test_all_problems_are_reported_together(job_dir: Path) -> None:
    text = """\
    model: gpt-4o-mini
    endpoint: /v1/chat/completion
    input:
      path: missing.jsonl
      fromat: jsonl
    prompt:
      user: "Review: {text"
    params:
      stream: true
    limits:
      max_requests_per_shard: abc
      max_attempts: 0
    output:
      key: ''
    provider:
      base_url: localhost
    """
    path = write(job_dir, text)
    err = config_error(path)
    lines = err.message.splitlines()
    assert lines[0] == f"{path} has 9 problems:"
    expected = [
        (2, "endpoint must be one of"),
        (4, "input.path: file not found"),
        (5, "unknown key 'input.fromat' — did you mean 'format'?"),
        (7, "prompt.user has a template error"),
        (9, "params.stream cannot be set"),
        (11, "limits.max_requests_per_shard must be a whole number from 1 to 50000 (got 'abc')"),
        (12, "limits.max_attempts must be a whole number of at least 1 (got 0)"),
        (14, "output.key is empty"),
        (16, "provider.base_url must be an http:// or https:// URL"),
    ]
    body = lines[1:]
    for line, text_part in expected:
        assert any(f"{path} line {line}: " in ln and text_part in ln for ln in body), (line, text_part, body)
    # sorted by line, one problem per line of the message
    numbers = [int(ln.split(" line ")[1].split(":")[0]) for ln in body]
    assert numbers == sorted(numbers)
    assert err.hint and "line 9: remove params.stream" in err.hint


def test_a_misspelt_required_section_is_reported_once(job_dir: Path) -> None:
    path = write(job_dir, MINIMAL.replace("prompt:", "promt:"))
    err = config_error(path)
    assert "is required" not in err.message
    assert err.message == f"{path} line 4: unknown key 'promt' — did you mean 'prompt'?"
