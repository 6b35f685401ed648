"""Every name under runs/<run_id>/ (DESIGN.md §2), in one place."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from batchpipe.errors import RunNotFound, UsageError

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_RUNS_DIR = Path("runs")
STEPS_FILE = "steps.json"


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
    # For one step of a multi-step run (runs/<run_id>/steps/<n>-<name>/): runs/<run_id>, whose id
    # is the one the user knows the run by (and types in commands).
    parent: Path | None = field(default=None, compare=False)

    @classmethod
    def of(cls, runs_dir: Path, run_id: str) -> RunPaths:
        return cls(Path(runs_dir) / check_run_id(run_id))

    @classmethod
    def existing(cls, runs_dir: Path, run_id: str) -> RunPaths:
        """The run `run_id`; for a multi-step run, the step it is at now. `<run_id>.<n>-<name>`
        names one step of a multi-step run (a finished one, say, to look at)."""
        paths = cls.of(runs_dir, run_id)
        if paths.steps_file.is_file():
            return paths.current_step()
        if not paths.state.is_file():
            parent, _, step = run_id.rpartition(".")
            one_step = Path(runs_dir) / parent / "steps" / step if parent and step else None
            if one_step is not None and (Path(runs_dir) / parent / STEPS_FILE).is_file() and (one_step / "state.json").is_file():
                return cls(one_step, parent=one_step.parent.parent)
            raise RunNotFound(
                f"no run {run_id!r} in {runs_dir}",
                hint="see `batchpipe list` for the runs there, or pass --runs-dir",
            )
        return paths

    def current_step(self) -> RunPaths:
        """A multi-step run's current step: the last step whose run exists (see ops/steps.py).
        Any other run (or a step already) is itself."""
        root = self.parent if self.parent is not None else self.root
        try:
            names = json.loads((root / STEPS_FILE).read_text(encoding="utf-8"))["steps"]
        except FileNotFoundError:
            return self
        for name in reversed(names):
            if (root / "steps" / name / "state.json").is_file():
                return RunPaths(root / "steps" / name, parent=root)
        return self

    def step_after(self) -> RunPaths | None:
        """For a step of a multi-step run: the next step, if its run exists."""
        if self.parent is None:
            return None
        names = json.loads((self.parent / STEPS_FILE).read_text(encoding="utf-8"))["steps"]
        later = names[names.index(self.root.name) + 1 :] if self.root.name in names else []
        if later and (self.parent / "steps" / later[0] / "state.json").is_file():
            return RunPaths(self.parent / "steps" / later[0], parent=self.parent)
        return None

    @property
    def run_id(self) -> str:
        return self.parent.name if self.parent is not None else self.root.name

    @property
    def runs_dir(self) -> Path:
        """The runs dir this run is in (a step's run: its run's)."""
        return (self.parent if self.parent is not None else self.root).parent

    @property
    def steps_file(self) -> Path:
        """A multi-step run's list of steps (its run dir has this instead of state.json)."""
        return self.root / STEPS_FILE

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
