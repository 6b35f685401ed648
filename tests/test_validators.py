"""`output.validate` (json, json_schema, regex, choices, function), `output.parse` hooks and
`output.fields`, driven through `batchpipe run` against the emulator: each check lets good
answers through and turns bad ones into failed rows with their error code, counted per code;
a bad check in the config is refused at create with the file, line and field (exit 2).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import read_jsonl, review_rows, write_job

from batchpipe.emulator.json_answers import json_text

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "score"],
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}


def user_text(row: dict) -> str:
    return f"Review ({row['stars']} stars): {row['text']}"


def run(cli, config: Path, run_id: str, code: int = 0):
    return cli("run", config, "--run", run_id, "--wait", "--poll-interval", "0", code=code)


def hooks(directory: Path, source: str, name: str = "hooks") -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def errors(out: list[dict]) -> list[str | None]:
    return [(r.get("verdict_error") or {}).get("code") for r in out]


def test_json_schema_inline_and_from_a_file(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(4)
    rows[1]["text"] = "off the schema [[off-schema]]"
    strict = {"type": "object", "required": ["sentiment", "score"], "additionalProperties": False,
              "properties": {"sentiment": {"enum": ["positive", "negative"]}, "score": {"type": "integer"}}}
    inline = write_job(tmp_path / "a", rows, params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "validate": {"json_schema": strict}}, limits={"max_attempts": 1})
    result = run(cli, inline, "inline", code=6)
    out = read_jsonl(runs_dir / "inline" / "output.jsonl")
    assert errors(out) == [None, "invalid_schema", None, None]
    assert out[1]["verdict"] is None
    assert "does not fit output.validate.json_schema" in out[1]["verdict_error"]["message"]
    assert "'sentiment' is a required property" in out[1]["verdict_error"]["message"]
    assert out[0]["verdict"] == json.loads(json_text({"type": "json_schema", "schema": SCHEMA}, user_text(rows[0])))
    assert "1 row(s) whose answer stayed invalid: 1 invalid_schema" in result.stdout
    # the same schema in a file beside the config: the same outcome, and the snapshot keeps it inline
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "verdict.schema.json").write_text(json.dumps(strict), encoding="utf-8")
    from_file = write_job(tmp_path / "b", rows, params={"response_format": SCHEMA_FORMAT},
                          output={"key": "verdict", "validate": {"json_schema": "verdict.schema.json"}},
                          limits={"max_attempts": 1})
    run(cli, from_file, "file", code=6)
    assert read_jsonl(runs_dir / "file" / "output.jsonl") == out
    assert "additionalProperties: false" in (runs_dir / "file" / "config.yaml").read_text()
    status = cli.json("status", "file")["data"]
    assert status["invalid_answers"] == {"invalid_schema": 1}
    assert status["result_counts"]["invalid_schema"] == 1 and status["result_counts"]["failed"] == 1
    assert status["shards"][0]["merged"]["invalid_schema"] == 1


def test_regex_on_text_answers(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(4)
    config = write_job(tmp_path, rows, output={"key": "verdict", "validate": {"regex": r"echo: Review \(\d stars\): review number [12]"}},
                       limits={"max_attempts": 1})  # fmt: skip
    run(cli, config, "re", code=6)
    out = read_jsonl(runs_dir / "re" / "output.jsonl")
    assert errors(out) == [None, None, "invalid_regex", "invalid_regex"]
    assert out[0]["verdict"] == "echo: " + user_text(rows[0])
    assert "does not match output.validate.regex" in out[2]["verdict_error"]["message"]
    assert "review number 3" in out[2]["verdict_error"]["message"]  # it quotes the answer


def test_a_parse_hook_and_choices(cli, emulator, runs_dir, tmp_path):
    """A parse hook beside the config turns the text into a value; choices then checks it exactly."""
    hooks(tmp_path, """
        def stars(text):
            return int(text.split("(")[1][0])    # "echo: Review (4 stars): ..." -> 4
    """)
    rows = review_rows(5)  # stars 2, 3, 4, 5, 1
    config = write_job(tmp_path, rows, output={"key": "verdict", "parse": "hooks:stars",
                                               "validate": {"choices": [4, 5]}}, limits={"max_attempts": 1})
    run(cli, config, "ch", code=6)
    out = read_jsonl(runs_dir / "ch" / "output.jsonl")
    assert [r["verdict"] for r in out] == [None, None, 4, 5, None]
    assert errors(out) == ["invalid_choices"] * 2 + [None, None, "invalid_choices"]
    assert "is not one of output.validate.choices" in out[0]["verdict_error"]["message"]
    # the snapshot names where the hook lives, so a later step finds it from anywhere
    assert f"hooks_dir: {tmp_path.resolve()}" in (runs_dir / "ch" / "config.yaml").read_text()


def test_a_parse_hook_that_raises_makes_the_answer_invalid(cli, emulator, runs_dir, tmp_path):
    hooks(tmp_path, """
        import helper                            # a module of its own beside it

        def parse(text):
            if "number 2" in text:
                raise ValueError("no verdict in this answer")
            return helper.shout(text)
    """)
    hooks(tmp_path, "def shout(text):\n    return text.upper()\n", name="helper")
    config = write_job(tmp_path, review_rows(3), output={"key": "verdict", "parse": "hooks:parse"},
                       limits={"max_attempts": 2})
    run(cli, config, "ph", code=6)
    out = read_jsonl(runs_dir / "ph" / "output.jsonl")
    assert out[0]["verdict"] == "ECHO: REVIEW (2 STARS): REVIEW NUMBER 1"
    assert out[1]["verdict_error"] == {
        "code": "invalid_function", "message": "output.parse hooks:parse raised ValueError: no verdict in this answer"}
    assert out[1]["verdict_attempts"] == 2  # on_invalid: retry by default
    assert emulator.counts["batch_creates"] == 2


def test_function_validator_true_false_reason_and_raise(cli, emulator, runs_dir, tmp_path):
    hooks(tmp_path, """
        def check(value):
            if value["score"] % 4 == 0:
                return "a score divisible by 4 is suspicious"
            if value["score"] % 4 == 1:
                return False
            if value["score"] % 4 == 2:
                raise KeyError("boom")
            return True
    """)
    rows = review_rows(12)
    config = write_job(tmp_path, rows, params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "validate": {"function": "hooks:check"}}, limits={"max_attempts": 1})
    run(cli, config, "fn", code=6)
    out = read_jsonl(runs_dir / "fn" / "output.jsonl")
    scores = [json.loads(json_text({"type": "json_schema", "schema": SCHEMA}, user_text(r)))["score"] for r in rows]
    assert {s % 4 for s in scores} == {0, 1, 2, 3}  # every branch is taken
    expected = {0: "hooks:check: a score divisible by 4 is suspicious", 1: "hooks:check returned False for",
                2: "output.validate.function hooks:check raised KeyError: 'boom'"}
    for score, row in zip(scores, out):
        if score % 4 == 3:
            assert row["verdict"]["score"] == score and "verdict_error" not in row
        else:
            assert row["verdict_error"]["code"] == "invalid_function"
            assert row["verdict_error"]["message"].startswith(expected[score % 4])


def test_json_validator_on_a_text_answer(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(3)
    rows[0]["text"] = "broken [[invalid-json]]"
    config = write_job(tmp_path, rows, params={"response_format": {"type": "json_object"}},
                       output={"key": "verdict", "parse": "text", "validate": {"json": True}},
                       limits={"max_attempts": 1})
    run(cli, config, "js", code=6)
    out = read_jsonl(runs_dir / "js" / "output.jsonl")
    assert errors(out) == ["invalid_json", None, None]
    assert out[1]["verdict"] == json.dumps({"echo": user_text(rows[1])})  # kept as text: parse is text


def test_fields_are_spread_and_a_missing_one_is_invalid(cli, emulator, runs_dir, tmp_path):
    rows = review_rows(3)
    rows[2]["text"] = "nothing of the kind [[off-schema]]"
    config = write_job(tmp_path, rows, params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "fields": ["sentiment", "score"]}, limits={"max_attempts": 1})
    run(cli, config, "fi", code=6)
    out = read_jsonl(runs_dir / "fi" / "output.jsonl")
    for row, got in zip(rows[:2], out):
        value = json.loads(json_text({"type": "json_schema", "schema": SCHEMA}, user_text(row)))
        assert got["verdict"] == value  # the whole value stays under the key
        assert (got["sentiment"], got["score"]) == (value["sentiment"], value["score"])
        assert list(got)[:5] == ["review_id", "stars", "text", "verdict", "sentiment"]
    assert out[2]["verdict_error"]["code"] == "invalid_fields"
    assert "has no 'sentiment', 'score'" in out[2]["verdict_error"]["message"]
    assert out[2]["sentiment"] is None and out[2]["score"] is None


def test_invalid_answers_are_retried_until_valid_and_counted(cli, emulator, runs_dir, tmp_path):
    emulator.options.invalid_json_share = 0.5
    emulator.options.fault_seed = 3
    config = write_job(tmp_path, review_rows(10), params={"response_format": SCHEMA_FORMAT},
                       output={"key": "verdict", "validate": {"json_schema": SCHEMA}},
                       limits={"max_requests_per_shard": 10, "max_attempts": 8})
    run(cli, config, "rt")
    out = read_jsonl(runs_dir / "rt" / "output.jsonl")
    assert all(isinstance(r["verdict"], dict) and "verdict_error" not in r for r in out)
    retried = sum(r["verdict_attempts"] - 1 for r in out)
    assert retried > 0
    status = cli.json("status", "rt")["data"]
    # every broken answer counted once, though each row ended valid
    assert status["invalid_answers"] == {"invalid_json": retried}
    assert status["result_counts"] == {"ok": 10, "failed": 0, "truncated": 0}
    text = cli("status", "rt").stdout
    assert f"{retried} invalid answer(s): {retried} invalid_json" in text


# --------------------------------------------------------------------------------------
# Bad checks in the config: refused at create, with the file, the line and the field


@pytest.mark.parametrize(
    ("output", "field", "message"),
    [
        ({"validate": {"regex": "([a-z"}}, "regex",
         "output.validate.regex is not a valid regular expression: unterminated character set at position 1"),
        ({"validate": {"json_schema": "nowhere.json"}}, "json_schema", "output.validate.json_schema: cannot read "),
        ({"validate": {"json_schema": "rows.jsonl"}}, "json_schema", "output.validate.json_schema: "),
        ({"validate": {"json_schema": {"type": "strnig"}}}, "json_schema",
         "output.validate.json_schema is not a valid JSON Schema: 'strnig' is not valid"),
        ({"validate": {"function": "missing:check"}}, "function",
         "output.validate.function: cannot load hook missing:check: no module 'missing' in"),
        ({"validate": {"function": "hooks:nothing"}}, "function",
         "output.validate.function: cannot load hook hooks:nothing: "),
        ({"validate": {"choices": []}}, "choices", "output.validate.choices"),
        ({"parse": "broken:parse"}, "parse", "output.parse: cannot load hook broken:parse: importing "),
        ({"parse": "yaml"}, "parse", "output.parse must be `text` or `json` or a hook written module:function"),
        ({"fallback": "hooks"}, "fallback", "output.fallback"),
        ({"fallback": "missing:mask"}, "fallback", "output.fallback: cannot load hook missing:mask"),
        ({"on_invalid": "fallback"}, "on_invalid", "output.on_invalid is fallback but output.fallback is not set"),
        ({"fields": ["a"]}, "fields", "output.fields needs a JSON answer"),
    ],
)
def test_a_bad_check_is_a_config_error_at_create(cli, runs_dir, tmp_path, output, field, message):
    hooks(tmp_path, "def check(value):\n    return True\n")
    hooks(tmp_path, "import nonexistent_module_xyz\n", name="broken")
    config = write_job(tmp_path, output={"key": "verdict", **output})
    text = config.read_text().splitlines()
    line = next(n for n, t in enumerate(text, 1) if t.strip().startswith(f"{field}:"))
    result = cli("create", config, code=2)
    stderr = " ".join(result.stderr.split())
    assert f"job.yaml line {line}: {message}" in stderr
    assert "Traceback" not in result.output
    assert not runs_dir.exists() or not any(p.name != ".locks" for p in runs_dir.iterdir())


def test_a_hook_gone_after_create_stops_process_until_it_is_back(cli, emulator, runs_dir, tmp_path):
    hooks(tmp_path, "def check(value):\n    return 'number 2' not in value\n")
    config = write_job(tmp_path, review_rows(3), output={"key": "verdict", "validate": {"function": "hooks:check"}},
                       limits={"max_attempts": 1})
    cli("create", config, "--run", "gone")
    (tmp_path / "hooks.py").rename(tmp_path / "away.py")
    result = cli("run", "gone", "--wait", "--poll-interval", "0", code=2)
    assert "a hook of this run cannot be loaded: no module 'hooks' in" in result.stderr
    assert "restore the module there" in result.stderr
    assert not (runs_dir / "gone" / "output.jsonl").exists()
    (tmp_path / "away.py").rename(tmp_path / "hooks.py")
    run(cli, "gone", "gone", code=6)  # the answers were kept: merged now, nothing sent again
    assert errors(read_jsonl(runs_dir / "gone" / "output.jsonl")) == [None, "invalid_function", None]
    assert emulator.counts["batch_creates"] == 1


def test_every_answer_field_survives_the_snapshot(tmp_path):
    """The run reads its config snapshot: every new field, the schema file's content and the hooks'
    directory come back from it as they were loaded from the original."""
    import dataclasses

    from batchpipe.config import load_config, snapshot_yaml

    hooks(tmp_path, "def check(value):\n    return True\n\ndef mask(row):\n    return 'x'\n")
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    config = write_job(tmp_path, params={"response_format": SCHEMA_FORMAT}, output={
        "key": "verdict", "fields": ["sentiment"], "meta": True, "on_invalid": "fallback", "fallback": "hooks:mask",
        "validate": {"json": True, "json_schema": "s.json", "regex": ".*", "choices": ["a", 1], "function": "hooks:check"},
    })  # fmt: skip
    cfg = load_config(config, check_hooks=True)
    assert cfg.output.validate.json_schema == SCHEMA and cfg.hook_directory() == tmp_path.resolve()
    elsewhere = tmp_path / "run" / "config.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(snapshot_yaml(cfg), encoding="utf-8")
    again = load_config(elsewhere)
    assert dataclasses.replace(again, source=cfg.source) == cfg
    assert again.hook_directory() == tmp_path.resolve()  # not the run dir the snapshot sits in


def test_hooks_from_a_hooks_dir_of_their_own(cli, emulator, runs_dir, tmp_path):
    (tmp_path / "shared").mkdir()
    hooks(tmp_path / "shared", "def short(text):\n    return text[:10]\n")
    config = write_job(tmp_path / "job", review_rows(2), output={"key": "verdict", "parse": "hooks:short"},
                       hooks_dir="../shared")
    run(cli, config, "hd")
    assert [r["verdict"] for r in read_jsonl(runs_dir / "hd" / "output.jsonl")] == ["echo: Revi"] * 2
    assert f"hooks_dir: {(tmp_path / 'shared').resolve()}" in (runs_dir / "hd" / "config.yaml").read_text()
    missing = write_job(tmp_path / "job", review_rows(2), name="other", output={"key": "v", "parse": "hooks:short"},
                        hooks_dir="nowhere")
    result = cli("create", missing, code=2)
    line = missing.read_text().splitlines().index("hooks_dir: nowhere") + 1
    assert f"other.yaml line {line}: hooks_dir is not a directory: " in " ".join(result.stderr.split())
