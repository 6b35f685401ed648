"""Everything batchpipe shows people and scripts: the only module that imports rich.

Human output goes to stdout, progress bars and errors to stderr; with --json, stdout carries
exactly one versioned envelope: {"batchpipe": 1, "command", "ok", "exit_code", "data" | "error"}.

When stderr is not a terminal (cron, a log file, a pipe) there are no bars: `run` and `tick`
write one timestamped line per change instead (log()), and tables printed to anything but a
terminal are as wide as they need to be, so ids are never cut or wrapped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console

if TYPE_CHECKING:
    from rich.table import Table

from batchpipe.errors import BatchpipeError, ExitCode
from batchpipe.pricing import format_usd

ENVELOPE_VERSION = 1

# emoji=False: text such as a hook's name `hooks:mask:` must come out as written, not as an emoji.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def envelope(command: str, data: Any, exit_code: int = 0) -> None:
    doc = {"batchpipe": ENVELOPE_VERSION, "command": command, "ok": exit_code == 0, "exit_code": exit_code,
           "data": with_iso_times(data)}
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def error(command: str, exc: BaseException, *, as_json: bool) -> int:
    """Show an error (message + what to do) and return its exit code. No traceback."""
    if isinstance(exc, BatchpipeError):
        code, message, hint, kind = int(exc.exit_code), exc.message, exc.hint, type(exc).__name__
    else:  # KeyboardInterrupt
        code, message, hint, kind = int(ExitCode.INTERRUPTED), "interrupted", "run the same command again to resume", "Interrupted"
    if as_json:
        doc = {"batchpipe": ENVELOPE_VERSION, "command": command, "ok": False, "exit_code": code,
               "error": {"type": kind, "message": message, "hint": hint}}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        err.print(f"[bold red]error:[/] {escape(message)}")
        if hint:
            err.print(f"[dim]hint:[/] {escape(hint)}")
    return code


def iso(ts: float | None) -> str | None:
    """A unix time as ISO 8601 in UTC, to the second: 2026-11-23T09:40:01+00:00."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def with_iso_times(data: Any) -> Any:
    """`data` with `<name>_at_iso` (ISO 8601, UTC) beside every `<name>_at` (unix seconds) in it.

    One rule for every envelope, so a script can read either and a person can read the JSON.
    """
    if isinstance(data, list):
        return [with_iso_times(v) for v in data]
    if not isinstance(data, dict):
        return data
    out: dict[Any, Any] = {}
    for key, value in data.items():
        out[key] = with_iso_times(value)
        is_time = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        if isinstance(key, str) and key.endswith("_at") and is_time and f"{key}_iso" not in data:
            out[f"{key}_iso"] = iso(value)
    return out


def log_mode() -> bool:
    """True when stderr is not a terminal: write log lines (log()) instead of progress bars."""
    return not err.is_terminal


def stamp() -> str:
    """Now, in local time as ISO 8601 with its offset: 2026-11-23T10:40:01+01:00."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def log(run_id: str, text: str) -> None:
    """One line of a log on stderr, for cron: the time (stamp()), the run, what happened."""
    err.print(f"{stamp()} {run_id} {text}", markup=False, highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    return text.replace("[", "\\[")


def line(text: str) -> None:
    out.print(escape(text))


def warn(text: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(text)}")


def check(name: str, ok: bool, detail: str, fix: str | None) -> None:
    mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
    out.print(f"{mark} {name:<10} {escape(detail)}")
    if fix and not ok:
        out.print(f"      [dim]fix:[/] {escape(fix)}")
    elif fix:
        out.print(f"      [dim]tip:[/] {escape(fix)}")


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


STATE_STYLE = {"prepared": "dim", "uploaded": "cyan", "submitted": "blue", "completed": "magenta", "merged": "green"}


def shard_table(title: str, shards: list[dict[str, Any]], caption: str | None = None) -> None:
    """One row per shard attempt; `caption` (e.g. cost_summary()) goes under the table."""
    from rich.table import Table  # here: tables are drawn by few commands (issue 9: a faster start)

    table = Table(title=title, title_justify="left", caption=escape(caption) if caption else None,
                  caption_justify="left")
    # At 80 columns something has to give: the (long, random) batch id and the remote status, not
    # the shard id or the cost.
    fixed, number = {"no_wrap": True}, {"no_wrap": True, "justify": "right"}
    for col, kw in (("shard", fixed), ("state", fixed), ("remote", {}), ("requests", number), ("done", number),
                    ("failed", number), ("cost", number), ("batch", {})):
        table.add_column(col, **kw)
    if len(shards) > MAX_SHARD_ROWS:
        _grouped_rows(table, shards)
    else:
        for s in shards:
            counts = s["request_counts"] or {}
            style = STATE_STYLE.get(s["state"], "")
            cost = s.get("cost_usd")
            table.add_row(
                s["shard"], f"[{style}]{s['state']}[/]",
                s["remote_status"] or ("sync" if s.get("mode") == "sync" else _handoff(s)), str(s["requests"]),
                str(counts.get("completed", "-")), str(counts.get("failed", "-")),
                "-" if cost is None else format_usd(cost), s["batch_id"] or "-",
            )
    _print_table(table)
    if len(shards) > MAX_SHARD_ROWS:
        line(f"{len(shards):,} shard attempts, one row per state and remote status; --json lists each one")


def _handoff(shard: dict[str, Any]) -> str:
    """The remote column of a shard exported for a person to upload (batchpipe export)."""
    handoff = shard.get("handoff")
    if handoff is None:
        return "-"
    if shard["state"] != "prepared":
        return "imported"
    got = handoff["received"]
    return f"handed off, {got}/{shard['requests']} imported" if got else "handed off"


# Past this many shard attempts, a table row per shard is more than anyone reads (and slow to
# draw): the table shows one row per (state, remote status) instead.
MAX_SHARD_ROWS = 50


def _grouped_rows(table: Table, shards: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in shards:
        handed_off = s.get("handoff") is not None and s["state"] == "prepared"
        groups.setdefault((s["state"], s["remote_status"] or ("handed off" if handed_off else "-")), []).append(s)
    for (state, remote), members in groups.items():
        def total(key: str) -> str:
            values = [(m["request_counts"] or {}).get(key) for m in members]
            return "-" if all(v is None for v in values) else str(sum(v or 0 for v in values))
        costs = [m.get("cost_usd") for m in members if m.get("cost_usd") is not None]
        table.add_row(
            f"{len(members):,} shards", f"[{STATE_STYLE.get(state, '')}]{state}[/]", remote,
            str(sum(m["requests"] for m in members)), total("completed"), total("failed"),
            format_usd(sum(costs)) if costs else "-", "-",
        )


def cost_summary(data: dict[str, Any]) -> str:
    """The run's cost so far, for people, from describe(): the total, the tokens, and the price used."""
    usage = data.get("usage") or {}
    tokens = f"{usage.get('input_tokens', 0):,} input + {usage.get('output_tokens', 0):,} output tokens"
    if data.get("cost_usd") is None:
        return f"{data.get('cost_note') or 'cost unknown'} ({tokens} so far)"
    return f"cost so far: {format_usd(data['cost_usd'])} for {tokens}, at {data.get('price_source')}"


def invalid_summary(invalid: dict[str, int] | None, what: str = "invalid answer(s)") -> str | None:
    """Counts per reason, for people: "7 invalid answer(s): 4 invalid_json, 3 invalid_schema"."""
    if not invalid:
        return None
    return f"{sum(invalid.values())} {what}: " + ", ".join(f"{n} {code}" for code, n in invalid.items())


def outcome_notes(
    run_id: str, output: Any, failed: int, truncated: int, counts: dict[str, int] | None = None
) -> list[str]:
    """What a person should know about a finished run's failed, truncated, fallen back and dropped
    rows, and what to do.

    `output` is the run's OutputConfig (its key and truncated policy); `counts` the run's result_counts."""
    notes = []
    counts = counts or {}
    if counts.get("fallback"):
        notes.append(f"{counts['fallback']} row(s) were filled by output.fallback, not by the model: they have "
                     f"{output.key}_source: fallback and keep the reason under {output.key}_error")
    if counts.get("dropped"):
        notes.append(f"{counts['dropped']} row(s) were left out of the output: their answer was invalid and "
                     "output.on_invalid is drop (the raw answers are in the run's results/)")
    if truncated:
        how = "counted as failed (output.truncated: fail)" if output.truncated == "fail" else "kept as the answer"
        notes.append(f"{truncated} answer(s) were cut at the output limit, {how}: their rows have "
                     f"{output.key}_finish_reason: length; a larger params.max_tokens (in a new run) avoids it")
    if failed:
        notes.append(f"{failed} row(s) failed (the error is under {output.key}_error): "
                     f"`batchpipe process {run_id} --retry-failed` sends them again")
    return notes


def queue_summary(queue: dict[str, Any]) -> str | None:
    """The provider's queue, for people, from describe()["queue"]: the limit in force and what it cost."""
    if queue["limit"] is None and not queue["rejected"]:
        return None  # nothing learned, nothing refused: nothing worth a line
    limit = f"{queue['limit']:,} enqueued tokens ({queue['source']})" if queue["limit"] else f"not known ({queue['source']})"
    cost = (f"{queue['rejected']} batch(es) refused for the queue, shards waited {duration(queue['waited_seconds'])} for it"
            if queue["rejected"] else "no batch refused for the queue")
    recut = f"; re-cut: {', '.join(queue['recut'])}" if queue["recut"] else ""
    return f"queue limit: {limit}; {cost}{recut}"


def runs_table(runs: list[dict[str, Any]]) -> None:
    if not runs:
        line("no runs yet: start one with `batchpipe run CONFIG --wait`")
        return
    from rich.table import Table

    table = Table()
    for col in ("run", "created", "model", "shards", "requests", "finished", "state"):
        table.add_column(col, justify="right" if col in ("shards", "requests", "finished") else "left")
    for r in runs:
        if r.get("problem"):
            table.add_row(r["run"], "-", "-", "-", "-", "-", f"[red]{escape(r['problem'])}[/]")
            continue
        table.add_row(r["run"], when(r["created_at"]), r["model"], str(r["shards"]), str(r["requests"]),
                      str(r["finished"]), "[green]done[/]" if r["done"] else "in progress")
    _print_table(table)


def remote_batches_table(batches: list[dict[str, Any]]) -> None:
    """The provider's recent batches (`list --remote`), with the batchpipe run and shard of each."""
    if not batches:
        line("no batches at the provider")
        return
    from rich.table import Table

    table = Table()
    for col in ("batch", "status", "created", "total", "done", "failed", "endpoint", "batchpipe"):
        table.add_column(col, justify="right" if col in ("total", "done", "failed") else "left",
                         no_wrap=col in ("status", "created"))
    for b in batches:
        counts = b["request_counts"] or {}
        tag = escape(b["tag"]) if b["run"] else "[dim]not ours[/]"
        if b["run"] and not b["run_here"]:
            tag += " [dim](not in this runs dir)[/]"
        table.add_row(b["id"], b["status"], when(b["created_at"]), str(counts.get("total", "-")),
                      str(counts.get("completed", "-")), str(counts.get("failed", "-")), b["endpoint"] or "-", tag)
    _print_table(table)


def _print_table(table: Table) -> None:
    """On a terminal, fit its width; anywhere else (a file, grep, cron) print it whole, ids uncut."""
    if out.is_terminal:
        out.print(table)
        return
    from rich.measure import Measurement

    natural = Measurement.get(out, out.options.update_width(100_000), table).maximum
    Console(highlight=False, soft_wrap=True, emoji=False, width=max(out.width, natural)).print(table)


@contextmanager
def progress_bar(total: int, *, enabled: bool = True) -> Iterator[Callable[[int, str], None]]:
    """A bar over requests finished, on a terminal only; yields update(finished, description)."""
    if not enabled or log_mode():
        yield lambda finished, description: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # bars only

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=False)
    with bar:
        task = bar.add_task("starting", total=total)
        yield lambda finished, description: bar.update(task, completed=finished, description=description)


@contextmanager
def counter(text: str) -> Iterator[Callable[[int, int], None]]:
    """A live count for long local work, on a terminal only; yields update(rows, shards).

    `text` is a format string of `rows` and `shards`. Piped, the command's own summary line is
    all there is to say, so nothing is drawn.
    """
    if log_mode():
        yield lambda rows, shards: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # on a terminal only

    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True)
    with bar:
        task = bar.add_task(text.format(rows=0, shards=0), total=None)
        yield lambda rows, shards: bar.update(task, description=text.format(rows=rows, shards=shards))


def duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe_progress(p: Any) -> str:
    """One line for a progress bar: shards merged, batches by phase (finalizing shown as such), ETA, spend."""
    spent = format_usd(p.cost_usd) if p.cost_usd else None
    if p.done:
        return f"done · {spent} spent" if spent else "done"
    parts = [f"{p.shards['merged']}/{sum(p.shards.values())} shards merged"]
    if p.phases:
        parts.append(", ".join(f"{n} {phase}" for phase, n in sorted(p.phases.items())))
    waiting = p.shards["prepared"] + p.shards["uploaded"]
    if waiting:
        parts.append(f"{waiting} waiting")
    if p.eta_seconds is not None:
        parts.append(f"ETA {duration(p.eta_seconds)}")
    if spent:
        parts.append(f"{spent} so far")
    return " · ".join(parts)


def elapsed(start: float) -> str:
    s = int(time.monotonic() - start)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
