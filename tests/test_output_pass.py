"""The output pass of the usual JSONL job: a row answered whole is its input line with the answer
and the attempt count appended, byte for byte; any other row is written compact with its outcome's
fields. Rows of every shape a JSONL file may hold keep to that, whether one process writes the
output or, for a big input (PARALLEL_OUTPUT_BYTES), worker processes a range of it each; a changed
input or a failed worker publishes nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, batchpipe, expected_answer, write_job

from batchpipe.ledger.store import Ledger
from batchpipe.ops.process import PARALLEL_OUTPUT_BYTES
from batchpipe.paths import RunPaths

BOM = b"\xef\xbb\xbf"
BIG = 123456789012345678901234567890  # beyond 64 bits: orjson cannot write it, the stdlib can


def shaped(i: int, pad: str = "", odd: tuple[int, ...] = (2, 3), every: int = 10) -> bytes:
    """Row i of a job, in one of ten shapes a JSONL file may hold (with `pad` inside the object).
    Shapes 2 and 3 (a line not ending in "}" right after the last value) only where `odd` names
    them, every `every` rows: a block of lines without them is spliced at block speed."""
    rid, stars = f"r{i:04d}", i % 5 + 1
    common = {"review_id": rid, "stars": stars, "pad": pad}
    kind = i % 10
    if kind in (2, 3) and (kind not in odd or i % every != kind):
        kind = 9
    if kind == 0:  # as json.dumps writes it: spaces after the separators
        return (json.dumps({**common, "text": f"spaced {i}"}) + "\n").encode()
    if kind == 1:  # compact
        return (json.dumps({**common, "text": f"compact {i}"}, separators=(",", ":")) + "\n").encode()
    if kind == 2:  # whitespace before the closing brace
        return (json.dumps({**common, "text": f"brace {i}"})[:-1] + " \t}\n").encode()
    if kind == 3:  # whitespace after it, a Windows line end, then a blank and a whitespace-only line
        return (json.dumps({**common, "text": f"crlf {i}"}) + "  \r\n\n  \t \n").encode()
    if kind == 4:  # refused by the service for good (4xx): written with its error
        return (json.dumps({**common, "text": f"[[fail:400]] refused {i}"}) + "\n").encode()
    if kind == 5:  # an answer cut at the output limit: kept, with its finish reason
        return (json.dumps({**common, "text": f"long {i} " + "and on " * 20}) + "\n").encode()
    if kind == 6:  # an integer beyond 64 bits: kept exactly, answered or not
        text = f"big {i}" + (" [[fail:400]]" if i % 20 == 6 else "")
        return (json.dumps({**common, "n": BIG, "text": text}) + "\n").encode()
    if kind == 7:  # nested objects, braces in the text, ends with "}}}"
        return (json.dumps({**common, "text": f"a }} and a {{}} {i}", "meta": {"a": {"b": {}}}},
                           separators=(",", ":")) + "\n").encode()
    if kind == 8:  # text beyond ASCII, written raw
        return (json.dumps({**common, "text": f"café 日本 {i}"}, ensure_ascii=False) + "\n").encode()
    return (json.dumps({**common, "text": f"plain {i}"}) + "\n").encode()


def shaped_input(n: int, pad: str = "", odd: tuple[int, ...] = (2, 3), every: int = 10) -> bytes:
    """n rows (shaped), a byte order mark first and, with shape 3, no newline after the last."""
    data = BOM + b"".join(shaped(i, pad, odd, every) for i in range(1, n + 1))
    return data.rstrip(b"\n") + b"  " if 3 in odd else data


def input_rows(data: bytes) -> list[bytes]:
    """The rows of a JSONL file as batchpipe reads them (blank lines are no rows)."""
    lines = data.removeprefix(BOM).split(b"\n")
    return [line for line in lines if line.strip()]


def compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def expected_output(data: bytes, output: bytes) -> bytes:
    """What the output must be, line for line: a row answered whole (finish reason "stop") is its
    input line (without its closing brace and the whitespace around it) with the answer and the
    attempt count appended; any other row is written compact, its outcome's fields after its own.
    The outcomes (answer, error, attempts) are read from the output itself, and checked apart."""
    lines = output.split(b"\n")
    assert lines.pop() == b""  # every line ends with a newline
    rows = input_rows(data)
    assert len(lines) == len(rows)
    expected = []
    for raw, line in zip(rows, lines):
        got = json.loads(line)
        outcome = {k: v for k, v in got.items() if k.startswith("verdict")}
        if got["verdict"] is not None and "verdict_finish_reason" not in got:
            head = raw.rstrip()[:-1].rstrip()  # an empty object's ends with "{": no comma after it
            tail = {"verdict": got["verdict"], "verdict_attempts": got["verdict_attempts"]}
            expected.append(head + (b"" if head.endswith(b"{") else b",")
                            + json.dumps(tail, ensure_ascii=False, separators=(",", ":"))[1:].encode() + b"\n")
        else:
            expected.append(compact({**json.loads(raw), **outcome}))
    return b"".join(expected)


def check_outcomes(data: bytes, output: bytes) -> dict[str, int]:
    """Each row got its own outcome; how many rows of each kind there were."""
    kinds = {"answered": 0, "failed": 0, "truncated": 0, "retried": 0}
    for raw, line in zip(input_rows(data), output.split(b"\n")):
        row, got = json.loads(raw), json.loads(line)
        assert got["review_id"] == row["review_id"]
        if "[[fail:400]]" in row["text"]:
            assert got["verdict"] is None and got["verdict_error"]["message"].endswith("[[fail:400]].")
            kinds["failed"] += 1
        elif got.get("verdict_finish_reason") == "length":
            assert expected_answer(row).startswith(got["verdict"]) and row["text"].startswith("long")
            kinds["truncated"] += 1
        elif got["verdict"] is not None:
            assert got["verdict"] == expected_answer(row) and "verdict_error" not in got
            kinds["answered"] += 1
        kinds["retried"] += got["verdict_attempts"] > 1
    return kinds


def shaped_job(tmp_path: Path, n: int, pad: str = "", per_shard: int = 25, **shapes: Any) -> tuple[Path, bytes]:
    config = write_job(tmp_path / "job", [], limits={"max_requests_per_shard": per_shard})
    data = shaped_input(n, pad, **shapes)
    (tmp_path / "job" / "job.jsonl").write_bytes(data)
    return config, data


def run_to_the_end(cli, emulator, config: Path, run_id: str) -> None:
    """create, then every step to the end; a fifth of the requests fail once (5xx) and are retried."""
    emulator.options.request_failure_rate = 0.2
    emulator.options.fault_seed = 3
    cli("create", config, "--run", run_id)
    cli("submit", run_id)
    cli("status", run_id)
    cli("download", run_id)
    cli("process", run_id, code=3)  # the failed requests go into new attempts
    emulator.options.request_failure_rate = 0.0
    cli("run", run_id, "--wait", "--poll-interval", "0", code=6)  # done, the refused rows failed


def temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(".*.tmp"))


@pytest.mark.parametrize("odd", [(2, 3), (2,), ()], ids=["a row at a time", "brace after a space", "a block at a time"])
def test_rows_of_every_shape_are_spliced_or_filled_byte_for_byte(cli, emulator, runs_dir, tmp_path, odd):
    config, data = shaped_job(tmp_path, 60, odd=odd)
    assert len(data) < PARALLEL_OUTPUT_BYTES  # written by this process alone
    run_to_the_end(cli, emulator, config, "shapes")
    output = (runs_dir / "shapes" / "output.jsonl").read_bytes()
    assert output == expected_output(data, output)
    kinds = check_outcomes(data, output)
    assert kinds["failed"] == 9 and kinds["truncated"] == 6 and kinds["answered"] == 45
    assert kinds["retried"] > 0  # a retry's outcomes are joined from an attempt holding some rows of its range
    assert b"123456789012345678901234567890" in output.split(b"\n")[5]  # row 6, refused: kept exactly
    status = cli.json("status", "shapes")["data"]
    assert status["result_counts"] == {"ok": 51, "failed": 9, "truncated": 6}


def test_rows_that_are_empty_objects_get_the_answer_without_a_comma(cli, emulator, runs_dir, tmp_path):
    config = write_job(tmp_path / "job", [], input={"path": "job.jsonl"},
                       prompt={"user": "Name a colour."}, limits={"max_requests_per_shard": 3})
    for data in (b'{}\n{"a": 1}\n{}\n', b'{}\n{ }\n{"a": 1}\n{  \t}\n{}'):
        (tmp_path / "job" / "job.jsonl").write_bytes(data)
        cli("create", config, "--run", run := f"empty{len(data)}")
        cli("run", run, "--wait", "--poll-interval", "0")
        output = (runs_dir / run / "output.jsonl").read_bytes()
        assert output == expected_output(data, output)
        assert output.startswith(b'{"verdict":"echo: Name a colour.","verdict_attempts":1}\n')


def test_a_big_input_is_written_by_workers_as_one_process_writes_it(cli, emulator, runs_dir, tmp_path):
    n = 400
    config, data = shaped_job(tmp_path, n, pad="x" * (PARALLEL_OUTPUT_BYTES // (n - 20)), per_shard=150, every=50)
    assert len(data) > PARALLEL_OUTPUT_BYTES  # written by worker processes, a range each
    run_to_the_end(cli, emulator, config, "big")
    run = runs_dir / "big"
    output = (run / "output.jsonl").read_bytes()
    assert output == expected_output(data, output)
    kinds = check_outcomes(data, output)
    assert kinds["failed"] == 60 and kinds["truncated"] == 40 and kinds["answered"] == 300
    assert kinds["retried"] > 0
    state = json.loads((run / "state.json").read_text())["run"]
    assert state["result_counts"] == {"ok": 340, "failed": 60, "truncated": 40}
    assert state["output"]["sha256"] == hashlib.sha256(output).hexdigest()
    assert state["output"]["bytes"] == len(output)
    assert temp_files(run) == []  # the workers' parts are gone


def test_a_big_input_changed_after_create_is_refused_with_nothing_written(cli, emulator, runs_dir, tmp_path):
    n = 400
    config, data = shaped_job(tmp_path, n, pad="x" * (PARALLEL_OUTPUT_BYTES // (n - 20)), per_shard=150, every=50)
    path = tmp_path / "job" / "job.jsonl"
    cli("create", config, "--run", "changed")
    cli("submit", "changed")
    cli("download", "changed")
    run = runs_dir / "changed"

    # The last refused row (a worker parses it) no longer reads as JSON; the file keeps its size.
    rows = input_rows(data)
    row = [row for row in rows if b"[[fail:400]]" in row][-1]
    path.write_bytes(data.replace(row, b"[" + row[1:]))
    result = cli("process", "changed", code=2)
    assert "job.jsonl has changed since the run was created" in result.stderr
    assert "Traceback" not in result.output
    assert not (run / "output.jsonl").exists() and temp_files(run) == []

    # The last rows cut off, and the run told that is what it was made from: paid answers have no row.
    cut = data[: data.index(rows[-3])]
    path.write_bytes(cut)
    ledger = Ledger.load(RunPaths.of(runs_dir, "changed"))
    ledger.run.input.update(bytes=len(cut), sha256=hashlib.sha256(cut).hexdigest())
    ledger.commit()
    result = cli("process", "changed", code=2)
    assert f"3 requests of run changed have no row in job/job.jsonl (the first: id 'r{n - 2:04d}')" in result.stderr
    assert not (run / "output.jsonl").exists() and temp_files(run) == []


def test_a_worker_that_fails_leaves_no_output_and_the_next_process_writes_it(cli, emulator, runs_dir, tmp_path):
    n = 400
    config, data = shaped_job(tmp_path, n, pad="x" * (PARALLEL_OUTPUT_BYTES // (n - 20)), per_shard=150, every=50)
    cli("create", config, "--run", "full")
    for step in ("submit", "status", "download"):
        cli(step, "full")
    run = runs_dir / "full"

    def no_room() -> None:  # a file past 4 MB cannot be written (EFBIG), as on a full disk; workers inherit it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    full = batchpipe("process", "full", preexec_fn=no_room)  # merges (a small index), then fails writing
    assert full.returncode == 1, full.stderr
    assert "File too large" in full.stderr and "Traceback" not in full.stderr
    assert not (run / "output.jsonl").exists() and temp_files(run) == []
    assert json.loads((run / "state.json").read_text())["run"]["output"] is None

    cli("process", "full", code=6)
    output = (run / "output.jsonl").read_bytes()
    assert output == expected_output(data, output)
    assert check_outcomes(data, output) == {"answered": 300, "failed": 60, "truncated": 40, "retried": 0}


def test_a_killed_process_leaves_no_worker_behind_and_the_next_one_writes_the_output(cli, emulator, runs_dir,
                                                                                       tmp_path):
    n = 400
    config, data = shaped_job(tmp_path, n, pad="x" * (PARALLEL_OUTPUT_BYTES // (n - 20)), per_shard=150, every=50)
    run_id = f"killed-{os.getpid()}"  # names its processes (their command line) among the suite's
    cli("create", config, "--run", run_id)
    for step in ("submit", "status", "download"):
        cli(step, run_id)
    cli("process", run_id, code=6)
    run = runs_dir / run_id
    written = (run / "output.jsonl").read_bytes()
    (run / "output.jsonl").unlink()  # the next process writes it again, and nothing else

    proc = subprocess.Popen([PYTHON, "-m", "batchpipe", "process", run_id], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in run.glob(".output.jsonl.*.tmp")):  # the workers are writing
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)  # looked at again: this loop must not take a core from them
    proc.kill()  # as kill -9: no cleanup in the process that started the workers
    proc.wait()

    def ours() -> list[str]:  # processes of this run still alive: the workers, if they outlived it
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                if run_id.encode() in cmdline.read_bytes().split(b"\0"):
                    found.append(cmdline.parent.name)
        return found

    while ours():  # a worker stops once it sees the process that started it is gone
        assert time.monotonic() < deadline, f"workers left behind: {ours()}"
        time.sleep(0.005)
    cli("process", run_id, code=6)  # not "run is busy": no worker holds the run's lock
    assert (run / "output.jsonl").read_bytes() == written
    cli("recover", run_id)  # the killed pass's parts are removed
    assert temp_files(run) == []
