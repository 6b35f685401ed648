"""`recover`: reconcile a run with the provider and the disk after a crash.

- removes temp files a crash left mid-write (never a file the ledger names);
- checks every file the ledger names (size + sha256): result files are downloaded again
  from the provider, a damaged output is rewritten by the next `process`, and anything that
  cannot be repaired is reported with what to do;
- adopts uploads and batches whose create was sent but whose answer never reached the ledger;
- finds every batch the provider holds for this run, and cancels (and reports) a second live
  batch for one shard;
- finds files the service no longer has (ops/lost.py): a finished batch's output or error file
  (what remains is downloaded and the lost file's requests are sent again by the next `run`),
  and an uploaded input file whose batch is not created yet (the shard goes back to be
  uploaded again by the next `submit`).
Recovery never creates anything remote: submitting what is still missing is `submit`'s job,
and it looks the tags up again first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchpipe import fsio
from batchpipe.errors import LedgerError, RemoteNotFound
from batchpipe.ledger.model import TERMINAL_BATCH_STATUSES, Shard, ShardState, Upload
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import bind_provider
from batchpipe.ops.download import download_shard
from batchpipe.ops.lost import back_to_upload
from batchpipe.ops.remote import batch_record, cancel_duplicate, refresh, tagged_batches
from batchpipe.paths import RunPaths
from batchpipe.providers import Provider, RemoteBatch


@dataclass
class Recovered:
    run_id: str
    actions: list[str] = field(default_factory=list)  # what recover did
    problems: list[str] = field(default_factory=list)  # what a person must do; empty when all is well

    @property
    def ok(self) -> bool:
        return not self.problems


def _remove_temp_files(paths: RunPaths, result: Recovered) -> None:
    for stray in fsio.stray_temp_files(paths.root):
        fsio.remove_tree(stray) if stray.is_dir() else stray.unlink(missing_ok=True)
        result.actions.append(f"removed {stray.relative_to(paths.root)}, left by an interrupted write")
    # A `create` interrupted before it published the run leaves a hidden temp dir beside it.
    for stray in paths.root.parent.glob(f".{paths.run_id}.*{fsio.TEMP_SUFFIX}"):
        fsio.remove_tree(stray)
        result.actions.append(f"removed {stray.name}, left by an interrupted create")


def _damage(ledger: Ledger, ref) -> str | None:  # noqa: ANN001 - a FileRef
    try:
        ledger.verify(ref)
    except LedgerError as exc:
        return exc.message
    return None


def _check_files(ledger: Ledger, provider: Provider | None, result: Recovered) -> None:
    for shard in ledger.shards:
        problem = _damage(ledger, shard.file)
        if problem and shard.state == ShardState.PREPARED:
            result.problems.append(
                f"shard {shard.id}: {problem}; nothing was sent for it yet. Create the job again as a new run: "
                f"batchpipe create CONFIG --run NEW_ID"
            )
        elif problem and shard.retry is None and shard.state != ShardState.MERGED:
            result.actions.append(f"shard {shard.id}: {problem} (already uploaded; only a retry would need it)")
        for kind, attr in (("output", "outputs"), ("errors", "errors_file")):
            ref = getattr(shard, attr)
            if ref is None or not (problem := _damage(ledger, ref)):
                continue
            file_id = shard.batch.output_file_id if kind == "output" else shard.batch.error_file_id
            if provider is None:
                result.problems.append(f"shard {shard.id}: {problem}; set OPENAI_API_KEY and run recover again")
                continue
            path = ledger.paths.result_file(shard.id, kind)
            try:
                size, sha = fsio.write_lines_atomic(path, provider.iter_file_content(file_id))
            except RemoteNotFound:
                _unrestorable(ledger, shard, attr, f"{problem}, and the service no longer has file {file_id}", result)
                continue
            if (size, sha) == (ref.bytes, ref.sha256):
                result.actions.append(f"shard {shard.id}: downloaded {path.name} again")
            else:
                result.problems.append(
                    f"shard {shard.id}: {path.name} downloaded again differs from the first download; "
                    f"the provider's file {file_id} changed. Check it before trusting this shard"
                )
    if ledger.run.output is not None and (problem := _damage(ledger, ledger.run.output)):
        ledger.run.output = None
        ledger.commit({"event": "output_damaged"})
        result.actions.append(f"{problem}: it will be written again by `batchpipe process {ledger.run.id}`")


def _unrestorable(ledger: Ledger, shard: Shard, attr: str, problem: str, result: Recovered) -> None:
    """A damaged result file the service no longer has: retry its requests if not merged yet."""
    if shard.state == ShardState.COMPLETED:
        setattr(shard, attr, None)  # recorded as lost (ops/lost.py): `process` sends its requests again
        ledger.commit({"event": "result_file_lost", "shard": shard.id, "kind": attr})
        result.actions.append(f"shard {shard.id}: {problem}: the requests whose results it held will be sent "
                              f"again as a new attempt by `batchpipe run {ledger.run.id}`")
    else:  # merged: its results are in the index and the output, but this raw copy is gone for good
        result.problems.append(f"shard {shard.id}: {problem}: it cannot be restored. Its results are already "
                               f"merged and kept in index.sqlite and output.jsonl: do not delete those")


def _lost_remote_files(ledger: Ledger, provider: Provider, result: Recovered, batches: list[RemoteBatch]) -> None:
    """Finished batches whose result files, and uploads whose input files, the service no longer has."""
    listed = {b.id: b for b in batches}
    for shard in ledger.shards:
        if shard.state == ShardState.SUBMITTED:
            remote = listed.get(shard.batch.id) or shard.batch  # the listing is fresher than the ledger
            named = (remote.output_file_id, remote.error_file_id)
            if remote.status in TERMINAL_BATCH_STATUSES and any(f and not provider.file_exists(f) for f in named):
                refresh(ledger, shard, provider)
                if shard.state == ShardState.SUBMITTED:
                    result.actions += download_shard(ledger, shard, provider)  # what remains, and which is lost
        if shard.state == ShardState.UPLOADED and not provider.file_exists(shard.upload.file_id):
            note = back_to_upload(ledger, shard)
            result.actions.append(f"{note}: `batchpipe submit {ledger.run.id}` uploads it again")


def _of_shard(batch: RemoteBatch, shard: Shard) -> bool:
    """Is this one of the shard's batches: by its tag, or (a service that drops metadata) by its file?"""
    if batch.metadata.get("batchpipe_shard") == shard.id:
        return True
    return shard.upload is not None and batch.input_file_id == shard.upload.file_id


def _adopt_open_intents(ledger: Ledger, provider: Provider, result: Recovered, batches: list[RemoteBatch]) -> None:
    for shard in ledger.shards:
        if shard.state == ShardState.PREPARED and shard.upload is not None:
            found = provider.find_file(shard.upload.filename, shard.upload.intent_at)
            if found is not None:
                upload = Upload(shard.upload.filename, shard.upload.intent_at, found.id)
                ledger.advance(shard, ShardState.UPLOADED, upload=upload)
                result.actions.append(f"shard {shard.id}: adopted upload {found.id} (its answer had been lost)")
        if shard.state == ShardState.UPLOADED and shard.batch is not None:
            live = tagged_batches(shard, [b for b in batches if _of_shard(b, shard)])
            if live:
                ledger.advance(shard, ShardState.SUBMITTED, batch=batch_record(shard.batch.metadata, shard.batch.intent_at, live[0]))
                result.actions.append(f"shard {shard.id}: adopted batch {live[0].id} (its answer had been lost)")


def _cancel_duplicates(ledger: Ledger, provider: Provider, result: Recovered, batches: list[RemoteBatch]) -> None:
    for shard in ledger.shards:
        if shard.batch is None or shard.batch.id is None:
            continue
        mine = [b for b in batches if _of_shard(b, shard)]
        for dup in tagged_batches(shard, mine):
            if dup.id != shard.batch.id:
                result.actions.append(cancel_duplicate(ledger, shard, provider, dup))


def _earliest_intent(shards: list[Shard]) -> float | None:
    times = [s.batch.intent_at for s in shards if s.batch is not None]
    times += [h["intent_at"] for s in shards for h in s.history if "intent_at" in h]
    return min(times) if times else None


def recover(paths: RunPaths, provider: Provider | None) -> Recovered:
    result = Recovered(paths.run_id)
    with fsio.run_lock(paths.root):
        _remove_temp_files(paths, result)
        ledger = Ledger.load(paths)  # a damaged ledger is refused here, with its own message
        _check_files(ledger, provider, result)
        if provider is None:
            result.problems.append("not checked with the provider: OPENAI_API_KEY is not set")
            return result
        since = _earliest_intent(ledger.shards)
        if since is None and not any(s.upload for s in ledger.shards):
            return result  # nothing was ever sent
        bind_provider(ledger, provider)
        file_ids = frozenset(s.upload.file_id for s in ledger.shards if s.upload and s.upload.file_id)
        batches = provider.find_batches({"batchpipe_run": ledger.run.id}, since, file_ids) if since is not None else []
        _adopt_open_intents(ledger, provider, result, batches)
        _lost_remote_files(ledger, provider, result, batches)
        _cancel_duplicates(ledger, provider, result, batches)
        ledger.log({"event": "recovered", "actions": len(result.actions), "problems": len(result.problems)})
    return result
