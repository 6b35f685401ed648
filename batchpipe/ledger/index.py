"""The per-request index (runs/<id>/index.sqlite): which row each custom_id came from, and
the outcome of each request once its results are processed.

It keeps `create`'s duplicate-id check, the validation-error line mapping and the final merge
in memory that does not grow with the dataset. It is derived data with a durable commit:
results are committed here before the ledger marks their shard merged, and re-processing a
shard replaces its row, so a crash between the two is repaired by running `process` again.
A lost or damaged index, or one of an earlier layout, is rebuilt from the run's files
(ops/reindex.py); an sqlite error (damage, a full disk) leaves here as an IndexFailure with a
message and a hint, never a traceback.

Layout 3 (SCHEMA): a row per request only where sqlite needs one to find an id (`requests`);
everything else a row per shard file or per merged attempt, its per-request values in JSON
arrays, so `create` and `process` pay a statement per shard, not per request. Each row's arrays
carry a check (_digest), verified whenever they are read: a damaged one is never joined.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import inspect
import operator
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec
import orjson

from batchpipe import fsio
from batchpipe.errors import LedgerError

# The layout's version, in sqlite's user_version: an index of another version (an earlier
# batchpipe's: one row per request, or arrays without their check) is rebuilt from the run's
# files (ops/reindex.py).
VERSION = 3

# Rows are written a shard file or a shard attempt at a time, each as one JSON array in a blob:
# `create` and `process` then pay one statement per shard, not one per request, and sqlite
# unpacks the arrays itself (json_each) where it must look inside them.
SCHEMA = f"""
PRAGMA user_version = {VERSION};
CREATE TABLE IF NOT EXISTS requests (      -- one per request, written at create
    custom_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,            -- its 1-based place among the job's requests (input order)
    line_no   INTEGER                      -- the input line it came from; NULL: the same as seq
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shard_files (   -- which request is on which line of a shard file
    file      TEXT PRIMARY KEY,            -- the file's path in the run dir, as the ledger names it
    lines     INTEGER NOT NULL,
    ids       BLOB NOT NULL,               -- JSON arrays, in line order: the custom_id on each line,
    seqs      BLOB NOT NULL,               --   and its seq
    digest    BLOB NOT NULL                -- the check of both (_digest)
);
CREATE TABLE IF NOT EXISTS results (       -- the outcomes of one merged shard attempt
    shard     TEXT PRIMARY KEY,
    file      TEXT NOT NULL,               -- its request file: its shard_files row says whose outcomes these are
    merged    INTEGER NOT NULL,            -- merge order: a later attempt's outcome for a request wins
    lo        INTEGER NOT NULL,            -- the smallest and largest seq among its requests
    hi        INTEGER NOT NULL,
    failed    INTEGER NOT NULL,            -- how many of its outcomes are failures, and of those
    retryable INTEGER NOT NULL,            --   how many another attempt may fix
    n         INTEGER NOT NULL,            -- its requests, one per line of its request file, and
    outcomes  BLOB NOT NULL,               --   in that line order (JSON): [ok, value, error, retryable, attempt,
                                           --   finish_reason, usage, invalid]
    digest    BLOB NOT NULL                -- the check of the outcomes (_digest)
);
"""


# An attempt's outcomes with the ids and seqs of its request file's lines, in the same order.
_WITH_FILES = "results r JOIN shard_files f ON f.file = r.file"


# The page cache of a `bulk` build (KiB): bounded, so create's memory does not grow with the run.
# It works on a few pages at a time (a batch of ids that mostly ascend goes in at one place;
# others are staged and put in place sorted: see add_created): a bigger cache only grew create's
# memory (1,000,000 rows: 105-120 MiB with 16 MiB, 91-96 with 4, no slower).
BULK_CACHE_KIB = 4 * 1024

# A batch of new requests whose ids descend from one to the next more often than this share of
# them is scattered (ids such as UUIDs or hashes): see add_created.
SCATTERED = 0.01


class Outcome(NamedTuple):
    """A request's outcome. A NamedTuple, not a dataclass: a big run makes millions of them."""

    custom_id: str
    ok: bool
    value: Any  # the answer (for chat: the assistant's content string)
    error: dict[str, Any] | None
    retryable: bool = False  # a failure another attempt may fix (5xx, expired, cancelled, missing)
    attempt: int = 1  # the shard attempt this outcome came from
    finish_reason: str | None = None  # why the model stopped: "length" = cut at the output limit
    usage: dict[str, Any] | None = None  # the tokens the service reported for the answer, as it said them
    invalid: bool = False  # the answer came back but means nothing usable: counted per error code


# Outcome((...)) at a plain tuple's cost: a NamedTuple's own constructor is Python code, paid per request.
outcome_of = functools.partial(tuple.__new__, Outcome)


class Rows:
    """A shard attempt's outcomes in the shape `put_results` stores them: `rows[i]` is the outcome of
    `ids[i]` without its id, [ok, value, error, retryable, attempt, finish_reason, usage, invalid]
    (see SCHEMA), as a list or tuple or, when `encoded`, every row already that array in JSON
    (bytes, as orjson.dumps writes it); `counts` and `retryable` are what put_results returns and
    records for them.

    `process` makes the usual job's outcomes straight into encoded rows: an Outcome per request,
    walked once more to be counted and cut into a row, then encoded with the whole shard's
    rows, is most of the cost of recording it.
    """

    __slots__ = ("ids", "rows", "counts", "retryable", "encoded")

    def __init__(self, ids: list[str], rows: list[Any], counts: dict[str, int], retryable: int,
                 encoded: bool = False) -> None:
        self.ids = ids
        self.rows = rows
        self.counts = counts
        self.retryable = retryable
        self.encoded = encoded

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> Rows:
        """The rows and counts of some outcomes, in their order (see put_results for the counts)."""
        counts = {"ok": 0, "failed": 0, "truncated": 0}
        ids: list[str] = []
        rows: list[tuple[Any, ...]] = []
        retryable = 0
        for o in outcomes:
            ids.append(o.custom_id)
            rows.append(o[1:])
            counts["ok" if o.ok else "failed"] += 1
            retryable += o.retryable
            if o.finish_reason is not None:
                counts["truncated"] += o.finish_reason == "length"
            if o.invalid and o.error is not None:
                code = str(o.error.get("code"))
                counts[code] = counts.get(code, 0) + 1
        return cls(ids, rows, counts, retryable)

    def __iter__(self) -> Iterator[Outcome]:
        """The outcomes again (Rows is an Iterable[Outcome], as put_results takes)."""
        rows = map(orjson.loads, self.rows) if self.encoded else self.rows
        return (outcome_of((custom_id, *row)) for custom_id, row in zip(self.ids, rows))

    def blob(self) -> bytes:
        """The rows as put_results stores them: one JSON array."""
        return b"[" + b",".join(self.rows) + b"]" if self.encoded else orjson.dumps(self.rows)


class DuplicateId(Exception):
    """`custom_id` is the id of the request from input line `line`, and already of the one from `first_line`."""

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


# A record of the index that does not decode: damage sqlite cannot see (its pages are sound).
_UNREADABLE = (orjson.JSONDecodeError, msgspec.DecodeError)


def _damaged(path: Path, what: object) -> IndexFailure:
    """The index at `path` is damaged (`what` says how): `recover` rebuilds it."""
    return IndexFailure(
        f"{path} is damaged ({what})", damaged=True,
        hint=f"run `batchpipe recover {path.parent.name}`: the index is derived data and is rebuilt from the "
        "run's files",
    )


def _failure(path: Path, exc: sqlite3.Error | ValueError | msgspec.DecodeError) -> IndexFailure:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(_DAMAGE):
        return _damaged(path, exc)
    if isinstance(exc, _UNREADABLE):
        return _damaged(path, f"a record does not read: {exc}")
    return IndexFailure(
        f"{path}: {exc}", damaged=False,
        hint="free disk space (or fix what the message names) and run the same command again; "
        "the change in flight was rolled back and nothing else was written",
    )


def _guarded(method: F) -> F:
    """Turn an sqlite error inside `method` (a plain method or a generator), or a record of the
    index that does not decode, into an IndexFailure."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def gen(self: Index, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except (sqlite3.Error, *_UNREADABLE) as exc:
                raise _failure(self.path, exc) from None

        return gen  # type: ignore[return-value]

    @functools.wraps(method)
    def call(self: Index, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, *_UNREADABLE) as exc:
            raise _failure(self.path, exc) from None

    return call  # type: ignore[return-value]


def _digest(*blobs: bytes) -> bytes:
    """The check kept beside a record's arrays. sqlite keeps no checksum of a row: a bit flipped on
    disk in a seq (a digit for another, still JSON, still as long) would join answers to the wrong
    rows without a word, and one in an answer would change it. Each array is checked when read."""
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(len(blob).to_bytes(8, "little"))
        digest.update(blob)
    return digest.digest()[:16]


def _checked(path: Path, what: str, digest: bytes, *blobs: bytes) -> None:
    """Raise IndexFailure (damaged: rebuilt by recover) unless `blobs` are what `digest` was made of."""
    if _digest(*blobs) != digest:
        raise _damaged(path, f"{what} no longer match their check")


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
        # create fills the index from its writer thread, one statement at a time (never two threads at once)
        self.db = sqlite3.connect(path, check_same_thread=False)
        if not create and (version := self._layout()) != VERSION:
            self.db.close()
            raise IndexFailure(
                f"{path} has the layout of an earlier batchpipe (version {version}, not {VERSION})", damaged=True,
                hint=f"run `batchpipe recover {path.parent.name}` (or `process`): the index is rebuilt from the "
                "run's files",
            )
        self._bulk = bulk
        self._staging = path.with_name(f"{path.stem}-staging{path.suffix}")  # see add_created
        self._staged = False
        if bulk:
            self.db.execute("PRAGMA journal_mode=MEMORY")
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        else:
            self.db.execute("PRAGMA synchronous=FULL")
        if create:
            self.db.executescript(SCHEMA)

    def _layout(self) -> int:
        """The layout version the file says it has, 0 if its results table is not this layout's."""
        columns = [row[1] for row in self.db.execute("PRAGMA table_info(results)")]
        if columns != ["shard", "file", "merged", "lo", "hi", "failed", "retryable", "n", "outcomes", "digest"]:
            return 0
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests (written once, at create) -----------------------------------------------
    @_guarded
    def add_created(self, ids: list[str], first_seq: int, line_nos: Sequence[int]) -> None:
        """Record a batch of new requests: `ids[k]` is the request at seq `first_seq + k`, rendered
        from input line `line_nos[k]`; in the open transaction. Raises DuplicateId for the first id
        of the batch that is already recorded, by an earlier batch or earlier in this one.

        In a `bulk` build, a batch of scattered ids (UUIDs, hashes) is staged instead, with every
        batch after it: inserted one by one, each would land on a page of its own anywhere in
        the table, and the build would slow down and its rollback journal (in memory) grow with
        the run. end_created puts the staged requests in place sorted, and says which id is a
        duplicate then (check_created, before that). Ids that mostly ascend (row numbers,
        sequential keys) go straight in, at one place of the table.
        """
        if not ids:
            return
        line_nos = line_nos if type(line_nos) is list else list(line_nos)
        if self._bulk and (self._staged or sum(map(operator.gt, ids, ids[1:])) > max(1, len(ids) * SCATTERED)):
            self._stage(ids, first_seq, line_nos)
            return
        try:
            self._insert("main.requests", ids, first_seq, line_nos)
        except sqlite3.IntegrityError:
            # The statement was undone as a whole: find its first id seen before (once, on the error path).
            seen: dict[str, int] = {}  # custom_id -> input line, in this batch
            for custom_id, line in zip(ids, line_nos):
                found = self.db.execute("SELECT COALESCE(line_no, seq) FROM requests WHERE custom_id = ?",
                                        (custom_id,)).fetchone()
                first = found[0] if found is not None else seen.get(custom_id)
                if first is not None:
                    raise DuplicateId(custom_id, line, first) from None
                seen[custom_id] = line
            raise

    def _insert(self, table: str, ids: list[str], first_seq: int, line_nos: list[int]) -> None:
        if line_nos == list(range(first_seq, first_seq + len(ids))):  # the usual file: a request per line
            self.db.execute(f"INSERT INTO {table} SELECT value, ?2 + key, NULL FROM json_each(?1)",
                            (orjson.dumps(ids), first_seq))
        else:
            self.db.execute(
                f"INSERT INTO {table} SELECT json_extract(value, '$[0]'), ?2 + key, json_extract(value, '$[1]') "
                "FROM json_each(?1)", (orjson.dumps(list(zip(ids, line_nos))), first_seq))

    def _stage(self, ids: list[str], first_seq: int, line_nos: list[int]) -> None:
        """Append a batch to the staging file beside the index (made, and the requests recorded so
        far moved there, at the first batch): rows in file order, no check, no sort."""
        if not self._staged:
            self.db.commit()  # a database is attached outside a transaction only
            self.db.execute("ATTACH DATABASE ? AS staging", (str(self._staging),))
            self.db.execute("PRAGMA staging.journal_mode=OFF")  # scratch: thrown away with the build if it fails
            self.db.execute("PRAGMA staging.synchronous=OFF")
            self.db.execute("CREATE TABLE staging.created "
                            "(custom_id TEXT NOT NULL, seq INTEGER NOT NULL, line_no INTEGER)")
            self.db.execute("INSERT INTO staging.created SELECT custom_id, seq, line_no FROM main.requests "
                            "ORDER BY seq")
            self.db.execute("DELETE FROM main.requests")
            self._staged = True
        self._insert("staging.created", ids, first_seq, line_nos)

    @_guarded
    def check_created(self) -> None:
        """Raise DuplicateId for the first staged request, in file order, whose id an earlier one
        has (see add_created): before an error further down the input is raised, as that
        duplicate is the file's first error."""
        if not self._staged:
            return  # every batch went straight in: a duplicate was refused there
        self.db.execute("CREATE INDEX IF NOT EXISTS staging.created_by_id ON created (custom_id, seq)")
        found = self.db.execute(  # rowid order is file order: the rows were appended so
            "SELECT c.custom_id, COALESCE(c.line_no, c.seq), (SELECT COALESCE(f.line_no, f.seq) "
            "FROM staging.created f WHERE f.custom_id = c.custom_id ORDER BY f.seq LIMIT 1) "
            "FROM staging.created c WHERE EXISTS (SELECT 1 FROM staging.created e "
            "WHERE e.custom_id = c.custom_id AND e.seq < c.seq) ORDER BY c.rowid LIMIT 1",
        ).fetchone()
        if found is not None:
            raise DuplicateId(*found)

    @_guarded
    def end_created(self) -> None:
        """Put the requests a bulk build staged (add_created) in place, sorted by id: a pass that
        appends to the table. Raises DuplicateId as add_created would have."""
        if not self._staged:
            return
        self.db.commit()
        try:
            with self.db:
                self.db.execute("INSERT INTO main.requests SELECT custom_id, seq, line_no FROM staging.created "
                                "ORDER BY custom_id")
        except sqlite3.IntegrityError:
            self.check_created()
            raise
        self.db.execute("DETACH DATABASE staging")
        self._staging.unlink()
        self._staged = False

    @_guarded
    def add_requests(self, requests: Iterable[tuple[str, int, int]]) -> None:
        """(custom_id, seq, line_no) of every request in seq order, in one transaction (a rebuild)."""
        with self.db:
            batch: list[tuple[str, int, int]] = []
            for request in requests:
                batch.append(request)
                if len(batch) == 10_000:
                    self._add_batch(batch)
            self._add_batch(batch)

    def _add_batch(self, batch: list[tuple[str, int, int]]) -> None:
        if batch:
            self.add_created([r[0] for r in batch], batch[0][1], [r[2] for r in batch])
            batch.clear()

    @_guarded
    def finish_bulk(self) -> None:
        """Commit a `bulk` build, and sync the file: it is whole on disk before anything names it."""
        self.db.commit()
        self.db.execute("PRAGMA journal_mode=DELETE")
        fsio.fsync_file(self.path)

    # -- shard files ----------------------------------------------------------------------
    @_guarded
    def add_shard_file(self, file: str, custom_ids: Iterable[str], seqs: list[int] | None = None) -> None:
        """Record which request is on each line of a new shard file, and commit.

        `seqs`: the requests' places, when the caller knows them (create); else they are looked up.
        Keyed by the file, not the shard: a crash before the ledger names the file leaves
        entries nobody reads, never entries that contradict the file the ledger does name.
        """
        ids = orjson.dumps(list(custom_ids))
        with self.db:
            if seqs is None:
                seqs = [row[0] for row in self.db.execute(
                    "SELECT r.seq FROM json_each(?) j JOIN requests r ON r.custom_id = j.value ORDER BY j.key",
                    (ids,))]
                if len(seqs) != self.db.execute("SELECT json_array_length(?)", (ids,)).fetchone()[0]:
                    raise IndexFailure(
                        f"{self.path}: {file} holds requests the index does not know", damaged=True,
                        hint=f"run `batchpipe recover {self.path.parent.name}`: it rebuilds the index")
            seqs_blob = orjson.dumps(seqs)
            self.db.execute("INSERT OR REPLACE INTO shard_files VALUES (?, ?, ?, ?, ?)",
                            (file, len(seqs), ids, seqs_blob, _digest(ids, seqs_blob)))
            if self._has_by_id():
                self.db.execute("DELETE FROM id_files WHERE file = ?", (file,))
                self.db.execute("INSERT INTO id_files SELECT value, ? FROM json_each(?)", (file, ids))

    @_guarded
    def ids_of(self, file: str) -> list[str]:
        """The custom_ids on the lines of a shard file, in line order ([] for a file it does not know)."""
        found = self._file_arrays(file)
        return orjson.loads(found[0]) if found is not None else []

    def _file_arrays(self, file: str) -> tuple[bytes, bytes] | None:
        """(ids, seqs) of a shard file as stored, checked; None for a file the index does not know."""
        found = self.db.execute("SELECT ids, seqs, digest FROM shard_files WHERE file = ?", (file,)).fetchone()
        if found is None:
            return None
        ids, seqs, digest = found
        _checked(self.path, f"the lines of {file}", digest, ids, seqs)
        return ids, seqs

    def shard_ids(self, file: str) -> list[tuple[int, str]]:
        """(line, custom_id) of the requests in a shard file, in file order."""
        return list(enumerate(self.ids_of(file), 1))

    def _has_by_id(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'id_files'").fetchone() is not None

    @_guarded
    def files_of(self, custom_id: str) -> list[str]:
        """The shard files (as the ledger names them) that hold the request `custom_id`.

        Looked up by id only when results come in by hand (ops/handoff.py): the table by id is
        made then, once, so that `create` does not pay for it on every run.
        """
        if not self._has_by_id():
            with self.db:
                self.db.execute("CREATE TABLE id_files (custom_id TEXT NOT NULL, file TEXT NOT NULL)")
                self.db.execute("INSERT INTO id_files SELECT j.value, s.file FROM shard_files s, json_each(s.ids) j")
                self.db.execute("CREATE INDEX id_files_by_id ON id_files (custom_id)")
        return [row[0] for row in self.db.execute("SELECT file FROM id_files WHERE custom_id = ?", (custom_id,))]

    @_guarded
    def request_at(self, file: str, line: int) -> tuple[str, int, int] | None:
        """(custom_id, seq, input line) of the request on a 1-based line of a shard file."""
        return self.requests_at(file, [line]).get(line)

    @_guarded
    def requests_at(self, file: str, lines: Iterable[int]) -> dict[int, tuple[str, int, int]]:
        """request_at of each of `lines` (those the file has), the file's ids read once: a batch
        that failed validation may name thousands of its lines."""
        ids = self.ids_of(file)
        found = {}
        for line in set(lines):
            if 1 <= line <= len(ids):
                found[line] = self.db.execute("SELECT custom_id, seq, COALESCE(line_no, seq) FROM requests "
                                              "WHERE custom_id = ?", (ids[line - 1],)).fetchone()
        return {line: request for line, request in found.items() if request is not None}

    # -- what a consistency check needs ---------------------------------------------------
    @_guarded
    def quick_check(self) -> str:
        return "; ".join(str(r[0]) for r in self.db.execute("PRAGMA quick_check"))

    @_guarded
    def unreadable(self) -> str | None:
        """The first record that does not match its check, does not decode, or whose arrays do not
        hold one value per line (damage that quick_check cannot see: sqlite's pages are sound),
        named; None if all read. Reads every record, a shard's at a time: for `recover`, not for
        every command."""
        for file, lines, ids, seqs, digest in self.db.execute("SELECT file, lines, ids, seqs, digest FROM shard_files"):
            if _digest(ids, seqs) != digest or not len(orjson.loads(ids)) == len(orjson.loads(seqs)) == lines:
                return f"the lines of {file}"
        for shard, n, outcomes, digest in self.db.execute("SELECT shard, n, outcomes, digest FROM results"):
            if _digest(outcomes) != digest or len(_read_rows(outcomes)) != n:
                return f"the outcomes of {shard}"
        return None

    @_guarded
    def count(self, table: str, file: str | None = None) -> int:
        """requests: every request; shard_lines: the lines of one shard `file`; results: outcomes recorded."""
        if table == "requests":
            return self.db.execute("SELECT count(*) FROM requests").fetchone()[0]
        if table == "shard_lines":
            found = self.db.execute("SELECT lines FROM shard_files WHERE file = ?", (file,)).fetchone()
            return found[0] if found is not None else 0
        assert table == "results"
        return self.db.execute("SELECT COALESCE(SUM(n), 0) FROM results").fetchone()[0]

    # -- results (written at process) -----------------------------------------------------
    @_guarded
    def put_results(self, shard: str, file: str, outcomes: Iterable[Outcome] | Rows) -> dict[str, int]:
        """Record the outcomes of one shard attempt, one per line of its request `file` in line order
        (or those outcomes already made Rows), in one transaction; return {"ok": n, "failed": n,
        "truncated": n} (truncated: answers cut at the output limit, kept or failed), and for each
        code of an invalid answer (`invalid_json`, ...; batchpipe.pipeline.interpret) how many.

        An attempt's outcome replaces the request's earlier ones: a retry only holds requests
        whose earlier attempt failed, so the newest outcome is the one that counts.
        """
        made = outcomes if isinstance(outcomes, Rows) else Rows.of(outcomes)
        ids, counts, retryable = made.ids, dict(made.counts), made.retryable
        found = self._file_arrays(file)
        if found is None or found[0] != orjson.dumps(ids):  # (as add_shard_file wrote them: compared undecoded)
            raise IndexFailure(
                f"{self.path}: the outcomes of shard {shard} do not match the lines of {file}", damaged=True,
                hint=f"run `batchpipe recover {self.path.parent.name}`: it rebuilds the index")
        seqs = orjson.loads(found[1])
        blob = made.blob()
        with self.db:  # one statement, one row: all of the shard or none of it, numbered as it lands
            self.db.execute(
                "INSERT OR REPLACE INTO results SELECT ?, ?, COALESCE(MAX(merged), 0) + 1, ?, ?, ?, ?, ?, ?, ? "
                "FROM results",
                (shard, file, min(seqs, default=0), max(seqs, default=0), counts["failed"], retryable, len(ids),
                 blob, _digest(blob)),
            )
        return counts

    def _failures(self, shard: str, every_failure: bool) -> list[tuple[int, Outcome]]:
        """(line, outcome) of the requests of `shard` whose latest outcome is its own failure that
        may be retried (every failure, with `every_failure`)."""
        which = "failed" if every_failure else "retryable"
        found = self.db.execute(f"SELECT r.merged, r.lo, r.hi, f.file, f.ids, f.seqs, f.digest, r.outcomes, r.digest "
                                f"FROM {_WITH_FILES} WHERE r.shard = ? AND r.{which}", (shard,)).fetchone()
        if found is None:  # no such failure: its arrays are not read
            return []
        merged, lo, hi, file, ids, seqs, file_digest, outcomes, digest = found
        _checked(self.path, f"the lines of {file}", file_digest, ids, seqs)
        _checked(self.path, f"the outcomes of {shard}", digest, outcomes)
        later: set[int] = set()  # requests a later attempt answered again
        for other_file, other_ids, other, other_digest in self.db.execute(
                f"SELECT f.file, f.ids, f.seqs, f.digest FROM {_WITH_FILES} WHERE r.merged > ? AND r.lo <= ? "
                "AND r.hi >= ?", (merged, hi, lo)):
            _checked(self.path, f"the lines of {other_file}", other_digest, other_ids, other)
            later.update(orjson.loads(other))
        # row: [ok, value, error, retryable, ...] (see SCHEMA); an Outcome is made for the failures only
        return [
            (line, outcome_of((cid, *row)))
            for line, (cid, seq, row) in enumerate(zip(orjson.loads(ids), orjson.loads(seqs), orjson.loads(outcomes)), 1)
            if not row[0] and (row[3] or every_failure) and seq not in later
        ]

    @_guarded
    def retryable(self, shard: str, *, every_failure: bool = False) -> list[tuple[int, str]]:
        """(line in the shard's file, custom_id) of the requests of `shard` whose latest outcome may be
        retried; with `every_failure`, of every request whose latest outcome there is a failure."""
        return [(line, o.custom_id) for line, o in self._failures(shard, every_failure)]

    @_guarded
    def truncated_retryable(self, shard: str, *, every_failure: bool = False) -> int:
        """How many of the requests `retryable` yields for `shard` failed as answers cut at the output limit."""
        return sum(o.finish_reason == "length" for _, o in self._failures(shard, every_failure))

    @_guarded
    def joined(self, start: int = 1) -> Joined:
        """Every request's latest outcome, for a walk of the requests in seq order from seq `start`."""
        return Joined(self, start)


# An attempt's outcomes as Joined reads them: each row a tuple whose value is left as its JSON
# text (a msgspec.Raw, which bytes.join takes as it is): the output writes an answer's text as it
# is stored, not decoded and encoded again. orjson wrote it: its text is what orjson would write.
_read_rows = msgspec.json.Decoder(list[tuple[Any, msgspec.Raw, Any, Any, Any, Any, Any, Any]]).decode


class _Attempt(NamedTuple):
    """A merged attempt's outcomes, as Joined holds them: `rows[i]` is the outcome of `ids[i]`, the
    request at seq `lo + i` when `where` is None (attempt 1: its requests are consecutive), else at
    the seq `where` maps to i (a retry holds some requests of its range); `seqs`: then the keys of
    `where`, in order."""

    merged: int
    lo: int
    hi: int
    ids: list[str]
    rows: list[tuple[Any, ...]]  # as _read_rows makes them: the value as its JSON text
    where: dict[int, int] | None
    seqs: list[int] | None


class Joined:
    """The latest outcome of each request, asked for in increasing seq order: one at a time (`at`),
    or a run of consecutive seqs at once (`span`, then `outcome` for a seq of it).

    Only the attempts whose range of seqs holds the ones asked for are in memory: a shard's worth
    (and its retries'), whatever the size of the run.
    """

    def __init__(self, index: Index, start: int = 1) -> None:
        self._index = index
        self.path = index.path  # for _guarded's messages
        # an attempt that ends before `start` is never asked for: not even read
        rows = index.db.execute("SELECT shard, lo, hi FROM results WHERE hi >= ? ORDER BY lo DESC", (start,)).fetchall()
        self._pending: list[tuple[str, int, int]] = rows  # popped from the end: smallest lo first
        self._active: list[_Attempt] = []  # newest first
        self._last = start - 1

    @_guarded
    def _load(self, shard: str) -> _Attempt:
        merged, lo, hi, file, ids, seqs, file_digest, rows, digest = self._index.db.execute(
            f"SELECT r.merged, r.lo, r.hi, f.file, f.ids, f.seqs, f.digest, r.outcomes, r.digest FROM {_WITH_FILES} "
            "WHERE r.shard = ?", (shard,)).fetchone()
        _checked(self.path, f"the lines of {file}", file_digest, ids, seqs)
        _checked(self.path, f"the outcomes of {shard}", digest, rows)
        seqs = orjson.loads(seqs)
        where = None if seqs == list(range(lo, hi + 1)) else {seq: i for i, seq in enumerate(seqs)}
        return _Attempt(merged, lo, hi, orjson.loads(ids), _read_rows(rows), where,
                        None if where is None else sorted(where))

    def _advance(self, first: int, last: int) -> None:
        """Hold the attempts that have outcomes between seqs `first` and `last`, none that ends before."""
        self._active = [a for a in self._active if a.hi >= first]
        while self._pending and self._pending[-1][1] <= last:
            self._active.append(self._load(self._pending.pop()[0]))
        self._active.sort(key=lambda a: -a.merged)

    def at(self, seq: int) -> Outcome | None:
        """The latest outcome of the request at `seq` (None: it has none); seqs only ever increase."""
        self._last = seq
        if self._pending and self._pending[-1][1] <= seq:
            self._advance(seq, seq)
        return self.outcome(seq)

    def outcome(self, seq: int) -> Outcome | None:
        """The latest outcome of the request at `seq`, a seq of the last `at` or `span` asked for."""
        for attempt in self._active:
            if attempt.where is None:
                i = seq - attempt.lo
                if not 0 <= i < len(attempt.rows):
                    continue
            elif (i := attempt.where.get(seq)) is None:
                continue
            ok, value, *rest = attempt.rows[i]
            return outcome_of((attempt.ids[i], ok, orjson.loads(memoryview(value)), *rest))
        return None

    def span(self, first: int, count: int) -> list[tuple[Any, ...] | None]:
        """The latest outcomes of the `count` requests from seq `first` on, as the index keeps them
        ([ok, value, error, retryable, attempt, finish_reason, usage, invalid]: an Outcome but its
        custom_id, with the value as its JSON text, bytes-like) or None (it has none): a block of
        rows joined at list speed, not a call per row. Seqs only ever increase, as with `at`."""
        last = first + count - 1
        self._last = last
        self._advance(first, last)
        rows: list[tuple[Any, ...] | None] = [None] * count
        for a in reversed(self._active):  # oldest first: a later attempt's outcome replaces an earlier one's
            if a.seqs is None:  # its requests are consecutive: its rows are copied as a slice
                lo, hi = max(first, a.lo), min(last, a.lo + len(a.rows) - 1)
                if lo <= hi:
                    rows[lo - first : hi - first + 1] = a.rows[lo - a.lo : hi - a.lo + 1]
            else:
                for seq in a.seqs[bisect.bisect_left(a.seqs, first) : bisect.bisect_right(a.seqs, last)]:
                    rows[seq - first] = a.rows[a.where[seq]]
        return rows

    def rest(self) -> Iterator[tuple[int, str]]:
        """(seq, custom_id) of the outcomes after the last seq asked for, in no particular order."""
        later = (self._load(shard) for shard, _, hi in self._pending if hi > self._last)
        for a in (*self._active, *later):
            places = enumerate(range(a.lo, a.hi + 1)) if a.where is None else ((i, seq) for seq, i in a.where.items())
            yield from ((seq, a.ids[i]) for i, seq in places if seq > self._last)
