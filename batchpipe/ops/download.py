"""`download`: fetch the output and error files of every batch that has finished."""

from __future__ import annotations

from dataclasses import dataclass, field

from batchpipe import crash, fsio
from batchpipe.ledger.model import TERMINAL_BATCH_STATUSES, FileRef, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.status import refresh_submitted
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider


@dataclass
class Downloaded:
    run_id: str
    shards: list[str] = field(default_factory=list)
    files: int = 0


def _fetch(ledger: Ledger, shard: Shard, provider: Provider, file_id: str | None, kind: str) -> FileRef | None:
    if file_id is None:
        return None
    path = ledger.paths.result_file(shard.id, kind)
    # Streamed to a temp file, fsynced and renamed: the file is whole before the ledger names it.
    size, sha = fsio.write_lines_atomic(path, provider.iter_file_content(file_id))
    crash.point("download:after_file")
    ledger.log({"event": "remote", "call": "download", "shard": shard.id, "file_id": file_id, "bytes": size})
    return ledger.file_ref(path, size, sha)


def download(paths: RunPaths, provider: Provider) -> Downloaded:
    result = Downloaded(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        refresh_submitted(ledger, provider)
        for shard in ledger.shards:
            if shard.state != ShardState.SUBMITTED or shard.batch.status not in TERMINAL_BATCH_STATUSES:
                continue
            outputs = _fetch(ledger, shard, provider, shard.batch.output_file_id, "output")
            errors = _fetch(ledger, shard, provider, shard.batch.error_file_id, "errors")
            ledger.advance(shard, ShardState.COMPLETED, outputs=outputs, errors_file=errors)
            result.shards.append(shard.id)
            result.files += (outputs is not None) + (errors is not None)
    return result
