"""Knobs of the emulator: how fast the batch timeline runs, how results are ordered, and limits.

Every behaviour a test may want to switch lives here as a plain dataclass field with a default
that matches the real service, so a scenario is just `EmulatorOptions(...)`. Options are read
when a batch is created (timeline, limits) or when a request arrives (faults), never cached
elsewhere. `Emulator` keeps its own copy of the options it is given, so changing
`emu.options.<field>` on a live emulator affects only that emulator.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY = 86_400


@dataclass
class EmulatorOptions:
    # --- timeline (seconds spent in each phase; 0 makes a batch finish at the first read) -------
    validating_seconds: float = 1.0
    in_progress_seconds: float = 2.0
    finalizing_seconds: float = 1.0
    cancelling_seconds: float = 1.0  # cancelling -> cancelled
    # A batch whose requests are not all run by created_at + this becomes `expired` with partial
    # output. Also the batch's `expires_at` offset (the real service's 24 h window).
    completion_window_seconds: float = DAY

    # --- results -------------------------------------------------------------------------------
    # Output and error lines are always shuffled (the real service guarantees no order); a seed
    # makes the permutation reproducible for the same input file.
    shuffle_seed: int | None = None
    # How requests that never ran (batch cancelled / expired) are reported. The real behaviour is
    # undocumented (reference §4.2, §4.3); the defaults follow the observed/assumed one.
    unrun_lines_in_error_file: bool = True  # error-file lines with error.code batch_cancelled/batch_expired
    count_unrun_as_failed: bool = False  # observed: expired lines were not counted in request_counts.failed

    # --- limits (keep them configurable: the vendor changes them) --------------------------------
    max_requests_per_batch: int = 50_000  # more lines -> batch fails with `too_many_tasks`
    max_batch_file_bytes: int = 200 * 1024 * 1024  # bigger purpose=batch upload -> 400 at upload

    # --- server --------------------------------------------------------------------------------
    log_requests: bool = False  # print one access-log line per request to stderr

    # --- fault switches (all off by default) ----------------------------------------------------
    # HTTP-level faults are decided in `server._Handler` through `faults.Faults`; batch-level ones
    # in `store.Store.create_batch`. All are read at each request, so a test can flip them on a
    # live emulator: `emu.options.transient_error_rate = 1.0`. Deterministic per-request failures
    # need no switch: a request body containing `[[fail:<status>]]` fails with that status.
    #
    # Fraction of API calls (any routed /v1 call, never /_emulator/*) answered, without acting,
    # with a transient error; the status cycles 503, 500, 429. Every such answer carries
    # `retry-after-ms: <retry_after_ms>` and `retry-after: <ceil seconds>`.
    transient_error_rate: float = 0.0
    retry_after_ms: int = 20
    # Fraction of mutating calls (upload, batch create, batch cancel) that take effect and then
    # lose the answer; the kind alternates: an HTTP 500, then a dropped connection (no response).
    lost_answer_rate: float = 0.0
    # Seeds the one random.Random behind all the rate decisions above (None: unseeded), so a chaos
    # run can be replayed. Changing it on a live emulator re-seeds at the next decision.
    fault_seed: int | None = None
    # Fraction of requests inside a batch that fail with a 500 error-file line, decided per request
    # from (fault_seed, batch id, custom_id): the same request retried in a new batch may succeed.
    request_failure_rate: float = 0.0
    # Fraction of JSON answers (requests asking for json_object / json_schema) that come back as
    # JSON cut in half, decided per custom_id and how often it has run (with fault_seed: the same
    # every time; a retry decides afresh): validators, retries of
    # invalid answers and targets can be rehearsed. `[[invalid-json]]` in a request always does it.
    invalid_json_share: float = 0.0
    # A batch with more requests than this runs only the first N (input order) and then ends
    # `expired`: output holds what ran, the error file the rest as `batch_expired` lines.
    expire_after_requests: int | None = None
    # Enqueued prompt tokens allowed per model (reference §5.1). A create that would push the
    # model's non-terminal batches over it answers 200 (`validating`) and the batch is `failed`
    # with `token_limit_exceeded` at its first read. Tokens: `answers.estimate_batch_tokens`.
    enqueued_token_limit: int | None = None
    # The service's message states the limit ("Limit: 2,000,000 enqueued tokens."); with False the
    # message names no number, as some services and older API versions answer.
    token_limit_message_has_number: bool = True
    # The first N batch creates naming a given input file answer 400 "Cannot find file ..."
    # (reference §1.4) without creating anything; the (N+1)-th works.
    file_visibility_delay: int = 0
    # More batch creates than this within the last hour -> 429 with `retry-after`, nothing created.
    creates_per_hour_limit: int | None = None
    # Files the service no longer has (deleted by someone, or past their retention): the batches
    # with these numbers (1-based, in create order) still name their output / error file, but the
    # file is deleted as soon as it is written, so retrieving or downloading it answers 404. The
    # uploads with these numbers (1-based, in upload order) are deleted right after they are
    # answered, so a batch create naming one answers 400 "Cannot find file". Any file can also
    # be deleted the way the real API does it: DELETE /v1/files/{id}.
    lose_output_of_batches: tuple[int, ...] = ()
    lose_errors_of_batches: tuple[int, ...] = ()
    lose_uploads: tuple[int, ...] = ()
    # A new batch is left out of GET /v1/batches for its first N list calls (an eventually
    # consistent listing); retrieve by id sees it at once.
    batch_list_lag: int = 0
    # Every /v1 call is answered 200 with an HTML page, as a captive portal, a proxy's login page
    # or a web server at the wrong URL would answer.
    html_answer: bool = False
    # Every output file also holds what a careless service or a proxy might add: a blank line, a
    # line for a custom_id that is no request of the batch, and its first line a second time.
    stray_result_lines: bool = False
    # Accept `Authorization: Basic` (credentials in the base URL, `http://user:pass@host/v1`) like a
    # key, as a gateway in front of the service would; the real service accepts only Bearer keys.
    accept_basic_auth: bool = False

    # --- the regular (synchronous) endpoints (emulator/sync.py) ----------------------------------
    # The account's rate limits, reported on every answer as x-ratelimit-* headers and enforced
    # (429 + retry-after) over a sliding window of this many seconds.
    rate_limit_requests: int = 10_000
    rate_limit_tokens: int = 10_000_000
    rate_limit_window_seconds: float = 60.0
    # Fault switches: the first N synchronous requests are answered 429 rate_limit_exceeded with
    # retry-after-ms: retry_after_ms (and retry-after in whole seconds), nothing answered; and a
    # share of them, drawn with the fault dice (fault_seed).
    sync_rate_limit_first: int = 0
    sync_rate_limit_share: float = 0.0
    # Every synchronous request takes this long before it is answered (so concurrency shows).
    sync_latency_seconds: float = 0.0

    # --- scenario ------------------------------------------------------------------------------
    # Batches of other users of the organisation, made when the emulator starts (completed, one
    # request each, created at start): a busy organisation whose batch list is many pages long.
    foreign_batches: int = 0
