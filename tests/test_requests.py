"""Templates, input rows and request lines: pure functions over files under tmp_path."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from types import MappingProxyType

import orjson
import pytest

from batchpipe.config import ENDPOINTS, InputConfig, JobConfig, load_config
from batchpipe.errors import ConfigError, ExitCode, InputError
from batchpipe.pipeline.inputs import Row, iter_rows
from batchpipe.pipeline.requests import Request, build_body, render_requests
from batchpipe.pipeline.template import MissingField, TemplateSyntaxError, compile_template, lookup

# --------------------------------------------------------------------------------------
# Templates


@pytest.mark.parametrize(
    ("text", "row", "out"),
    [
        ("Review: {text}", {"text": "fine"}, "Review: fine"),
        ("no placeholders", {}, "no placeholders"),
        ("{{literal}} {{ and }}", {}, "{literal} { and }"),
        ("{{{text}}}", {"text": "x"}, "{x}"),
        ("{user.name} / {user.address.city}", {"user": {"name": "Ada", "address": {"city": "London"}}}, "Ada / London"),
        ("{tags.0} and {tags.1}", {"tags": ["a", "b"]}, "a and b"),
        ("{rows.1.v}", {"rows": [{"v": 1}, {"v": 2}]}, "2"),
        ("{m.0}", {"m": {"0": "key zero"}}, "key zero"),
        ("{n} {f} {t} {b}", {"n": 3, "f": 1.5, "t": True, "b": False}, "3 1.5 true false"),
        ("{obj}", {"obj": {"a": "é", "b": [1, None]}}, '{"a":"é","b":[1,null]}'),
        ("{lst}", {"lst": ["x", 2]}, '["x",2]'),
        ("{Review Text}", {"Review Text": "csv header with a space"}, "csv header with a space"),
        ("{empty}", {"empty": ""}, ""),
        ("{text} {text}", {"text": "twice"}, "twice twice"),
        ("line1\n{text}\n", {"text": "x"}, "line1\nx\n"),
    ],
)
def test_template_renders(text: str, row: dict, out: str) -> None:
    assert compile_template(text).render(row) == out


def test_template_fields_unique_in_order() -> None:
    t = compile_template("{b} {a.x} {b} {{c}} {tags.0}")
    assert t.fields == ("b", "a.x", "tags.0")
    assert t.text == "{b} {a.x} {b} {{c}} {tags.0}"


@pytest.mark.parametrize(
    ("text", "column", "expect"),
    [
        ("abc {text", 5, "never closed"),
        ("abc text}", 9, "no matching '{'"),
        ("a {} b", 3, "empty placeholder"),
        ("a { } b", 3, "empty placeholder"),
        ("{x:>10}", 3, "format specs"),
        ("{x!r}", 3, "conversions"),
        ("{tags[0]}", 6, "tags.0"),
        ("{a{b}}", 3, "inside another"),
        ("{ x }", 2, "spaces"),
        ("{a..b}", 2, "empty part"),
        ("{.a}", 2, "empty part"),
        ("{a.}", 2, "empty part"),
        ("}", 1, "no matching"),
        ("{", 1, "never closed"),
    ],
)
def test_template_syntax_errors(text: str, column: int, expect: str) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(text)
    assert info.value.column == column
    assert expect in info.value.message


def test_no_attribute_access_or_code() -> None:
    # Dotted names are dict lookups, never attributes: a str row value has no "__class__" key.
    t = compile_template("{text.__class__}")
    with pytest.raises(MissingField) as info:
        t.render({"text": "x"})
    assert info.value.field == "text.__class__"
    assert "text" in info.value.reason


@pytest.mark.parametrize(
    ("text", "row", "field", "reason"),
    [
        ("{stars}", {"text": "x"}, "stars", "is missing"),
        ("{stars}", {"stars": None}, "stars", "is null"),
        ("{user.name}", {"user": {}}, "user.name", "is missing ('user' has no key 'name')"),
        ("{user.name}", {"user": None}, "user.name", "is missing ('user' is null)"),
        ("{user.name}", {"user": "Ada"}, "user.name", "is missing ('user' is text, not an object)"),
        ("{tags.2}", {"tags": ["a", "b"]}, "tags.2", "is missing (the list 'tags' has 2 items)"),
        ("{tags.first}", {"tags": ["a"]}, "tags.first", "index it with a number"),
        ("{tags.0}", {"tags": [None]}, "tags.0", "is null"),
    ],
)
def test_missing_and_null_fields(text: str, row: dict, field: str, reason: str) -> None:
    with pytest.raises(MissingField) as info:
        compile_template(text).render(row)
    assert info.value.field == field
    assert reason in info.value.reason


def test_lookup() -> None:
    row = {"a": {"b": [10, {"c": "deep"}]}}
    assert lookup(row, "a.b.1.c") == "deep"
    assert lookup(row, "a.b.0") == 10
    with pytest.raises(MissingField):
        lookup(row, "a.x")


# --------------------------------------------------------------------------------------
# Input rows


def jsonl_input(tmp_path: Path, content: bytes | str, name: str = "rows.jsonl") -> InputConfig:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return InputConfig(path=path, format="jsonl", id=None)


def csv_input(tmp_path: Path, content: bytes | str, name: str = "rows.csv") -> InputConfig:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return InputConfig(path=path, format="csv", id=None)


def input_error(cfg: InputConfig) -> InputError:
    with pytest.raises(InputError) as info:
        list(iter_rows(cfg))
    assert info.value.exit_code == ExitCode.BAD_INPUT == 2
    return info.value


def test_jsonl_rows_with_bom_and_blank_lines(tmp_path: Path) -> None:
    cfg = jsonl_input(tmp_path, b'\xef\xbb\xbf{"a": 1}\n\n   \n{"a": 2}\r\n{"a": "\xc3\xa9"}')
    rows = list(iter_rows(cfg))
    assert rows == [Row(1, 1, {"a": 1}), Row(2, 4, {"a": 2}), Row(3, 5, {"a": "é"})]


def test_jsonl_bad_json_names_file_and_line(tmp_path: Path) -> None:
    cfg = jsonl_input(tmp_path, '{"a": 1}\n\n{"a": 2,}\n')
    err = input_error(cfg)
    assert "rows.jsonl line 3: not valid JSON" in err.message
    assert "column" in err.message
    assert err.hint and "line 3" in err.hint


@pytest.mark.parametrize(
    ("line", "kind"), [("[1, 2]", "a list"), ('"text"', "a string"), ("3", "a number"), ("null", "null")]
)
def test_jsonl_line_not_an_object(tmp_path: Path, line: str, kind: str) -> None:
    err = input_error(jsonl_input(tmp_path, '{"a": 1}\n' + line + "\n"))
    assert "rows.jsonl line 2: expected a JSON object" in err.message
    assert kind in err.message


def test_jsonl_two_objects_on_one_line(tmp_path: Path) -> None:
    err = input_error(jsonl_input(tmp_path, '{"a": 1}{"a": 2}\n'))
    assert "rows.jsonl line 1: not valid JSON" in err.message


def test_jsonl_not_utf8(tmp_path: Path) -> None:
    err = input_error(jsonl_input(tmp_path, b'{"a": 1}\n{"a": "caf\xe9"}\n'))
    assert "rows.jsonl line 2: not valid UTF-8" in err.message


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    assert "no data rows" in input_error(jsonl_input(tmp_path, "\n\n")).message
    assert "no data rows" in input_error(csv_input(tmp_path, "a,b\n")).message
    assert "no data rows" in input_error(csv_input(tmp_path, "", "empty.csv")).message


def test_missing_input_file(tmp_path: Path) -> None:
    err = input_error(InputConfig(path=tmp_path / "gone.jsonl", format="jsonl", id=None))
    assert "gone.jsonl" in err.message and "not found" in err.message


def test_rows_are_streamed(tmp_path: Path) -> None:
    cfg = jsonl_input(tmp_path, '{"a": 1}\nnot json\n')
    rows = iter_rows(cfg)
    assert next(rows).data == {"a": 1}  # the bad line is only read when asked for
    with pytest.raises(InputError):
        next(rows)


def test_csv_rows(tmp_path: Path) -> None:
    content = '\ufeffid,text,stars\nr1,"good, really",5\n\nr2,"two\nlines",\nr3,plain,3\n'
    rows = list(iter_rows(csv_input(tmp_path, content)))
    assert rows == [
        Row(1, 2, {"id": "r1", "text": "good, really", "stars": "5"}),
        Row(2, 4, {"id": "r2", "text": "two\nlines", "stars": ""}),
        Row(3, 6, {"id": "r3", "text": "plain", "stars": "3"}),
    ]


def test_csv_crlf(tmp_path: Path) -> None:
    rows = list(iter_rows(csv_input(tmp_path, "a,b\r\n1,2\r\n3,4\r\n")))
    assert [(r.line_no, r.data) for r in rows] == [(2, {"a": "1", "b": "2"}), (3, {"a": "3", "b": "4"})]


@pytest.mark.parametrize(("line", "more"), [("1,2,3", "more"), ("1", "fewer")])
def test_csv_wrong_number_of_fields(tmp_path: Path, line: str, more: str) -> None:
    err = input_error(csv_input(tmp_path, f"a,b\n1,2\n{line}\n"))
    assert "rows.csv line 3:" in err.message
    assert more in err.message and "header (line 1)" in err.message


def test_csv_header_problems(tmp_path: Path) -> None:
    assert "appears twice" in input_error(csv_input(tmp_path, "a,b,a\n1,2,3\n")).message
    assert "column 3 of the header has no name" in input_error(csv_input(tmp_path, "a,b,\n1,2,3\n")).message


def test_csv_not_utf8(tmp_path: Path) -> None:
    err = input_error(csv_input(tmp_path, b"a,b\n1,2\n3,caf\xe9\n"))
    assert "rows.csv line 3: not valid UTF-8" in err.message


def test_csv_long_field(tmp_path: Path) -> None:
    big = "x" * 300_000  # beyond csv's default 128 KiB field limit
    rows = list(iter_rows(csv_input(tmp_path, f"text\n{big}\n")))
    assert rows[0].data["text"] == big


# --------------------------------------------------------------------------------------
# Request lines


def make_job(
    tmp_path: Path,
    rows: str,
    *,
    user: str = "Review ({stars} stars): {text}",
    system: str | None = None,
    endpoint: str = "/v1/chat/completions",
    id_field: str | None = None,
    params: str = "",
    name: str = "reviews.jsonl",
) -> JobConfig:
    (tmp_path / name).write_text(rows, encoding="utf-8")
    lines = ["model: gpt-4o-mini", f"endpoint: {endpoint}", "input:", f"  path: {name}"]
    if id_field:
        lines.append(f"  id: {id_field}")
    lines += ["prompt:", f"  user: {orjson.dumps(user).decode()}"]
    if system is not None:
        lines.append(f"  system: {orjson.dumps(system).decode()}")
    if params:
        lines += ["params:", textwrap.indent(textwrap.dedent(params).strip(), "  ")]
    config = tmp_path / "configs" / "job.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text("\n".join(lines).replace(f"path: {name}", f"path: ../{name}") + "\n", encoding="utf-8")
    return load_config(config)


REVIEWS = '{"review_id": "r-0001", "text": "Loved it", "stars": 5, "meta": {"id": 7}}\n'


def parsed(req: Request) -> dict:
    assert req.line.endswith(b"\n") and req.line.count(b"\n") == 1
    return orjson.loads(req.line)


def test_chat_completions_line(tmp_path: Path) -> None:
    cfg = make_job(tmp_path, REVIEWS, system="You judge film reviews.", params="temperature: 0\nmax_tokens: 20")
    (req,) = list(render_requests(cfg))
    assert req.custom_id == "1" and req.row_no == 1 and req.line_no == 1
    assert parsed(req) == {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You judge film reviews."},
                {"role": "user", "content": "Review (5 stars): Loved it"},
            ],
            "temperature": 0,
            "max_tokens": 20,
        },
    }
    # compact, deterministic bytes, key order as built
    assert req.line.startswith(b'{"custom_id":"1","method":"POST","url":"/v1/chat/completions","body":{"model"')


def body_for(endpoint: str, system: str | None, tmp_path: Path) -> dict:
    cfg = make_job(tmp_path, REVIEWS, endpoint=endpoint, system=system, params="seed: 1")
    return build_body(cfg, system, "hello")


@pytest.mark.parametrize(
    ("endpoint", "system", "body"),
    [
        (
            "/v1/chat/completions",
            None,
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "seed": 1},
        ),
        (
            "/v1/chat/completions",
            "sys",
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}],
                "seed": 1,
            },
        ),
        ("/v1/responses", None, {"model": "gpt-4o-mini", "input": "hello", "seed": 1}),
        ("/v1/responses", "sys", {"model": "gpt-4o-mini", "input": "hello", "instructions": "sys", "seed": 1}),
        ("/v1/embeddings", None, {"model": "gpt-4o-mini", "input": "hello", "seed": 1}),
        ("/v1/moderations", None, {"model": "gpt-4o-mini", "input": "hello", "seed": 1}),
        ("/v1/completions", None, {"model": "gpt-4o-mini", "prompt": "hello", "seed": 1}),
    ],
)
def test_body_per_endpoint(tmp_path: Path, endpoint: str, system: str | None, body: dict) -> None:
    assert body_for(endpoint, system, tmp_path) == body


def test_every_endpoint_has_a_body(tmp_path: Path) -> None:
    for i, endpoint in enumerate(ENDPOINTS):
        d = tmp_path / str(i)
        d.mkdir()
        (req,) = list(render_requests(make_job(d, REVIEWS, endpoint=endpoint)))
        assert parsed(req)["url"] == endpoint


def test_build_body_refuses_system_where_there_is_none(tmp_path: Path) -> None:
    cfg = make_job(tmp_path, REVIEWS, endpoint="/v1/embeddings")
    with pytest.raises(ConfigError):
        build_body(cfg, "sys", "hello")


def test_custom_id_from_a_field(tmp_path: Path) -> None:
    rows = REVIEWS + '{"review_id": 42, "text": "Meh", "stars": 3}\n'
    reqs = list(render_requests(make_job(tmp_path, rows, id_field="review_id")))
    assert [r.custom_id for r in reqs] == ["r-0001", "42"]
    assert [parsed(r)["custom_id"] for r in reqs] == ["r-0001", "42"]


def test_custom_id_from_a_nested_field(tmp_path: Path) -> None:
    (req,) = list(render_requests(make_job(tmp_path, REVIEWS, id_field="meta.id")))
    assert req.custom_id == "7"


def test_custom_id_from_row_number_skips_blank_lines(tmp_path: Path) -> None:
    rows = REVIEWS + "\n" + REVIEWS + REVIEWS
    reqs = list(render_requests(make_job(tmp_path, rows)))
    assert [(r.custom_id, r.row_no, r.line_no) for r in reqs] == [("1", 1, 1), ("2", 2, 3), ("3", 3, 4)]


def test_duplicate_ids_are_not_checked_here(tmp_path: Path) -> None:
    reqs = list(render_requests(make_job(tmp_path, REVIEWS + REVIEWS, id_field="review_id")))
    assert [r.custom_id for r in reqs] == ["r-0001", "r-0001"]


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("null", "is null"),
        ('""', "is empty"),
        ("1.5", "got 1.5"),
        ("true", "got true"),
        ('{"a": 1}', 'got {"a":1}'),
        ("[1]", "got [1]"),
    ],
)
def test_bad_custom_id(tmp_path: Path, monkeypatch, value: str, expect: str) -> None:
    monkeypatch.chdir(tmp_path)
    row = f'{{"rid": {value}, "text": "x", "stars": 1}}\n'
    cfg = make_job(tmp_path, REVIEWS.replace('"review_id"', '"rid"') + row, id_field="rid")
    with pytest.raises(InputError) as info:
        list(render_requests(cfg))
    msg = info.value.message
    assert msg.startswith("reviews.jsonl line 2: id field 'rid' (input.id) "), msg
    assert expect in msg
    assert info.value.exit_code == 2


def test_missing_custom_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_job(tmp_path, REVIEWS + '{"text": "x", "stars": 1}\n', id_field="review_id")
    with pytest.raises(InputError) as info:
        list(render_requests(cfg))
    assert info.value.message == "reviews.jsonl line 2: id field 'review_id' (input.id) is missing"
    assert info.value.hint and "configs/job.yaml" in info.value.hint


def test_missing_field_names_file_line_row_id_and_field(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = "".join(
        orjson.dumps({"review_id": f"r-{i:04d}", "text": "t", "stars": 1}).decode() + "\n" for i in range(1, 12)
    )
    rows += '{"review_id": "r-0012", "text": "no stars"}\n'
    cfg = make_job(tmp_path, rows, id_field="review_id")
    with pytest.raises(InputError) as info:
        list(render_requests(cfg))
    err = info.value
    assert err.message == "reviews.jsonl line 12 (row id r-0012): field 'stars' used by prompt.user is missing"
    assert err.hint == "add the field to the row, or change the placeholder in configs/job.yaml"
    assert err.exit_code == 2


def test_missing_field_without_an_id_names_the_row_number(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_job(tmp_path, "\n" + REVIEWS + '{"text": "x", "stars": null}\n')
    with pytest.raises(InputError) as info:
        list(render_requests(cfg))
    assert info.value.message == "reviews.jsonl line 3 (row 2): field 'stars' used by prompt.user is null"


def test_missing_field_in_system_prompt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_job(tmp_path, REVIEWS, system="Language: {lang}")
    with pytest.raises(InputError) as info:
        list(render_requests(cfg))
    assert "field 'lang' used by prompt.system is missing" in info.value.message


def test_csv_job(tmp_path: Path) -> None:
    cfg = make_job(
        tmp_path,
        "review_id,text,stars\nr-1,\"Good, fun\",4\nr-2,Bad,1\n",
        id_field="review_id",
        name="reviews.csv",
    )
    reqs = list(render_requests(cfg))
    assert [(r.custom_id, r.line_no) for r in reqs] == [("r-1", 2), ("r-2", 3)]
    assert parsed(reqs[0])["body"]["messages"][0]["content"] == "Review (4 stars): Good, fun"


def test_structured_values_and_unicode_in_prompts(tmp_path: Path) -> None:
    rows = '{"text": {"title": "Amélie", "tags": ["drôle", 1]}, "stars": 4.5}\n'
    (req,) = list(render_requests(make_job(tmp_path, rows)))
    content = parsed(req)["body"]["messages"][0]["content"]
    assert content == 'Review (4.5 stars): {"title":"Amélie","tags":["drôle",1]}'
    assert "Amélie".encode() in req.line  # UTF-8, not \\u escapes


def test_params_are_copied_into_every_body_unchanged(tmp_path: Path) -> None:
    cfg = make_job(tmp_path, REVIEWS + REVIEWS, params="response_format:\n  type: json_object\nstop: [END]")
    bodies = [parsed(r)["body"] for r in render_requests(cfg)]
    assert all(b["response_format"] == {"type": "json_object"} and b["stop"] == ["END"] for b in bodies)
    assert dict(cfg.params) == {"response_format": {"type": "json_object"}, "stop": ["END"]}


def test_hand_built_config_with_a_reserved_param_is_refused(tmp_path: Path) -> None:
    cfg = make_job(tmp_path, REVIEWS)
    bad = dataclasses.replace(cfg, params=MappingProxyType({"stream": True}))
    with pytest.raises(ConfigError):
        next(render_requests(bad))


def test_input_errors_surface_through_render_requests(tmp_path: Path) -> None:
    cfg = make_job(tmp_path, REVIEWS + "{oops\n")
    reqs = render_requests(cfg)
    assert next(reqs).custom_id == "1"
    with pytest.raises(InputError) as info:
        next(reqs)
    assert "line 2: not valid JSON" in info.value.message
