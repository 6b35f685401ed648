"""`recover`: reconcile a run with the provider and the disk after a crash.

- removes temp files a crash left mid-write (never a file the ledger names), and the build dirs
  of creates that were killed (never one a live create is writing);
- restores a damaged state.json from state.json.prev (the ledger as it was one commit earlier,
  which is what a crash just before the last commit leaves) and then looks the shards' tags up,
  so a batch that commit recorded is adopted, not created again;
- checks every file the ledger names (size + sha256): result files are downloaded again from
  the provider, the index is rebuilt from the run's files, a shard file is rendered again from
  the input and the config snapshot (if the bytes match), a damaged output is rewritten by the
  next `process`, and anything that cannot be repaired is reported with exactly what is lost;
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
from batchpipe.errors import BatchpipeError, LedgerError, RemoteNotFound, RunNotFound
from batchpipe.ledger.index import Index
from batchpipe.ledger.model import TERMINAL_BATCH_STATUSES, Batch, Shard, ShardState, Upload
from batchpipe.ledger.store import Ledger, LedgerDamaged, restore_previous
from batchpipe.ops.common import bind_provider, record_provider, run_config
from batchpipe.ops.download import download_shard
from batchpipe.ops.lost import back_to_upload
from batchpipe.ops.process import RETRY_LOST, replay
from batchpipe.ops.reindex import index_problem, rebuild_index, restore_shard_file
from batchpipe.ops.remote import batch_record, batch_tag, cancel_duplicate, refresh, tagged_batches
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


def _remove_build_dirs(paths: RunPaths, result: Recovered) -> None:
    """A `create` killed before it published the run leaves its build dir beside it."""
    for stray in fsio.remove_stale_build_dirs(paths.root.parent, paths.run_id):
        result.actions.append(f"removed {stray.path.name} ({stray.bytes:,} bytes), left by an interrupted create")


def _load(paths: RunPaths, result: Recovered) -> tuple[Ledger, float | None]:
    """The ledger; a damaged (or lost) state.json is first restored from state.json.prev.

    Returns, after a restore, the time the lost commit was made: what it recorded (a batch
    create, say) is looked up at the provider from then on.
    """
    try:
        return Ledger.load(paths), None
    except LedgerError as exc:
        if paths.state.is_file() and not isinstance(exc, LedgerDamaged):
            raise  # e.g. from a newer batchpipe: nothing to restore
    since = paths.state_prev.stat().st_mtime if paths.state_prev.is_file() else None
    result.actions.append(restore_previous(paths))  # raises, saying what cannot be done, if there is no good copy
    return Ledger.load(paths), since


def _reopen_intents(ledger: Ledger, since: float, result: Recovered) -> None:
    """After a restore, the lost commit may have recorded a batch create that then happened:
    treat it as an open intent of every shard that is waiting for its batch, so the lookup
    below adopts such a batch instead of `submit` creating (and paying for) a second one."""
    waiting = [s for s in ledger.shards if s.state == ShardState.UPLOADED and s.batch is None]
    for shard in waiting:
        shard.batch = Batch(metadata=batch_tag(ledger.run, shard), intent_at=since)
    if waiting:
        ledger.commit({"event": "intent", "call": "lookup_after_restore", "shards": [s.id for s in waiting]})
        result.actions.append(f"looking up the batches of {len(waiting)} shard(s) the lost commit may have created")


def _damage(ledger: Ledger, ref) -> str | None:  # noqa: ANN001 - a FileRef
    try:
        ledger.verify(ref)
    except LedgerError as exc:
        return exc.message
    return None


def _check_index(ledger: Ledger, result: Recovered) -> bool:
    """Rebuild a missing, damaged or incomplete index; return whether the index can be used."""
    try:
        if problem := index_problem(ledger, thorough=True):
            result.actions.append(rebuild_index(ledger, replay, problem))
    except BatchpipeError as exc:
        result.problems.append(f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        return False
    return True


def _check_shard_files(ledger: Ledger, result: Recovered) -> None:
    """Render a damaged shard file again; if that cannot be done, say exactly what is lost."""
    max_attempts = run_config(ledger.paths).limits.max_attempts
    with Index(ledger.paths.index) as index:
        for shard in ledger.shards:
            if not (problem := _damage(ledger, shard.file)):
                continue
            if not (why := restore_shard_file(ledger, shard, index)):
                result.actions.append(f"shard {shard.id}: {problem}; rendered it again from the input and the "
                                      f"config snapshot (sha256 matches)")
            elif shard.state == ShardState.PREPARED:
                result.problems.append(
                    f"shard {shard.id}: {problem}, and {why}. Its {shard.requests} request(s) were never sent and "
                    f"cannot be now: put the original input back and run recover again, or create the job again "
                    f"as a new run: batchpipe create CONFIG --run NEW_ID"
                )
            elif shard.state == ShardState.MERGED and shard.retry is None and shard.attempt < max_attempts:
                lost = [cid for _, cid in index.retryable(shard.id)]
                if lost:
                    shown = ", ".join(lost[:10]) + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
                    result.problems.append(
                        f"shard {shard.id}: {problem}, and {why}. Lost: another attempt for its {len(lost)} failed "
                        f"request(s) (ids {shown}); they keep their error in the output. Put the original input "
                        f"back and run recover again to retry them"
                    )
            else:
                result.actions.append(f"shard {shard.id}: {problem} (it was sent already; only a retry would need it)")
    for shard in ledger.shards:
        lost = (shard.merged or {}).get(RETRY_LOST)
        if lost and not _damage(ledger, shard.file):  # whole again: let process retry them after all
            shard.merged = {k: v for k, v in shard.merged.items() if k != RETRY_LOST}
            ledger.commit({"event": "retry_restored", "shard": shard.id})
            result.actions.append(f"shard {shard.id}: its request file is whole again; `batchpipe process` will "
                                  f"retry its {lost} failed request(s)")


def _check_files(ledger: Ledger, provider: Provider | None, result: Recovered) -> None:
    from batchpipe.ops.handoff import repair_pieces  # results imported by hand: their pieces

    actions, problems = repair_pieces(ledger)
    result.actions += actions
    result.problems += problems
    for shard in ledger.shards:
        for kind, attr in (("output", "outputs"), ("errors", "errors_file")):
            ref = getattr(shard, attr)
            if ref is None or not (problem := _damage(ledger, ref)):
                continue
            if shard.mode == "sync":  # its answers came one by one: there is no file at the service to fetch
                _unrestorable(ledger, shard, attr, f"{problem} (the journal of its sync answers)", result)
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


def _check_output(ledger: Ledger, result: Recovered) -> None:
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
    _remove_build_dirs(paths, result)
    if not paths.state.is_file() and not paths.state_prev.is_file():
        if live := [d.path.name for d in fsio.build_dirs(paths.root.parent, paths.run_id) if d.live]:
            raise RunNotFound(f"run {paths.run_id!r} is still being created ({live[0]})",
                              hint="wait for its create to finish")
        if not result.actions:
            raise RunNotFound(f"no run {paths.run_id!r} in {paths.root.parent}",
                              hint="see `batchpipe list` for the runs there, or pass --runs-dir")
        result.actions.append(f"run {paths.run_id} was never published (its create was interrupted): create it again")
        return result
    with fsio.run_lock(paths.root):
        _remove_temp_files(paths, result)
        ledger, restored_at = _load(paths, result)
        _check_files(ledger, provider, result)
        if _check_index(ledger, result):
            _check_shard_files(ledger, result)
        _check_output(ledger, result)
        if restored_at is not None:
            _reopen_intents(ledger, restored_at, result)
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
        _lost_remote_files(ledger, provider, result, batches)
        _cancel_duplicates(ledger, provider, result, batches)
        ledger.log({"event": "recovered", "actions": len(result.actions), "problems": len(result.problems)})
    return result
