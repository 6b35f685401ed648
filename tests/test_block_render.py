"""Issue 9: `create` renders the usual JSONL job in blocks, a big input by a worker process per core.

What it writes must be what the row-by-row renderer (render_requests, which `estimate` and every
other job use) makes of the same rows, byte for byte, split into the same shards; and a bad row
deep in a big input must stop create as it always did: its line named, nothing left behind.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from conftest import review_job, write_config

from batchpipe.config import load_config
from batchpipe.ops.create import plan_shards
from batchpipe.pipeline.blocks import PARALLEL_MIN_BYTES
from batchpipe.pipeline.inputs import BLOCK_BYTES
from batchpipe.pipeline.shards import ShardSplit
from batchpipe.pipeline.tokens import counter_for

ROWS = 4_000
FILLER = "a quiet film that earns every minute of its running time, " * 40  # about 2.4 KB a row


def big_rows(n: int = ROWS) -> list[str]:
    """The lines of a big input (over PARALLEL_MIN_BYTES), each one JSON object."""
    return [json.dumps({"review_id": f"r{i:05d}", "stars": i % 5 + 1, "text": f"{i} {FILLER}"}) + "\n"
            for i in range(1, n + 1)]


def big_job(tmp_path: Path, lines: list[str], prefix: bytes = b"", **overrides) -> Path:
    data = tmp_path / "big.jsonl"
    data.write_bytes(prefix + "".join(lines).encode())
    assert data.stat().st_size > max(PARALLEL_MIN_BYTES, 4 * BLOCK_BYTES)  # several blocks, rendered by workers
    return write_config(tmp_path / "big.yaml", review_job(data.name, max_requests_per_shard=700), **overrides)


def shard_lines(run: Path) -> list[list[bytes]]:
    state = json.loads((run / "state.json").read_text())
    return [(run / s["file"]["path"]).read_bytes().splitlines(keepends=True) for s in state["shards"]]


def expected_shards(config: Path) -> list[tuple[list[bytes], int]]:
    """The row-by-row renderer's requests, split by plan_shards: (lines, tokens) of each shard."""
    cfg = load_config(config)
    shards: dict[int, tuple[list[bytes], int]] = {}
    for shard, request, tokens, _ in plan_shards(cfg, counter_for(cfg.model)):
        lines, total = shards.get(shard, ([], 0))
        shards[shard] = ([*lines, request.line], total + tokens)
    return [shards[k] for k in sorted(shards)]


def test_a_big_input_makes_the_shards_the_row_by_row_renderer_makes(tmp_path, cli, runs_dir):
    lines = big_rows()
    # blank lines (empty, and whitespace only) here and there, around block boundaries too: they
    # are skipped but counted, so rows and lines differ; without input.id a row's number is its id
    for at in (0, 1, 900, 901, 1500, 2999, len(lines)):
        lines.insert(at, ["\n", "  \r\n", " \t \n"][at % 3])
    config = big_job(tmp_path, lines, prefix=b"\xef\xbb\xbf", input={"path": "big.jsonl"},
                     limits={"max_requests_per_shard": 700, "enqueued_tokens": 250_000})
    cli("create", config, "--run", "big")
    run = runs_dir / "big"
    expected = expected_shards(config)
    assert shard_lines(run) == [lines for lines, _ in expected]
    state = json.loads((run / "state.json").read_text())
    assert [s["est_tokens"] for s in state["shards"]] == [tokens for _, tokens in expected]
    assert state["run"]["requests"] == ROWS and len(state["shards"]) > ROWS // 700  # some cut by tokens
    first = json.loads(shard_lines(run)[0][0])
    assert first["custom_id"] == "1"
    assert {p.name for p in run.iterdir()} - {".lock"} == {
        "config.yaml", "events.jsonl", "index.sqlite", "results", "shards", "state.json"}  # no worker's file left


def test_a_bad_row_deep_in_a_big_input_names_its_line_and_leaves_no_run(tmp_path, cli, runs_dir):
    lines = big_rows()
    lines[3210] = '{"review_id": "r03211", "stars": 2, "text": "cut short\n'
    result = cli("create", big_job(tmp_path, lines), "--run", "big", code=2)
    assert "big.jsonl line 3211" in result.output
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_a_missing_field_deep_in_a_big_input_names_row_and_field(tmp_path, cli):
    lines = big_rows()
    lines[2500] = json.dumps({"review_id": "r02501", "stars": 3}) + "\n"
    result = cli("create", big_job(tmp_path, lines), "--run", "big", code=2)
    assert "big.jsonl line 2501 (row id r02501): field 'text' used by prompt.user" in result.output


def test_an_id_seen_in_an_earlier_block_is_a_duplicate(tmp_path, cli):
    lines = big_rows()
    lines[3500] = lines[3500].replace('"r03501"', '"r00007"')
    result = cli("create", big_job(tmp_path, lines), "--run", "big", code=2)
    assert "big.jsonl line 3501: id 'r00007'" in result.output and "first on line 7" in result.output


def test_a_request_too_big_for_a_shard_deep_in_a_big_input_is_refused(tmp_path, cli):
    lines = big_rows()
    lines[3900] = json.dumps({"review_id": "r03901", "stars": 1, "text": FILLER * 20}) + "\n"
    config = big_job(tmp_path, lines, limits={"max_bytes_per_shard": 20_000})
    result = cli("create", config, "--run", "big", code=2)
    assert "big.jsonl line 3901 (row id r03901): the request is" in result.output
    assert "more than limits.max_bytes_per_shard (20000)" in result.output


def test_shard_split_cuts_a_block_where_it_cuts_a_request_at_a_time():
    """ShardSplit.starts (create's block pass) and ShardSplit.place (every other pass) make the same
    shards, whatever the limits and however the requests fall into blocks."""
    rng = random.Random(5)
    for _ in range(2000):
        limits = (rng.randint(1, 8), rng.randint(10, 60), rng.choice([None, rng.randint(5, 40)]))
        one_by_one, by_block = ShardSplit(*limits), ShardSplit(*limits)
        for _ in range(rng.randint(1, 4)):
            block = [(rng.randint(1, 10), rng.randint(0, 5)) for _ in range(rng.randint(0, 20))]
            expected = []
            for i, (size, tokens) in enumerate(block):
                before = one_by_one.index
                if one_by_one.place(size, tokens) != before:
                    expected.append(i)
            assert by_block.starts([s for s, _ in block], [t for _, t in block]) == expected
            assert by_block.index == one_by_one.index
