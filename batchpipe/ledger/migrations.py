"""Upgrades of state.json from older schema versions, one step at a time.

MIGRATIONS[n] turns a version-n document into version n+1. A document from a newer
batchpipe is refused, never rewritten: an older tool cannot know what it would lose.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchpipe.errors import LedgerError

SCHEMA_VERSION = 1

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    version = doc.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise LedgerError(f"{path}: missing or invalid schema_version", hint="this is not a batchpipe ledger")
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"{path} was written by a newer batchpipe (schema {version}; this one reads up to {SCHEMA_VERSION})",
            hint="upgrade batchpipe (pip install -U batchpipe) to work on this run",
        )
    while version < SCHEMA_VERSION:
        doc = MIGRATIONS[version](doc)
        version += 1
        doc["schema_version"] = version
    return doc
