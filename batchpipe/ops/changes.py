"""What changed in a run between two looks at its ledger, in words: the lines of a cron log.

`run` and `tick` take a look before a pass and after it, and report the difference (a shard
submitted, a batch's status or request counts, downloaded, merged, a retry planned, the run
done or held). Comparing ledgers rather than instrumenting every step means a change is
reported however it came about (by this pass, or by a `status` in another terminal between two
passes of `run --wait`), and each change exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchpipe.errors import LedgerError
from batchpipe.ledger.model import ShardState
from batchpipe.ledger.store import Ledger
from batchpipe.paths import RunPaths

_ORDER = list(ShardState)


@dataclass(frozen=True)
class _Shard:
    state: ShardState
    requests: int
    file_id: str | None
    batch_id: str | None
    status: str | None
    counts: tuple[int, int, int]  # completed, failed, total
    merged: tuple[tuple[str, int], ...]
    mode: str | None = None  # "sync": sent to the regular endpoint, no upload and no batch


@dataclass(frozen=True)
class Look:
    """The parts of a ledger a person watching the run cares about."""

    shards: dict[str, _Shard]
    done: bool
    output: str | None
    result_counts: tuple[tuple[str, int], ...]
    hold: str | None
    canary: str | None
    canary_state: str | None

    @classmethod
    def of(cls, ledger: Ledger) -> Look:
        shards = {}
        for s in ledger.shards:
            counts = s.batch.request_counts if s.batch else {}
            shards[s.id] = _Shard(
                s.state, s.requests, s.upload.file_id if s.upload else None, s.batch.id if s.batch else None,
                s.batch.status if s.batch else None,
                (counts.get("completed", 0), counts.get("failed", 0), counts.get("total", 0)),
                tuple(sorted((s.merged or {}).items())), s.mode,
            )  # fmt: skip
        run = ledger.run
        done = run.output is not None and all(s.state == ShardState.MERGED for s in ledger.shards)
        return cls(shards, done, str(ledger.paths.output) if run.output else None,
                   tuple(sorted((run.result_counts or {}).items())), run.hold, run.canary, run.canary_state)


def _shard_lines(sid: str, old: _Shard | None, new: _Shard) -> list[str]:
    rank = _ORDER.index
    lines = []
    if old is None:
        kind = "a new shard" if sid.endswith(".a1") else "a new attempt, for the requests worth trying again"
        lines.append(f"shard {sid} prepared: {new.requests} request(s), {kind}")
        first = ShardState.UPLOADED
    elif rank(new.state) < rank(old.state):  # the two ways back (transitions.py)
        if new.state == ShardState.PREPARED:  # UPLOADED -> PREPARED: the service lost the uploaded file
            lines.append(f"shard {sid} back to prepared: the service no longer has its file {old.file_id}; "
                         "it is uploaded again")
        else:  # SUBMITTED -> UPLOADED: refused for a full queue
            lines.append(f"shard {sid} back to {new.state.value}: batch {old.batch_id} was refused because the "
                         "provider's queue was full; it is sent again when there is room")
        return lines
    elif (old.state == ShardState.PREPARED and new.batch_id is None and new.state != ShardState.PREPARED
          and new.mode != "sync"):  # (a shard answered in sync mode has no batch either: said below)
        lines.append(f"shard {sid} results imported by hand (batchpipe import)")  # an exported shard (ops/handoff.py)
        first = ShardState.MERGED if new.state == ShardState.MERGED else None
    elif new.batch_id is not None and old.batch_id not in (None, new.batch_id):
        first = ShardState.SUBMITTED  # refused for a full queue and created again, both since the last look
    else:
        first = _ORDER[rank(old.state) + 1] if new.state != old.state else None  # it only moved on
    told_remote = False
    for state in _ORDER[rank(first) : rank(new.state) + 1] if first is not None else []:
        if new.mode == "sync" and state in (ShardState.UPLOADED, ShardState.SUBMITTED):
            continue  # never uploaded nor submitted: its requests went to the regular endpoint
        if new.mode == "sync" and state == ShardState.COMPLETED:
            lines.append(f"shard {sid} answered in sync mode: {new.requests} request(s)")
        elif state == ShardState.UPLOADED:
            lines.append(f"shard {sid} uploaded: file {new.file_id}")
        elif state == ShardState.SUBMITTED:
            now = f", {new.status}" if new.state == ShardState.SUBMITTED else ""  # else the next line says
            lines.append(f"shard {sid} submitted: batch {new.batch_id}, {new.requests} request(s){now}")
            told_remote = True
        elif state == ShardState.COMPLETED:
            lines.append(f"shard {sid} downloaded: batch {new.batch_id} {new.status}, {_counts(new)}")
            told_remote = True
        elif state == ShardState.MERGED:
            merged = dict(new.merged)
            again = f", {merged['retried']} to try again" if merged.get("retried") else ""
            lines.append(f"shard {sid} merged: {merged.get('ok', 0)} ok, {merged.get('failed', 0)} failed{again}")
    if old is not None and not told_remote and new.batch_id is not None and new.batch_id == old.batch_id:
        if new.status != old.status:
            lines.append(f"shard {sid} batch {new.batch_id}: {old.status} -> {new.status}, {_counts(new)}")
        elif new.counts != old.counts:
            lines.append(f"shard {sid} batch {new.batch_id}: {_counts(new)}")
    return lines


def _counts(s: _Shard) -> str:
    completed, failed, total = s.counts
    return f"{completed + failed}/{total or s.requests} requests done, {failed} failed"


def changes(before: Look, after: Look) -> list[str]:
    """One line per change from `before` to `after`, in shard order, then the run's own."""
    lines = []
    if after.canary is not None and before.canary is None:
        req = after.shards[after.canary].requests
        lines.append(f"canary: shard {after.canary} ({req} request(s)) goes first; the rest wait for it")
    for sid, new in after.shards.items():
        lines += _shard_lines(sid, before.shards.get(sid), new)
    if after.canary_state != before.canary_state and after.canary_state == "passed":
        lines.append("canary passed: the rest of the run goes on")
    if after.hold != before.hold:
        lines.append(f"held: {after.hold}" if after.hold else "resumed")
    if after.done and not before.done:
        counts = dict(after.result_counts)
        filled = f", {counts['fallback']} by fallback" if counts.get("fallback") else ""
        dropped = f", {counts['dropped']} dropped" if counts.get("dropped") else ""
        lines.append(f"done: {counts.get('ok', 0)} answered{filled}, {counts.get('failed', 0)} failed{dropped}; "
                     f"output at {after.output}")
    return lines


class Watch:
    """Looks at a run now; `changes()` says what changed since the last look (and looks again)."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.last = Look.of(Ledger.load(paths))

    def changes(self) -> list[str]:
        try:
            now = Look.of(Ledger.load(self.paths))
        except LedgerError:
            return []  # a damaged ledger is reported by the step that met it, not here
        found, self.last = changes(self.last, now), now
        if self.paths.parent is None:
            return found
        # A multi-step run: each line names its step, and the steps it moved on to are told from their start.
        found = [f"{self.paths.root.name}: {line}" for line in found]
        if (current := self.paths.step_after()) is not None:
            self.paths, self.last = current, Look({}, False, None, (), None, None, None)
            found += [f"step {current.root.name} created"] + self.changes()
        return found

