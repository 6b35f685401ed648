"""The per-request index (runs/<id>/index.sqlite): which row each custom_id came from, and
the outcome of each request once its results are processed.

It keeps `create`'s duplicate-id check, the validation-error line mapping and the final merge
in memory that does not grow with the dataset. It is derived data with a durable commit:
results are committed here before the ledger marks their shard merged, and re-processing a
shard replaces its rows, so a crash between the two is repaired by running `process` again.
A lost or damaged index is rebuilt from the run's files (ops/reindex.py); an sqlite error
(damage, a full disk) leaves here as an IndexFailure with a message and a hint, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from batchpipe import fsio
from batchpipe.errors import LedgerError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (      -- one per input row, written at create
    custom_id TEXT PRIMARY KEY,
    row_no    INTEGER NOT NULL UNIQUE,
    line_no   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shard_lines (   -- which request is on which line of which shard file
    file      TEXT NOT NULL,               -- the file's path in the run dir, as the ledger names it
    line      INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    PRIMARY KEY (file, line)
);
CREATE TABLE IF NOT EXISTS results (       -- the latest outcome of each request
    custom_id TEXT PRIMARY KEY,
    shard     TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    ok        INTEGER NOT NULL,
    retryable INTEGER NOT NULL,
    value     BLOB,
    error     BLOB,
    finish_reason TEXT,                    -- why the model stopped ("stop", "length", ...), if it said
    usage     BLOB                         -- the tokens the service reported for this answer (JSON)
);
CREATE INDEX IF NOT EXISTS results_by_shard ON results (shard);
"""


# The page cache of a `bulk` build (KiB): bounded, so create's memory does not grow with the run.
BULK_CACHE_KIB = 16 * 1024


@dataclass(frozen=True)
class Outcome:
    custom_id: str
    ok: bool
    value: Any  # the answer (for chat: the assistant's content string)
    error: dict[str, Any] | None
    retryable: bool = False  # a failure another attempt may fix (5xx, expired, cancelled, missing)
    attempt: int = 1  # the shard attempt this outcome came from
    finish_reason: str | None = None  # why the model stopped: "length" = cut at the output limit
    usage: dict[str, Any] | None = None  # the tokens the service reported for the answer, as it said them
    invalid: bool = False  # the answer came back but means nothing usable: counted per error code


class DuplicateId(Exception):
    def __init__(self, custom_id: str, line: int, first_line: int) -> None:
        super().__init__(custom_id)
        self.custom_id = custom_id
        self.line = line
        self.first_line = first_line


class IndexFailure(LedgerError):
    """index.sqlite cannot be read or written (missing, damaged, or the disk is full)."""

    def __init__(self, message: str, *, hint: str, damaged: bool) -> None:
        super().__init__(message, hint=hint)
        self.damaged = damaged  # True: rebuilding the index repairs it


# sqlite's words for "the file is not a sound database" (anything else: disk full, I/O, locked...)
_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

F = TypeVar("F", bound=Callable[..., Any])


def _failure(path: Path, exc: sqlite3.Error) -> IndexFailure:
    run = path.parent.name
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(_DAMAGE):
        return IndexFailure(
            f"{path} is damaged ({exc})", damaged=True,
            hint=f"run `batchpipe recover {run}`: the index is derived data and is rebuilt from the run's files",
        )
    return IndexFailure(
        f"{path}: {exc}", damaged=False,
        hint="free disk space (or fix what the message names) and run the same command again; "
        "the change in flight was rolled back and nothing else was written",
    )


def _guarded(method: F) -> F:
    """Turn an sqlite error inside `method` (a plain method or a generator) into an IndexFailure."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def gen(self: Index, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise _failure(self.path, exc) from None

        return gen  # type: ignore[return-value]

    @functools.wraps(method)
    def call(self: Index, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _failure(self.path, exc) from None

    return call  # type: ignore[return-value]


class Index:
    @_guarded
    def __init__(self, path: Path, *, create: bool = False, bulk: bool = False) -> None:
        """Open a run's index; `create` makes a new one (anything else must find it there).

        `bulk`: for a new index in a build that is either finished or thrown away whole (create's
        temp run dir): no syncs and the rollback journal in memory while it is filled, as a
        crash there loses nothing anyone points at; `finish_bulk` then makes the file durable.
        """
        self.path = path
        if not create and not path.is_file():
            raise IndexFailure(
                f"{path} is missing", damaged=True,
                hint=f"run `batchpipe recover {path.parent.name}`: it rebuilds the index from the run's files",
            )
        self.db = sqlite3.connect(path)
        if bulk:
            self.db.execute("PRAGMA journal_mode=MEMORY")
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        else:
            self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        # An index written before finish_reason existed: add the column (NULL: not recorded).
        # Likewise usage (NULL: not recorded; `process` records it as it merges).
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
        for column, kind in (("finish_reason", "TEXT"), ("usage", "BLOB")):
            if column not in columns:
                self.db.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")
                self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests (written once, at create) -----------------------------------------------
    @_guarded
    def add_created(self, rows: list[tuple[str, int, int, str, int]]) -> None:
        """Record a batch of new requests, as (custom_id, row_no, line_no, shard file, line in it),
        in the open transaction (create commits once at the end). Raises DuplicateId for the
        first id that is already recorded, by an earlier batch or earlier in this one."""
        try:
            self.db.executemany("INSERT INTO requests VALUES (?, ?, ?)", [r[:3] for r in rows])
        except sqlite3.IntegrityError:
            # executemany stopped at the first duplicate and kept the rows before it: that row is
            # the first whose id is recorded under another row number.
            for custom_id, row_no, line_no, _, _ in rows:
                found = self.db.execute(
                    "SELECT row_no, line_no FROM requests WHERE custom_id = ?", (custom_id,)
                ).fetchone()
                if found is not None and found[0] != row_no:
                    raise DuplicateId(custom_id, line_no, found[1]) from None
            raise
        self.db.executemany("INSERT INTO shard_lines VALUES (?, ?, ?)", [(r[3], r[4], r[0]) for r in rows])

    @_guarded
    def finish_bulk(self) -> None:
        """Commit a `bulk` build, and sync the file: it is whole on disk before anything names it."""
        self.db.commit()
        self.db.execute("PRAGMA journal_mode=DELETE")
        fsio.fsync_file(self.path)

    @_guarded
    def add_shard_file(self, file: str, custom_ids: Iterable[str]) -> None:
        """Record which request is on each line of a new shard file, and commit.

        Keyed by the file, not the shard: a crash before the ledger names the file leaves
        entries nobody reads, never entries that contradict the file the ledger does name.
        """
        with self.db:
            self.db.execute("DELETE FROM shard_lines WHERE file = ?", (file,))
            self.db.executemany(
                "INSERT INTO shard_lines VALUES (?, ?, ?)", ((file, n, cid) for n, cid in enumerate(custom_ids, 1))
            )

    @_guarded
    def shard_ids(self, file: str) -> Iterator[tuple[int, str]]:
        """(line, custom_id) of the requests in a shard file, in file order."""
        yield from self.db.execute("SELECT line, custom_id FROM shard_lines WHERE file = ? ORDER BY line", (file,))

    @_guarded
    def files_of(self, custom_id: str) -> list[str]:
        """The shard files (as the ledger names them) that hold the request `custom_id`.

        Looked up by id only when results come in by hand (ops/handoff.py): the index by id is
        made then, once, so that `create` does not pay for it on every run.
        """
        if not getattr(self, "_by_id", False):
            with self.db:
                self.db.execute("CREATE INDEX IF NOT EXISTS shard_lines_by_id ON shard_lines (custom_id)")
            self._by_id = True
        return [row[0] for row in self.db.execute("SELECT file FROM shard_lines WHERE custom_id = ?", (custom_id,))]

    @_guarded
    def request_at(self, file: str, line: int) -> tuple[str, int, int] | None:
        """(custom_id, row_no, line_no) of the request on a 1-based line of a shard file."""
        return self.db.execute(
            "SELECT r.custom_id, r.row_no, r.line_no FROM shard_lines s JOIN requests r USING (custom_id) "
            "WHERE s.file = ? AND s.line = ?",
            (file, line),
        ).fetchone()

    @_guarded
    def retryable(self, shard: str, file: str, *, every_failure: bool = False) -> Iterator[tuple[int, str]]:
        """(line, custom_id) of the requests of `shard` (in `file`) whose latest outcome may be retried;
        with `every_failure`, of every request whose latest outcome there is a failure."""
        yield from self.db.execute(
            "SELECT l.line, l.custom_id FROM shard_lines l JOIN results s ON s.custom_id = l.custom_id "
            "WHERE l.file = ? AND s.shard = ? AND s.ok = 0 AND (s.retryable = 1 OR ?) ORDER BY l.line",
            (file, shard, every_failure),
        )

    @_guarded
    def truncated_retryable(self, shard: str, *, every_failure: bool = False) -> int:
        """How many of the requests `retryable` yields for `shard` failed as answers cut at the output limit."""
        return self.db.execute(
            "SELECT COUNT(*) FROM results WHERE shard = ? AND ok = 0 AND (retryable = 1 OR ?) "
            "AND finish_reason = 'length'",
            (shard, every_failure),
        ).fetchone()[0]

    @_guarded
    def add_requests(self, requests: Iterable[tuple[str, int, int]]) -> None:
        """(custom_id, row_no, line_no) of every input row, in one transaction (a rebuild)."""
        with self.db:
            self.db.executemany("INSERT INTO requests VALUES (?, ?, ?)", requests)

    # -- what a consistency check needs ---------------------------------------------------
    @_guarded
    def quick_check(self) -> str:
        return "; ".join(str(r[0]) for r in self.db.execute("PRAGMA quick_check"))

    @_guarded
    def count(self, table: str, file: str | None = None) -> int:
        """Rows in `table` (requests, shard_lines, results); for shard_lines, those of one `file`."""
        assert table in ("requests", "shard_lines", "results")
        if file is None:
            return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM shard_lines WHERE file = ?", (file,)).fetchone()[0]

    # -- results (written at process) -----------------------------------------------------
    @_guarded
    def put_results(self, shard: str, outcomes: Iterable[Outcome]) -> dict[str, int]:
        """Record the outcomes of one shard attempt in one transaction; return {"ok": n, "failed": n,
        "truncated": n} (truncated: answers cut at the output limit, kept or failed), and for each
        code of an invalid answer (`invalid_json`, ...; batchpipe.pipeline.interpret) how many.

        An attempt's outcome replaces the request's earlier one: a retry only holds requests
        whose earlier attempt failed, so the newest outcome is the one that counts.
        """
        counts = {"ok": 0, "failed": 0, "truncated": 0}

        def rows() -> Iterator[tuple[Any, ...]]:
            for o in outcomes:
                counts["ok" if o.ok else "failed"] += 1
                counts["truncated"] += o.finish_reason == "length"
                if o.invalid and o.error is not None:
                    code = str(o.error.get("code"))
                    counts[code] = counts.get(code, 0) + 1
                error = None if o.error is None else orjson.dumps(o.error)
                usage = None if o.usage is None else orjson.dumps(o.usage)
                yield (o.custom_id, shard, o.attempt, int(o.ok), int(o.retryable), orjson.dumps(o.value), error,
                       o.finish_reason, usage)

        with self.db:  # one transaction: all of the shard or none of it; one statement for all its rows
            self.db.executemany(
                "INSERT OR REPLACE INTO results (custom_id, shard, attempt, ok, retryable, value, error, "
                "finish_reason, usage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows(),
            )
        return counts

    @_guarded
    def joined(self) -> Iterator[tuple[int, str, Outcome | None]]:
        """Every request in row order with its outcome (None if it has none yet)."""
        rows = self.db.execute(
            "SELECT r.row_no, r.custom_id, s.ok, s.value, s.error, s.retryable, s.attempt, s.finish_reason, "
            "s.usage FROM requests r LEFT JOIN results s ON s.custom_id = r.custom_id ORDER BY r.row_no"
        )
        for row_no, custom_id, ok, value, error, retryable, attempt, finish_reason, usage in rows:
            if ok is None:
                yield row_no, custom_id, None
            else:
                yield row_no, custom_id, Outcome(
                    custom_id,
                    bool(ok),
                    orjson.loads(value) if value is not None else None,
                    orjson.loads(error) if error is not None else None,
                    bool(retryable),
                    attempt,
                    finish_reason,
                    orjson.loads(usage) if usage is not None else None,
                )
