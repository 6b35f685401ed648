"""The library API: one idempotent function per step. The CLI is a thin shell over these."""

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
from batchpipe.ops.tick import Ticked, tick, tick_all
from batchpipe.ops.tick import exit_code as tick_exit_code

__all__ = [
    "Cancelled", "Created", "Ticked", "cancel", "tick", "tick_all", "tick_exit_code", "Downloaded", "Processed", "Progress", "Recovered", "RunReport", "RunSummary", "Status", "SubmitOptions", "Submitted",
    "bind_provider", "create", "describe", "describe_run", "download", "list_runs", "process", "provider_for", "recover", "run", "run_config",
    "run_paths", "status", "step", "submit",
]
