"""Synchronous request checks (the 400s the real service returns at once) and list paging.

Pure functions over already-decoded parameters: the store calls them before taking its lock.
Messages, `param` and `code` follow the observed OpenAI ones (reference §1.2, §3.1).
"""

from __future__ import annotations

from typing import Any

from .apierror import APIError
from .options import DAY
from .validation import ALLOWED_ENDPOINTS

EXPIRY_RANGE = (3600, 30 * DAY)  # expires_after / output_expires_after seconds (reference §1.2, §3.1)


def invalid_value(param: str, value: Any, allowed: tuple[str, ...]) -> APIError:
    supported = ", ".join(f"'{v}'" for v in allowed)
    return APIError(
        400, f"Invalid value: '{value}'. Supported values are: {supported}.", param=param, code="invalid_value"
    )


def missing(param: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def parse_expiry(raw: Any, param: str) -> int | None:
    """Seconds from an `expires_after`-style {anchor, seconds} (form strings or JSON), or None."""
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        raise APIError(400, f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    if raw.get("anchor") != "created_at":
        raise invalid_value(f"{param}.anchor", raw.get("anchor"), ("created_at",))
    try:
        seconds = int(raw.get("seconds"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise APIError(
            400, f"Invalid type for '{param}.seconds': expected an integer.", param=f"{param}.seconds",
            code="invalid_type",
        ) from None
    low, high = EXPIRY_RANGE
    if not low <= seconds <= high:
        raise APIError(
            400,
            f"Invalid '{param}.seconds': must be between {low} and {high}.",
            param=f"{param}.seconds",
            code="invalid_value",
        )
    return seconds


def check_create(payload: Any) -> dict[str, Any]:
    """The create-time (synchronous) checks of POST /v1/batches (reference §3.1)."""
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_type")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if payload.get(key) is None:
            raise missing(key)
    if not isinstance(payload["input_file_id"], str):
        raise APIError(400, "Invalid type for 'input_file_id': expected a string.", param="input_file_id",
                       code="invalid_type")
    if payload["endpoint"] not in ALLOWED_ENDPOINTS:
        raise invalid_value("endpoint", payload["endpoint"], ALLOWED_ENDPOINTS)
    if payload["completion_window"] != "24h":
        raise invalid_value("completion_window", payload["completion_window"], ("24h",))
    metadata = payload.get("metadata")
    if metadata is not None:
        check_metadata(metadata)
    return {
        "input_file_id": payload["input_file_id"],
        "endpoint": payload["endpoint"],
        "completion_window": payload["completion_window"],
        "metadata": metadata,
        "output_expires_seconds": parse_expiry(payload.get("output_expires_after"), "output_expires_after"),
    }


def check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise APIError(400, "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type")
    if len(metadata) > 16:
        raise APIError(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
            f"but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise APIError(
                400,
                f"Invalid 'metadata': key '{key[:20]}...' is too long. Expected a key with maximum length 64, "
                f"but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(value, str):
            raise APIError(
                400,
                f"Invalid type for 'metadata.{key}': expected a string, but got {type(value).__name__} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > 512:
            raise APIError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length 512, "
                f"but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )


def after_cursor(records: list[Any], after: str | None, kind: str) -> list[Any]:
    """The records that follow the cursor object `after` in an already-ordered list."""
    if after is None:
        return records
    for index, record in enumerate(records):
        if record.id == after:
            return records[index + 1 :]
    raise APIError(400, f"Invalid 'after': no {kind} with id '{after}'.", param="after", code="invalid_value")


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A list envelope from up to limit + 1 items (the extra one only tells `has_more`)."""
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }
