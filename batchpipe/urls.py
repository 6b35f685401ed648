"""Service URLs as they may be stored or shown: without credentials.

A base URL may carry a user name and password (`http://user:secret@host/v1`, for a gateway).
The client uses it as given; everything batchpipe writes (state.json, events.jsonl) or prints
(doctor, errors) goes through `public_url` first.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def public_url(url: str) -> str:
    """`url` without its user name and password (anything unparseable is shown as a placeholder)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an unparseable URL>"
    if "@" not in parts.netloc:
        return url
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
