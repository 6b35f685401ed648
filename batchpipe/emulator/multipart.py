"""A byte-exact multipart/form-data parser (the stdlib `cgi` module is deprecated).

Uploaded batch files are hashed by their owners, so the file part must come back exactly as
sent: we split on the delimiter ourselves and use the `email` package only for the small
header block of each part (Content-Disposition parameters, RFC 2231 filenames).
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from dataclasses import dataclass, field

from .apierror import APIError


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str | None, bytes]] = field(default_factory=dict)  # name -> (filename, content)


def boundary_of(content_type: str) -> str | None:
    match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    return (match.group(1) or match.group(2)) if match else None


def parse_form(content_type: str, body: bytes) -> Form:
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError(400, "Expected a multipart/form-data body.")
    boundary = boundary_of(content_type)
    if not boundary:
        raise APIError(400, "The multipart/form-data body has no boundary.")
    # Each delimiter is CRLF "--" boundary; the first one may sit at the very start of the body.
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    form = Form()
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise APIError(400, "Malformed multipart/form-data body.")
        header_block = head.lstrip(b" \t\r\n") + b"\r\n\r\n"  # transport padding, then the part's headers
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(header_block)
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = headers.get_filename()
        if filename is not None or headers.get_content_type() == "application/octet-stream":
            form.files[name] = (filename, content)
        else:
            form.fields[name] = content.decode("utf-8", errors="replace")
    return form


def nested(fields: dict[str, str], prefix: str) -> dict[str, str]:
    """`expires_after[seconds]` (the SDK's bracket form) and `expires_after.seconds` (Azure docs) as one dict."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        for opener, closer in (("[", "]"), (".", "")):
            start = prefix + opener
            if name.startswith(start) and name.endswith(closer):
                out[name[len(start) : len(name) - len(closer)]] = value
    return out
