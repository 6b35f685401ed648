"""The job config's fixed vocabulary: endpoints, formats, shard limits, the body keys batchpipe owns.

Apart from the models (models.py) so that reading a run's own config snapshot, which needs these
but no validation, does not import pydantic (issue 9: `status` and `process` start faster).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

ENDPOINTS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
)
DEFAULT_ENDPOINT = "/v1/chat/completions"
# Endpoints whose request body has no place for a system message.
NO_SYSTEM_ENDPOINTS: frozenset[str] = frozenset({"/v1/embeddings", "/v1/completions", "/v1/moderations"})
# Endpoints whose answer is not text (a vector, a moderation result): `output.parse` does not apply.
NO_TEXT_ENDPOINTS: frozenset[str] = frozenset({"/v1/embeddings", "/v1/moderations"})
# Endpoints the Batch API accepts but batchpipe does not build requests for (yet).
UNSUPPORTED_ENDPOINTS = ("/v1/images/generations", "/v1/images/edits", "/v1/videos")

INPUT_FORMATS: tuple[str, ...] = ("jsonl", "csv")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
TRUNCATED_POLICIES: tuple[str, ...] = ("keep", "fail")

MAX_REQUESTS_PER_SHARD = 50_000  # the Batch API's limit per batch
MAX_BYTES_PER_SHARD = 200_000_000  # the Batch API's 200 MB input file limit

# Body keys batchpipe owns, and why a user may not set them in params.
RESERVED_PARAMS: Mapping[str, str] = MappingProxyType(
    {
        "model": "the model is set by the top-level 'model:' key",
        "messages": "batchpipe builds the messages from prompt.system and prompt.user",
        "input": "batchpipe builds the input from prompt.user",
        "prompt": "batchpipe builds the prompt from prompt.user",
        "instructions": "batchpipe builds the instructions from prompt.system",
        "stream": "the Batch API refuses streaming requests",
    }
)


def asks_for_json(params: Mapping[str, Any]) -> bool:
    """Does the request body ask the model for JSON (chat `response_format`, responses `text.format`)?"""
    text = params.get("text")
    for fmt in (params.get("response_format"), text.get("format") if isinstance(text, dict) else None):
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            return True
    return False
