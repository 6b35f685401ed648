"""`recover`: reconcile a run with the provider and the disk after a crash.

- removes temp files a crash left mid-write (never a file the ledger names);
- checks every file the ledger names (size + sha256): result files are downloaded again
  from the provider, a damaged output is rewritten by the next `process`, and anything that
  cannot be repaired is reported with what to do;
- adopts uploads and batches whose create was sent but whose answer never reached the ledger;
- finds every batch the provider holds for this run, and cancels (and reports) a second live
  batch for one shard.
Recovery never creates anything remote: submitting what is still missing is `submit`'s job,
and it looks the tags up again first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchpipe import fsio
from batchpipe.errors import LedgerError
from batchpipe.ledger.model import Shard, ShardState, Upload
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import bind_provider, record_provider
from batchpipe.ops.remote import batch_record, cancel_duplicate, tagged_batches
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
            size, sha = fsio.write_lines_atomic(path, provider.iter_file_content(file_id))
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


def _adopt_open_intents(ledger: Ledger, provider: Provider, result: Recovered, batches: list[RemoteBatch]) -> None:
    for shard in ledger.shards:
        if shard.state == ShardState.PREPARED and shard.upload is not None:
            found = provider.find_file(shard.upload.filename, shard.upload.intent_at, shard.file.bytes)
            if found is not None:
                upload = Upload(shard.upload.filename, shard.upload.intent_at, found.id)
                record_provider(ledger, provider)
                ledger.advance(shard, ShardState.UPLOADED, upload=upload)
                result.actions.append(f"shard {shard.id}: adopted upload {found.id} (its answer had been lost)")
        if shard.state == ShardState.UPLOADED and shard.batch is not None:
            live = tagged_batches(shard, batches)
            if live:
                ledger.advance(shard, ShardState.SUBMITTED, batch=batch_record(shard.batch.metadata, shard.batch.intent_at, live[0]))
                result.actions.append(f"shard {shard.id}: adopted batch {live[0].id} (its answer had been lost)")


def _cancel_duplicates(ledger: Ledger, provider: Provider, result: Recovered, batches: list[RemoteBatch]) -> None:
    for shard in ledger.shards:
        if shard.batch is None or shard.batch.id is None:
            continue
        for dup in tagged_batches(shard, batches):
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
        # one pass through the batch list, matched against every shard's tag (ops/remote.is_tagged)
        batches = provider.list_batches(since) if since is not None else []
        _adopt_open_intents(ledger, provider, result, batches)
        _cancel_duplicates(ledger, provider, result, batches)
        ledger.log({"event": "recovered", "actions": len(result.actions), "problems": len(result.problems)})
    return result
