"""The library API: one idempotent function per step. The CLI is a thin shell over these.

The names are imported on first use (PEP 562), so a command loads only the ops it runs:
`batchpipe --help` or `list` does not pay for the modules behind `submit` or `process`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# name -> (module under batchpipe.ops, attribute)
_NAMES = {
    "Cancelled": ("cancel", "Cancelled"), "cancel": ("cancel", "cancel"),
    "Progress": ("common", "Progress"), "bind_provider": ("common", "bind_provider"),
    "describe": ("common", "describe"), "describe_run": ("common", "describe_run"),
    "provider_for": ("common", "provider_for"), "run_config": ("common", "run_config"),
    "run_paths": ("common", "run_paths"),
    "Created": ("create", "Created"), "create": ("create", "create"),
    "Downloaded": ("download", "Downloaded"), "download": ("download", "download"),
    "RunSummary": ("listing", "RunSummary"), "list_runs": ("listing", "list_runs"),
    "Processed": ("process", "Processed"), "process": ("process", "process"),
    "Recovered": ("recover", "Recovered"), "recover": ("recover", "recover"),
    "RunReport": ("run", "RunReport"), "run": ("run", "run"), "step": ("run", "step"),
    "Status": ("status", "Status"), "status": ("status", "status"),
    "summary_line": ("summary", "summary_line"),
    "SubmitOptions": ("submit", "SubmitOptions"), "Submitted": ("submit", "Submitted"), "submit": ("submit", "submit"),
    "SyncSent": ("sync", "SyncSent"), "send_sync": ("sync", "send"),
    "advance_step": ("steps", "advance"), "describe_steps": ("steps", "describe_steps"),
    "Ticked": ("tick", "Ticked"), "tick": ("tick", "tick"), "tick_all": ("tick", "tick_all"),
    "tick_exit_code": ("tick", "exit_code"),
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value
    return value


class _Ops(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package: `ops.run` would become the
    module `batchpipe.ops.run` rather than the function. Keep those names for the functions, as
    the eager imports this package used to make did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _NAMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Ops


if TYPE_CHECKING:  # what a type checker and an editor see: the same names, imported eagerly
    from batchpipe.ops.cancel import Cancelled, cancel
    from batchpipe.ops.common import Progress, bind_provider, describe, describe_run, provider_for, run_config, run_paths
    from batchpipe.ops.create import Created, create
    from batchpipe.ops.download import Downloaded, download
    from batchpipe.ops.listing import RunSummary, list_runs
    from batchpipe.ops.process import Processed, process
    from batchpipe.ops.recover import Recovered, recover
    from batchpipe.ops.run import RunReport, run, step
    from batchpipe.ops.status import Status, status
    from batchpipe.ops.submit import SubmitOptions, Submitted, submit
    from batchpipe.ops.summary import summary_line
    from batchpipe.ops.sync import SyncSent
    from batchpipe.ops.sync import send as send_sync
    from batchpipe.ops.steps import advance as advance_step
    from batchpipe.ops.steps import describe_steps
    from batchpipe.ops.tick import Ticked, tick, tick_all
    from batchpipe.ops.tick import exit_code as tick_exit_code
