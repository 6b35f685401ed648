"""The emulator, driven over loopback by the real `openai` client (no mocks, no sleeps).

Timeline tests use a ManualClock injected into the emulator and move it by hand; everything else
runs with phase lengths of 0, where a batch is `completed` on the first retrieve after create.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import sdk

from batchpipe.emulator import Emulator, EmulatorOptions, ManualClock, answer_for

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
FAST = dict(validating_seconds=0.0, in_progress_seconds=0.0, finalizing_seconds=0.0, cancelling_seconds=0.0)


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(EmulatorOptions(**FAST)) as emulator:
        yield emulator


@pytest.fixture
def client(emu: Emulator) -> openai.OpenAI:
    return sdk(emu)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def slow_emu(clock: ManualClock) -> Iterator[Emulator]:
    """validating 10 s, in_progress 100 s, finalizing 10 s, cancelling 5 s, on a hand-moved clock."""
    options = EmulatorOptions(
        validating_seconds=10, in_progress_seconds=100, finalizing_seconds=10, cancelling_seconds=5
    )
    with Emulator(options, clock=clock) as emulator:
        yield emulator


def chat_line(custom_id: str, text: Any, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body, **extra}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def submit(client: openai.OpenAI, lines: list[Any] | bytes, *, endpoint: str = CHAT, **kwargs: Any) -> Any:
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", **kwargs)


def read_jsonl(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def raw(
    emu: Emulator, path: str, *, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict, Any]:
    """An HTTP request without the SDK: (status, headers, parsed JSON body)."""
    root = emu.base_url.removesuffix("/v1")
    request = urllib.request.Request(root + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


# --- files -------------------------------------------------------------------------------------


def test_upload_retrieve_content_delete(client: openai.OpenAI) -> None:
    content = b'{"a": "\xc3\xa9"}\r\n{"b": 1}\n\n\xff trailing bytes, no newline'
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert uploaded.id.startswith("file-")
    assert (uploaded.object, uploaded.purpose, uploaded.status) == ("file", "batch", "processed")
    assert uploaded.filename == "in.jsonl"
    assert uploaded.bytes == len(content)
    assert uploaded.expires_at == uploaded.created_at + 30 * 86400  # batch files default-expire after 30 d

    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).content == content  # byte-exact

    deleted = client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(uploaded.id)


def test_upload_expiry_and_other_purposes(client: openai.OpenAI) -> None:
    short = client.files.create(
        file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert short.expires_at == short.created_at + 3600
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    assert other.expires_at is None  # only batch files expire by default

    with pytest.raises(openai.BadRequestError) as error:
        too_short = {"anchor": "created_at", "seconds": 60}
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch", expires_after=too_short)  # type: ignore
    assert error.value.param == "expires_after.seconds"
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert (error.value.param, error.value.code) == ("purpose", "invalid_value")


def test_expires_after_dot_form_is_accepted(emu: Emulator) -> None:
    # Azure docs write the nested field as `expires_after.seconds`; the SDK uses brackets.
    boundary = "b0undary"
    parts = [("purpose", None, b"batch"), ("expires_after.anchor", None, b"created_at"),
             ("expires_after.seconds", None, b"7200"), ("file", "x.jsonl", b"{}\n")]
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Authorization": "Bearer k", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, uploaded = raw(emu, "/v1/files", headers=headers, data=body)
    assert status == 200
    assert uploaded["expires_at"] == uploaded["created_at"] + 7200


def test_batch_upload_must_be_jsonl(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("input.csv", b"a,b\n"), purpose="batch")
    assert "Invalid file format for Batch API. Must be .jsonl" in error.value.message
    assert error.value.type == "invalid_request_error"


def test_list_files_paging_order_and_purpose(client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(5)]
    other = client.files.create(file=("x.txt", b"x"), purpose="user_data").id

    everything = [f.id for f in client.files.list()]
    assert everything == [other, *reversed(ids)]  # default order: newest first

    page = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in page.data] == [ids[4], ids[3]] and page.has_more
    page = client.files.list(purpose="batch", limit=2, after=ids[3])
    assert [f.id for f in page.data] == [ids[2], ids[1]] and page.has_more
    page = client.files.list(purpose="batch", limit=2, after=ids[1])
    assert [f.id for f in page.data] == [ids[0]] and not page.has_more

    # The SDK's auto-paging follows `after` until has_more is false.
    assert [f.id for f in client.files.list(purpose="batch", limit=2, order="asc")] == ids

    client.files.delete(ids[2])
    assert [f.id for f in client.files.list(purpose="batch", limit=2, after=ids[2])] == [ids[1], ids[0]]


def test_list_envelope_fields(emu: Emulator, client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(3)]
    status, headers, page = raw(emu, "/v1/files?limit=2&order=asc", headers={"Authorization": "Bearer k"})
    assert status == 200 and headers["x-request-id"].startswith("req_")
    assert page == {
        "object": "list",
        "data": page["data"],
        "first_id": ids[0],
        "last_id": ids[1],
        "has_more": True,
    }
    status, _, empty = raw(emu, "/v1/batches", headers={"Authorization": "Bearer k"})
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


# --- batches: create, retrieve, list -----------------------------------------------------------


def test_create_retrieve_and_metadata_round_trip(client: openai.OpenAI) -> None:
    metadata = {f"key{i}": "v" * 512 for i in range(15)} | {"k" * 64: "é ünïcode"}
    created = submit(client, [chat_line("a", "hi")], metadata=metadata)
    assert created.id.startswith("batch_")
    assert (created.object, created.status, created.endpoint) == ("batch", "validating", CHAT)
    assert created.completion_window == "24h"
    assert created.expires_at == created.created_at + 86400
    assert created.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert created.output_file_id is None and created.error_file_id is None and created.errors is None
    assert created.metadata == metadata

    fetched = client.batches.retrieve(created.id)
    assert fetched.metadata == metadata and fetched.model == MODEL
    listed = next(b for b in client.batches.list() if b.id == created.id)
    assert listed.metadata == metadata

    without = submit(client, [chat_line("a", "hi")])
    assert without.metadata is None


def test_create_time_errors(client: openai.OpenAI) -> None:
    file_id = client.files.create(file=("in.jsonl", jsonl([chat_line("a", "x")])), purpose="batch").id

    def create_error(**overrides: Any) -> openai.BadRequestError:
        params = dict(input_file_id=file_id, endpoint=CHAT, completion_window="24h") | overrides
        with pytest.raises(openai.BadRequestError) as error:
            client.batches.create(**params)
        return error.value

    error = create_error(endpoint="/v1/nope")
    assert (error.param, error.code, error.type) == ("endpoint", "invalid_value", "invalid_request_error")
    assert "Supported values are" in error.message
    assert create_error(completion_window="48h").param == "completion_window"
    error = create_error(metadata={"tags": ["a"]})
    assert (error.param, error.code) == ("metadata.tags", "invalid_type")
    assert create_error(metadata={str(i): "v" for i in range(17)}).code == "object_above_max_properties"
    assert create_error(metadata={"k" * 65: "v"}).code == "string_above_max_length"
    assert create_error(metadata={"k": "v" * 513}).param == "metadata.k"
    error = create_error(input_file_id="file-doesnotexist")
    assert error.param == "file_id" and "Cannot find file file-doesnotexist" in error.message


def test_list_batches_newest_first_with_paging(emu: Emulator, client: openai.OpenAI) -> None:
    ids = [submit(client, [chat_line("a", f"hi {i}")]).id for i in range(5)]
    newest_first = list(reversed(ids))

    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2] and page.has_more
    page = client.batches.list(limit=2, after=newest_first[1])
    assert [b.id for b in page.data] == newest_first[2:4] and page.has_more
    page = client.batches.list(limit=2, after=newest_first[3])
    assert [b.id for b in page.data] == newest_first[4:] and not page.has_more

    before = emu.counts["requests"]
    assert [b.id for b in client.batches.list(limit=2)] == newest_first  # SDK auto-paging
    assert emu.counts["requests"] - before == 3  # three pages

    assert len(client.batches.list().data) == 5  # default limit 20
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


# --- timeline ----------------------------------------------------------------------------------


def test_zero_phases_complete_on_first_retrieve(client: openai.OpenAI) -> None:
    created = submit(client, [chat_line("a", "hi")])
    assert created.status == "validating"
    done = client.batches.retrieve(created.id)
    assert done.status == "completed"
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at  # type: ignore[operator]


def test_full_timeline_with_growing_counts(slow_emu: Emulator, clock: ManualClock) -> None:
    client = sdk(slow_emu)
    created = submit(client, [chat_line(f"r{i}", f"hi {i}") for i in range(10)])
    t0 = created.created_at

    def at(offset: float) -> Any:
        clock.set(t0 + offset)
        return client.batches.retrieve(created.id)

    batch = at(5)
    assert batch.status == "validating" and batch.in_progress_at is None
    assert batch.request_counts.total == 0

    batch = at(10)
    assert (batch.status, batch.in_progress_at) == ("in_progress", t0 + 10)
    assert batch.request_counts.model_dump() == {"total": 10, "completed": 0, "failed": 0}
    assert at(60).request_counts.completed == 5  # halfway through in_progress
    assert at(101).request_counts.completed == 9

    batch = at(110)
    assert (batch.status, batch.finalizing_at) == ("finalizing", t0 + 110)
    assert batch.request_counts.completed == 10 and batch.output_file_id is None

    batch = at(125)
    assert (batch.status, batch.completed_at) == ("completed", t0 + 120)
    stamps = [batch.created_at, batch.in_progress_at, batch.finalizing_at, batch.completed_at]
    assert stamps == sorted(stamps)
    assert batch.request_counts.model_dump() == {"total": 10, "completed": 10, "failed": 0}
    assert batch.error_file_id is None
    output = client.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert (output.purpose, output.created_at) == ("batch_output", t0 + 120)
    assert len(read_jsonl(client, output.id)) == 10


def test_cancel_midway_keeps_partial_output(slow_emu: Emulator, clock: ManualClock) -> None:
    client = sdk(slow_emu)
    created = submit(client, [chat_line(f"r{i}", f"hi {i}") for i in range(10)])
    t0 = created.created_at
    clock.set(t0 + 50)  # 4 of 10 requests have run

    cancelling = client.batches.cancel(created.id)
    assert (cancelling.status, cancelling.cancelling_at) == ("cancelling", t0 + 50)
    assert cancelling.in_progress_at == t0 + 10
    assert client.batches.retrieve(created.id).status == "cancelling"
    assert slow_emu.counts["cancels"] == 1

    clock.set(t0 + 60)
    batch = client.batches.retrieve(created.id)
    assert (batch.status, batch.cancelled_at) == ("cancelled", t0 + 55)
    assert batch.finalizing_at is None and batch.completed_at is None
    assert batch.request_counts.model_dump() == {"total": 10, "completed": 4, "failed": 0}

    output = read_jsonl(client, batch.output_file_id)  # type: ignore[arg-type]
    assert sorted(line["custom_id"] for line in output) == ["r0", "r1", "r2", "r3"]
    errors = read_jsonl(client, batch.error_file_id)  # type: ignore[arg-type]
    assert sorted(line["custom_id"] for line in errors) == [f"r{i}" for i in range(4, 10)]
    assert {(line["response"] is None, line["error"]["code"]) for line in errors} == {(True, "batch_cancelled")}

    again = client.batches.cancel(created.id)  # cancelling a cancelled batch is accepted
    assert again.status == "cancelled" and slow_emu.counts["cancels"] == 1


def test_cancel_conflicts_and_unknown_ids(client: openai.OpenAI) -> None:
    done = submit(client, [chat_line("a", "hi")])
    assert client.batches.retrieve(done.id).status == "completed"
    with pytest.raises(openai.ConflictError) as error:
        client.batches.cancel(done.id)
    assert error.value.body["message"] == "Cannot cancel a batch with status 'completed'."

    failed = submit(client, b"not json\n")
    assert client.batches.retrieve(failed.id).status == "failed"
    with pytest.raises(openai.ConflictError, match="status 'failed'"):
        client.batches.cancel(failed.id)

    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_unknown")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_unknown")


def test_expiry_with_partial_output(clock: ManualClock) -> None:
    options = EmulatorOptions(validating_seconds=0, in_progress_seconds=100, finalizing_seconds=0,
                              completion_window_seconds=50)
    with Emulator(options, clock=clock) as emu:
        client = sdk(emu)
        created = submit(client, [chat_line(f"r{i}", "x") for i in range(10)])
        assert created.expires_at == created.created_at + 50
        clock.advance(49)
        assert client.batches.retrieve(created.id).status == "in_progress"
        clock.advance(1)
        batch = client.batches.retrieve(created.id)
        assert (batch.status, batch.expired_at) == ("expired", created.created_at + 50)
        assert batch.request_counts.model_dump() == {"total": 10, "completed": 5, "failed": 0}
        assert len(read_jsonl(client, batch.output_file_id)) == 5  # type: ignore[arg-type]
        errors = read_jsonl(client, batch.error_file_id)  # type: ignore[arg-type]
        assert {line["error"]["code"] for line in errors} == {"batch_expired"} and len(errors) == 5


def test_files_expire(slow_emu: Emulator, clock: ManualClock) -> None:
    client = sdk(slow_emu)
    uploaded = client.files.create(
        file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    clock.advance(3599)
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    clock.advance(1)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


# --- validation --------------------------------------------------------------------------------


def failed_batch(client: openai.OpenAI, lines: list[Any] | bytes, **kwargs: Any) -> Any:
    created = submit(client, lines, **kwargs)
    batch = client.batches.retrieve(created.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert batch.errors.object == "list"
    return batch


def error_tuples(batch: Any) -> list[tuple[str, str | None, int | None]]:
    return [(e.code, e.param, e.line) for e in batch.errors.data]


def test_validation_reports_each_bad_line_in_order(client: openai.OpenAI) -> None:
    no_model = chat_line("nm", "x")
    del no_model["body"]["model"]
    no_messages = chat_line("nmsg", "x")
    del no_messages["body"]["messages"]
    lines: list[Any] = [
        chat_line("ok1", "fine"),  # 1
        b"{not json",  # 2
        {"custom_id": "m", "method": "POST", "url": CHAT},  # 3: no body
        {"method": "POST", "url": CHAT, "body": {"model": MODEL}},  # 4: no custom_id
        chat_line("u", "x") | {"url": "/v1/embeddings"},  # 5
        chat_line("g", "x") | {"method": "GET"},  # 6
        chat_line("s", "x") | {"body": chat_line("s", "x")["body"] | {"stream": True}},  # 7
        no_model,  # 8
        chat_line("llama", "x", model="llama-nope"),  # 9
        chat_line("ok1", "again"),  # 10: duplicate of line 1
        chat_line("other", "x", model="gpt-4.1"),  # 11: a second model
        no_messages,  # 12
        chat_line("ok2", "fine"),  # 13
    ]
    batch = failed_batch(client, lines)
    assert error_tuples(batch) == [
        ("invalid_json_line", None, 2),
        ("missing_required_parameter", "body", 3),
        ("missing_required_parameter", "custom_id", 4),
        ("invalid_url", "url", 5),
        ("invalid_request", "method", 6),
        ("streaming_unsupported", "body.stream", 7),
        ("invalid_request", "body.model", 8),
        ("model_not_found", "body.model", 9),
        ("duplicate_custom_id", "custom_id", 10),
        ("mismatched_model", "body.model", 11),
        ("invalid_request", "body.messages", 12),
    ]
    assert "llama-nope" in batch.errors.data[7].message
    assert len(client.files.list(purpose="batch_output").data) == 0  # nothing ran


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([chat_line("a", "x"), chat_line("b", "x"), chat_line("a", "x")], [("duplicate_custom_id", "custom_id", 3)]),
        ([chat_line("a", "x"), chat_line("b", "x", model="gpt-4o")], [("mismatched_model", "body.model", 2)]),
        ([chat_line("a", "x", model="llama-nope")], [("model_not_found", "body.model", 1)]),
        (b"", [("empty_file", None, None)]),
        (b"\n  \n", [("empty_file", None, None)]),
    ],
    ids=["duplicate", "mixed-models", "unknown-model", "empty", "blank"],
)
def test_single_validation_failures(client: openai.OpenAI, lines: Any, expected: list[Any]) -> None:
    assert error_tuples(failed_batch(client, lines)) == expected


def test_too_many_requests() -> None:
    with Emulator(EmulatorOptions(**FAST, max_requests_per_batch=3)) as emu:
        client = sdk(emu)
        at_limit = submit(client, [chat_line(f"r{i}", "x") for i in range(3)])
        assert client.batches.retrieve(at_limit.id).status == "completed"
        batch = failed_batch(client, [chat_line(f"r{i}", "x") for i in range(4)])
        assert error_tuples(batch) == [("too_many_tasks", None, None)]
    assert EmulatorOptions().max_requests_per_batch == 50_000


# --- results -----------------------------------------------------------------------------------


def test_shuffled_output_joins_by_custom_id(client: openai.OpenAI) -> None:
    texts = {f"row-{i}": f"question number {i}" for i in range(30)}
    lines = [chat_line(cid, text) for cid, text in texts.items()]
    parts = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "second"},
    ]
    lines.append(chat_line("parts", parts))
    batch = client.batches.retrieve(submit(client, lines).id)
    output = read_jsonl(client, batch.output_file_id)  # type: ignore[arg-type]
    order = [line["custom_id"] for line in output]
    assert sorted(order) == sorted([*texts, "parts"]) and order != [*texts, "parts"]

    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith("req_")
        body = line["response"]["body"]
        assert (body["object"], body["model"]) == ("chat.completion", MODEL)
        assert body["choices"][0]["finish_reason"] == "stop"
        expected = texts.get(line["custom_id"], "first second")
        assert body["choices"][0]["message"] == body["choices"][0]["message"] | {
            "role": "assistant", "content": f"echo: {expected}"}


def test_shuffle_seed_makes_order_reproducible() -> None:
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(20)]

    def output_order() -> list[str]:
        with Emulator(EmulatorOptions(**FAST, shuffle_seed=7)) as emu:
            client = sdk(emu)
            batch = client.batches.retrieve(submit(client, lines).id)
            return [line["custom_id"] for line in read_jsonl(client, batch.output_file_id)]  # type: ignore[arg-type]

    first = output_order()
    assert first == output_order() and first != [f"r{i}" for i in range(20)]


def test_fail_markers_go_to_the_error_file(client: openai.OpenAI) -> None:
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(6)]
    lines[1] = chat_line("r1", "please [[fail:500]]")
    lines[4] = chat_line("r4", "bad one [[fail:400]]")
    batch = client.batches.retrieve(submit(client, lines).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 4, "failed": 2}

    errors = {line["custom_id"]: line for line in read_jsonl(client, batch.error_file_id)}  # type: ignore[arg-type]
    assert set(errors) == {"r1", "r4"}
    assert errors["r1"]["response"]["status_code"] == 500 and errors["r1"]["error"] is None
    assert errors["r4"]["response"]["status_code"] == 400
    for line in errors.values():
        assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    assert errors["r1"]["response"]["body"]["error"]["type"] == "server_error"
    output = read_jsonl(client, batch.output_file_id)  # type: ignore[arg-type]
    assert sorted(line["custom_id"] for line in output) == ["r0", "r2", "r3", "r5"]


def test_all_failed_has_no_output_file(client: openai.OpenAI) -> None:
    batch = client.batches.retrieve(submit(client, [chat_line(f"r{i}", "[[fail:500]]") for i in range(3)]).id)
    assert batch.status == "completed"
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 3}
    assert batch.usage.total_tokens == 0


def test_batch_usage_sums_the_output_lines(client: openai.OpenAI) -> None:
    lines = [chat_line(f"r{i}", "word " * (i * 7)) for i in range(8)] + [chat_line("x", "[[fail:429]]")]
    batch = client.batches.retrieve(submit(client, lines).id)
    bodies = [line["response"]["body"] for line in read_jsonl(client, batch.output_file_id)]  # type: ignore[arg-type]
    prompt = sum(b["usage"]["prompt_tokens"] for b in bodies)
    completion = sum(b["usage"]["completion_tokens"] for b in bodies)
    assert prompt > 0 and completion > 0
    assert batch.usage.model_dump() == {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


@pytest.mark.parametrize(
    ("endpoint", "model", "body"),
    [
        ("/v1/responses", "gpt-4.1-mini", {"input": [{"role": "user", "content": "tell me"}]}),
        ("/v1/responses", "gpt-4.1-mini", {"input": "plain string"}),
        ("/v1/embeddings", "text-embedding-3-small", {"input": ["a", "b"]}),
        ("/v1/completions", "gpt-3.5-turbo-instruct", {"prompt": "once upon"}),
    ],
)
def test_other_endpoints_answer_like_answer_for(client: openai.OpenAI, endpoint: str, model: str, body: dict) -> None:
    body = {"model": model, **body}
    batch = submit(client, [{"custom_id": "one", "method": "POST", "url": endpoint, "body": body}], endpoint=endpoint)
    batch = client.batches.retrieve(batch.id)
    assert (batch.status, batch.model) == ("completed", model)
    [line] = read_jsonl(client, batch.output_file_id)  # type: ignore[arg-type]
    answer = line["response"]["body"]
    created = answer.get("created", answer.get("created_at", 0))
    assert answer == answer_for(endpoint, body, created=created)
    if endpoint == "/v1/responses":
        text = body["input"] if isinstance(body["input"], str) else "tell me"
        assert answer["output"][0]["content"][0]["text"] == f"echo: {text}"
    if endpoint == "/v1/completions":
        assert answer["choices"][0]["text"] == "echo: once upon"


# --- auth, headers, counters, lifecycle --------------------------------------------------------


def test_missing_or_empty_key_is_401(emu: Emulator) -> None:
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        status, response_headers, body = raw(emu, "/v1/batches", headers=headers)
        assert status == 401 and response_headers["x-request-id"].startswith("req_")
        assert set(body["error"]) == {"message", "type", "param", "code"}
    # The SDK refuses an empty api_key, but a header override sends an empty Authorization.
    blank = {"Authorization": ""}
    with openai.OpenAI(base_url=emu.base_url, api_key="x", max_retries=0, default_headers=blank) as keyless:
        with pytest.raises(openai.AuthenticationError):
            keyless.batches.list()


def test_every_response_carries_a_request_id(client: openai.OpenAI) -> None:
    response = client.batches.with_raw_response.list()
    assert response.headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.NotFoundError) as error:
        client.files.retrieve("file-missing")
    assert error.value.request_id and error.value.request_id.startswith("req_")
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        client.get("/unknown", cast_to=object)


def test_counts_and_duplicate_creates(emu: Emulator, client: openai.OpenAI) -> None:
    tag = {"batchpipe_run": "run1", "batchpipe_shard": "00001"}
    first = submit(client, [chat_line("a", "x")], metadata=tag | {"batchpipe_sha": "abc"})
    submit(client, [chat_line("a", "x")], metadata=tag)  # a second live batch for the same shard
    other_shard = {"batchpipe_run": "run1", "batchpipe_shard": "00002"}
    bad = submit(client, b"garbage\n", metadata=other_shard)
    assert client.batches.retrieve(bad.id).status == "failed"
    submit(client, [chat_line("a", "x")], metadata=other_shard)  # a retry after a failed batch is no duplicate
    submit(client, [chat_line("a", "x")])  # untagged

    counts = emu.counts
    assert counts["uploads"] == 5 and counts["batch_creates"] == 5 and counts["cancels"] == 0
    assert counts["creates_by_tag"] == {"run1/00001": 2, "run1/00002": 2}
    assert counts["duplicate_creates"] == 1
    assert counts["requests"] == 11
    assert client.batches.retrieve(first.id).metadata["batchpipe_sha"] == "abc"

    status, _, over_http = raw(emu, "/_emulator/counts")  # no key needed; not counted as a request
    assert status == 200 and over_http == emu.counts
    assert [b["id"] for b in emu.batches][0] == first.id
    assert {f["purpose"] for f in emu.files} == {"batch", "batch_output"}


def test_stop_cuts_kept_alive_connections() -> None:
    emu = Emulator(EmulatorOptions(**FAST)).start()
    client = sdk(emu)
    client.batches.list()  # opens a pooled keep-alive connection
    emu.stop()
    with pytest.raises(openai.APIConnectionError):
        client.batches.list()


def test_module_entry_point_serves_until_ctrl_c() -> None:
    command = [sys.executable, "-m", "batchpipe.emulator", "--port", "0", "--in-progress-seconds", "0"]
    # As in a terminal, Ctrl-C must reach the server: a suite started from a background job hands
    # its children SIGINT ignored (Python then never raises KeyboardInterrupt), so restore it.
    def interruptible() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=interruptible) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("batchpipe emulator listening on http://127.0.0.1:") and line.endswith("/v1")
            base_url = line.rsplit(" ", 1)[1]
            assert sdk(base_url).batches.list().data == []
            with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_emulator/counts", timeout=60) as response:
                assert json.loads(response.read())["requests"] == 1
            process.send_signal(signal.SIGINT)  # Ctrl-C: a clean exit
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
