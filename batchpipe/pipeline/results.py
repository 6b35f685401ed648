"""Parse the service's output and error lines (decoded from JSON) into per-request outcomes. Pure: no I/O.

Lines come in any order and are joined by custom_id, never by position. One unreadable line
never aborts a file: it is reported, and its request counts as missing.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, NamedTuple

import msgspec


class Parsed(NamedTuple):
    """One understood result line (a NamedTuple: a big run has millions)."""

    custom_id: str
    ok: bool
    value: Any
    error: dict[str, Any] | None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None  # see finish_reason(); None for a failed line


_parsed = functools.partial(tuple.__new__, Parsed)  # Parsed((...)) at a plain tuple's cost, per result line


# The finish reason of an answer cut at the output limit (max_tokens and its kin).
TRUNCATED = "length"


# The usual line of a chat completions job's output file, declared for msgspec: a line of this
# shape is decoded straight into these (about twice as fast as orjson makes dicts of it: the
# fields not named here are skipped, not built); a line of any other shape fails to decode and
# is read the general way (orjson, parse_record), which must then come to the same outcome.
# gc=False: they hold no cycles.
class _Message(msgspec.Struct, gc=False):
    content: str


class _Choice(msgspec.Struct, gc=False):
    message: _Message
    finish_reason: str


# A count of tokens: a whole number of at least 0 (not a bool, not 9.0), within 64 bits (orjson
# reads a bigger one as a float).
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: _Count
    completion_tokens: _Count
    # the /v1/responses words: a usage that has them is read the general way (usage_tokens)
    input_tokens: msgspec.UnsetType = msgspec.UNSET
    output_tokens: msgspec.UnsetType = msgspec.UNSET


class _Body(msgspec.Struct, gc=False):
    choices: list[_Choice]
    usage: _Usage


class _Response(msgspec.Struct, gc=False):
    status_code: Literal[200]
    body: _Body


class UsualAnswer(msgspec.Struct, gc=False):
    custom_id: str
    response: _Response
    error: None


class _UsageBody(msgspec.Struct, gc=False):
    usage: dict[str, Any]


class _UsageResponse(msgspec.Struct, gc=False):
    body: _UsageBody


class _UsageLine(msgspec.Struct, gc=False):
    response: _UsageResponse


# Decode a line into a UsualAnswer; raise one of USUAL_MISFITS on a line of another shape.
# msgspec checks the syntax of the fields it skips, not all of what they hold: neither their text's
# bytes (a line that is not UTF-8 throughout must be refused apart, by bytes.decode, as orjson
# refuses it) nor their numbers' range (a line with a number past a double's, 1e400, which orjson
# refuses and the service never writes, is read as its answer).
usual_answer = msgspec.json.Decoder(UsualAnswer).decode
USUAL_MISFITS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_usage_line = msgspec.json.Decoder(_UsageLine).decode


def usual_usage(raw: bytes) -> dict[str, Any]:
    """The usage of a UsualAnswer's line as the service said it, every field (output.meta keeps it)."""
    return _usage_line(raw).response.body.usage


def answer(endpoint: str, body: dict[str, Any]) -> Any:
    """The useful part of a response body: what goes under `output.key` in the merged row."""
    if endpoint == "/v1/chat/completions":
        return body["choices"][0]["message"].get("content")
    if endpoint == "/v1/responses":
        if isinstance(body.get("output_text"), str):
            return body["output_text"]
        texts = [
            part.get("text", "")
            for item in body.get("output", [])
            if item.get("type", "message") == "message"
            for part in item.get("content", [])
            if part.get("type") in ("output_text", "text")
        ]
        return "".join(texts)
    if endpoint == "/v1/embeddings":
        return body["data"][0]["embedding"]
    if endpoint == "/v1/completions":
        return body["choices"][0]["text"]
    if endpoint == "/v1/moderations":
        return body["results"][0]
    return body


def finish_reason(endpoint: str, body: dict[str, Any]) -> str | None:
    """Why the model stopped, in chat completions' words: "stop", "length" (cut at the output
    limit), "content_filter", "tool_calls"...; None when the endpoint has no such notion.

    /v1/responses says it differently: `status: incomplete` with `incomplete_details.reason`
    `max_output_tokens` is "length" here, so one value means "truncated" whatever the endpoint.
    """
    if endpoint in ("/v1/chat/completions", "/v1/completions"):
        choices = body.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        reason = first.get("finish_reason") if isinstance(first, dict) else None
        return reason if isinstance(reason, str) else None
    if endpoint == "/v1/responses":
        if body.get("status") != "incomplete":
            return "stop" if body.get("status") == "completed" else None
        reason = (body.get("incomplete_details") or {}).get("reason")
        if reason == "max_output_tokens":
            return TRUNCATED
        return reason if isinstance(reason, str) else "incomplete"
    return None


def _error_of(record: dict[str, Any]) -> dict[str, Any]:
    """The error of a failed line, in one shape: code, message, and status_code when there was one."""
    response = record.get("response")
    if isinstance(response, dict) and response.get("status_code") is not None:
        err = (response.get("body") or {}).get("error") or {}
        return {
            "code": err.get("code") or err.get("type") or f"http_{response['status_code']}",
            "message": err.get("message") or "request failed",
            "status_code": response["status_code"],
        }
    err = record.get("error") or {}
    return {"code": err.get("code") or "unknown_error", "message": err.get("message") or "request failed"}


def parse_record(endpoint: str, record: Any) -> Parsed:
    """One line of an output or error file, decoded from JSON. Raises ValueError if it cannot be understood."""
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        raise ValueError("no custom_id")
    cid = record["custom_id"]
    response = record.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    if record.get("error") is None and status is not None and 200 <= status < 300:
        body = response.get("body") or {}
        if endpoint == "/v1/chat/completions":  # the usual answer, read without the general functions
            choices = body.get("choices") if type(body) is dict else None
            first = choices[0] if type(choices) is list and choices else None
            message = first.get("message") if type(first) is dict else None
            if type(message) is dict:
                reason = first.get("finish_reason")
                return _parsed((cid, True, message.get("content"), None, body.get("usage"),
                                reason if type(reason) is str else None))
        try:
            value = answer(endpoint, body)
        except (KeyError, IndexError, TypeError, AttributeError):
            return Parsed(cid, False, None, {"code": "unreadable_response", "message": "response body has no answer"})
        return _parsed((cid, True, value, None, body.get("usage"), finish_reason(endpoint, body)))
    return Parsed(cid, False, None, _error_of(record))


# Errors of requests that never ran or that the service failed on its side: another attempt
# may succeed. A 4xx answer (bad request, content policy...) will fail the same way again.
RETRYABLE_STATUS = frozenset({408, 409, 429})


def is_retryable(error: dict[str, Any]) -> bool:
    status = error.get("status_code")
    if status is not None:
        return status >= 500 or status in RETRYABLE_STATUS
    return error.get("code") != "unreadable_response"  # batch_expired, batch_cancelled, missing_result, ...
