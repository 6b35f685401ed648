"""Do by script what a person does by hand with the files of `batchpipe export`: a rehearsal aid.

    python3 scripts/upload_by_hand.py handoff/ downloads/

For each request file in handoff/ (the .jsonl files `batchpipe export RUN handoff/` wrote): upload
it (purpose "batch"), create its batch, wait for the batch to end, and download its output and
error files into downloads/ as `<file>.output.jsonl` and `<file>.errors.jsonl`, ready for
`batchpipe import RUN downloads/*`. It talks to whatever OPENAI_BASE_URL and OPENAI_API_KEY name
(the emulator, in the README's recipe). With the real service you would do the same in its web
console or with the curl lines of handoff/README.txt.

Run again, it never uploads a file twice (two batches of one file are both billed): the batch id is
kept in handoff/<file>.batch as soon as the batch exists (a batch whose results are downloaded
is then only looked at again).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import openai

ENDED = ("completed", "failed", "expired", "cancelled")


def hand_off(handoff: Path, downloads: Path) -> None:
    # OPENAI_BASE_URL and OPENAI_API_KEY from the environment; no blind retries: a create retried
    # after a lost answer would make a second, billed batch (an error stops here; run it again)
    client = openai.OpenAI(max_retries=0)
    downloads.mkdir(parents=True, exist_ok=True)
    for path in sorted(handoff.glob("*.jsonl")):
        marker = handoff / f"{path.stem}.batch"
        if marker.exists():  # uploaded and batched by an earlier try: wait for that batch
            batch_id = marker.read_text().strip()
        else:
            with path.open("rb") as f:
                endpoint = json.loads(f.readline())["url"]  # every line of a batch file names it
                f.seek(0)
                upload = client.files.create(file=f, purpose="batch")
            # `export` names a file <run>--<shard>.jsonl: this tag lets `batchpipe list --remote` say which it is
            run, _, shard = path.stem.partition("--")
            metadata = {"batchpipe_run": run, "batchpipe_shard": shard} if shard else None
            batch_id = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h",
                                             metadata=metadata).id
            marker.write_text(batch_id + "\n")
        batch = client.batches.retrieve(batch_id)
        while batch.status not in ENDED:
            time.sleep(1)
            batch = client.batches.retrieve(batch_id)
        if batch.error_file_id:
            errors = client.files.content(batch.error_file_id).read()
            (downloads / f"{path.stem}.errors.jsonl").write_bytes(errors)
        if batch.output_file_id:
            output = client.files.content(batch.output_file_id).read()
            (downloads / f"{path.stem}.output.jsonl").write_bytes(output)
        print(f"{path.name}: batch {batch_id} {batch.status}, results in {downloads}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 scripts/upload_by_hand.py HANDOFF_DIR DOWNLOADS_DIR")
    hand_off(Path(sys.argv[1]), Path(sys.argv[2]))
