"""Knobs of the emulator: how fast the batch timeline runs, how results are ordered, and limits.

Every behaviour a test may want to switch lives here as a plain dataclass field with a default
that matches the real service, so a scenario is just `EmulatorOptions(...)`. Options are read
when a batch is created (timeline, limits) or when a request arrives (faults), never cached
elsewhere.
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

    # --- fault switches ------------------------------------------------------------------------
    # Add new faults here (transient 5xx/429 with Retry-After, answers lost after a committed
    # create/upload, per-request failure rate, enqueued-token limits, ...) and act on them in
    # `server._Handler._inject_fault` (HTTP-level faults, called before every routed request) or in
    # `store.Store.create_batch` (batch-level outcomes). Deterministic per-request failures need no
    # switch: a request body containing `[[fail:<status>]]` fails with that status (see results.py).
