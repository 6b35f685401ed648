"""Files the service no longer has: a result file gone before it was downloaded, an input file
gone before its batch was created. The service deletes result files some time after a batch
ends, input files when they expire, and anyone holding the key can delete any file.

Neither may block the run, and neither may stop the other shards:
- A lost result file is recorded by `download` as a ref left empty while the batch still names
  the file (`lost_files`). `process` gives every request whose result is not in the files that
  remain the error `result_file_lost`, which is retried like any retryable failure: a new
  attempt of the shard, within limits.max_attempts, sent by `submit` within the budget. If the
  error file is lost but the output is there, that means exactly the requests missing from the
  output. The lost output's requests were run and billed: the shard counts at the usage the
  service reported for its batch.
- A vanished input file is uploaded again: the shard goes back to `prepared` and the ordinary
  upload sends it once more (new intent, same tag, the same lookups), then its batch is created.
"""

from __future__ import annotations

from typing import Any

from batchpipe.errors import ProviderError
from batchpipe.ledger.model import Shard, ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import usage_tokens
from batchpipe.ops.remote import file_not_found
from batchpipe.providers import Provider

LOST_CODE = "result_file_lost"


def lost_files(shard: Shard) -> list[str]:
    """The shard's result files the batch named but the service no longer had ("output file file-x")."""
    if shard.batch is None or shard.state not in (ShardState.COMPLETED, ShardState.MERGED):
        return []
    named = (
        ("output", shard.outputs, shard.batch.output_file_id),
        ("error", shard.errors_file, shard.batch.error_file_id),
    )
    return [f"{kind} file {file_id}" for kind, ref, file_id in named if ref is None and file_id is not None]


def lost_error(shard: Shard) -> dict[str, Any] | None:
    """The error of a request with no result in the shard's files, when a file was lost (else None)."""
    lost = lost_files(shard)
    if not lost:
        return None
    return {"code": LOST_CODE, "message": f"the service no longer has the {' and the '.join(lost)} of batch "
                                          f"{shard.batch.id}, which may have held this request's result"}


def billed_usage(shard: Shard) -> dict[str, int] | None:
    """The usage the service reported for a shard whose output file is lost (the lines that would
    say it are gone, but the requests ran and were billed); None if the output is not lost."""
    if shard.outputs is not None or shard.batch is None or shard.batch.output_file_id is None:
        return None
    tokens_in, tokens_out = usage_tokens(shard.batch.usage)
    return {"input_tokens": tokens_in, "output_tokens": tokens_out}


def lost_result_note(shard: Shard, kind: str, file_id: str) -> str:
    return (f"shard {shard.id}: the service no longer has its {kind} file {file_id}; the requests whose results "
            f"it held will be sent again as a new attempt")


def input_file_gone(shard: Shard, provider: Provider, exc: ProviderError) -> bool:
    """Did a batch create fail because the service no longer has the shard's input file?

    The create answers 400 "Cannot find file" both for a file deleted and for one uploaded a
    moment ago that the batch service does not see yet (which BatchCreates waits out);
    the Files API tells the two apart: it answers 404 only for a file that is gone.
    """
    if not file_not_found(exc):
        return False
    file_id = shard.upload.file_id if shard.upload else None
    return file_id is not None and not provider.file_exists(file_id)


def back_to_upload(ledger: Ledger, shard: Shard) -> str:
    """UPLOADED -> PREPARED for a shard whose input file is gone: the next upload sends it again.

    Only for a shard without a batch: its create never went through (a lookup found nothing),
    so the batch intent is dropped with the file it named.
    """
    file_id = shard.upload.file_id if shard.upload else None
    ledger.log({"event": "input_file_lost", "shard": shard.id, "file_id": file_id})
    ledger.advance(shard, ShardState.PREPARED, upload=None, batch=None)
    return f"shard {shard.id}: the service no longer has its input file {file_id}"
