"""Named crash points, for the tests that prove batchpipe survives a kill at any moment.

`BATCHPIPE_CRASH_AT=<point>[:<n>]` makes the process exit at once (os._exit: no cleanup, no
finally blocks, no flush, as after kill -9) the n-th time (default: the first) it reaches
`<point>`. There is a point between every pair of side effects: before and after each remote
call, before and after each ledger commit, between a data file and the ledger entry naming it.
Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os

EXIT_CODE = 99  # what a crashed process exits with, so tests can tell a crash from an error

POINTS: frozenset[str] = frozenset(
    {
        "run_create:before_publish",  # run dir fully written in its temp dir, not yet renamed into place
        "ledger:before_commit",  # every ledger commit, before the new state.json is written
        "ledger:after_commit",  # every ledger commit, after state.json is durable
        "upload:before",  # intent recorded, upload not sent
        "upload:after",  # upload answered, file_id not yet in the ledger
        "batch_create:before",  # batch intent recorded, create not sent
        "batch_create:after",  # batch created, batch_id not yet in the ledger
        "download:after_file",  # a result file is on disk, not yet in the ledger
        "process:after_index",  # results in the index, shard not yet merged in the ledger
        "retry:after_shard_file",  # retry shard file written, not yet in the index or ledger
        "retry:after_index",  # retry shard in the index, not yet in the ledger
        "output:after_file",  # output.jsonl written, not yet in the ledger
        "canary:after_files",  # canary and rest files written, not yet in the index or ledger
        "canary:after_index",  # canary split in the index, not yet in the ledger
        "recut:after_index",  # recut pieces written and in the index, the ledger still names the old shard
        "cancel:before",  # cancel of a duplicate batch not sent
        "cancel:after",  # duplicate batch cancelled, not yet reported
        "sync:after_answer",  # a sync answer written to its journal (fsynced just after); no next request yet
        "sync:after_result_file",  # a sync shard's journal written out as its result file, not yet in the ledger
        "export:after_handoff",  # shards handed off in the ledger, their files not yet written out
        "import:after_piece",  # an imported file's piece files written, not yet in the ledger
        "steps:after_input",  # the next step's input file written, its run not yet created
        "steps:after_create",  # the next step's run published, the command not yet moved on to it
        "steps:after_output",  # a multi-step run's final output written, not yet recorded
    }
)

_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    raw = os.environ.get("BATCHPIPE_CRASH_AT")
    if not raw:
        return None
    name, _, n = raw.rpartition(":")
    if not n.isdigit():  # no count given: the first hit
        return raw, 1
    return name, int(n)


def point(name: str) -> None:
    """Crash here if BATCHPIPE_CRASH_AT names this point (and this is its n-th hit)."""
    assert name in POINTS, f"unknown crash point {name!r}"
    target = _target()
    if target is None or target[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target[1]:
        os._exit(EXIT_CODE)
