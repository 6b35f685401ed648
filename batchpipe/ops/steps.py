"""Multi-step runs: a job with `steps:` runs them one after another, each as a run of its own.

A multi-step run is a run dir whose steps are complete runs under it (the usual ledger, shards,
results, index and config snapshot each), so every guarantee of a run holds per step: each
request is paid once, a kill anywhere resumes, `recover` repairs. Step n+1 is created once step
n's output is written, from the rows of that output that did not fail:

    runs/<id>/config.yaml                 the whole job, every step resolved
    runs/<id>/steps.json                  the steps' dir names in order; what the run was made from
    runs/<id>/steps/1-caption/            step 1's run (its input: the job's input)
    runs/<id>/steps/2-qna.input.jsonl     step 2's input: step 1's output rows that did not fail
    runs/<id>/steps/2-qna.yaml            step 2 as a one-step job reading that input
    runs/<id>/steps/2-qna/                step 2's run
    runs/<id>/output.jsonl                the final output, once the last step is done
    runs/<id>/output.json                 which last-step output it was made from

The current step is the last one whose run exists (paths.RunPaths.current_step): the commands
given the run's id work on it. Making the next step is idempotent at every point: its input and
config files are rewritten with the same bytes, and its run is published by one rename (create),
so a kill before the rename leaves nothing that counts, and after it the next pass finds the step.

A row that failed in a step is not sent to the later ones: it keeps its error (`<key>_error`)
and the answers before it, and is in the final output at its place. If no row is left, the later
steps are skipped and the final output is written at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchpipe import crash, fsio
from batchpipe.config import InputConfig, JobConfig, snapshot_yaml, step_config
from batchpipe.errors import InputError, LedgerError, RunExists
from batchpipe.ledger.store import Ledger
from batchpipe.ops.common import Progress, run_config, run_cost
from batchpipe.paths import STEPS_FILE, RunPaths, check_run_id
from batchpipe.pipeline.inputs import display_path, dumps_row, iter_rows
from batchpipe.pipeline.requests import IMAGE_HINT, image_problem
from batchpipe.pipeline.template import MissingField, compile_template

FINAL_RECORD = "output.json"
_MISSING = object()
# Stands in for an earlier step's answer while the rows are checked before anything is paid.
_SOME_ANSWER = "answer"


def step_dir_names(cfg: JobConfig) -> list[str]:
    return [f"{i}-{step.name}" for i, step in enumerate(cfg.steps, start=1)]


def manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / STEPS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LedgerError(f"{root / STEPS_FILE} cannot be read ({exc})",
                          hint=f"run `batchpipe recover {root.name}`") from None


# --------------------------------------------------------------------------------------
# create


def create_steps(cfg: JobConfig, *, runs_dir: Path, run_id: str | None, on_progress=None):
    """Create a multi-step run (or find it): its dir, its config, and step 1's run, published together."""
    from batchpipe.ops.create import Created, create, default_run_id

    snapshot = snapshot_yaml(cfg).encode()
    config_sha = hashlib.sha256(snapshot).hexdigest()
    _, input_sha = fsio.sha256_file(cfg.input.path)
    if run_id:
        run_id = check_run_id(run_id)
    else:
        run_id = default_run_id(cfg.source, hashlib.sha256(snapshot + input_sha.encode()).hexdigest())
    paths = RunPaths.of(runs_dir, run_id)
    if paths.root.exists():
        return _existing(paths, config_sha, input_sha, Created)
    _check_rows(cfg)  # a field step 3 needs must be missing before step 1 is paid for, not after
    cleaned = [f"removed {d.path.name} ({d.bytes:,} bytes), left by an interrupted create"
               for d in fsio.remove_stale_build_dirs(Path(runs_dir))]
    with fsio.building_dir(Path(runs_dir), run_id) as tmp:
        fsio.write_bytes_atomic(tmp / "config.yaml", snapshot)
        first = _create_step(tmp, cfg, 0, cfg.input, run_id, cfg.limits.budget_usd, create, on_progress)
        step_ledger = Ledger.load(RunPaths(first.root))
        if step_ledger.run.input["sha256"] != input_sha:
            raise InputError(
                f"{display_path(cfg.input.path)}: the file changed while the run was being created",
                hint="wait until whatever writes the file has finished, then run create again",
            )
        record = {"run": run_id, "created_at": time.time(), "config_sha256": config_sha,
                  "input": {"path": str(cfg.input.path), "sha256": input_sha}, "steps": step_dir_names(cfg)}
        fsio.write_bytes_atomic(tmp / STEPS_FILE, json.dumps(record, indent=1).encode() + b"\n")
        crash.point("run_create:before_publish")
        try:
            fsio.publish_dir(tmp, paths.root)
        except OSError:
            raise RunExists(f"{paths.root} appeared while this run was being created", hint="run create again") from None
    return Created(run_id, paths.root, True, first.shards, first.requests, first.notes, cleaned + first.cleaned)


def _existing(paths: RunPaths, config_sha: str, input_sha: str, created_cls):
    if not paths.steps_file.is_file():
        raise RunExists(f"{paths.root} exists but is not a multi-step batchpipe run",
                        hint="choose another --run id or remove that directory")
    record = manifest(paths.root)
    if record["config_sha256"] != config_sha or record["input"]["sha256"] != input_sha:
        raise RunExists(
            f"run {paths.run_id!r} already exists with a different config or input",
            hint="choose another --run id, or leave --run out to get an id derived from the config and input",
        )
    ledger = Ledger.load(paths.current_step())
    return created_cls(paths.run_id, paths.root, False, len(ledger.shards), ledger.run.requests)


def _create_step(root: Path, cfg: JobConfig, index: int, input_cfg: InputConfig, run_id: str,
                 budget: float | None, create, on_progress=None):
    """Step `index`'s run under `root`/steps, from its config file (written first, the same bytes every time)."""
    name = step_dir_names(cfg)[index]
    one = replace(step_config(cfg, index, input_cfg), limits=replace(cfg.limits, budget_usd=budget))
    config_file = root / "steps" / f"{name}.yaml"
    config_file.parent.mkdir(exist_ok=True)
    fsio.write_bytes_atomic(config_file, snapshot_yaml(one).encode())
    # The step's tags (upload names, batch metadata) say `<run>.<n>-<name>`: its batches are told
    # from the other steps' at the service, and `list --remote` names the step.
    return create(config_file, runs_dir=root / "steps", run_id=name, tag_id=f"{run_id}.{name}",
                  on_progress=on_progress)


def _check_rows(cfg: JobConfig) -> None:
    """Every row has the fields every step's templates use (earlier answers stand in as text),
    and every local image file a step names is there: before anything is paid for."""
    compiled = []
    for i, step in enumerate(cfg.steps):
        p = step.prompt
        texts = [("prompt.system", p.system), ("prompt.user", p.user)]
        texts += [(f"prompt.history.{n}.{part}", getattr(t, part)) for n, t in enumerate(p.history)
                  for part in ("user", "assistant")]
        images = [("prompt.images", t) for t in p.images]
        images += [(f"prompt.history.{n}.images", im) for n, t in enumerate(p.history) for im in t.images]
        compiled.append(([(w, compile_template(t)) for w, t in texts if t is not None],
                         [(w, compile_template(t)) for w, t in images]))
    for row in iter_rows(cfg.input):
        data = dict(row.data)
        for i, (step, (texts, images)) in enumerate(zip(cfg.steps, compiled)):
            where = f"{display_path(cfg.input.path)} line {row.line_no}"
            key = step.output.key
            if taken := [f for f in (key, f"{key}_error", f"{key}_attempts") if f in row.data]:
                raise InputError(
                    f"{where}: the row already has a field '{taken[0]}', which step {i + 1} ({step.name}) writes "
                    f"(its output.key is '{key}')",
                    hint=f"choose another output.key for the step in {display_path(cfg.source)}, or rename the "
                    "field in the input",
                )
            for what, template in [*texts, *images]:
                try:
                    value = template.render(data)
                except MissingField as exc:
                    raise InputError(
                        f"{where}: field '{exc.field}' used by step {i + 1} ({step.name}) {what} {exc.reason}",
                        hint=f"add the field to the row, or change the placeholder in {display_path(cfg.source)}; "
                        "a step can use the output.key of the steps before it",
                    ) from None
                if (what, template) in images and (problem := image_problem(step.prompt.images_dir, value)):
                    raise InputError(f"{where}: step {i + 1} ({step.name}) {what}: {problem}", hint=IMAGE_HINT)
            data[step.output.key] = _SOME_ANSWER
            data[f"{step.output.key}_attempts"] = 1


# --------------------------------------------------------------------------------------
# moving on


def advance(paths: RunPaths) -> RunPaths:
    """The step to work on now. Once the current step's output is written: the next step's run is
    created (from the rows that did not fail), or after the last step the final output written.
    Safe to call at any time, from any command, again after a kill anywhere."""
    if paths.parent is None:
        return paths
    root = paths.parent
    with fsio.run_lock(root):
        # Temp files of a write (a step's input or config, the final output) killed mid-way: only
        # this function writes them, under this lock, so any left are stale.
        for stray in [p for d in (root, root / "steps") for p in d.glob(f".*{fsio.TEMP_SUFFIX}") if p.is_file()]:
            stray.unlink()
        current = paths.current_step()
        ledger = Ledger.load(current)
        if ledger.run.hold or not Progress.of(ledger).done:  # a held run (cancel) does not move on either
            return current
        cfg = run_config(RunPaths(root))
        names = manifest(root)["steps"]
        k = names.index(current.root.name)
        if k + 1 < len(cfg.steps):
            input_file = (root / "steps" / f"{names[k + 1]}.input.jsonl").absolute()  # the step's config names it
            kept = [0]
            fsio.write_lines_atomic(input_file, _surviving_rows(current, cfg.steps[k].output.key, kept))
            if kept[0]:
                crash.point("steps:after_input")
                from batchpipe.ops.create import create

                _create_step(root, cfg, k + 1, InputConfig(input_file, "jsonl", cfg.input.id), root.name,
                             _budget_left(cfg, root, names[: k + 1]), create)
                crash.point("steps:after_create")
                return current.current_step()
            input_file.unlink()  # every row failed: nothing for the later steps to do
            fsio.fsync_dir(input_file.parent)
        _write_final(root, cfg, names[: k + 1])
    return current


def _surviving_rows(paths: RunPaths, key: str, kept: list[int]) -> Iterator[bytes]:
    for row in iter_rows(InputConfig(paths.output, "jsonl")):
        if f"{key}_error" not in row.data:
            kept[0] += 1
            yield dumps_row(row.data)


def _budget_left(cfg: JobConfig, root: Path, done: list[str]) -> float | None:
    """limits.budget_usd is the whole job's: a step gets what the steps before it left. (A step
    with nothing left holds its shards back, as any run over its budget does.)"""
    if cfg.limits.budget_usd is None:
        return None
    spent = sum(run_cost(Ledger.load(RunPaths(root / "steps" / name))).usd or 0.0 for name in done)
    return max(round(cfg.limits.budget_usd - spent, 9), 1e-9)


def _write_final(root: Path, cfg: JobConfig, names: list[str]) -> None:
    """The final output: every row at its place, from the last step it reached (written once per
    last-step output: `process --retry-failed` on the last step makes it again)."""
    last = Ledger.load(RunPaths(root / "steps" / names[-1])).run.output
    source = {"steps": names, "last_output_sha256": last.sha256 if last else None}
    final, record = root / "output.jsonl", root / FINAL_RECORD
    try:
        seen = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        seen = None
    if (seen is not None and seen.get("source") == source and "result_counts" in seen and final.is_file()
            and final.stat().st_size == seen["bytes"]):
        return
    keys = [step.output.key for step in cfg.steps[: len(names)]]
    counts: dict[str, Any] = {"ok": 0, "failed": 0, "failed_by_step": dict.fromkeys(names, 0)}
    rows = _final_rows([root / "steps" / n / "output.jsonl" for n in names], keys, counts)
    size, sha = fsio.write_lines_atomic(final, rows)
    crash.point("steps:after_output")
    fsio.write_bytes_atomic(record, json.dumps({"source": source, "bytes": size, "sha256": sha, "result_counts": counts})
                            .encode() + b"\n")


def final_counts(paths: RunPaths) -> dict[str, int] | None:
    """A multi-step run's rows answered by every step (ok) and failed in some step, once its final output is written."""
    if paths.parent is None:
        return None
    try:
        return json.loads((paths.parent / FINAL_RECORD).read_text(encoding="utf-8"))["result_counts"]
    except (OSError, ValueError, KeyError):
        return None


def _final_rows(outputs: list[Path], keys: list[str], counts: dict[str, int]) -> Iterator[bytes]:
    """Walk step 1's output; a row that did not fail there is the next row of step 2's output, and so on:
    each step's input is the previous output's rows that did not fail, in order, one output row each."""
    later = [iter_rows(InputConfig(path, "jsonl")) for path in outputs[1:]]
    for row in iter_rows(InputConfig(outputs[0], "jsonl")):
        data, step = row.data, 0
        while f"{keys[step]}_error" not in data and step + 1 < len(outputs):
            step += 1
            following = next(later[step - 1], None)
            # The row of the next step must be this one with more fields: never an answer on the wrong row.
            if following is None or any(following.data.get(k, _MISSING) != v for k, v in data.items()):
                where = "has fewer rows than" if following is None else f"line {following.line_no} does not match"
                raise LedgerError(f"{display_path(outputs[step])} {where} the rows step {step} passed on to it",
                                  hint="a step's output must hold one row per input row, in order")
            data = following.data
        if f"{keys[step]}_error" in data:
            counts["failed"] += 1
            counts["failed_by_step"][outputs[step].parent.name] += 1
        else:
            counts["ok"] += 1
        yield dumps_row(data)
    for step, rest in enumerate(later, start=2):
        if next(rest, None) is not None:
            raise LedgerError(f"step {step}'s output has more rows than the step before it passed on to it",
                              hint="a step's output must hold one row per input row, in order")


# --------------------------------------------------------------------------------------
# status


def describe_steps(paths: RunPaths) -> dict[str, Any]:
    """For a step of a multi-step run: the run's id, its steps and which it is at, and whether the
    whole run is done (its final output written). Empty for a one-step run."""
    if paths.parent is None:
        return {}
    root = paths.parent
    cfg_steps = manifest(root)["steps"]
    record = root / FINAL_RECORD
    done = record.is_file() and (root / "output.jsonl").is_file()
    steps = []
    for n, name in enumerate(cfg_steps, start=1):
        step_paths = RunPaths(root / "steps" / name, parent=root)
        if not step_paths.state.is_file():
            state = "skipped" if done else "waiting"
        else:
            state = "done" if Progress.of(Ledger.load(step_paths)).done else "running"
        steps.append({"step": n, "name": name.split("-", 1)[1], "run": f"{root.name}.{name}", "state": state})
    at = cfg_steps.index(paths.root.name) + 1 if paths.root.name in cfg_steps else None
    return {"run": root.name, "step": {"at": at, "of": len(cfg_steps), "name": paths.root.name.split("-", 1)[1],
                                       "steps": steps},
            "done": done, "output": str(root / "output.jsonl") if done else None,
            **({"result_counts": counts} if (counts := final_counts(paths)) is not None else {})}


def count_final(paths: RunPaths, processed: Any) -> None:
    """A multi-step run's last step is done: what it says of its rows becomes what the run says of all."""
    counts = final_counts(paths) if processed.done else None
    if counts is not None:
        processed.ok, processed.failed = counts["ok"], counts["failed"]
        processed.written = counts["ok"] + counts["failed"]  # one line per row of the input


def failure_notes(paths: RunPaths) -> list[str] | None:
    """What a person should know about a finished multi-step run's failed rows, step by step, and
    what to do (None: not a finished multi-step run)."""
    counts = final_counts(paths)
    if counts is None:
        return None
    cfg = run_config(RunPaths(paths.parent))
    names = manifest(paths.parent)["steps"]
    notes = []
    for n, (name, step) in enumerate(zip(names, cfg.steps), start=1):
        failed = counts.get("failed_by_step", {}).get(name, 0)
        if not failed:
            continue
        said = f"{failed} row(s) failed in step {n} ({step.name}; the error is under {step.output.key}_error)"
        if name == paths.root.name:
            notes.append(f"{said}: `batchpipe process {paths.run_id} --retry-failed` sends them again")
        else:
            notes.append(f"{said}: they were not sent to the later steps; to try them again, run the job "
                         "on those rows as a new run")
    return notes
