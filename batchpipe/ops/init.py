"""`init`: write a commented starter job config (and sample rows for it) that validates as is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from batchpipe.config.starter import STARTER_CONFIG, STARTER_ROWS
from batchpipe.errors import UsageError
from batchpipe.fsio import write_bytes_atomic


@dataclass(frozen=True)
class Initialised:
    config: Path
    rows: Path
    rows_written: bool  # False: a file of that name was there already and is kept


def init_job(path: Path) -> Initialised:
    """Write the starter config at `path` and, beside it, `<name>.jsonl` with three sample rows
    (unless that file exists: it is kept). An existing config is never overwritten."""
    if path.exists() or path.is_symlink():
        raise UsageError(f"{path} already exists; batchpipe init never overwrites a file",
                         hint="give another path, e.g. batchpipe init configs/new-job.yaml")  # fmt: skip
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} is not a directory", hint="create the directory first, or give another path")
    rows = path.with_suffix(".jsonl") if path.suffix.lower() != ".jsonl" else path.with_name(path.stem + "-rows.jsonl")
    rows_written = not rows.exists()
    if rows_written:  # sample data first: the config that names it is only written once it is there
        write_bytes_atomic(rows, STARTER_ROWS)
    text = STARTER_CONFIG.format(config=path.name, rows=json.dumps(rows.name).ljust(32))
    write_bytes_atomic(path, text.encode("utf-8"))
    return Initialised(config=path, rows=rows, rows_written=rows_written)
