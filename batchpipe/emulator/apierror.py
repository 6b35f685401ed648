"""The one exception the store raises for anything the HTTP client did wrong.

The handler turns it into the OpenAI error envelope `{"error": {message, type, param, code}}`
with the given status, so the official SDK maps it to the same exception class and fills
`.param`/`.code` exactly as it would against the real service (reference §5.2).
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})  # extra response headers, e.g. retry-after on a 429
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(kind: str, object_id: str) -> APIError:
    # Real messages: "No such File object: file-x" / "No batch found with id 'batch_x'." (LS).
    if kind == "batch":
        return APIError(404, f"No batch found with id '{object_id}'.")
    return APIError(404, f"No such File object: {object_id}", param="id")
