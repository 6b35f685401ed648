"""The `batchpipe` command: one short function per command (parse -> call ops -> render).

Errors from the library arrive as BatchpipeError and leave as a message, a hint and a
documented exit code (README "Exit codes"); BATCHPIPE_DEBUG=1 shows the traceback too.

`batchpipe --help` should come back at once, so this module loads little (issue 9): the ops a
command runs are imported when it runs (batchpipe.ops is lazy), and so is batchpipe.render (the
price table, orjson), which help never uses. Annotations are evaluated as the module is read, not
kept as strings (no `from __future__ import annotations`): typer reads every command's
annotations, and compiling and evaluating them from strings (twice: in `command` and in typer)
was about 7% of --help.
"""

import atexit
import contextlib
import functools
import importlib.util
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

# typer ships its own copy of click; its parse errors are these classes
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError
from typer._coercion import RuntimeParam, build_runtime_param
from typer._param_types import coerce_cli_path
from typer.core import TyperCommand, TyperGroup

from batchpipe import __version__, ops
from batchpipe.errors import BatchpipeError, ExitCode, MissingApiKey, UsageError
from batchpipe.paths import RunPaths, runs_dir_from_env


def _lazy_module(name: str):
    """The module `name`, run on first use of one of its attributes (importlib's LazyLoader)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render = _lazy_module("batchpipe.render")  # `--help` draws nothing of ours: not loaded until a command prints


class _Coercion(RuntimeParam):
    """typer's coercion of one parameter's value, without pydantic where it has nothing to check (issue 9).

    typer 0.29 turns every value, a missing one included, with a pydantic TypeAdapter built when
    the command runs: that imported pydantic (about 0.1 s) into `status`, `list` and `CMD --help`,
    which have no other use for it. Here a missing value stays missing (typer's RuntimeParam.coerce);
    text for a `str` is that text; text for a `Path` is `Path(text)`, then typer's own path checks;
    a number of the right type within the option's bounds (a default) is itself: what the adapters
    give for these, unchanged. Any other value (a number typed in, a list) goes to typer's own
    coercion, so its checks and messages are typer's. (typer is pinned below 0.30: RuntimeParam and
    coerce_cli_path are its internals; tests/test_instant_cli.py fails if this stops working.)"""

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and self.annotation is str:
            return value
        if isinstance(value, str) and self.annotation is Path:
            return coerce_cli_path(Path(value), self.parameter_info, path_type=Path, param=param, ctx=ctx)
        if self.annotation in (int, float) and type(value) is self.annotation and self._in_bounds(value):  # a default
            return value
        return build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)

    def _in_bounds(self, number: float) -> bool:
        low, high = self.parameter_info.min, self.parameter_info.max
        return (low is None or number >= low) and (high is None or number <= high)


def _plain_coercion(params: list[Any]) -> list[Any]:
    """`params`, each of typer's given a _Coercion unless it has its coercion already (or is a file,
    or has a parser or a path_type of its own: typer's own coercion then, as it is)."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or param._runtime_param is not None or descriptor.file_annotation is not None:
            continue
        info = descriptor.parameter_info
        if info.parser is None and info.path_type is None:
            param._runtime_param = _Coercion(parameter_info=info, annotation=descriptor.annotation)
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_coercion(super().get_params(ctx))  # its own, and --help


class _Group(TyperGroup):
    """The command group. With `--json` on the line, a usage error (unknown option, missing
    argument, bad value) is the same JSON envelope on stdout as any other error, exit 2."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_coercion(super().get_params(ctx))  # (not in __init__: typer adds some after it)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        json_wanted = "--json" in args
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except ClickUsageError as exc:  # a global option
            raise _usage_error(exc, json_wanted) from None
        ctx.meta["json_wanted"] = json_wanted
        return ctx

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickUsageError as exc:  # the command's name, or its own options and arguments
            raise _usage_error(exc, ctx.meta.get("json_wanted", False)) from None


def _usage_error(exc: ClickUsageError, json_wanted: bool) -> BaseException:
    if not json_wanted or isinstance(exc, NoArgsIsHelpError):
        return exc  # typer shows it (usage, message, exit 2)
    where = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent is not None else None
    hint = f"see `batchpipe {where} --help`" if where else "see `batchpipe --help`"
    return typer.Exit(render.error(where or "batchpipe", UsageError(exc.format_message(), hint=hint), as_json=True))


app = typer.Typer(
    cls=_Group,
    name="batchpipe",
    help="Run large LLM jobs through batch APIs as a resumable, crash-safe pipeline.\n\n"
    "A run lives in RUNS_DIR/RUN_ID/; every command is safe to repeat and to run after a crash.\n\n"
    "Quick start: `batchpipe demo`, then `batchpipe run configs/reviews.yaml --wait`.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON envelope on stdout.")]
RunArg = Annotated[str, typer.Argument(help="The run id (see `batchpipe list`).", show_default=False)]


def _runs_dir(ctx: typer.Context) -> Path:
    return ctx.obj["runs_dir"]


# --runs-dir is a global option (before the command); commands that use the runs dir take it
# after their name too, with the same meaning (the later one wins).
RunsDirAfterOpt = Annotated[
    Path | None, typer.Option("--runs-dir", help="Where runs live (as before the command).", show_default=False)
]


def command(name: str | None = None) -> Callable:
    """Register a command whose BatchpipeErrors become a message + exit code, never a traceback.

    A command that takes the context (it uses the runs dir) also accepts `--runs-dir` after its name.
    """

    def decorate(fn: Callable) -> Callable:
        cmd = name or fn.__name__.rstrip("_")
        signature = inspect.signature(fn, eval_str=True)
        takes_runs_dir = "ctx" in signature.parameters

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            runs_dir_after = kwargs.pop("runs_dir_after", None)
            if runs_dir_after is not None:
                kwargs["ctx"].obj["runs_dir"] = runs_dir_after
            try:
                return fn(*args, **kwargs)
            except (BatchpipeError, KeyboardInterrupt, OSError) as exc:
                if os.environ.get("BATCHPIPE_DEBUG"):
                    raise
                if isinstance(exc, OSError):  # disk full, permission denied...: the system's words, no traceback
                    exc = BatchpipeError(
                        f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                        hint="fix that and run the same command again (BATCHPIPE_DEBUG=1 shows where it happened)",
                    )
                raise typer.Exit(render.error(cmd, exc, as_json=bool(kwargs.get("as_json")))) from None

        if takes_runs_dir:
            extra = inspect.Parameter("runs_dir_after", inspect.Parameter.KEYWORD_ONLY, default=None,
                                      annotation=RunsDirAfterOpt)
            wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])
            wrapper.__annotations__ = {**fn.__annotations__, "runs_dir_after": RunsDirAfterOpt}
        return app.command(cmd, cls=_Command)(wrapper)

    return decorate


def _provider(paths, optional: bool = False):
    try:
        return ops.provider_for(paths)
    except MissingApiKey:
        if optional:
            return None
        raise


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"batchpipe {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    runs_dir: Annotated[
        Path | None,
        typer.Option("--runs-dir", envvar="BATCHPIPE_RUNS_DIR", help="Where runs live.", show_default="./runs"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", "-V", help="Show the version and exit.", is_eager=True, callback=_show_version)
    ] = False,
) -> None:
    ctx.obj = {"runs_dir": runs_dir or runs_dir_from_env()}


CREATING = "creating: {rows:,} rows read, {shards:,} shard(s) written"


@command()
def create(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="The job config (YAML).", show_default=False)],
    run_id: Annotated[str | None, typer.Option("--run", help="Run id; default: `<config name>-<hash of config and input>`.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a job config and its input, render the requests and split them into shards.

    Nothing is sent anywhere. Creating the same job again finds the existing run.

    Example: `batchpipe create configs/reviews.yaml --run reviews-nov`
    """
    with render.counter(CREATING) as update:
        c = ops.create(config, runs_dir=_runs_dir(ctx), run_id=run_id, on_progress=update)
    data = {"run": c.run_id, "path": str(c.root), "created": c.created, "shards": c.shards, "requests": c.requests}
    if c.notes:
        data["warnings"] = list(c.notes)
    data |= {"cleaned": c.cleaned} if c.cleaned else {}  # killed creates' build dirs removed on the way
    if as_json:
        return render.envelope("create", data)
    for note in c.cleaned:
        render.line(note)
    verb = "created" if c.created else "already exists:"
    render.line(f"{verb} run {c.run_id}: {c.requests} requests in {c.shards} shard(s) at {c.root}")
    for note in c.notes:
        render.warn(note)
    render.line(f"next: batchpipe submit {c.run_id}   (or: batchpipe run {c.run_id} --wait)")


BudgetOpt = Annotated[
    float | None, typer.Option("--budget", help="Set the run's budget in USD (replaces limits.budget_usd).", min=0.0)
]
CanaryOpt = Annotated[
    int | None,
    typer.Option("--canary", help="Send the first N requests alone first; the rest wait for them to succeed.", min=1),
]


@command()
def submit(
    ctx: typer.Context, run: RunArg, budget: BudgetOpt = None, canary: CanaryOpt = None, as_json: JsonOpt = False
) -> None:
    """Upload prepared shards and create their batches, each exactly once.

    Never past the budget (limits.budget_usd, or --budget): a shard whose worst case would take
    the run over it is held back and named. With limits.enqueued_tokens, batches are created
    only while the provider's queue has room. With --canary N (before the first submit), the
    first N requests go alone and the rest wait until every one of them is answered; if any
    fails, the run is held. Exits 5 if the budget holds shards back or a canary failed.

    Examples: `batchpipe submit reviews-nov --budget 40` · `batchpipe submit reviews-nov --canary 20`
    """
    paths = ops.run_paths(_runs_dir(ctx), run)
    s = ops.submit(paths, _provider(paths), ops.SubmitOptions(budget_usd=budget, canary=canary))
    code = ExitCode.ATTENTION if s.over_budget or s.held or s.too_big else ExitCode.OK
    if as_json:
        render.envelope("submit", {"run": run, "uploaded": s.uploaded, "submitted": s.submitted, "notes": s.notes,
                                   "over_budget": s.over_budget, "queued": s.queued, "too_big": s.too_big,
                                   "handed_off": s.handed_off}, int(code))
        raise typer.Exit(int(code))
    for note in s.notes + s.over_budget + s.too_big + s.queued + ([f"held: {s.held}"] if s.held else []):
        render.warn(note)
    if s.handed_off:
        render.warn(_handoff_note(run, s.handed_off))
    if s.submitted:
        render.line(f"submitted {len(s.submitted)} batch(es) for run {run}: {', '.join(s.submitted)}")
    elif s.handed_off and not (s.over_budget or s.queued):
        render.line(f"nothing submitted: the shards of run {run} without a batch are exported, for you to upload")
    elif not (s.over_budget or s.queued):
        render.line(f"nothing to submit: every shard of run {run} already has its batch")
    raise typer.Exit(int(code))


@command()
def status(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Argument(help="The run id (see `batchpipe list`).", show_default=False)] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Every run in the runs dir.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Refresh the status of the run's batches and show them, shard by shard.

    Examples: `batchpipe status reviews-nov --json` · `batchpipe status --all`
    """
    if all_runs == (run is not None):
        raise UsageError("give a run id or --all (not both)")
    runs = [run] if run else [s.run_id for s in ops.list_runs(_runs_dir(ctx)) if s.problem is None]
    reports = []
    for run_id in runs:
        paths = ops.run_paths(_runs_dir(ctx), run_id)
        st = ops.status(paths, functools.partial(_provider, paths, optional=True))  # opened only if needed
        reports.append((st, ops.describe(st.ledger) | {"refreshed": st.refreshed, "note": st.note}
                        | ops.describe_steps(paths)))  # a multi-step run: its steps, and which it is at
    if as_json:
        return render.envelope("status", reports[0][1] if run else {"runs": [d for _, d in reports]})
    for st, data in reports:
        p = st.progress
        truncated = f", {p.truncated} truncated" if p.truncated else ""
        render.shard_table(f"run {data['run']}: {p.finished}/{p.requests} requests finished, {p.failed} failed{truncated}",
                           data["shards"], caption=render.cost_summary(data))
        if step := data.get("step"):
            render.line(f"step {step['at']} of {step['of']} ({step['name']}): "
                        + ", ".join(f"{s['step']}. {s['name']} {s['state']}" for s in step["steps"]))
        if p.started_at is not None and not p.done:
            render.line(f"running for {render.duration(time.time() - p.started_at)}: {render.describe_progress(p)}")
        if st.note:
            render.warn(st.note)
        if invalid := render.invalid_summary(data["invalid_answers"]):
            render.line(invalid)
        if queue := render.queue_summary(data["queue"]):
            render.line(queue)
        if data.get("hold"):
            render.warn(f"held ({data['hold']}): resume with `batchpipe run {data['run']}`")
        if data["summary"]["answers"] or data["summary"]["invalid"]:
            render.line("summary: " + ops.summary_line(data["summary"], ops.run_config(st.ledger.paths).limits.target))
        if data["handed_off"]:
            render.warn(_handoff_note(data["run"], data["handed_off"], data["shards"]))
        if data["done"]:
            render.line(f"done: output at {data['output']}")
            if st.ledger.run.target_reached is None:
                counts = data["result_counts"] or {}
                _outcome_notes(st.ledger.paths, counts.get("failed", p.failed), p.truncated, counts)
    if not reports:
        render.line("no runs yet: start one with `batchpipe run CONFIG --wait`")


@command()
def download(ctx: typer.Context, run: RunArg, as_json: JsonOpt = False) -> None:
    """Download the output and error files of every batch that has finished.

    A file the service no longer has is named and does not stop the others: the requests whose
    results it held are sent again as a new attempt by the next `run`.

    Example: `batchpipe download reviews-nov`
    """
    paths = ops.run_paths(_runs_dir(ctx), run)
    d = ops.download(paths, _provider(paths))
    if as_json:
        return render.envelope("download", {"run": run, "shards": d.shards, "files": d.files, "lost": d.lost})
    for note in d.lost:
        render.warn(note)
    render.line(f"downloaded {d.files} file(s) for {len(d.shards)} finished shard(s)" if d.shards else "nothing new to download")


def _handoff_note(run: str, shard_ids: list[str], shards: list[dict[str, Any]] | None = None) -> str:
    """What a person must know about shards handed off by `export`: batchpipe will not send them."""
    shown = ", ".join(shard_ids[:5]) + (f" and {len(shard_ids) - 5} more" if len(shard_ids) > 5 else "")
    partial = [s for s in shards or [] if s["shard"] in shard_ids and (s.get("handoff") or {}).get("received")]
    waiting = "".join(f"; {s['shard']} has {s['handoff']['received']}/{s['requests']} results imported "
                      f"(import its other file, or finish it with `import --partial`)" for s in partial[:5])
    return (f"{len(shard_ids)} shard(s) exported for you to upload ({shown}): batchpipe does not upload or "
            f"submit them, so they are never paid twice; bring their results in with "
            f"`batchpipe import {run} FILE...`{waiting}")


def _exported_before(paths) -> bool:
    """Has any shard of the run been handed off by `export` (so its user uploads by hand)?"""
    return any(s["handoff"] is not None for s in ops.describe_run(paths)["shards"])


@command()
def export(
    ctx: typer.Context,
    run: RunArg,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write the files (made if missing).",
                                              show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Write the run's prepared shards into DIR, ready to upload by hand, with DIR/README.txt.

    From then on those shards are handed off: `submit`, `run` and `tick` never upload them or
    create batches for them (you do; nothing is paid twice). Upload each file with purpose
    "batch", create its batch, download its output and error files, then `batchpipe import`.
    Running export again is harmless: it writes the same files, plus any new retry attempts.

    Example: `batchpipe export reviews-nov handoff/` then, with the downloaded files,
    `batchpipe import reviews-nov ~/Downloads/batch_*_output.jsonl`
    """
    from batchpipe.ops.handoff import export as export_run

    paths = ops.run_paths(_runs_dir(ctx), run)
    e = export_run(paths, directory)
    data = {"run": run, "dir": str(directory), "files": e.files, "handed_off": e.handed_off, "skipped": e.skipped,
            "readme": str(e.readme) if e.readme else None}
    if as_json:
        return render.envelope("export", data)
    for note in e.skipped:
        render.warn(note)
    if not e.files:
        render.line(f"nothing to export: every shard of run {run} is sent, or its results are in")
        return
    for f in e.files:
        render.line(f"{f['file']}  {f['requests']} request(s)")
    render.line(f"exported {len(e.files)} file(s) of run {run} to {directory}; what to do next: {e.readme}")
    render.line(f"batchpipe will not upload or submit these shards; afterwards: batchpipe import {run} FILE...")


@command("import")
def import_(
    ctx: typer.Context,
    run: RunArg,
    files: Annotated[list[Path] | None, typer.Argument(metavar="FILE...", help="Output and error files downloaded "
                                                       "by hand, in any order.", show_default=False)] = None,
    partial: Annotated[bool, typer.Option("--partial", help="Finish the exported shards that have some results "
                                          "with what they have; their missing requests become a new attempt.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bring in result files of exported shards, downloaded by hand; then `batchpipe process`.

    Any order, any subset; a file imported before, or a line already imported, is skipped. A
    file that is damaged, not a result file, or from another run is refused (exit 2), naming
    the file and line, and nothing of the files given is imported. A shard is complete once
    every request of it has a result line; until then `status` shows how many it has.

    Examples: `batchpipe import reviews-nov out-1.jsonl err-1.jsonl` ·
    `batchpipe import reviews-nov out-2.jsonl --partial`
    """
    from batchpipe.ops.handoff import import_results

    if not files and not partial:
        raise UsageError("give the result files to import (or --partial to finish shards with what they have)",
                         hint=f"for example: batchpipe import {run} output.jsonl errors.jsonl")
    paths = ops.run_paths(_runs_dir(ctx), run)
    i = import_results(paths, list(files or []), partial=partial)
    if as_json:
        return render.envelope("import", {"run": run, "files": i.files, "completed": i.completed,
                                          "waiting": i.waiting, "warnings": i.warnings})
    for w in i.warnings:
        render.warn(w)
    for f in i.files:
        if f["status"] == "imported":
            dups = f", {f['duplicates']} already imported" if f["duplicates"] else ""
            render.line(f"{f['file']}: {f['routed']} result line(s) imported{dups}")
        else:
            render.line(f"{f['file']}: already imported, skipped")
    if i.completed:
        render.line(f"complete: shard(s) {', '.join(i.completed)}; next: batchpipe process {run}")
    for w in i.waiting:
        render.line(f"shard {w['shard']}: {w['received']}/{w['requests']} results so far"
                    + (": import its other file, or finish it with --partial" if w["received"] else ""))


def _processed(p: "ops.Processed", paths) -> None:  # (a string: ops.process loads on use)
    for w in p.warnings:
        render.warn(w)
    for e in p.batch_errors:
        where = f"line {e.get('line')} (row {e['row_no']}, id {e['custom_id']})" if e.get("row_no") else "the batch"
        render.warn(f"shard {e['shard']} failed validation at {where}: {e.get('code')}: {e.get('message')}")
    cfg = ops.run_config(paths)
    if p.done and cfg.limits.target is not None:  # a dataset: valid records only
        reached = "limits.target reached" if p.target_reached is not None else "limits.target not reached"
        render.line(f"output: {paths.output} ({p.written} valid records; {reached})")
        if p.failed and p.target_reached is None:
            render.warn(f"{p.failed} row(s) failed and are not in the output (limits.target writes valid records "
                        f"only): `batchpipe process {paths.run_id} --retry-failed` sends them again")
    elif p.done:
        truncated = f", {p.truncated} truncated" if p.truncated else ""
        filled = f", {p.fallback} by fallback" if p.fallback else ""
        dropped = f", {p.dropped} dropped" if p.dropped else ""
        lines = f"{p.written} lines, " if p.written and p.written != p.ok + p.failed + p.fallback else ""
        figures = f"{lines}{p.ok} answered{filled}, {p.failed} failed{dropped}{truncated}"
        output = ops.describe_steps(paths).get("output", paths.output)  # a multi-step run's: once its last step is done
        render.line(f"output: {output} ({figures})" if output else f"step done ({figures})")
        if invalid := render.invalid_summary(p.invalid, "row(s) whose answer stayed invalid"):
            render.line(invalid)
        _outcome_notes(paths, p.failed, p.truncated, {"fallback": p.fallback, "dropped": p.dropped})
    if p.summary and (p.summary["answers"] or p.summary["invalid"]):
        render.line("summary: " + ops.summary_line(p.summary, cfg.limits.target))


def _outcome_notes(paths, failed: int, truncated: int, counts: dict[str, int] | None = None) -> None:
    from batchpipe.ops.steps import failure_notes

    by_step = failure_notes(paths)  # a multi-step run: where its rows failed, step by step
    for note in render.outcome_notes(paths.run_id, ops.run_config(paths).output, 0 if by_step is not None else failed,
                                     truncated, counts) + (by_step or []):
        render.warn(note)


@command()
def process(
    ctx: typer.Context,
    run: RunArg,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Send every failed row again as a new attempt (any error).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Parse downloaded results and, once every row has an outcome, write output.jsonl.

    Exits 0 when the run is done with every row answered, 6 when it is done but some rows
    failed (their error is under `<key>_error`), 3 while batches are still pending, 5 if a batch
    failed validation. With --retry-failed, every failed row of a finished shard (4xx,
    truncated and validation failures included) goes into a new attempt of its shard; then
    `batchpipe run RUN --wait` sends them (within the run's budget) and rewrites the output.

    Examples: `batchpipe process reviews-nov` · `batchpipe process reviews-nov --retry-failed`
    """
    paths = ops.run_paths(_runs_dir(ctx), run)
    p = ops.process(paths, retry_failed=retry_failed)
    code = p.exit_code
    if paths.parent is not None and p.done:  # a multi-step run: done once its last step is
        from batchpipe.ops.steps import count_final

        moved_on = ops.advance_step(paths)  # the next step is created, or the final output written
        count_final(moved_on, p)  # the counts (and exit code) of a finished run are its whole output's
        p.done = bool(ops.describe_steps(moved_on)["done"])
        code = p.exit_code
        if moved_on != paths and not as_json:
            render.line(f"step {paths.root.name} done; step {moved_on.root.name} created: "
                        f"`batchpipe run {run} --wait` sends it")
    if as_json:
        render.envelope("process", {"run": run, "merged": p.merged, "done": p.done, "ok": p.ok, "failed": p.failed,
                                    "truncated": p.truncated, "fallback": p.fallback, "dropped": p.dropped,
                                    "invalid": p.invalid, "summary": p.summary, "retries": p.retries,
                                    "requeued": p.requeued,
                                    "output": str(ops.describe_steps(paths).get("output", paths.output)) if p.done else None,
                                    "batch_errors": p.batch_errors,
                                    "warnings": p.warnings}, int(code))
    else:
        _processed(p, paths)
        if retry_failed:
            render.line(f"sent {p.requeued} failed row(s) again as new attempt(s) {', '.join(p.retries)}: "
                        f"`batchpipe run {run} --wait` takes them to done" if p.requeued
                        else "no failed rows to send again" + ("" if p.done else " yet: earlier attempts have not finished"))
        elif not p.done:
            if p.retries and _exported_before(paths):
                render.line(f"new attempt(s) {', '.join(p.retries)} for the failed requests: `batchpipe export {run} "
                            f"DIR` writes them out for upload by hand, or `batchpipe run {run}` sends them")
            render.line(f"not done yet: see `batchpipe status {run}`")
    raise typer.Exit(int(code))


@command()
def recover(ctx: typer.Context, run: RunArg, as_json: JsonOpt = False) -> None:
    """Reconcile a run with the provider and the disk after a crash, a kill or Ctrl-C.

    Removes temp files left by an interrupted write, checks every file the ledger names,
    adopts uploads and batches whose answer was lost, cancels a second batch for one shard, and
    finds result and input files the service no longer has (their requests are sent again, the
    input uploaded again). It never creates anything remote. Exits 5 if something needs a person.

    Example: `batchpipe recover reviews-nov`
    """
    # a run whose create was interrupted has no state.json yet; a multi-step run: the step it is at
    paths = RunPaths.of(_runs_dir(ctx), run).current_step()
    r = ops.recover(paths, _provider(paths, optional=True) if paths.config.is_file() else None)
    code = ExitCode.OK if r.ok else ExitCode.ATTENTION
    if as_json:
        render.envelope("recover", {"run": run, "actions": r.actions, "problems": r.problems}, int(code))
    else:
        for action in r.actions:
            render.line(action)
        for problem in r.problems:
            render.warn(problem)
        if r.ok and paths.state.is_file():  # (a run whose create was killed is not there to continue)
            render.line(f"run {run} is consistent{'' if r.actions else ': nothing to do'}; "
                        f"continue with `batchpipe run {run}`")
    raise typer.Exit(int(code))


@command("run")
def run_(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A job config (YAML) or the id of an existing run.", show_default=False)],
    wait: Annotated[bool, typer.Option("--wait", help="Keep going until the run is done.")] = False,
    poll_interval: Annotated[float, typer.Option(
        "--poll-interval", min=0.0,
        help="Seconds between status checks with --wait, once batches have run a while: the first check "
             "comes 1 s after a batch is created and the waits double up to this; while nothing changes "
             "they grow on, up to 8 times it.")] = 30.0,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id when TARGET is a config.")] = None,
    budget: BudgetOpt = None,
    canary: CanaryOpt = None,
    sync: Annotated[bool, typer.Option(
        "--sync", help="Send the requests to the regular endpoint, concurrently, instead of the Batch API "
                       "(as `mode: sync`); the run stays in sync mode.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Do every step that can be done now: create, submit, download, process.

    Exits 0 when the run is done with every row answered, 6 when it is done but some rows
    failed (see `process --retry-failed`), 3 while batches are still pending (run it again
    later, e.g. from cron), 5 if a batch failed validation or only shards exported for upload by
    hand (`batchpipe export`) are left: it never sends those. With `--wait` it polls until done.

    In sync mode (`--sync` or `mode: sync`) the requests go to the regular endpoint, `sync.max_workers`
    at a time, and the run is done when the command returns (no --wait needed).

    Examples: `batchpipe run configs/reviews.yaml --wait` · `batchpipe run reviews-nov` ·
    `batchpipe run configs/reviews.yaml --sync`
    """
    runs_dir = _runs_dir(ctx)
    if Path(target).is_file():
        with render.counter(CREATING) as counted:
            c = ops.create(Path(target), runs_dir=runs_dir, run_id=run_id, on_progress=counted)
        target = c.run_id
        if c.created and render.log_mode():
            render.log(target, f"created: {c.requests} requests in {c.shards} shard(s) at {c.root}")
    paths = ops.run_paths(runs_dir, target)
    provider = _provider(paths)
    start = time.monotonic()
    from batchpipe.ledger.store import Ledger  # here: --help loads no ledger code

    ledger = Ledger.load(paths)
    total = ledger.run.requests  # the count alone: describing the run would price it
    sync = sync or ledger.run.mode == "sync"
    before = ops.Progress.of(ledger).finished if sync else 0
    # On a terminal a bar; anywhere else (cron, a log file) one timestamped line per change.
    log = render.log_mode()
    with render.progress_bar(total, enabled=(wait or sync) and not as_json) as update:
        report = ops.run(
            paths, provider, wait=wait, poll_interval=poll_interval,
            on_progress=lambda p: update(p.finished, render.describe_progress(p)),
            on_problem=lambda exc: (render.log(target, f"problem: {exc.message}; trying again") if log
                                    else render.warn(f"{exc.message}; trying again")),
            on_change=(lambda text: render.log(target, text)) if log else None,
            options=ops.SubmitOptions(budget_usd=budget, canary=canary, sync=sync),
            on_answer=lambda n, in_flight: update(min(total, before + n), f"sync: {n} answered, {in_flight} in flight"),
        )
    p = report.processed
    paths = paths.current_step()  # a multi-step run may have moved on to a later step
    attention = (p.batch_errors or report.stuck_on_budget or report.held or report.stuck_on_queue
                 or report.stuck_on_handoff)
    code = ExitCode.ATTENTION if attention else p.exit_code
    for note in report.notes + report.over_budget + report.too_big + ([f"held: {report.held}"] if report.held else []):
        render.warn(note)
    if report.handed_off:
        render.warn(_handoff_note(target, report.handed_off))
    if as_json:
        data = ops.describe_run(paths) | ops.describe_steps(paths)
        render.envelope("run", data | {"batch_errors": p.batch_errors, "warnings": p.warnings,
                                      "over_budget": report.over_budget, "too_big": report.too_big}, int(code))
    else:
        _processed(p, paths)
        if queue := render.queue_summary(ops.describe_run(paths)["queue"]):
            render.line(queue)
        if not p.done and not attention:
            prog = report.progress
            render.line(f"run {target}: {prog.finished}/{prog.requests} requests finished after {render.elapsed(start)}; "
                        f"run `batchpipe run {target}` again later, or add --wait")
    raise typer.Exit(int(code))


@command("list")
def list_(
    ctx: typer.Context,
    remote: Annotated[bool, typer.Option("--remote", help="List the provider's recent batches instead, with "
                                         "the run and shard each belongs to (or \"not ours\").")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="With --remote: how many batches, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List the runs in the runs dir (no network), or with --remote the provider's recent batches.

    With --remote, each batch shows its status, when it was created, its request counts and
    endpoint, and the batchpipe tag from its metadata: the run and shard it was made for, or
    "not ours" (made by another tool or person, or by hand without the tag).

    Examples: `batchpipe --runs-dir /data/runs list --json` · `batchpipe list --remote --limit 50`
    """
    if remote:
        from batchpipe.ops.listing import list_remote
        from batchpipe.providers import open_provider

        batches = [
            {"id": b.id, "status": b.status, "created_at": b.created_at, "request_counts": b.request_counts,
             "endpoint": b.endpoint, "run": b.run, "shard": b.shard, "tag": b.tag, "run_here": b.here}
            for b in list_remote(_runs_dir(ctx), open_provider(), limit)
        ]
        if as_json:
            return render.envelope("list", {"batches": batches})
        return render.remote_batches_table(batches)
    runs = [
        {"run": s.run_id, "created_at": s.created_at, "model": s.model, "problem": s.problem}
        | ({"shards": sum(s.progress.shards.values()), "requests": s.progress.requests,
            "finished": s.progress.finished, "done": s.progress.done} if s.progress else {})
        for s in ops.list_runs(_runs_dir(ctx))
    ]
    if as_json:
        return render.envelope("list", {"runs": runs})
    render.runs_table(runs)


@command()
def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on (keep it on loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8089,
    validating_seconds: Annotated[float, typer.Option(help="How long a batch stays validating.")] = 1.0,
    in_progress_seconds: Annotated[float, typer.Option(help="How long a batch stays in_progress.")] = 5.0,
    finalizing_seconds: Annotated[float, typer.Option(help="How long a batch stays finalizing.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the order of output lines.")] = None,
    transient_error_rate: Annotated[float, typer.Option(help="Share of calls answered 500/503/429 without acting.", rich_help_panel="Faults")] = 0.0,
    lost_answer_rate: Annotated[float, typer.Option(help="Share of uploads, creates and cancels that act, then answer 500 or drop the connection.", rich_help_panel="Faults")] = 0.0,
    request_failure_rate: Annotated[float, typer.Option(help="Share of requests in a batch that fail with a 500 line.", rich_help_panel="Faults")] = 0.0,
    expire_after_requests: Annotated[int | None, typer.Option(help="Batches expire after running this many requests.", rich_help_panel="Faults")] = None,
    enqueued_token_limit: Annotated[int | None, typer.Option(help="Per-model queue limit; over it, batches fail with token_limit_exceeded.", rich_help_panel="Faults")] = None,
    token_limit_message_without_number: Annotated[bool, typer.Option(help="token_limit_exceeded messages do not state the limit.", rich_help_panel="Faults")] = False,
    file_visibility_delay: Annotated[int, typer.Option(help="Creates that answer 400 'file not found' before a new file is seen.", rich_help_panel="Faults")] = 0,
    fault_seed: Annotated[int | None, typer.Option(help="Seed for the fault dice, to replay a run.", rich_help_panel="Faults")] = None,
    lose_output_of_batch: Annotated[list[int] | None, typer.Option(metavar="N", help="The N-th batch's output file is deleted once written (repeatable).", rich_help_panel="Faults")] = None,
    lose_errors_of_batch: Annotated[list[int] | None, typer.Option(metavar="N", help="The N-th batch's error file is deleted once written (repeatable).", rich_help_panel="Faults")] = None,
    lose_upload: Annotated[list[int] | None, typer.Option(metavar="N", help="The N-th upload is deleted right after it is answered (repeatable).", rich_help_panel="Faults")] = None,
    batch_list_lag: Annotated[int, typer.Option(help="A new batch is missing from the batch list for its first N list calls.", rich_help_panel="Faults")] = 0,
    html_answer: Annotated[bool, typer.Option(help="Answer every API call with an HTML page (a proxy's sign-in page).", rich_help_panel="Faults")] = False,
    stray_result_lines: Annotated[bool, typer.Option(help="Output files also hold a blank line, a line of an unknown custom_id and a line twice.", rich_help_panel="Faults")] = False,
    foreign_batches: Annotated[int, typer.Option(help="Start with N batches of another user in the batch list.", rich_help_panel="Faults")] = 0,
    sync_rate_limit_first: Annotated[int, typer.Option(help="The first N synchronous requests are answered 429 with retry-after.", rich_help_panel="Faults")] = 0,
    sync_rate_limit_share: Annotated[float, typer.Option(help="Share of synchronous requests answered 429 with retry-after.", rich_help_panel="Faults")] = 0.0,
    sync_latency_seconds: Annotated[float, typer.Option(help="Every synchronous request takes this long.", rich_help_panel="Faults")] = 0.0,
    retry_after_ms: Annotated[int, typer.Option(help="The retry-after-ms (and retry-after) of 429s and transient errors.", rich_help_panel="Faults")] = 20,
    rate_limit_requests: Annotated[int, typer.Option(help="Synchronous requests per minute (x-ratelimit-* headers), then 429.", rich_help_panel="Faults")] = 10_000,
    rate_limit_tokens: Annotated[int, typer.Option(help="Tokens per minute of synchronous requests, then 429.", rich_help_panel="Faults")] = 10_000_000,
    invalid_json_share: Annotated[float, typer.Option(help="Share of JSON answers (json_object / json_schema requests) cut in half: invalid JSON.", rich_help_panel="Faults")] = 0.0,
) -> None:
    """Start a local OpenAI-compatible Files + Batches server, to rehearse a job for free.

    Any non-empty API key is accepted. Answers are derived from the request: a chat
    completion's answer is `echo: <the user message>`. The fault switches make it misbehave
    the way the real service sometimes does, to see a job survive it.

    Example: `batchpipe emulator --port 8089` then, in another terminal,
    `OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=test batchpipe run configs/reviews.yaml --wait`
    """
    from batchpipe.emulator import EmulatorOptions, serve_forever

    options = EmulatorOptions(
        validating_seconds=validating_seconds, in_progress_seconds=in_progress_seconds,
        finalizing_seconds=finalizing_seconds, shuffle_seed=seed, transient_error_rate=transient_error_rate,
        lost_answer_rate=lost_answer_rate, request_failure_rate=request_failure_rate,
        expire_after_requests=expire_after_requests, enqueued_token_limit=enqueued_token_limit,
        file_visibility_delay=file_visibility_delay, fault_seed=fault_seed,
        lose_output_of_batches=tuple(lose_output_of_batch or ()),
        lose_errors_of_batches=tuple(lose_errors_of_batch or ()), lose_uploads=tuple(lose_upload or ()),
        token_limit_message_has_number=not token_limit_message_without_number,
        batch_list_lag=batch_list_lag, html_answer=html_answer, foreign_batches=foreign_batches,
        stray_result_lines=stray_result_lines,
        sync_rate_limit_first=sync_rate_limit_first, sync_rate_limit_share=sync_rate_limit_share,
        sync_latency_seconds=sync_latency_seconds, retry_after_ms=retry_after_ms, rate_limit_requests=rate_limit_requests,
        rate_limit_tokens=rate_limit_tokens,
        invalid_json_share=invalid_json_share,
    )
    serve_forever(host, port, options)


@command()
def demo(ctx: typer.Context) -> None:
    """Run a bundled example job from create to output against an in-process emulator.

    No API key, no network, no cost: it shows what a real run looks like.

    Example: `batchpipe demo`
    """
    from batchpipe.ops.demo import create_demo, run_demo

    created = create_demo(_runs_dir(ctx))
    render.line(f"created run {created.run_id}: {created.requests} requests in {created.shards} shards; "
                "running them on a local emulator")
    paths = ops.run_paths(_runs_dir(ctx), created.run_id)
    with render.progress_bar(created.requests) as update:
        report = run_demo(paths, on_progress=lambda p: update(p.finished, render.describe_progress(p)))
    p = report.processed
    render.line(f"done: {p.ok} rows answered, {p.failed} failed")
    render.line(f"output: {paths.output}")
    with open(paths.output, encoding="utf-8") as f:
        first = f.readline().strip()
    render.line(f"first row: {first}")
    render.line(f"look around: batchpipe status {paths.run_id}   (or: batchpipe list)")


@command()
def tick(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Argument(help="The run id.", show_default=False)] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Every run in the runs dir.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One non-blocking pass for cron: every step that can be done now, then exit.

    A run another process holds is skipped, not waited on; a cancelled run is not submitted.
    Exit codes: 0 all done, every row answered; 6 all done, some rows failed; 3 still pending;
    5 needs attention; 1 error (4 for a single busy run). The most urgent wins, in the order 1, 5,
    3, 6, 0.

    Example: `*/10 * * * * cd /data/jobs && batchpipe tick --all`
    """
    if all_runs == (run is not None):
        raise UsageError("give a run id or --all (not both)")
    runs_dir = _runs_dir(ctx)
    if run:
        results = [ops.tick(ops.run_paths(runs_dir, run), _provider)]
    else:
        results = ops.tick_all(runs_dir, _provider)
    code = ops.tick_exit_code(results)
    if run and results[0].outcome == "busy":
        code = ExitCode.LOCKED
    log = render.log_mode()  # cron: what each pass changed, one timestamped line each, on stderr
    for r in results if log else []:
        for change in r.changes:
            render.log(r.run_id, change)
    if as_json:
        render.envelope("tick", {"runs": [{"run": r.run_id, "outcome": r.outcome, "message": r.message,
                                           "changes": r.changes} for r in results]}, int(code))
    else:
        for r in results:
            render.line(f"{render.stamp()} {r.run_id} {r.outcome}: {r.message}" if log
                        else f"{r.run_id}: {r.outcome}: {r.message}")
        if not results:
            render.line("no runs to tick")
    raise typer.Exit(int(code))


@command()
def cancel(ctx: typer.Context, run: RunArg, as_json: JsonOpt = False) -> None:
    """Cancel the run's running batches and hold it; what they finished is still merged.

    `tick` will not submit a held run; `batchpipe run RUN` resumes it (the requests the
    cancelled batches did not run become new attempts).

    Example: `batchpipe cancel reviews-nov`
    """
    paths = ops.run_paths(_runs_dir(ctx), run)
    c = ops.cancel(paths, _provider(paths))
    if as_json:
        return render.envelope("cancel", {"run": run, "cancelled": c.cancelled})
    render.line(f"cancelled {len(c.cancelled)} running batch(es) of run {run}; it is held." if c.cancelled
                else f"no running batches in run {run}; it is held.")
    render.line(f"finished work is kept: `batchpipe run {run}` downloads and merges it and resumes the run")


@command()
def doctor(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="A job config to check too.", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the API key (without showing it), the service, a config and the runs dir.

    Changes nothing (a missing runs dir is left for the first run to create). Exits 0 when every
    check passes, 2 when the API key is missing or the config is invalid, 1 when anything else
    fails, saying what to fix.

    Example: `batchpipe doctor configs/reviews.yaml`
    """
    from batchpipe.ops.doctor import doctor as run_doctor
    from batchpipe.ops.doctor import exit_code

    checks = run_doctor(_runs_dir(ctx), config)
    code = exit_code(checks)
    if as_json:
        render.envelope("doctor", {"checks": [c.__dict__ for c in checks]}, int(code))
    else:
        for c in checks:
            render.check(c.name, c.ok, c.detail, c.fix)
    raise typer.Exit(int(code))


@command()
def estimate(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A job config (YAML) or the id of an existing run.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Count a job's tokens and estimate what it will cost, before paying. Nothing is written or sent.

    Input tokens are counted with OpenAI's tokenizer when bpe-openai is installed
    (`pip install "batchpipe[tokens]"`), else estimated as bytes/4. Prices are Batch API prices
    from the dated table shipped with batchpipe (check them), or `pricing:` in the config; a job
    in sync mode (`mode: sync`, or a run sent with `--sync`) pays twice them. The worst case is every request using its whole output limit (`params.max_tokens`); the
    expected cost counts half of it.

    Examples: `batchpipe estimate configs/reviews.yaml` · `batchpipe estimate reviews-nov --json`
    """
    from batchpipe.ops.estimate import estimate as estimate_job
    from batchpipe.pricing import format_usd

    is_config = Path(target).is_file() or Path(target).suffix.lower() in (".yaml", ".yml") or os.sep in target
    source = Path(target) if is_config else ops.run_paths(_runs_dir(ctx), target)
    with render.counter("counting: {rows:,} requests, {shards:,} shard(s)") as update:
        e = estimate_job(source, on_progress=update)
    if as_json:
        return render.envelope("estimate", e.to_dict())
    p = e.price
    render.line(f"estimate for {e.source}: {e.model}, {e.endpoint}")
    render.line(f"  requests       {e.requests:,} in {e.shards} shard(s)")
    render.line(f"  input tokens   {e.input_tokens:,} ({e.token_method})")
    render.line(f"  output tokens  at most {e.max_output_tokens:,}, expected {e.expected_output_tokens:,} (half of that)")
    render.line(f"  price          ${p.input_per_million:g} in, ${p.output_per_million:g} out "
                f"per 1M tokens ({p.source})")
    render.line(f"  cost           input {format_usd(e.cost_usd_input)} · expected {format_usd(e.cost_usd_expected)} · "
                f"worst case {format_usd(e.cost_usd_worst_case)}"
                + (f" · budget {format_usd(e.budget_usd)}" if e.budget_usd is not None else ""))
    if p.as_of:
        render.line(f"prices as of {p.as_of} (Batch API, half the standard price): check them at "
                    "https://openai.com/api/pricing, or set pricing: in the config")
    for w in e.warnings:
        render.warn(w)


@command()
def schema() -> None:
    """Print the JSON Schema of a job config, so editors can complete and check job files.

    With the YAML language server (VS Code's YAML extension, and others), save it and name it
    on the first line of a job file: `# yaml-language-server: $schema=batchpipe.schema.json`.

    Example: `batchpipe schema > batchpipe.schema.json`
    """
    from batchpipe.config import json_schema_text

    typer.echo(json_schema_text(), nl=False)


@command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("job.yaml"),
) -> None:
    """Write a commented starter job config, and three sample rows beside it (`<name>.jsonl`).

    It validates as it is: `batchpipe estimate` it, then edit it. An existing file is never
    overwritten (exit 2); an existing `<name>.jsonl` is kept.

    Example: `batchpipe init configs/tickets.yaml` then `batchpipe estimate configs/tickets.yaml`
    """
    from batchpipe.ops.init import init_job

    done = init_job(path)
    render.line(f"wrote {done.config}" + (f" and {done.rows} (sample rows)" if done.rows_written else
                f" (it reads {done.rows}, which was there already)"))
    render.line(f"next: batchpipe estimate {done.config}")


def main() -> None:
    """`batchpipe` in this process: it ends with SystemExit, as any Python command line does."""
    app()


def console() -> NoReturn:
    """The `batchpipe` program (its console script): main(), then the process ends at once."""
    try:
        main()
    except SystemExit as done:
        _leave(done.code)
    _leave(0)


def _leave(code: object) -> NoReturn:
    """Exit with `code` (as SystemExit takes it) without Python's teardown, which frees every module
    and object one by one: measured, 0.02 to 0.07 s after `--help`, `list` or `status`, 0.1 to
    0.2 s after a `create` of 300,000 rows (pydantic and the rest it loaded). The exit handlers
    run and the standard streams are flushed; every file a command writes is closed (and fsynced
    where it must be) before it returns. Another thread still running (none should be) gets the
    usual exit, which waits for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is not None and not isinstance(code, int):  # a message, as sys.exit prints it
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # what the interpreter's own exit runs first (multiprocessing's, tempfile's...)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a pipe closed early: nothing more can be said on it
            stream.flush()
    os._exit(code or 0)
