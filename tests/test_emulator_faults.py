"""The emulator's fault switches, driven over loopback by the real `openai` client.

Mutating calls go through a client with the SDK's retries off (as batchpipe sends them); reads
use the SDK's default retries where that is the point. No mocks, no sleeps: timelines are zero
seconds or moved by a ManualClock.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from typing import Any

import openai
import pytest
from conftest import sdk

from batchpipe.emulator import Emulator, EmulatorOptions, ManualClock, estimate_batch_tokens
from batchpipe.emulator.results import injected_failure
from batchpipe.emulator.server import build_parser, options_from_args

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
FAST = dict(validating_seconds=0.0, in_progress_seconds=0.0, finalizing_seconds=0.0, cancelling_seconds=0.0)
FAULT_KEYS = ("transient_errors", "lost_answers", "token_limit_failures", "file_not_visible", "create_rate_limited",
              "duplicate_uploads", "duplicate_creates")

def chat_line(custom_id: str, text: str, model: str = MODEL) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: openai.OpenAI, content: bytes, name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, content), purpose="batch").id


def create(client: openai.OpenAI, file_id: str, **kwargs: Any) -> Any:
    return client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h", **kwargs)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def tag(shard: str) -> dict[str, str]:
    return {"batchpipe_run": "run1", "batchpipe_shard": shard, "batchpipe_sha": "abc"}


# --- transient errors ---------------------------------------------------------------------------


def test_transient_errors_answer_every_api_call_without_acting() -> None:
    shared = EmulatorOptions(**(FAST | {"validating_seconds": 3600}))
    with Emulator(shared) as emu:
        client = sdk(emu)
        file_id = upload(client, jsonl([chat_line("a", "x")]))
        batch = create(client, file_id)
        emu.options.transient_error_rate = 1.0  # flipped on the live emulator
        assert shared.transient_error_rate == 0.0  # the emulator works on its own copy

        calls = [
            lambda: upload(client, jsonl([chat_line("b", "y")])),
            lambda: client.files.list(),
            lambda: client.files.retrieve(file_id),
            lambda: client.files.content(file_id),
            lambda: client.files.delete(file_id),
            lambda: create(client, file_id),
            lambda: client.batches.list(),
            lambda: client.batches.retrieve(batch.id),
            lambda: client.batches.cancel(batch.id),
        ]
        statuses = []
        for call in calls:
            with pytest.raises(openai.APIStatusError) as error:
                call()
            response = error.value.response
            statuses.append(response.status_code)
            assert response.headers["retry-after-ms"] == "20" and response.headers["retry-after"] == "1"
            body = response.json()["error"]
            assert set(body) == {"message", "type", "param", "code"} and body["message"]
        assert statuses == [503, 500, 429] * 3  # the kinds cycle
        assert isinstance(_raised(lambda: client.batches.list()), openai.InternalServerError)  # 503 -> 5xx class
        assert isinstance(_raised(lambda: client.batches.list()), openai.InternalServerError)
        assert isinstance(_raised(lambda: client.batches.list()), openai.RateLimitError)

        with urllib.request.urlopen(emu.base_url.removesuffix("/v1") + "/_emulator/counts", timeout=60) as answer:
            over_http = json.loads(answer.read())  # /_emulator/* never faults
        counts = emu.counts
        assert over_http == counts
        assert counts["transient_errors"] == 12
        assert counts["transient_errors_by_status"] == {"503": 4, "500": 4, "429": 4}
        assert (counts["uploads"], counts["batch_creates"], counts["cancels"]) == (1, 1, 0)  # nothing acted
        assert counts["requests"] == 2 + 12

        emu.options.transient_error_rate = 0.0
        assert client.files.retrieve(file_id).id == file_id  # not deleted
        assert client.batches.retrieve(batch.id).status == "validating"  # not cancelled
        assert [b.id for b in client.batches.list().data] == [batch.id]  # nothing created
        assert emu.counts["transient_errors"] == 12


def _raised(call: Any) -> BaseException:
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - returned for the caller to check
        return error
    raise AssertionError("no error raised")


def test_sdk_default_retries_wait_what_the_service_asks_after_a_transient_503() -> None:
    # Seed 1: the first draw (0.13) faults, the second (0.85) does not -> one 503, then the answer.
    # The SDK's own first backoff is at most 0.5 s; a wait of at least the 0.9 s the 503 asked for
    # shows the retry-after headers were read. (A lower bound: a slow machine cannot break it.)
    with Emulator(EmulatorOptions(**FAST, transient_error_rate=0.5, fault_seed=1, retry_after_ms=900)) as emu:
        client = sdk(emu, max_retries=2)
        started = time.monotonic()
        assert client.batches.list().data == []
        elapsed = time.monotonic() - started
        counts = emu.counts
        assert counts["transient_errors_by_status"] == {"503": 1, "500": 0, "429": 0}
        assert counts["requests"] == 2
        assert elapsed >= 0.9, elapsed


def _pattern(emu: Emulator, n: int) -> list[int]:
    client = sdk(emu)
    out = []
    for _ in range(n):
        try:
            client.batches.list()
            out.append(200)
        except openai.APIStatusError as error:
            out.append(error.status_code)
    return out


def test_seeded_transient_rate_is_reproducible() -> None:
    options = EmulatorOptions(**FAST, transient_error_rate=0.5, fault_seed=42)
    with Emulator(options) as first, Emulator(options) as second, \
            Emulator(dataclasses.replace(options, fault_seed=43)) as other:
        pattern = _pattern(first, 40)
        assert pattern == _pattern(second, 40)
        assert pattern != _pattern(other, 40)
        assert 200 in pattern and {503, 500, 429} <= set(pattern)
        assert first.counts["transient_errors"] == sum(status != 200 for status in pattern)


# --- lost answers ---------------------------------------------------------------------------------


def test_lost_answer_on_create_takes_effect() -> None:
    with Emulator(EmulatorOptions(**FAST)) as emu:
        client = sdk(emu)
        file_id = upload(client, jsonl([chat_line("a", "x")]))
        emu.options.lost_answer_rate = 1.0
        with pytest.raises(openai.InternalServerError):  # first kind: the answer is an HTTP 500
            create(client, file_id, metadata=tag("00001"))
        listed = client.batches.list().data
        assert [b.metadata for b in listed] == [tag("00001")]  # ... yet the batch exists
        counts = emu.counts
        assert (counts["batch_creates"], counts["duplicate_creates"]) == (1, 0)

        with pytest.raises(openai.APIConnectionError):  # second kind: the connection is dropped
            create(client, file_id, metadata=tag("00001"))  # a blind retry: a second billed batch
        counts = emu.counts
        assert (counts["batch_creates"], counts["duplicate_creates"]) == (2, 1)
        assert counts["creates_by_tag"] == {"run1/00001": 2}
        assert counts["lost_answers"] == 2
        assert counts["lost_answers_by_kind"] == {"http_500": 1, "dropped": 1}
        assert counts["lost_answers_by_op"] == {"upload": 0, "create": 2, "cancel": 0}
        assert len(client.batches.list().data) == 2  # reads are never lost
        assert {b["status"] for b in emu.batches} == {"completed"}


def test_lost_answer_on_upload_and_cancel() -> None:
    with Emulator(EmulatorOptions(**(FAST | {"validating_seconds": 3600}), lost_answer_rate=1.0)) as emu:
        client = sdk(emu)
        content = jsonl([chat_line("a", "x")])
        with pytest.raises(openai.InternalServerError):
            upload(client, content, "run1-00001.jsonl")
        with pytest.raises(openai.APIConnectionError):
            upload(client, content, "run1-00001.jsonl")  # the same file again: a duplicate upload
        files = client.files.list().data
        assert [f.filename for f in files] == ["run1-00001.jsonl"] * 2
        emu.options.lost_answer_rate = 0.0
        batch = create(client, files[0].id)
        emu.options.lost_answer_rate = 1.0
        with pytest.raises(openai.InternalServerError):
            client.batches.cancel(batch.id)
        assert client.batches.retrieve(batch.id).status == "cancelled"  # the cancel took effect
        counts = emu.counts
        assert (counts["uploads"], counts["duplicate_uploads"], counts["cancels"]) == (2, 1, 1)
        assert counts["lost_answers_by_op"] == {"upload": 2, "create": 0, "cancel": 1}


def test_seeded_lost_answer_rate_is_reproducible() -> None:
    def outcomes(emu: Emulator) -> list[str]:
        client = sdk(emu)
        out = []
        for i in range(16):
            try:
                upload(client, jsonl([chat_line("a", "x")]), f"f{i}.jsonl")
                out.append("ok")
            except openai.APIConnectionError:
                out.append("dropped")
            except openai.InternalServerError:
                out.append("500")
        assert emu.counts["uploads"] == 16  # every upload took effect
        return out

    options = EmulatorOptions(**FAST, lost_answer_rate=0.5, fault_seed=7)
    with Emulator(options) as first, Emulator(options) as second:
        pattern = outcomes(first)
        assert pattern == outcomes(second)
        assert set(pattern) == {"ok", "500", "dropped"}
        assert first.counts["lost_answers"] == pattern.count("500") + pattern.count("dropped")


def test_switches_off_show_no_faults() -> None:
    with Emulator(EmulatorOptions(**FAST)) as emu:
        client = sdk(emu)
        for shard in ("00001", "00002"):
            file_id = upload(client, jsonl([chat_line(f"r{i}", "x") for i in range(20)]), f"{shard}.jsonl")
            batch = create(client, file_id, metadata=tag(shard))
            done = client.batches.retrieve(batch.id)
            assert done.status == "completed" and done.request_counts.failed == 0 and done.error_file_id is None
        client.batches.list()
        counts = emu.counts
        assert {key: counts[key] for key in FAULT_KEYS} == dict.fromkeys(FAULT_KEYS, 0)
        assert counts["transient_errors_by_status"] == {"503": 0, "500": 0, "429": 0}
        assert counts["lost_answers_by_kind"] == {"http_500": 0, "dropped": 0}


# --- batch-level switches ---------------------------------------------------------------------------


def test_request_failure_rate_is_deterministic_per_custom_id_and_batch() -> None:
    lines = [chat_line(f"r{i:02d}", f"text {i}") for i in range(40)]
    with Emulator(EmulatorOptions(**FAST, request_failure_rate=0.5, fault_seed=3)) as emu:
        client = sdk(emu)
        file_id = upload(client, jsonl(lines))
        failed_sets = []
        for _ in range(2):
            batch = client.batches.retrieve(create(client, file_id).id)
            expected = {line["custom_id"] for line in lines if injected_failure(line["custom_id"], batch.id, 3, 0.5)}
            errors = lines_of(client, batch.error_file_id)
            assert {e["custom_id"] for e in errors} == expected and 0 < len(expected) < 40
            assert {e["response"]["status_code"] for e in errors} == {500}
            assert {o["custom_id"] for o in lines_of(client, batch.output_file_id)} == {
                line["custom_id"] for line in lines} - expected
            assert (batch.status, batch.request_counts.failed) == ("completed", len(expected))
            failed_sets.append(expected)
        assert failed_sets[0] != failed_sets[1]  # the same request retried in a new batch may succeed

        emu.options.request_failure_rate = 1.0
        batch = client.batches.retrieve(create(client, file_id).id)
        assert (batch.output_file_id, batch.request_counts.failed) == (None, 40)


def test_expire_after_requests_runs_the_first_n() -> None:
    with Emulator(EmulatorOptions(**FAST, expire_after_requests=4)) as emu:
        client = sdk(emu)
        created = create(client, upload(client, jsonl([chat_line(f"r{i}", "x") for i in range(10)])))
        assert created.status == "validating"
        batch = client.batches.retrieve(created.id)  # zero-second timeline: expired at the first read
        assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
        assert batch.request_counts.model_dump() == {"total": 10, "completed": 4, "failed": 0}
        assert sorted(o["custom_id"] for o in lines_of(client, batch.output_file_id)) == ["r0", "r1", "r2", "r3"]
        errors = lines_of(client, batch.error_file_id)
        assert sorted(e["custom_id"] for e in errors) == [f"r{i}" for i in range(4, 10)]
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}

        small = create(client, upload(client, jsonl([chat_line(f"r{i}", "x") for i in range(4)])))
        assert client.batches.retrieve(small.id).status == "completed"  # at most N requests: unaffected


def test_expire_after_requests_on_a_running_timeline() -> None:
    clock = ManualClock()
    options = EmulatorOptions(validating_seconds=10, in_progress_seconds=100, finalizing_seconds=10,
                              expire_after_requests=3)
    with Emulator(options, clock=clock) as emu:
        client = sdk(emu)
        created = create(client, upload(client, jsonl([chat_line(f"r{i}", "x") for i in range(10)])))
        clock.advance(10 + 50)
        assert client.batches.retrieve(created.id).request_counts.completed == 3  # stopped at N
        clock.advance(50)
        batch = client.batches.retrieve(created.id)
        assert (batch.status, batch.expired_at) == ("expired", created.created_at + 110)
        assert batch.finalizing_at is None


def test_enqueued_token_limit_fails_the_overflowing_batch_until_the_queue_drains() -> None:
    clock = ManualClock()
    content = jsonl([chat_line(f"r{i}", "a prompt of some length " * 3) for i in range(5)])
    tokens = estimate_batch_tokens(content)
    options = EmulatorOptions(validating_seconds=10, in_progress_seconds=10, finalizing_seconds=0,
                              enqueued_token_limit=tokens * 3 // 2)
    with Emulator(options, clock=clock) as emu:
        client = sdk(emu)
        file_id = upload(client, content)
        first = create(client, file_id, metadata=tag("00001"))
        second = create(client, file_id, metadata=tag("00002"))
        assert second.status == "validating"  # HTTP 200 at create
        assert emu.counts["enqueued_tokens"] == {MODEL: tokens}

        failed = client.batches.retrieve(second.id)  # failed at its first read
        assert failed.status == "failed" and failed.failed_at == second.created_at
        assert [e.model_dump() for e in failed.errors.data] == [{  # type: ignore[union-attr]
            "code": "token_limit_exceeded",
            "message": f"Enqueued token limit reached for {MODEL} in organization org-emulator. Limit: "
                       f"{tokens * 3 // 2} enqueued tokens. Please try again once some in_progress batches have "
                       "been completed.",
            "param": None,
            "line": None,
        }]
        other_model = jsonl([chat_line("r0", "a prompt of some length " * 3, model="gpt-4o")])
        accepted = create(client, upload(client, other_model))  # the limit is per model: gpt-4o has its own queue
        assert client.batches.retrieve(accepted.id).status == "validating"
        assert client.batches.retrieve(first.id).status == "validating"

        clock.advance(20)
        done = client.batches.retrieve(first.id)
        assert done.status == "completed"
        assert done.usage.input_tokens == tokens  # type: ignore[union-attr]  # same estimator as usage
        assert emu.counts["enqueued_tokens"] == {MODEL: 0, "gpt-4o": 0}  # released when terminal

        retry = create(client, file_id, metadata=tag("00002"))
        clock.advance(20)
        assert client.batches.retrieve(retry.id).status == "completed"
        counts = emu.counts
        assert counts["token_limit_failures"] == 1
        assert counts["duplicate_creates"] == 0  # a retry after token_limit_exceeded is no duplicate
        assert counts["max_enqueued_tokens"] == {MODEL: tokens, "gpt-4o": estimate_batch_tokens(other_model)}


def test_a_batch_larger_than_the_token_limit_fails_alone() -> None:
    content = jsonl([chat_line("r0", "x" * 400)])
    options = EmulatorOptions(**FAST, enqueued_token_limit=estimate_batch_tokens(content) - 1)
    with Emulator(options) as emu:
        client = sdk(emu)
        batch = client.batches.retrieve(create(client, upload(client, content)).id)
        assert batch.status == "failed" and batch.errors is not None
        assert [e.code for e in batch.errors.data] == ["token_limit_exceeded"]  # type: ignore[union-attr]
        assert emu.counts["max_enqueued_tokens"] == {}
        emu.options.enqueued_token_limit = None
        assert client.batches.retrieve(create(client, upload(client, content)).id).status == "completed"


def test_file_visibility_delay() -> None:
    with Emulator(EmulatorOptions(**FAST, file_visibility_delay=2)) as emu:
        client = sdk(emu)
        file_id = upload(client, jsonl([chat_line("a", "x")]))
        for _ in range(2):
            with pytest.raises(openai.BadRequestError) as error:
                create(client, file_id, metadata=tag("00001"))
            assert error.value.body == {
                "message": f"Cannot find file {file_id}, or project proj_emulator does not have access to it.",
                "type": "invalid_request_error",
                "param": "file_id",
                "code": None,
            }
        assert client.batches.list().data == []  # nothing created
        batch = create(client, file_id, metadata=tag("00001"))
        assert client.batches.retrieve(batch.id).status == "completed"
        other = upload(client, jsonl([chat_line("a", "x")]))  # each file has its own delay
        with pytest.raises(openai.BadRequestError):
            create(client, other)
        counts = emu.counts
        assert (counts["file_not_visible"], counts["batch_creates"], counts["duplicate_creates"]) == (3, 1, 0)


def test_creates_per_hour_limit() -> None:
    clock = ManualClock()
    with Emulator(EmulatorOptions(**FAST, creates_per_hour_limit=2), clock=clock) as emu:
        client = sdk(emu)
        file_id = upload(client, jsonl([chat_line("a", "x")]))
        create(client, file_id)
        clock.advance(600)
        create(client, file_id)
        with pytest.raises(openai.RateLimitError) as error:
            create(client, file_id)
        assert error.value.response.headers["retry-after"] == "3000"  # the first create leaves the window then
        assert emu.counts["create_rate_limited"] == 1 and emu.counts["batch_creates"] == 2
        clock.advance(3000)
        create(client, file_id)
        assert emu.counts["batch_creates"] == 3


# --- command line ---------------------------------------------------------------------------------


def test_every_fault_switch_has_a_flag() -> None:
    args = build_parser().parse_args([
        "--transient-error-rate", "0.2", "--retry-after-ms", "5", "--lost-answer-rate", "0.1", "--fault-seed", "9",
        "--request-failure-rate", "0.05", "--expire-after-requests", "7", "--enqueued-token-limit", "1000",
        "--file-visibility-delay", "1", "--creates-per-hour-limit", "50", "--completion-window-seconds", "30",
    ])
    assert options_from_args(args) == EmulatorOptions(
        transient_error_rate=0.2, retry_after_ms=5, lost_answer_rate=0.1, fault_seed=9, request_failure_rate=0.05,
        expire_after_requests=7, enqueued_token_limit=1000, file_visibility_delay=1, creates_per_hour_limit=50,
        completion_window_seconds=30,
    )
    assert options_from_args(build_parser().parse_args([])) == EmulatorOptions()
