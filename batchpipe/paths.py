"""Every name under runs/<run_id>/ (DESIGN.md §2), in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from batchpipe.errors import RunNotFound, UsageError

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_RUNS_DIR = Path("runs")


def runs_dir_from_env() -> Path:
    return Path(os.environ.get("BATCHPIPE_RUNS_DIR") or DEFAULT_RUNS_DIR)


def check_run_id(run_id: str) -> str:
    """Refuse a run id that could escape runs/ or confuse a shell, before touching disk."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise UsageError(
            f"invalid run id {run_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            hint="for example: --run reviews-2026-11",
        )
    return run_id


@dataclass(frozen=True)
class RunPaths:
    root: Path  # runs/<run_id>

    @classmethod
    def of(cls, runs_dir: Path, run_id: str) -> RunPaths:
        return cls(Path(runs_dir) / check_run_id(run_id))

    @classmethod
    def existing(cls, runs_dir: Path, run_id: str) -> RunPaths:
        paths = cls.of(runs_dir, run_id)
        if not paths.state.is_file():
            raise RunNotFound(
                f"no run {run_id!r} in {runs_dir}",
                hint="see `batchpipe list` for the runs there, or pass --runs-dir",
            )
        return paths

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def state_prev(self) -> Path:
        """The ledger as it was before its last commit: what `recover` restores if state.json is damaged."""
        return self.root / "state.json.prev"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def index(self) -> Path:
        return self.root / "index.sqlite"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def output(self) -> Path:
        return self.root / "output.jsonl"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def shard_file(self, shard_id: str) -> Path:
        return self.shards_dir / f"{shard_id}.jsonl"

    def journal(self, shard_id: str) -> Path:
        """The answers of a shard sent in sync mode, one line each as they arrive (ops/sync.py)."""
        return self.results_dir / f"{shard_id}.journal.jsonl"

    def result_file(self, shard_id: str, kind: str) -> Path:
        """kind is 'output' or 'errors' (the provider's output and error files)."""
        return self.results_dir / f"{shard_id}.{kind}.jsonl"
