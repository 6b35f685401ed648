"""A big `process` pass is shared among worker processes, a shard each: the run's outcome is the
one a single process gives (the same output, figures and ledger)."""

from __future__ import annotations

import pickle

from conftest import read_jsonl, review_rows, write_job

from batchpipe.ledger.index import IndexFailure
from batchpipe.ops.process import PARALLEL_MIN_REQUESTS


def test_a_pass_big_enough_for_workers_merges_every_shard_as_one_process_would(cli, emulator, runs_dir, tmp_path):
    n = PARALLEL_MIN_REQUESTS + 1_000
    config = write_job(tmp_path / "job", review_rows(n), limits={"max_requests_per_shard": n // 3 + 1})
    cli("create", config, "--run", "big")
    cli("submit", "big")
    cli("download", "big")  # every shard completed: one `process` merges all three
    merged = cli.json("process", "big", code=0)["data"]
    assert sorted(merged["merged"]) == ["00001.a1", "00002.a1", "00003.a1"]

    out = read_jsonl(runs_dir / "big" / "output.jsonl")
    assert [r["review_id"] for r in out] == [f"r{i:04d}" for i in range(1, n + 1)]
    assert all(r["verdict"] == f"echo: Review ({r['stars']} stars): {r['text']}" for r in out)
    status = cli.json("status", "big")["data"]
    assert [s["state"] for s in status["shards"]] == ["merged"] * 3


def test_an_index_failure_in_a_merge_worker_reaches_process_whole():
    """A merge worker's error comes back pickled: an IndexFailure keeps its message, hint and kind
    (it was a BrokenProcessPool, and a traceback, before)."""
    failure = pickle.loads(pickle.dumps(IndexFailure("index.sqlite: disk full", hint="free some space", damaged=False)))
    assert (type(failure), failure.message, failure.hint, failure.damaged) == (
        IndexFailure, "index.sqlite: disk full", "free some space", False)
