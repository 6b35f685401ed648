"""Upgrades of state.json from older schema versions, one step at a time.

MIGRATIONS[n] turns a version-n document into version n+1. A document from a newer
batchpipe is refused, never rewritten: an older tool cannot know what it would lose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchpipe.errors import LedgerError
from batchpipe.urls import public_url

SCHEMA_VERSION = 3


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Schema 2: a run nonce in every new tag; no credentials in the recorded base URL.

    The nonce of an older run is derived from what made it unique (its id, config, input and the
    moment it was created), so every load migrates it the same way. Tags already recorded keep
    their form: an open intent is looked up by the tag it was sent with.
    """
    run = doc["run"]
    seed = f"{run['id']}|{run['created_at']!r}|{run['config_sha256']}|{run['input'].get('sha256')}"
    run["nonce"] = hashlib.sha256(seed.encode()).hexdigest()[:12]
    if run.get("base_url"):
        run["base_url"] = public_url(run["base_url"])
    return doc


def _v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
    """Schema 3: runs gain `mode` (sync mode), `target_reached` (limits.target) and `imports`
    (results imported by hand); shards gain `mode`, `handoff` (exported for upload by hand) and
    `answers` (the summary counts). All have defaults that say "none of that happened", so a
    version-2 document needs nothing but its number. The number changes so that an older
    batchpipe refuses a run it would misread (a handed-off shard it would submit) as written by a
    newer one, instead of taking it for a damaged ledger."""
    return doc


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3}


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
