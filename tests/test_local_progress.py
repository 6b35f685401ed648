"""Long local work tells how far it is: `create` and `estimate` report rows read and shards.

On a terminal the CLI turns the reports into a live counter; piped (as here: CliRunner's
stderr is not a terminal) nothing but the usual summary is printed.
"""

from __future__ import annotations

from conftest import review_rows, write_job

from batchpipe import ops
from batchpipe.ops.create import PROGRESS_EVERY
from batchpipe.ops.estimate import estimate

ROWS = 2 * PROGRESS_EVERY + 500


def big_job(tmp_path):
    return write_job(tmp_path / "job", review_rows(ROWS), limits={"max_requests_per_shard": 1000})


def check_reports(reports: list[tuple[int, int]]) -> None:
    rows = [r for r, _ in reports]
    shards = [s for _, s in reports]
    assert rows == [PROGRESS_EVERY, 2 * PROGRESS_EVERY, ROWS]  # as it goes, and once at the end
    assert shards == sorted(shards) and shards[-1] == 3


def test_create_reports_rows_read_and_shards_written_as_it_goes(tmp_path, runs_dir):
    reports: list[tuple[int, int]] = []
    created = ops.create(big_job(tmp_path), runs_dir=runs_dir, on_progress=lambda r, s: reports.append((r, s)))
    assert created.requests == ROWS and created.shards == 3
    check_reports(reports)


def test_estimate_reports_requests_counted_as_it_goes(tmp_path):
    reports: list[tuple[int, int]] = []
    e = estimate(big_job(tmp_path), tokenizer=False, on_progress=lambda r, s: reports.append((r, s)))
    assert e.requests == ROWS
    check_reports(reports)


def test_piped_create_and_estimate_print_their_summary_and_no_bar(cli, runs_dir, tmp_path):
    config = big_job(tmp_path)
    created = cli("create", config, "--run", "big")
    assert created.stderr == ""
    assert created.stdout.splitlines() == [
        f"created run big: {ROWS} requests in 3 shard(s) at {runs_dir / 'big'}",
        "next: batchpipe submit big   (or: batchpipe run big --wait)",
    ]
    estimated = cli("estimate", config)
    assert "rows read" not in estimated.output and "━" not in estimated.output
    assert estimated.stdout.startswith(f"estimate for {config}")
