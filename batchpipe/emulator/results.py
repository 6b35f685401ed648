"""Running the requests of a batch and writing the output / error files (reference §4.1).

A request "runs" by getting `answers.answer_for`, unless its body contains the marker
`[[fail:<status>]]` (status 400-599): then it gets a non-2xx response with an OpenAI error body
and lands in the error file, counted as failed. `request_failure_rate` fails a pseudo-random
share of requests the same way with a 500 (`injected_failure`, keyed by batch id and custom_id).
Requests that never ran (cancel, expiry) become error-file lines with `response: null` and
`error.code` `batch_cancelled` / `batch_expired`. Lines of both files are always shuffled, never
in input order.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .answers import answer_for, usage_tokens
from .validation import Request

FAIL_MARKER = re.compile(r"\[\[fail:([45]\d\d)\]\]")

_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout_error", None),
    409: ("invalid_request_error", "conflict"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}

UNRUN_MESSAGES = {
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
    "batch_expired": "This request could not be executed before the completion window expired.",
}


@dataclass(frozen=True)
class Outcome:
    request: Request
    status_code: int
    body: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


def planned_failure(body: dict[str, Any]) -> int | None:
    """The status a request is told to fail with by a `[[fail:<status>]]` marker, if any."""
    match = FAIL_MARKER.search(json.dumps(body, ensure_ascii=False))
    return int(match.group(1)) if match else None


def injected_failure(custom_id: str, batch_id: str, seed: int | None, rate: float, salt: str = "") -> bool:
    """Does `request_failure_rate` (or, with salt "json", `invalid_json_share`) hit this request?
    A pure function of its arguments: a retry in a new batch decides afresh."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    key = [seed, batch_id, custom_id] + ([salt] if salt else [])
    digest = hashlib.sha256(json.dumps(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def run_request(
    endpoint: str, request: Request, *, created: int, inject_failure: bool = False, broken_json: bool = False
) -> Outcome:
    status = planned_failure(request.body)
    if status is not None:
        return Outcome(request, status, error_body(status))
    if inject_failure:
        return Outcome(request, 500, INJECTED_FAILURE_BODY)
    answer = answer_for(endpoint, request.body, created=created, broken_json=broken_json)
    input_tokens, output_tokens = usage_tokens(endpoint, answer)
    return Outcome(request, 200, answer, input_tokens, output_tokens)


INJECTED_FAILURE_BODY: dict[str, Any] = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


def error_body(status: int) -> dict[str, Any]:
    type_, code = _ERROR_TYPES.get(status, ("server_error", None) if status >= 500 else ("invalid_request_error", None))
    message = f"Emulated failure: the request contains the marker [[fail:{status}]]."
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def response_line(outcome: Outcome) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": outcome.request.custom_id,
        "response": {"status_code": outcome.status_code, "request_id": f"req_{uuid.uuid4().hex}", "body": outcome.body},
        "error": None,
    }


def unrun_line(request: Request, code: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": request.custom_id,
        "response": None,
        "error": {"code": code, "message": UNRUN_MESSAGES[code]},
    }


def shuffled(lines: list[dict[str, Any]], seed: int | None, salt: str) -> list[dict[str, Any]]:
    """A random permutation of `lines`; never the identity when there are two or more lines.

    With a seed the permutation depends only on (seed, salt) and the number of lines, so the same
    input file gives the same order run after run.
    """
    rng = random.Random(f"{seed}:{salt}") if seed is not None else random.Random()
    order = list(range(len(lines)))
    rng.shuffle(order)
    if len(order) > 1 and order == sorted(order):
        order = order[1:] + order[:1]  # a consumer relying on input order must notice
    return [lines[i] for i in order]


def stray_lines(first: dict[str, Any]) -> bytes:
    """The `stray_result_lines` of an output file whose first line is `first`."""
    stranger = {**first, "id": f"batch_req_{uuid.uuid4().hex}", "custom_id": f"{first['custom_id']}-stranger"}
    return b"\n" + to_jsonl([stranger, first])


def to_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)
