"""The exceptions batchpipe raises for users, and the exit codes they map to.

Every error a user can cause or fix carries a message that names what is wrong (file, line,
row, field) and a hint that says what to do next. The CLI prints both and exits with the
error's code; nothing here prints or touches disk.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Stable, documented exit codes (README "Exit codes")."""

    OK = 0  # done / nothing left to do
    ERROR = 1  # something failed; see the message
    BAD_INPUT = 2  # bad usage, config, input data or run id
    PENDING = 3  # the run is not finished yet (batches still running); try again later
    LOCKED = 4  # another batchpipe process holds the run lock
    ATTENTION = 5  # the run stopped on something a person must look at (e.g. a batch failed validation)
    DONE_WITH_FAILURES = 6  # the run is done, but some rows failed: their error is under `<key>_error`
    INTERRUPTED = 130  # Ctrl-C


class BatchpipeError(Exception):
    """Base class: a message for the user, an optional hint, and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (a worker process's error reaches the command so): rebuilt without calling
        # __init__, whose arguments (keyword-only, or others than the message) the default would
        # not give it back.
        return _rebuilt, (type(self), self.args, vars(self))


def _rebuilt(kind: type[BatchpipeError], args: tuple[Any, ...], state: dict[str, Any]) -> BatchpipeError:
    error = kind.__new__(kind, *args)
    error.args = args
    vars(error).update(state)
    return error


class UsageError(BatchpipeError):
    """The command was called in a way that cannot work (bad run id, missing argument)."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(BatchpipeError):
    """The job config is invalid; the message names the file, line and field."""

    exit_code = ExitCode.BAD_INPUT


class InputError(BatchpipeError):
    """A row of the input dataset is unusable; the message names the file, line/row and field."""

    exit_code = ExitCode.BAD_INPUT


class MissingApiKey(BatchpipeError):
    exit_code = ExitCode.BAD_INPUT


class RunNotFound(BatchpipeError):
    exit_code = ExitCode.BAD_INPUT


class RunExists(BatchpipeError):
    """A run with this id exists and was made from a different config or input."""

    exit_code = ExitCode.BAD_INPUT


class RunLocked(BatchpipeError):
    exit_code = ExitCode.LOCKED


class LedgerError(BatchpipeError):
    """state.json cannot be trusted (truncated, wrong checksum, newer schema, missing file)."""


class IllegalTransition(LedgerError):
    def __init__(self, shard: str, src: str, dst: str) -> None:
        super().__init__(f"shard {shard}: illegal transition {src} -> {dst}")
        self.shard, self.src, self.dst = shard, src, dst


class ProviderError(BatchpipeError):
    """A call to the batch service failed.

    `outcome_unknown` is True when the request may have taken effect although no answer
    arrived (5xx, timeout, dropped connection): a mutating call must then be looked up by
    its tag before it is tried again (DESIGN.md §4).
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status_code: int | None = None,
        code: str | None = None,
        param: str | None = None,
        retryable: bool = False,
        outcome_unknown: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after  # seconds the service asked us to wait, if it said
        self.status_code = status_code
        self.code = code
        self.param = param
        self.retryable = retryable
        self.outcome_unknown = outcome_unknown


class RemoteNotFound(ProviderError):
    """The service answered 404: the object (a file, a batch) is not there, or no longer.

    A distinct kind because it is not a hiccup: a result file the service deleted will not
    come back, so its requests are sent again (ops/lost.py) instead of failing the run.
    """
