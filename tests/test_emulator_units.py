"""The emulator's pure parts (validation, timeline, answers, results, multipart) and the store
without sockets, plus a concurrency check over HTTP."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import openai
import pytest

from batchpipe.emulator import Emulator, EmulatorOptions, ManualClock, Store, answer_for
from batchpipe.emulator.apierror import APIError
from batchpipe.emulator.multipart import nested, parse_form
from batchpipe.emulator.results import planned_failure, shuffled
from batchpipe.emulator.timeline import Timeline
from batchpipe.emulator.validation import validate_input

CHAT = "/v1/chat/completions"


def line(custom_id: str, text: str = "x", model: str = "gpt-4o-mini") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}).encode()


# --- validation --------------------------------------------------------------------------------


def test_validation_accepts_crlf_and_a_final_newline_only() -> None:
    result = validate_input(line("a") + b"\r\n" + line("b") + b"\n", CHAT)
    assert result.ok and [r.custom_id for r in result.requests] == ["a", "b"] and result.model == "gpt-4o-mini"
    assert [r.line for r in result.requests] == [1, 2]

    result = validate_input(line("a") + b"\n\n" + line("b"), CHAT)  # a blank line in the middle is a bad line
    assert [(e["code"], e["line"]) for e in result.errors] == [("invalid_json_line", 2)]
    assert result.requests == []  # all-or-nothing


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"\xef\xbb\xbf" + line("a"), b"\xff\xfe"])
def test_non_objects_bom_and_bad_utf8_are_invalid_json_lines(raw: bytes) -> None:
    assert [e["code"] for e in validate_input(raw, CHAT).errors] == ["invalid_json_line"]


def test_one_error_per_line_the_first_problem_found() -> None:
    bad = json.dumps({"custom_id": 5, "method": "GET", "url": "/v1/x", "body": {}}).encode()
    errors = validate_input(bad, CHAT).errors
    assert errors == [{"code": "invalid_request", "message": errors[0]["message"], "param": "custom_id", "line": 1}]


def test_known_model_families() -> None:
    for model in ("gpt-4o", "o3-mini", "chatgpt-4o-latest", "gpt-image-1"):
        assert validate_input(line("a", model=model), CHAT).ok, model
    for model in ("llama-nope", "claude-3", "GPT-4o"):
        assert validate_input(line("a", model=model), CHAT).errors[0]["code"] == "model_not_found", model


# --- timeline ----------------------------------------------------------------------------------


def timeline(**overrides: Any) -> Timeline:
    values = dict(created=1000.0, validating=10, in_progress=100, finalizing=10, cancelling=5, window=86400,
                  total=10, valid=True)
    return Timeline(**(values | overrides))  # type: ignore[arg-type]


def test_timeline_phases_and_counts() -> None:
    t = timeline()
    assert [t.at(1000 + s).status for s in (0, 9.9, 10, 109.9, 110, 119.9, 120, 10**6)] == [
        "validating", "validating", "in_progress", "in_progress", "finalizing", "finalizing", "completed", "completed"]
    assert [t.at(1000 + s).processed for s in (0, 10, 20, 59, 60, 110)] == [0, 0, 1, 4, 5, 10]
    assert t.at(2000).timestamps == {"in_progress_at": 1010, "finalizing_at": 1110, "completed_at": 1120}
    assert t.at(2000).terminal_at == 1120


def test_invalid_file_fails_when_validation_ends() -> None:
    t = timeline(valid=False, total=0)
    assert t.at(1009).status == "validating"
    assert (t.at(1010).status, t.at(1010).timestamps) == ("failed", {"failed_at": 1010})


def test_cancel_while_validating_runs_nothing() -> None:
    t = timeline()
    assert t.at(1003, cancel_at=1002).status == "cancelling"
    phase = t.at(1007, cancel_at=1002)
    assert (phase.status, phase.processed) == ("cancelled", 0)
    assert phase.timestamps == {"cancelling_at": 1002, "cancelled_at": 1007}


def test_expiry_during_validation() -> None:
    phase = timeline(validating=100, window=50).at(1060)
    assert (phase.status, phase.processed, phase.timestamps) == ("expired", 0, {"expired_at": 1050})


# --- answers and results -----------------------------------------------------------------------


def test_chat_answer_echoes_the_last_user_message() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "old question"},
            {"role": "assistant", "content": "old answer"},
            {"role": "user", "content": [{"type": "text", "text": "new"}, {"type": "image_url", "image_url": {}},
                                         {"type": "text", "text": "question"}]},
        ],
    }
    answer = answer_for(CHAT, body)
    assert answer["choices"][0]["message"]["content"] == "echo: new question"
    usage = answer["usage"]
    assert usage["completion_tokens"] == math.ceil(len("echo: new question") / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert answer == answer_for(CHAT, json.loads(json.dumps(body)))  # deterministic
    assert answer["id"] != answer_for(CHAT, body | {"model": "gpt-4.1"})["id"]


def test_embeddings_are_deterministic_unit_vectors() -> None:
    first = answer_for("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 20})
    again = answer_for("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 20})
    assert first == again
    vectors = [d["embedding"] for d in first["data"]]
    assert [len(v) for v in vectors] == [20, 20] and vectors[0] != vectors[1]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vectors)
    assert len(answer_for("/v1/embeddings", {"model": "m", "input": "one"})["data"][0]["embedding"]) == 8


def test_fail_marker_and_shuffle() -> None:
    assert planned_failure({"messages": [{"content": "x [[fail:503]] y"}]}) == 503
    assert planned_failure({"messages": [{"content": "[[fail:200]] [[fail:abc]]"}]}) is None
    lines = [{"n": i} for i in range(2)]
    assert all(shuffled(lines, None, "s") == [{"n": 1}, {"n": 0}] for _ in range(20))  # never the identity
    assert shuffled(lines * 10, 3, "salt") == shuffled(lines * 10, 3, "salt")


# --- multipart ---------------------------------------------------------------------------------


def test_multipart_is_byte_exact() -> None:
    content = b"--almost-the-boundary\r\n\r\nline\r\n\xff\x00--b--"
    body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--b--\r\n")
    form = parse_form("multipart/form-data; boundary=b", body)
    assert form.fields == {"purpose": "batch"}
    assert form.files == {"file": ("x.jsonl", content)}
    with pytest.raises(APIError):
        parse_form("application/json", body)


def test_nested_form_fields() -> None:
    fields = {"expires_after[anchor]": "created_at", "expires_after.seconds": "60", "purpose": "batch"}
    assert nested(fields, "expires_after") == {"anchor": "created_at", "seconds": "60"}


# --- store without sockets ---------------------------------------------------------------------


def test_store_duplicate_counts_against_a_still_validating_batch() -> None:
    clock = ManualClock()
    store = Store(EmulatorOptions(), clock)
    file_id = store.upload("in.jsonl", "batch", line("a") + b"\n", {})["id"]
    tag = {"batchpipe_run": "r", "batchpipe_shard": "1"}
    payload = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", "metadata": tag}
    first = store.create_batch(payload)
    store.create_batch(payload)
    assert store.get_batch(first["id"])["status"] == "validating"
    assert store.counts()["duplicate_creates"] == 1
    with pytest.raises(APIError) as error:
        store.create_batch(payload | {"input_file_id": store.upload("x.txt", "user_data", b"x", {})["id"]})
    assert error.value.param == "input_file_id"


def test_restart_keeps_port_and_state() -> None:
    emu = Emulator(EmulatorOptions(validating_seconds=0, in_progress_seconds=0, finalizing_seconds=0)).start()
    try:
        url = emu.base_url
        with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
            uploaded = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
            emu.stop()
            emu.start()
            assert emu.base_url == url
            assert client.files.retrieve(uploaded.id).id == uploaded.id
    finally:
        emu.stop()


def test_concurrent_clients() -> None:
    options = EmulatorOptions(validating_seconds=0, in_progress_seconds=0, finalizing_seconds=0)
    with Emulator(options) as emu:
        failures: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                with openai.OpenAI(base_url=emu.base_url, api_key="k", max_retries=0) as client:
                    for i in range(3):
                        file_id = client.files.create(file=("a.jsonl", line(f"{n}-{i}") + b"\n"), purpose="batch").id
                        batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
                        assert client.batches.retrieve(batch.id).status == "completed"
            except BaseException as error:  # surfaced below
                failures.append(error)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        counts = emu.counts
        assert (counts["uploads"], counts["batch_creates"], counts["requests"]) == (18, 18, 54)
        assert len({b["id"] for b in emu.batches}) == 18


def test_answers_are_cut_at_max_tokens_like_the_service():
    body = {"model": "gpt-4o-mini", "max_tokens": 2, "messages": [{"role": "user", "content": "a long review " * 10}]}
    answer = answer_for("/v1/chat/completions", body)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2
    assert answer["choices"][0]["message"]["content"] == "echo: a "
    body["max_tokens"] = 1000
    assert answer_for("/v1/chat/completions", body)["choices"][0]["finish_reason"] == "stop"
