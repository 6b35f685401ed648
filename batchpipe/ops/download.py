"""`download`: fetch the output and error files of every batch that has finished.

A result file the service no longer has does not stop the others: the shard is completed with
what could be downloaded, and the lost file is recorded (ops/lost.py) so that `process` sends
its requests again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchpipe import crash, fsio
from batchpipe.errors import RemoteNotFound
from batchpipe.ledger.model import TERMINAL_BATCH_STATUSES, FileRef, Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.lost import lost_result_note
from batchpipe.ops.status import refresh_submitted
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider


@dataclass
class Downloaded:
    run_id: str
    shards: list[str] = field(default_factory=list)
    files: int = 0
    lost: list[str] = field(default_factory=list)  # result files the service no longer had, and what follows


def _fetch(ledger: Ledger, shard: Shard, provider: Provider, file_id: str | None, kind: str) -> FileRef | None:
    if file_id is None:
        return None
    path = ledger.paths.result_file(shard.id, kind)
    # Streamed to a temp file, fsynced and renamed: the file is whole before the ledger names it.
    size, sha = fsio.write_lines_atomic(path, provider.iter_file_content(file_id))
    crash.point("download:after_file")
    ledger.log({"event": "remote", "call": "download", "shard": shard.id, "file_id": file_id, "bytes": size})
    return ledger.file_ref(path, size, sha)


def download_shard(ledger: Ledger, shard: Shard, provider: Provider) -> list[str]:
    """SUBMITTED (terminal batch) -> COMPLETED with its result files; return a note per lost file."""
    refs: dict[str, FileRef | None] = {}
    lost: list[str] = []
    for kind, file_id in (("output", shard.batch.output_file_id), ("errors", shard.batch.error_file_id)):
        try:
            refs[kind] = _fetch(ledger, shard, provider, file_id, kind)
        except RemoteNotFound:  # deleted or expired at the service: it will not come back
            refs[kind] = None
            ledger.log({"event": "result_file_lost", "shard": shard.id, "file_id": file_id, "kind": kind})
            lost.append(lost_result_note(shard, "output" if kind == "output" else "error", file_id))
    ledger.advance(shard, ShardState.COMPLETED, outputs=refs["output"], errors_file=refs["errors"])
    return lost


def download(paths: RunPaths, provider: Provider) -> Downloaded:
    result = Downloaded(paths.run_id)
    with fsio.run_lock(paths.root):
        ledger = Ledger.load(paths)
        refresh_submitted(ledger, provider)
        for shard in ledger.shards:
            if shard.state != ShardState.SUBMITTED or shard.batch.status not in TERMINAL_BATCH_STATUSES:
                continue
            result.lost += download_shard(ledger, shard, provider)
            result.shards.append(shard.id)
            result.files += (shard.outputs is not None) + (shard.errors_file is not None)
    return result
