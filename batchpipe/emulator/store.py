"""In-memory Files and Batches with the semantics of the real service, behind one lock.

The HTTP layer only parses and serialises; every rule (limits, the timeline, result files,
counters; the pure create-time checks are in checks.py) lives here, so it can be tested and
reasoned about without sockets.
Every public method takes the lock and first calls `_advance(now)`, which settles batches that
have reached a terminal status since the last call (writing their output and error files with
the terminal time as `created_at`). Nothing runs between calls: time only matters when observed.

Batch-level fault switches act in `create_batch`: the creates-per-hour 429, the file-visibility
400, the enqueued-token queue (a batch that overflows it is created already doomed to `failed`
with token_limit_exceeded), `request_failure_rate` and `expire_after_requests` (both fixed at
create, like the rest of a batch's outcome).
The lose_* switches (files the service no longer has) act in `upload` and `_settle`.

Records are never removed: deleting or expiring a file only marks it, so that a list cursor
(`after=<id>`) pointing at it keeps working.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import itertools
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .answers import request_tokens
from .apierror import APIError, not_found
from .checks import after_cursor, check_create, invalid_value, page, parse_expiry
from .faults import Faults, retry_headers
from .options import DAY, EmulatorOptions
from .results import (
    Outcome, injected_failure, response_line, run_request, shuffled, stray_lines, to_jsonl, unrun_line,
)
from .sync import SyncService
from .timeline import CANCELLABLE, Phase, Timeline
from .validation import Validation, batch_error, validate_input

Clock = Callable[[], float]

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
FILE_LIST_MAX = 10_000
BATCH_LIST_MAX = 100
ORG = "org-emulator"
PROJECT = "proj_emulator"
HOUR = 3600


def token_limit_message(model: str, limit: int, opts: EmulatorOptions) -> str:
    """The service's wording (reference §2.4), with the limit as it prints it, or without it."""
    stated = f" Limit: {limit:,} enqueued tokens." if opts.token_limit_message_has_number else ""
    return (
        f"Enqueued token limit reached for {model} in organization {ORG}.{stated} "
        "Please try again once some in_progress batches have been completed."
    )


class ManualClock:
    """A clock tests move by hand: `clock.advance(5)`. Pass it as `Emulator(clock=...)`."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now


@dataclass
class FileRecord:
    id: str
    filename: str
    purpose: str
    content: bytes
    created: float
    seq: int
    expires_at: int | None
    deleted: bool = False
    uploaded: bool = False  # sent by a client (not a result file the emulator wrote)
    create_attempts: int = 0  # batch creates that named this file (for file_visibility_delay)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": int(self.created),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.expires_at,
            "status_details": None,
        }


@dataclass
class BatchRecord:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    output_expires_seconds: int | None
    created: float
    seq: int
    timeline: Timeline
    validation: Validation
    outcomes: list[Outcome]  # one per request, in input order (empty if validation failed)
    ok_prefix: list[int]  # ok_prefix[k] = successes among the first k outcomes
    input_prefix: list[int]  # token sums over the successes among the first k outcomes
    output_prefix: list[int]
    shuffle_salt: str
    tag: str | None
    errors: list[dict[str, Any]]  # `errors.data` once failed: validation errors or token_limit_exceeded
    tokens: int  # estimated prompt tokens (what the batch weighs in the enqueued-token queue)
    enqueued: bool  # does it occupy the queue while not terminal (false if it failed at create)
    cancel_at: float | None = None
    list_lag: int = 0  # GET /v1/batches calls that will still leave it out (batch_list_lag)
    settled: bool = False
    number: int = 0  # 1-based, in create order (what the lose_*_of_batches switches name)
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass
class _Counts:
    uploads: int = 0
    batch_creates: int = 0
    cancels: int = 0
    requests: int = 0
    creates_by_tag: dict[str, int] = field(default_factory=dict)
    duplicate_creates: int = 0
    duplicate_uploads: int = 0
    token_limit_failures: int = 0
    file_not_visible: int = 0
    create_rate_limited: int = 0
    deleted_files: int = 0
    batch_list_pages: int = 0
    file_list_pages: int = 0
    max_enqueued_tokens: dict[str, int] = field(default_factory=dict)


def _nonce(b: BatchRecord) -> str | None:
    """The run nonce in a batch's metadata: two runs of one id (two runs dirs) are not duplicates."""
    return (b.metadata or {}).get("batchpipe_nonce")


class Store:
    def __init__(self, options: EmulatorOptions | None = None, clock: Clock = time.time) -> None:
        self.options = options or EmulatorOptions()
        self.clock = clock
        self._lock = threading.RLock()
        self._files: dict[str, FileRecord] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._seq = itertools.count()
        self._counts = _Counts()
        # How many times each custom_id has run: invalid_json_share decides by (seed, custom_id, this),
        # so a retry decides afresh and a seeded test is the same every time (batch ids are random).
        self._json_runs: collections.Counter[str] = collections.Counter()
        self.faults = Faults()  # HTTP-level fault decisions (the handler asks; counted in counts())
        self.sync = SyncService(self.options, clock, self.faults)  # the regular endpoints (emulator/sync.py)
        if self.options.foreign_batches:
            self._add_foreign_batches(self.options.foreign_batches)

    # --- counters ------------------------------------------------------------------------------

    def note_request(self) -> None:
        with self._lock:
            self._counts.requests += 1

    def counts(self) -> dict[str, Any]:
        """Counters since start (also served at GET /_emulator/counts).

        uploads / batch_creates / cancels: calls that took effect (a lost answer still counts; a
        transient error, a 400 or a 429 does not). requests: every authenticated /v1 request,
        faulted or not. creates_by_tag: creates per "batchpipe_run/batchpipe_shard" metadata.
        duplicate_creates: creates whose tag an earlier batch not `failed` already had.
        duplicate_uploads: uploads whose filename a live (not deleted/expired) upload already had.
        token_limit_failures: batches failed with token_limit_exceeded. file_not_visible: 400s from
        file_visibility_delay. create_rate_limited: 429s from creates_per_hour_limit. deleted_files:
        files deleted by DELETE /v1/files/{id} or made to vanish by the lose_* switches.
        batch_list_pages / file_list_pages: GET /v1/batches and GET /v1/files calls answered.
        max_enqueued_tokens / enqueued_tokens: per model, the high-water mark / the current sum of
        estimated prompt tokens of accepted non-terminal batches. transient_errors (+ _by_status
        "503"/"500"/"429") and lost_answers (+ _by_kind "http_500"/"dropped", _by_op
        "upload"/"create"/"cancel"): see faults.py. sync_requests / sync_answered / sync_failed /
        sync_rate_limited / sync_duplicate_answers (a 200 to a request already answered 200) /
        sync_max_concurrency: the regular endpoints, see sync.py.
        """
        with self._lock:
            c = self._counts
            now = self.clock()
            models = sorted({b.validation.model for b in self._batches.values() if b.enqueued and b.validation.model})
            return {
                "uploads": c.uploads,
                "batch_creates": c.batch_creates,
                "cancels": c.cancels,
                "requests": c.requests,
                "creates_by_tag": dict(c.creates_by_tag),
                "duplicate_creates": c.duplicate_creates,
                "duplicate_uploads": c.duplicate_uploads,
                "token_limit_failures": c.token_limit_failures,
                "file_not_visible": c.file_not_visible,
                "create_rate_limited": c.create_rate_limited,
                "deleted_files": c.deleted_files,
                "batch_list_pages": c.batch_list_pages,
                "file_list_pages": c.file_list_pages,
                "max_enqueued_tokens": dict(c.max_enqueued_tokens),
                "enqueued_tokens": {m: self._enqueued_tokens(m, now) for m in models},
                **self.faults.counts(),
                **self.sync.snapshot(),
            }

    # --- files ---------------------------------------------------------------------------------

    def upload(
        self, filename: str | None, purpose: str | None, content: bytes | None, expires_after: dict[str, str]
    ) -> dict[str, Any]:
        if content is None:
            raise APIError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if not purpose:
            raise APIError(
                400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in UPLOAD_PURPOSES:
            raise invalid_value("purpose", purpose, UPLOAD_PURPOSES)
        filename = filename or "upload"
        if purpose == "batch":
            if not filename.endswith(".jsonl"):
                raise APIError(400, "Invalid file format for Batch API. Must be .jsonl")
            if len(content) > self.options.max_batch_file_bytes:
                raise APIError(
                    400,
                    f"File is too large ({len(content)} bytes); batch input files may be at most "
                    f"{self.options.max_batch_file_bytes} bytes.",
                    param="file",
                    code="file_too_large",
                )
        expires_seconds = parse_expiry(expires_after, "expires_after")
        with self._lock:
            now = self.clock()
            self._advance(now)
            if expires_seconds is None and purpose == "batch":
                expires_seconds = 30 * DAY  # batch input files default-expire after 30 days
            if any(f.uploaded and not f.deleted and f.filename == filename for f in self._files.values()):
                self._counts.duplicate_uploads += 1
            record = self._new_file(filename, purpose, content, now, expires_seconds)
            record.uploaded = True
            self._counts.uploads += 1
            answer = record.to_api()
            if self._counts.uploads in self.options.lose_uploads:
                self._delete(record)  # gone before anyone can name it in a batch create
            return answer

    def get_file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            self._advance(self.clock())
            return self._live_file(file_id).to_api()

    def file_content(self, file_id: str) -> bytes:
        with self._lock:
            self._advance(self.clock())
            return self._live_file(file_id).content

    def delete_file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            self._advance(self.clock())
            self._delete(self._live_file(file_id))
            return {"id": file_id, "object": "file", "deleted": True}

    def list_files(
        self, *, purpose: str | None = None, limit: int = FILE_LIST_MAX, order: str = "desc", after: str | None = None
    ) -> dict[str, Any]:
        if not 1 <= limit <= FILE_LIST_MAX:
            raise APIError(400, f"Invalid 'limit': must be between 1 and {FILE_LIST_MAX}.", param="limit",
                           code="invalid_value")
        if order not in ("asc", "desc"):
            raise invalid_value("order", order, ("asc", "desc"))
        with self._lock:
            self._advance(self.clock())
            self._counts.file_list_pages += 1
            records = sorted(self._files.values(), key=lambda f: (f.created, f.seq), reverse=order == "desc")
            records = after_cursor(records, after, "file")
            matching = [f for f in records if not f.deleted and (purpose is None or f.purpose == purpose)]
            return page([f.to_api() for f in matching[: limit + 1]], limit)

    # --- batches -------------------------------------------------------------------------------

    def create_batch(self, payload: Any) -> dict[str, Any]:
        fields = check_create(payload)
        with self._lock:
            now = self.clock()
            self._advance(now)
            self._check_create_rate(now)
            source = self._files.get(fields["input_file_id"])
            if source is None or source.deleted:
                raise APIError(
                    400,
                    f"Cannot find file {fields['input_file_id']}, or organization {ORG} does not have access to it.",
                    param="file_id",
                )
            source.create_attempts += 1
            if source.create_attempts <= self.options.file_visibility_delay:
                # Eventual consistency after upload (reference §1.4): nothing is created.
                self._counts.file_not_visible += 1
                raise APIError(
                    400, f"Cannot find file {source.id}, or project {PROJECT} does not have access to it.",
                    param="file_id",
                )
            if source.purpose != "batch":
                raise APIError(
                    400,
                    f"File {source.id} has purpose '{source.purpose}'; batch input files must have purpose 'batch'.",
                    param="input_file_id",
                    code="invalid_value",
                )
            record = self._new_batch(fields, source, now)
            record.list_lag = self.options.batch_list_lag
            self._count_create(record, now)
            # The create answer is always `validating`, even when phases are 0 (as on the real service).
            return self._batch_api(record, Phase("validating", 0))

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            self._advance(now)
            return self._batch_api(self._batch(batch_id), None, now)

    def list_batches(self, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        if not 1 <= limit <= BATCH_LIST_MAX:
            raise APIError(400, f"Invalid 'limit': must be between 1 and {BATCH_LIST_MAX}.", param="limit",
                           code="invalid_value")
        with self._lock:
            now = self.clock()
            self._advance(now)
            self._counts.batch_list_pages += 1
            records = sorted(self._batches.values(), key=lambda b: (b.created, b.seq), reverse=True)
            records = after_cursor(records, after, "batch")
            # batch_list_lag: a new batch is left out of the first list calls after its create
            lagging = [b for b in self._batches.values() if b.list_lag > 0]
            for b in lagging:
                b.list_lag -= 1
            records = [b for b in records if b not in lagging]
            return page([self._batch_api(b, None, now) for b in records[: limit + 1]], limit)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            self._advance(now)
            record = self._batch(batch_id)
            phase = record.timeline.at(now, record.cancel_at)
            if phase.status in ("cancelling", "cancelled"):
                return self._batch_api(record, phase)
            if phase.status not in CANCELLABLE:
                raise APIError(409, f"Cannot cancel a batch with status '{phase.status}'.")
            record.cancel_at = now
            self._counts.cancels += 1
            # Like create, the answer shows the transitional status even if cancelling takes 0 s.
            stamps = {**phase.timestamps, "cancelling_at": now}
            return self._batch_api(record, Phase("cancelling", phase.processed, stamps))

    # --- read access for tests -----------------------------------------------------------------

    def all_files(self) -> list[dict[str, Any]]:
        with self._lock:
            self._advance(self.clock())
            return [f.to_api() for f in self._files.values() if not f.deleted]

    def all_batches(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self.clock()
            self._advance(now)
            return [self._batch_api(b, None, now) for b in self._batches.values()]

    # --- internals -----------------------------------------------------------------------------

    def _add_foreign_batches(self, n: int) -> None:
        """`foreign_batches`: n one-request batches of another user, created now (not counted as creates)."""
        line = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", ' \
               b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n'
        now = self.clock()
        source = self._new_file("other-team.jsonl", "batch", line, now, 30 * DAY)
        fields = {"endpoint": "/v1/chat/completions", "completion_window": "24h",
                  "metadata": {"team": "someone-else"}, "output_expires_seconds": None}
        first = self._new_batch(fields, source, now)
        for _ in range(n - 1):  # the same batch under other ids (the records' lists are never changed)
            other = dataclasses.replace(first, id=f"batch_{uuid.uuid4().hex}", seq=next(self._seq))
            self._batches[other.id] = other

    def _advance(self, now: float) -> None:
        """Expire files and write the result files of batches that became terminal by `now`."""
        for f in self._files.values():
            if not f.deleted and f.expires_at is not None and f.expires_at <= now:
                f.deleted = True
        due = []
        for record in self._batches.values():
            if not record.settled:
                phase = record.timeline.at(now, record.cancel_at)
                if phase.terminal_at is not None:
                    due.append((phase.terminal_at, record.seq, record, phase))
        for _, _, record, phase in sorted(due, key=lambda item: item[:2]):
            self._settle(record, phase)

    def _settle(self, record: BatchRecord, phase: Phase) -> None:
        record.settled = True
        if phase.status == "failed":
            return  # a batch that failed validation has no output or error file
        assert phase.terminal_at is not None
        done = record.outcomes[: phase.processed]
        ok = [response_line(o) for o in done if o.ok]
        errors = [response_line(o) for o in done if not o.ok]
        if phase.status in ("cancelled", "expired") and self.options.unrun_lines_in_error_file:
            code = "batch_cancelled" if phase.status == "cancelled" else "batch_expired"
            errors += [unrun_line(o.request, code) for o in record.outcomes[phase.processed :]]
        seed = self.options.shuffle_seed
        expires = record.output_expires_seconds or 30 * DAY
        if ok:
            lines = shuffled(ok, seed, record.shuffle_salt + ":output")
            content = to_jsonl(lines) + (stray_lines(lines[0]) if self.options.stray_result_lines else b"")
            name = f"{record.id}_output.jsonl"
            output = self._new_file(name, "batch_output", content, phase.terminal_at, expires)
            record.output_file_id = output.id
            if record.number in self.options.lose_output_of_batches:
                self._delete(output)
        if errors:
            content = to_jsonl(shuffled(errors, seed, record.shuffle_salt + ":error"))
            name = f"{record.id}_error.jsonl"
            error_file = self._new_file(name, "batch_output", content, phase.terminal_at, expires)
            record.error_file_id = error_file.id
            if record.number in self.options.lose_errors_of_batches:
                self._delete(error_file)

    def _delete(self, record: FileRecord) -> None:
        record.deleted = True
        self._counts.deleted_files += 1

    def _new_file(self, filename: str, purpose: str, content: bytes, created: float, expires: int | None) -> FileRecord:
        record = FileRecord(
            id=f"file-{uuid.uuid4().hex[:24]}",
            filename=filename,
            purpose=purpose,
            content=content,
            created=created,
            seq=next(self._seq),
            expires_at=int(created) + expires if expires is not None else None,
        )
        self._files[record.id] = record
        return record

    def _check_create_rate(self, now: float) -> None:
        """`creates_per_hour_limit`: a 429 with retry-after when the last hour already holds that many creates."""
        limit = self.options.creates_per_hour_limit
        if limit is None:
            return
        recent = sorted(b.created for b in self._batches.values() if b.created > now - HOUR)
        if len(recent) < limit:
            return
        # One more fits once the create `limit` places from the newest has left the window.
        wait = HOUR if limit <= 0 else max(1, math.ceil(recent[len(recent) - limit] + HOUR - now))
        self._counts.create_rate_limited += 1
        raise APIError(
            429,
            f"Rate limit reached for batch creation in organization {ORG}: limit {limit} batches per hour. "
            f"Please try again in {wait}s.",
            type="requests",
            code="rate_limit_exceeded",
            headers=retry_headers(wait * 1000),
        )

    def _enqueued_tokens(self, model: str, now: float) -> int:
        """Tokens of `model`'s batches that occupy the queue at `now` (accepted and not terminal)."""
        return sum(
            b.tokens
            for b in self._batches.values()
            if b.enqueued and b.validation.model == model and b.timeline.at(now, b.cancel_at).terminal_at is None
        )

    def _new_batch(self, fields: dict[str, Any], source: FileRecord, now: float) -> BatchRecord:
        opts = self.options
        batch_id = f"batch_{uuid.uuid4().hex}"
        endpoint = fields["endpoint"]
        validation = validate_input(source.content, endpoint, max_requests=opts.max_requests_per_batch)
        requests = validation.requests
        errors = validation.errors
        model = validation.model
        tokens = sum(request_tokens(endpoint, r.body) for r in requests)
        enqueued = validation.ok and model is not None
        refused = False  # by the enqueued-token limit
        if enqueued:
            assert model is not None
            queued = self._enqueued_tokens(model, now)
            limit = opts.enqueued_token_limit
            if limit is not None and queued + tokens > limit:
                # OpenAI answers the create with 200 and fails the batch (reference §5.1).
                enqueued, refused, requests = False, True, []
                errors = [batch_error("token_limit_exceeded", token_limit_message(model, limit, opts))]
                self._counts.token_limit_failures += 1
            else:
                high = self._counts.max_enqueued_tokens
                high[model] = max(high.get(model, 0), queued + tokens)
        timeline = Timeline(
            created=now,
            # a batch refused by the token limit is `failed` at its first read
            validating=0.0 if refused else opts.validating_seconds,
            in_progress=opts.in_progress_seconds,
            finalizing=opts.finalizing_seconds,
            cancelling=opts.cancelling_seconds,
            window=opts.completion_window_seconds,
            total=len(requests),
            valid=not errors,
            run_limit=opts.expire_after_requests,
        )
        # Requests are "run" now, answers kept until the timeline reveals them; `created` in each
        # answer is the moment the batch starts running.
        started = int(now + opts.validating_seconds)
        seed, rate = opts.fault_seed, opts.request_failure_rate
        outcomes = [
            run_request(endpoint, r, created=started,
                        inject_failure=injected_failure(r.custom_id, batch_id, seed, rate),
                        broken_json=injected_failure(r.custom_id, f"run {self._json_runs[r.custom_id]}", seed,
                                                     opts.invalid_json_share, "json"))
            for r in requests
        ]
        self._json_runs.update(r.custom_id for r in requests)
        ok_prefix, input_prefix, output_prefix = [0], [0], [0]
        for o in outcomes:
            ok_prefix.append(ok_prefix[-1] + o.ok)
            input_prefix.append(input_prefix[-1] + o.input_tokens)
            output_prefix.append(output_prefix[-1] + o.output_tokens)
        metadata = fields["metadata"]
        run, shard = (metadata or {}).get("batchpipe_run"), (metadata or {}).get("batchpipe_shard")
        tag = f"{run}/{shard}" if isinstance(run, str) and isinstance(shard, str) else None
        record = BatchRecord(
            id=batch_id,
            endpoint=endpoint,
            input_file_id=source.id,
            completion_window=fields["completion_window"],
            metadata=copy.deepcopy(metadata),
            output_expires_seconds=fields["output_expires_seconds"],
            created=now,
            seq=next(self._seq),
            timeline=timeline,
            validation=validation,
            outcomes=outcomes,
            ok_prefix=ok_prefix,
            input_prefix=input_prefix,
            output_prefix=output_prefix,
            shuffle_salt=hashlib.sha256(source.content).hexdigest(),
            tag=tag,
            errors=errors,
            tokens=tokens,
            enqueued=enqueued,
            number=len(self._batches) + 1,
        )
        self._batches[record.id] = record
        return record

    def _count_create(self, record: BatchRecord, now: float) -> None:
        self._counts.batch_creates += 1
        if record.tag is None:
            return
        by_tag = self._counts.creates_by_tag
        by_tag[record.tag] = by_tag.get(record.tag, 0) + 1
        earlier_live = any(
            b.tag == record.tag and b is not record and _nonce(b) == _nonce(record)
            and b.timeline.at(now, b.cancel_at).status != "failed"
            for b in self._batches.values()
        )
        if earlier_live:
            self._counts.duplicate_creates += 1

    def _batch(self, batch_id: str) -> BatchRecord:
        record = self._batches.get(batch_id)
        if record is None:
            raise not_found("batch", batch_id)
        return record

    def _live_file(self, file_id: str) -> FileRecord:
        record = self._files.get(file_id)
        if record is None or record.deleted:
            raise not_found("file", file_id)
        return record

    def _batch_api(self, b: BatchRecord, phase: Phase | None, now: float | None = None) -> dict[str, Any]:
        if phase is None:
            assert now is not None
            phase = b.timeline.at(now, b.cancel_at)
        status = phase.status
        k = phase.processed
        counted = status not in ("validating", "failed")
        total = b.timeline.total if counted else 0
        completed = b.ok_prefix[k]
        failed = k - completed
        if status in ("cancelled", "expired") and self.options.count_unrun_as_failed:
            failed += total - k
        stamps = {name: int(t) for name, t in phase.timestamps.items()}
        errors = None
        if status == "failed":
            errors = {"object": "list", "data": copy.deepcopy(b.errors)}
        return {
            "id": b.id,
            "object": "batch",
            "endpoint": b.endpoint,
            "model": b.validation.model,
            "errors": errors,
            "input_file_id": b.input_file_id,
            "completion_window": b.completion_window,
            "status": status,
            "output_file_id": b.output_file_id if b.settled else None,
            "error_file_id": b.error_file_id if b.settled else None,
            "created_at": int(b.created),
            "in_progress_at": stamps.get("in_progress_at"),
            "expires_at": int(b.created) + int(b.timeline.window),
            "finalizing_at": stamps.get("finalizing_at"),
            "completed_at": stamps.get("completed_at"),
            "failed_at": stamps.get("failed_at"),
            "expired_at": stamps.get("expired_at"),
            "cancelling_at": stamps.get("cancelling_at"),
            "cancelled_at": stamps.get("cancelled_at"),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": {
                "input_tokens": b.input_prefix[k],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": b.output_prefix[k],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": b.input_prefix[k] + b.output_prefix[k],
            },
            "metadata": copy.deepcopy(b.metadata),
        }
