"""Deterministic answers: what the emulated model "says" to one request.

Every answer is a pure function of the request, so a test can recompute it and prove that each
result landed on its own row:

* `/v1/chat/completions`: the assistant message is exactly ``"echo: " + <text of the last user
  message>``. A content given as a list of parts contributes its text parts joined by one space.
* `/v1/responses`: ``output[0].content[0].text`` is the same echo of the last user input (a plain
  string `input` counts as the user text).
* A request that asks for JSON (`response_format` json_object / json_schema; responses:
  `text.format`) is answered with JSON instead of the echo: see `json_answers`.
* An answer longer than the request's `max_tokens` / `max_completion_tokens` (responses:
  `max_output_tokens`) is cut to it, with `finish_reason: "length"` (responses: `status:
  "incomplete"`, `incomplete_details.reason: "max_output_tokens"`), as the real service does: so
  the output bound batchpipe budgets with holds here too, and truncation can be rehearsed.
* `/v1/completions`: ``choices[0].text`` is ``"echo: " + prompt`` (a list prompt: its strings
  joined by a space).
* `/v1/embeddings`: one vector per input, derived from sha256(model, input); length
  ``body["dimensions"]`` if given, else 8.
* `/v1/moderations`, `/v1/images/*`, `/v1/videos`: minimal well-formed bodies.

Prompt tokens of chat and responses requests are counted like the real service does (the tokenizer
and per-message overhead of `batchpipe.pipeline.tokens`; bytes/4 without bpe-openai); other counts
are ``ceil(chars / 4)`` (at least 1). Usage is deterministic either way. `estimate_batch_tokens` sums the prompt estimate over an input
file: what a batch weighs against the emulator's enqueued-token limit. Only `created` /
`created_at` is not derived from the request: pass it in (the emulator passes the time the batch
started running; the default is 0).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

from .json_answers import json_format, json_text

ECHO_PREFIX = "echo: "
DEFAULT_EMBEDDING_DIMENSIONS = 8


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def prompt_tokens_of(endpoint: str, body: dict[str, Any]) -> int:
    """Prompt tokens as the real service counts them: its tokenizer and per-message overhead.

    Uses batchpipe's own counter (bpe-openai when installed, else bytes/4), so the emulator's
    usage and enqueued-token accounting agree with what batchpipe plans with, as OpenAI's
    agree with tiktoken's counts.
    """
    from batchpipe.pipeline.tokens import input_tokens

    return max(1, input_tokens(body, endpoint))


def answer_for(endpoint: str, body: dict[str, Any], *, created: int = 0, broken_json: bool = False) -> dict[str, Any]:
    """The response body the emulator returns for `body` sent to `endpoint`.

    `broken_json`: a request that asks for JSON gets JSON cut in half (see json_answers).
    """
    model = str(body.get("model", ""))
    ident = _digest(endpoint, body)
    if endpoint == "/v1/chat/completions":
        return _chat(body, model, ident, created, broken_json)
    if endpoint == "/v1/responses":
        return _responses(body, model, ident, created, broken_json)
    if endpoint == "/v1/completions":
        return _completions(body, model, ident, created)
    if endpoint == "/v1/embeddings":
        return _embeddings(body, model)
    if endpoint == "/v1/moderations":
        return {
            "id": f"modr-{ident}",
            "model": model,
            "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
        }
    if endpoint.startswith("/v1/images/"):
        return {"created": created, "data": [{"b64_json": "", "revised_prompt": str(body.get("prompt", ""))}]}
    # /v1/videos and anything added to the allowed list later
    return {"id": f"video_{ident}", "object": "video", "status": "completed", "model": model, "created_at": created}


def usage_tokens(endpoint: str, answer: dict[str, Any]) -> tuple[int, int]:
    """(input_tokens, output_tokens) of an answer, for the batch's aggregate `usage`."""
    usage = answer.get("usage") or {}
    if "input_tokens" in usage:  # /v1/responses shape
        return int(usage["input_tokens"]), int(usage.get("output_tokens", 0))
    return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))


def request_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """The prompt tokens a request is charged in its answer's usage (0 for endpoints without usage)."""
    return usage_tokens(endpoint, answer_for(endpoint, body))[0]


def estimate_batch_tokens(content: bytes, endpoint: str | None = None) -> int:
    """Enqueued tokens of a batch input file: the sum of `request_tokens` over its lines.

    What the emulator counts against `enqueued_token_limit`. Each line is estimated for its own
    `url` unless `endpoint` is given; lines that are not request objects count 0.
    """
    total = 0
    lines = content.split(b"\n")
    for raw in lines:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("body"), dict):
            continue
        url = endpoint or obj.get("url")
        if isinstance(url, str):
            total += request_tokens(url, obj["body"])
    return total


# --- text extraction ---------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """A message content: a string, or a list of parts whose text parts are joined by a space."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(texts)
    return ""


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, str):  # /v1/responses accepts a bare string as the user input
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return _content_text(message.get("content"))
    return ""


# --- per-endpoint bodies -----------------------------------------------------------------------


def _bounded(text: str, limit: Any) -> tuple[str, int, str]:
    """(text, its tokens, finish_reason): cut to `limit` tokens when the request sets one, as the service does."""
    tokens = estimate_tokens(text)
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < tokens:
        return text[: limit * 4], limit, "length"
    return text, tokens, "stop"


def _said(endpoint: str, body: dict[str, Any], user_text: str, broken_json: bool) -> str:
    """What the model says: the echo, or JSON when the request asks for it."""
    fmt = json_format(endpoint, body)
    if fmt is None:
        return ECHO_PREFIX + user_text
    return json_text(fmt, user_text, broken=broken_json)


def _chat(body: dict[str, Any], model: str, ident: str, created: int, broken_json: bool = False) -> dict[str, Any]:
    said = _said("/v1/chat/completions", body, _last_user_text(body.get("messages")), broken_json)
    text, completion_tokens, finish = _bounded(said, body.get("max_completion_tokens", body.get("max_tokens")))
    prompt_tokens = prompt_tokens_of("/v1/chat/completions", body)
    return {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }


def _responses(body: dict[str, Any], model: str, ident: str, created: int, broken_json: bool = False) -> dict[str, Any]:
    said = _said("/v1/responses", body, _last_user_text(body.get("input")), broken_json)
    text, output_tokens, finish = _bounded(said, body.get("max_output_tokens"))
    input_tokens = prompt_tokens_of("/v1/responses", body)
    status = "incomplete" if finish == "length" else "completed"
    return {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{ident}",
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def _completions(body: dict[str, Any], model: str, ident: str, created: int) -> dict[str, Any]:
    prompt = body.get("prompt", "")
    prompt_text = " ".join(p for p in prompt if isinstance(p, str)) if isinstance(prompt, list) else str(prompt)
    text, completion_tokens, finish = _bounded(ECHO_PREFIX + prompt_text, body.get("max_tokens"))
    prompt_tokens = estimate_tokens(prompt_text)
    return {
        "id": f"cmpl-{ident}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    raw = body.get("input", "")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    dims = body.get("dimensions")
    dims = dims if isinstance(dims, int) and 0 < dims <= 4096 else DEFAULT_EMBEDDING_DIMENSIONS
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(model, item, dims)} for i, item in enumerate(inputs)
    ]
    tokens = sum(estimate_tokens(item if isinstance(item, str) else json.dumps(item)) for item in inputs)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _vector(model: str, item: Any, dims: int) -> list[float]:
    """A unit vector from a hash chain of (model, input): same input, same vector."""
    seed = json.dumps([model, item], ensure_ascii=False).encode()
    values: list[float] = []
    block = hashlib.sha256(seed).digest()
    while len(values) < dims:
        for (word,) in struct.iter_unpack(">I", block):
            values.append(word / 0xFFFFFFFF * 2.0 - 1.0)
        block = hashlib.sha256(block).digest()
    values = values[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _digest(endpoint: str, body: dict[str, Any]) -> str:
    canonical = json.dumps([endpoint, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]
