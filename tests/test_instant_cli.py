"""Issue 9, "an instant CLI": `--help`, `list` and the status of a finished run load only what they
use (never the `openai` client), and `status` asks the service about submitted shards only.

Checked by what a process loaded and what the server saw, never by timing (the figures are in the
README's Performance section, from `scripts/bench.py --cli`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import review_rows, write_job

from batchpipe.cli import app

# Run the real `batchpipe` several times in one fresh interpreter, then report the exit codes and
# every module run by then (a module imported lazily and never used is not): what none of the runs
# loaded is absent from the report.
PROBE = """
import json, runpy, sys
report, runs = sys.argv[1], json.loads(sys.argv[2])
codes = []
for args in runs:
    sys.argv = ["batchpipe", *args]
    try:
        runpy.run_module("batchpipe", run_name="__main__")
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code or 0)
with open(report, "w") as f:
    json.dump({"codes": codes, "modules": sorted(name for name, module in sys.modules.items()
                                                 if type(module).__name__ != "_LazyModule")}, f)
"""

# What a command that sends nothing and draws no bar has no use for.
CLIENT = {"openai", "httpx"}
BARS = {"rich.progress", "rich.live"}
STEPS = {f"batchpipe.ops.{name}" for name in ("create", "submit", "download", "process", "sync", "recover", "run")}


def loaded(tmp_path: Path, runs: list[list[str]]) -> set[str]:
    report = tmp_path / "probe.json"
    subprocess.run([sys.executable, "-c", PROBE, str(report), json.dumps(runs)], env=os.environ.copy(),
                   capture_output=True, check=True, timeout=120)
    data = json.loads(report.read_text())
    assert data["codes"] == [0] * len(runs), list(zip(runs, data["codes"]))
    return set(data["modules"])


def test_help_of_every_command_loads_nothing_it_does_not_show(tmp_path):
    runs = [["--help"]] + [[c.name, "--help"] for c in app.registered_commands]
    modules = loaded(tmp_path, runs)
    # help is typer's and rich's: batchpipe's own output module, the config and the ledger wait for a command
    unused = CLIENT | BARS | STEPS | {"batchpipe.render", "batchpipe.config", "yaml", "batchpipe.ledger.store"}
    assert not unused & modules, sorted(unused & modules)


def test_list_and_status_of_a_finished_run_load_neither_the_client_nor_bars(tmp_path, cli, emulator):
    run_id = cli.json("run", write_job(tmp_path / "job"), "--wait", "--poll-interval", "0")["data"]["run"]
    assert cli.json("status", run_id)["data"]["done"]
    before = emulator.counts["requests"]
    modules = loaded(tmp_path, [["status", run_id], ["status", run_id, "--json"], ["status", "--all"],
                                ["list"], ["list", "--json"]])
    assert not (CLIENT | BARS | STEPS) & modules, sorted((CLIENT | BARS | STEPS) & modules)
    assert "batchpipe.render" in modules  # (the probe does see what was loaded)
    assert emulator.counts["requests"] == before  # nothing was asked of the service


def test_status_asks_only_about_the_running_batches(tmp_path, cli, emulator, runs_dir):
    """Some shards merged, some submitted: one call per submitted shard (at most one more), none
    for the merged ones; once every batch has finished, none at all, downloaded or not."""
    run_id = cli.json("create", write_job(tmp_path / "job", review_rows(30)))["data"]["run"]  # 6 shards of 5
    cli("submit", run_id, "--canary", "5")  # the canary shard goes alone,
    cli("run", run_id, code=3)  # is answered and merged,
    cli("submit", run_id)  # and then the other shards are submitted
    ledger = json.loads((runs_dir / run_id / "state.json").read_text())  # (read as is: status would refresh it)
    states = [s["state"] for s in ledger["shards"]]
    assert states == ["merged"] + ["submitted"] * 5, states
    before = emulator.counts["requests"]
    shards = cli.json("status", run_id)["data"]["shards"]
    assert emulator.counts["requests"] - before <= 5 + 1
    assert [s["remote_status"] for s in shards] == ["completed"] * 6  # each was asked about (and has finished)
    # Finished, not yet downloaded: nothing more to ask, and no client to load for it.
    for args in (["status", run_id], ["status", run_id, "--json"], ["status", "--all"]):
        before = emulator.counts["requests"]
        cli(*args)
        assert emulator.counts["requests"] == before, args
    modules = loaded(tmp_path, [["status", run_id], ["status", run_id, "--json"]])
    assert not CLIENT & modules, sorted(CLIENT & modules)
    assert cli.json("status", run_id)["data"]["refreshed"] is True
