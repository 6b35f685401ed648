"""Batch input-file validation: the checks the real service runs while a batch is `validating`.

It is all-or-nothing (reference §2.4): any bad line fails the whole batch and nothing runs. Each
bad line gets exactly one BatchError (the first problem found on it), 1-based `line`, in line
order. File-level problems (empty file, too many requests) are a single error with `line: null`.

Codes follow the observed OpenAI ones where known, the Azure ones where OpenAI's are unknown
(`duplicate_custom_id`, `too_many_tasks`, `empty_file`), and `mismatched_model` for mixed models.
A wrong `method` has no observed code; it is reported as `invalid_request` with `param: "method"`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ALLOWED_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

# Model families the emulated Batch API "knows". Anything else (`llama-nope`) is model_not_found,
# so a typo in a job config is caught by a rehearsal against the emulator.
KNOWN_MODEL = re.compile(
    r"^(gpt-|o\d|chatgpt-|text-embedding-|omni-moderation|davinci|babbage|dall-e|gpt-image|sora|computer-use)"
)

REQUIRED_KEYS = ("custom_id", "method", "url", "body")


@dataclass(frozen=True)
class Request:
    line: int  # 1-based line in the input file
    custom_id: str
    body: dict[str, Any]


@dataclass
class Validation:
    requests: list[Request] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None  # the batch's model: that of the first line that names one

    @property
    def ok(self) -> bool:
        return not self.errors


def batch_error(code: str, message: str, param: str | None = None, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def split_lines(content: bytes) -> list[bytes]:
    """Lines of a JSONL file; one trailing newline ends the file, it does not start a line."""
    lines = content.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def validate_input(content: bytes, endpoint: str, *, max_requests: int = 50_000) -> Validation:
    result = Validation()
    if not content.strip():
        result.errors.append(batch_error("empty_file", "The input file is empty. Please upload a file with requests."))
        return result
    lines = split_lines(content)
    if len(lines) > max_requests:
        result.errors.append(
            batch_error(
                "too_many_tasks",
                f"The input file contains {len(lines)} requests; a batch may contain at most {max_requests}.",
            )
        )
        return result

    seen_ids: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        request, error = _check_line(number, raw, endpoint)
        if error is None:
            assert request is not None
            model = request.body["model"]
            if request.custom_id in seen_ids:
                error = batch_error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. "
                    "The custom_id parameter must be unique for each request in a batch.",
                    "custom_id",
                    number,
                )
            elif result.model is not None and model != result.model:
                error = batch_error(
                    "mismatched_model",
                    f"The model '{model}' does not match the model '{result.model}' of the other requests "
                    "in this batch. Each input file can only include requests to a single model.",
                    "body.model",
                    number,
                )
            seen_ids.add(request.custom_id)
            if result.model is None:
                result.model = model
        if error is None:
            assert request is not None
            result.requests.append(request)
        else:
            result.errors.append(error)
    if result.errors:
        result.requests = []
    return result


def _check_line(number: int, raw: bytes, endpoint: str) -> tuple[Request | None, dict[str, Any] | None]:
    """The request on one line, or the first problem with it."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        obj = None
    if not isinstance(obj, dict):
        return None, batch_error("invalid_json_line", "This line is not parseable as valid JSON.", None, number)
    for key in REQUIRED_KEYS:
        if key not in obj:
            return None, batch_error(
                "missing_required_parameter", f"Missing required parameter: '{key}'.", key, number
            )
    custom_id, method, url, body = (obj[k] for k in REQUIRED_KEYS)
    if not isinstance(custom_id, str):
        return None, batch_error("invalid_request", "The custom_id parameter must be a string.", "custom_id", number)
    if method != "POST":
        return None, batch_error(
            "invalid_request", f"Invalid method '{method}'. Only POST is supported.", "method", number
        )
    if url != endpoint:
        return None, batch_error(
            "invalid_url", "The URL provided for this request does not match the batch endpoint.", "url", number
        )
    if not isinstance(body, dict):
        return None, batch_error("invalid_request", "The body parameter must be a JSON object.", "body", number)
    if body.get("stream") is True:
        return None, batch_error(
            "streaming_unsupported", "Streaming is not supported in the Batch API.", "body.stream", number
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return None, batch_error("invalid_request", "Model parameter is required.", "body.model", number)
    if not KNOWN_MODEL.match(model):
        return None, batch_error(
            "model_not_found", f"The provided model '{model}' is not supported by the Batch API.", "body.model", number
        )
    if endpoint == "/v1/chat/completions" and "messages" not in body:
        return None, batch_error("invalid_request", "Messages parameter is required.", "body.messages", number)
    return Request(number, custom_id, body), None
