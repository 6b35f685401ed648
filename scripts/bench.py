#!/usr/bin/env python3
"""Benchmark the local stages, `create` and `process`, against what the JSON library alone does.

It writes N synthetic review rows and a job config (the README's review-style job), then times,
each in its own process (as a user runs it, so each peak RSS is that step's alone):

  write baseline  a plain loop: read and parse each row, build the same request dict, write it with orjson
  create          `batchpipe create` of the job
  parse baseline  a plain loop: read and parse every result line with orjson
  process         `batchpipe process` of the run: parse, index, join, write the merged output

Between create and process it plays the service: for every shard it writes a result file in the
Batch API's format (lines shuffled, a few percent failed with a 400 so nothing is retried) and
marks the shard downloaded in the ledger. No network is involved. This is a benchmark a person
runs, not a test: the figures depend on the machine.

    .venv/bin/python scripts/bench.py                 # 1,000,000 rows
    .venv/bin/python scripts/bench.py --rows 300000
    .venv/bin/python scripts/bench.py --rows 300000 --repeat 3   # each step the fastest of 3 runs

With --repeat, a stage and its baseline take turns, so that both see the machine as it is then.
The rows' ids ascend (r00000001, ...); with --scattered-ids they are 32 hex digits in no order, as
UUIDs and hashes are, which the index must sort. Last, it says what a second process gains on this
machine: how much faster two processes parse the result lines, half each, than one parses them all
(2.00 on two whole cores; a virtual machine's two cores may give much less).

    .venv/bin/python scripts/bench.py --rows 300000 --scattered-ids

Every step runs with Python's bytecode cached, batchpipe's compiled before the first (as an
installed package has it), whatever PYTHONDONTWRITEBYTECODE says in the calling shell.

After the table it times the everyday commands, each the best of a few runs: `batchpipe --help`,
and `status` (the table, and --json) and `list` of a finished run of 1,000 shards, made by the
real create and process (one request per shard, answered as above). `--cli-only` runs just that.

`--sync N` times sync mode instead: it starts `batchpipe emulator` on a free loopback port and
sends the same N requests with a plain ThreadPoolExecutor of the raw `openai` client and with
`batchpipe run RUN --sync`, with the same number of workers (`--sync-workers`, default 8), at
0 and 20 ms per answer (`--sync-latency-ms`), and prints requests/s of both and their ratio.

    .venv/bin/python scripts/bench.py --sync 2000
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

MODEL = "gpt-4o-mini"
SYSTEM = "You judge film reviews. Answer with one word, positive or negative."
# The project's targets (issue 9): each stage's speed as a share of its baseline's, and peak RSS.
TARGETS = {"create": 0.75, "process": 0.5}
TARGET_RSS_MIB = 300
FAILED_SHARE = 0.03  # of the requests, answered with a 400 in the error file

JOB = f"""\
model: {MODEL}
endpoint: /v1/chat/completions
input: {{path: rows.jsonl, id: review_id}}
prompt:
  system: {SYSTEM}
  user: "Review ({{stars}} stars): {{text}}"
params: {{temperature: 0, max_tokens: 5}}
output: {{key: verdict}}
"""

WORDS = "a quiet patient film that earns every minute of its running time the plot collapses in third act".split()


def write_job(work: Path, rows: int, scattered: bool = False) -> None:
    """N review rows, their ids ascending (r00000001...), or with `scattered` 32 hex digits in no
    order, as UUIDs and hashes are; and the job config."""
    rng, ids = random.Random(1), random.Random(3)
    with open(work / "rows.jsonl", "wb") as f:
        for i in range(1, rows + 1):
            text = " ".join(rng.choices(WORDS, k=rng.randint(12, 40)))
            review_id = f"{ids.getrandbits(128):032x}" if scattered else f"r{i:08d}"
            f.write(orjson.dumps({"review_id": review_id, "stars": i % 5 + 1, "text": text}) + b"\n")
    (work / "job.yaml").write_text(JOB, encoding="utf-8")


# -- the baselines (run in a child process: `bench.py --baseline write|parse DIR`) -----------------
def baseline_write(work: Path) -> None:
    """Read the rows, build each request dict as create does, write the lines: the JSON library's speed."""
    with open(work / "rows.jsonl", "rb") as src, open(work / "baseline-requests.jsonl", "wb") as out:
        for line in src:
            row = orjson.loads(line)
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Review ({row['stars']} stars): {row['text']}"},
                ],
                "temperature": 0,
                "max_tokens": 5,
            }
            request = {"custom_id": row["review_id"], "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(orjson.dumps(request, option=orjson.OPT_APPEND_NEWLINE))


def baseline_parse(work: Path) -> None:
    """Read and parse every result line: the JSON library's speed at what process reads."""
    parse_share(work, 0, 1)


def parse_share(work: Path, k: int, of: int) -> None:
    """Parse every `of`-th result line from the k-th on: a share of the parse baseline's work."""
    lines = 0
    for path in sorted((work / "runs" / "bench" / "results").glob("*.jsonl")):
        with open(path, "rb") as f:
            for line in itertools.islice(f, k, None, of):
                lines += orjson.loads(line)["custom_id"] is not None
    assert lines > 0


def second_core_gain(work: Path, env: dict[str, str], repeat: int) -> float:
    """How much faster two processes parse the result lines (half each, at once) than one does all:
    what a worker per core can gain on this machine, at best. 2.0 on two real cores."""
    me = [sys.executable, str(Path(__file__).resolve()), "--parse-share"]
    one = two = float("inf")
    for _ in range(max(repeat, 3)):
        start = time.perf_counter()
        subprocess.run([*me, "0/1", str(work)], env=env, check=True)
        one = min(one, time.perf_counter() - start)
        start = time.perf_counter()
        halves = [subprocess.Popen([*me, f"{k}/2", str(work)], env=env) for k in range(2)]
        if any(half.wait() for half in halves):
            raise SystemExit("the parse of half the result lines failed")
        two = min(two, time.perf_counter() - start)
    return one / two


# -- playing the service -------------------------------------------------------------------------
def answer_line(rng: random.Random, custom_id: str, n: int) -> tuple[bool, bytes]:
    """(ok, one line of an output or error file) for a request, in the Batch API's format."""
    if rng.random() < FAILED_SHARE:
        body = {"error": {"message": "Invalid request (synthetic).", "type": "invalid_request_error",
                          "param": None, "code": "invalid_request"}}
        status = 400
    else:
        status = 200
        body = {
            "id": f"chatcmpl-{n:012x}", "object": "chat.completion", "created": 1_700_000_000, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": rng.choice(("positive", "negative")),
                                                  "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41},
            "system_fingerprint": "fp_bench",
        }
    record = {"id": f"batch_req_{n:024x}", "custom_id": custom_id,
              "response": {"status_code": status, "request_id": f"req_{n:024x}", "body": body}, "error": None}
    return status == 200, orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def fake_service(work: Path) -> int:
    """Answer every shard of run `bench` as the service would and mark it downloaded; return the lines."""
    from batchpipe import fsio
    from batchpipe.ledger.model import Batch, ShardState, Upload
    from batchpipe.ledger.store import Ledger
    from batchpipe.paths import RunPaths

    ledger = Ledger.load(RunPaths.of(work / "runs", "bench"))
    rng = random.Random(2)
    total = 0
    for shard in ledger.shards:
        ok_lines, error_lines = [], []
        with open(ledger.paths.root / shard.file.path, "rb") as f:
            for line in f:
                total += 1
                ok, answer = answer_line(rng, orjson.loads(line)["custom_id"], total)
                (ok_lines if ok else error_lines).append(answer)
        refs = []
        for kind, lines in (("output", ok_lines), ("errors", error_lines)):
            rng.shuffle(lines)  # the service returns lines in any order
            path = ledger.paths.result_file(shard.id, kind)
            refs.append(ledger.file_ref(path, *fsio.write_lines_atomic(path, iter(lines))) if lines else None)
        counts = {"total": shard.requests, "completed": len(ok_lines), "failed": len(error_lines)}
        shard.upload = Upload(filename=f"bench--{shard.id}.jsonl", intent_at=time.time(), file_id=f"file-{shard.id}")
        shard.batch = Batch(metadata={}, intent_at=time.time(), id=f"batch_{shard.id}", status="completed",
                            request_counts=counts, output_file_id="file-out", error_file_id="file-err")
        shard.outputs, shard.errors_file = refs
        shard.state = ShardState.COMPLETED
    ledger.commit({"event": "bench: results written by scripts/bench.py"})
    return total


# -- timing --------------------------------------------------------------------------------------
# A child's peak RSS (wait4's ru_maxrss) starts at its parent's at the moment it is spawned, so each
# step is spawned by this small launcher, started afresh, rather than by the grown bench process.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    f.write(f"{seconds} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one child process; exits if it fails."""
    report = cwd / ".timed"
    with tempfile.TemporaryFile() as err:
        subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *cmd],
                       cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err, check=True)
        seconds, kib, code = report.read_text().split()
        if int(code) not in (0, 6):  # 6: done, some rows failed (as they should here)
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} exited {code}:\n{err.read().decode(errors='replace')}")
    return float(seconds), int(kib) / 1024


def timing_env() -> dict[str, str]:
    """The environment every timed step runs in: Python's bytecode cached where Python keeps it
    (beside the sources, as pip left the libraries'), batchpipe's compiled first, as an installed
    package has it. A shell that sets PYTHONDONTWRITEBYTECODE would otherwise make every step
    compile batchpipe anew (0.1 s each)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    import batchpipe

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(batchpipe.__file__).parent)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def in_turns(k: int, steps: list[tuple[list[str], object]], cwd: Path, env: dict[str, str]) -> list[tuple[float, float]]:
    """Each of `steps` (a command, and what to do ahead of each run of it, or None) run `k` times,
    the steps taking turns; the fastest run of each (seconds, and that run's peak RSS). This machine's
    speed changes from minute to minute: a stage and its baseline run side by side see the same
    machine, so their ratio holds where their times alone do not."""
    runs: list[list[tuple[float, float]]] = [[] for _ in steps]
    for _ in range(k):
        for (cmd, before), done in zip(steps, runs):
            if before is not None:
                before()
            os.sync()  # what an earlier step wrote goes to disk now, not during (and into the fsyncs of) this one
            done.append(timed(cmd, cwd, env))
    return [min(done) for done in runs]


# -- the everyday commands ------------------------------------------------------------------------
CLI_SHARDS = 1_000
CLI_RUNS = 5  # each command's figure is the best of this many runs


def batchpipe_command() -> list[str]:
    """The `batchpipe` a user runs: the console script beside this Python (`python -m batchpipe`
    if it has none, which ends a little later: it leaves through Python's teardown)."""
    script = Path(sys.executable).with_name("batchpipe")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "batchpipe"]


def cli_run(work: Path, env: dict[str, str]) -> tuple[Path, float]:
    """A finished run of CLI_SHARDS shards (one request each) in work/cli; (its dir, seconds to make it)."""
    import yaml

    start = time.perf_counter()
    here = work / "cli"
    here.mkdir()
    write_job(here, CLI_SHARDS)
    job = yaml.safe_load(JOB)
    job.setdefault("limits", {})["max_requests_per_shard"] = 1
    (here / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    env = {**env, "BATCHPIPE_RUNS_DIR": str(here / "runs")}
    bp = batchpipe_command()
    timed([*bp, "create", "job.yaml", "--run", "bench"], here, env)
    fake_service(here)
    timed([*bp, "process", "bench"], here, env)
    return here, time.perf_counter() - start


def cli_figures(work: Path, env: dict[str, str]) -> None:
    """Print the best-of-CLI_RUNS seconds of `--help`, and of `status` and `list` of a finished run."""
    here, made = cli_run(work, env)
    env = {**env, "BATCHPIPE_RUNS_DIR": str(here / "runs")}
    bp = batchpipe_command()
    print(f"\neveryday commands, best of {CLI_RUNS} runs "
          f"(a finished run of {CLI_SHARDS:,} shards, made in {made:.0f} s by create and process):")
    for label, args in (("batchpipe --help", ["--help"]), ("batchpipe status --help", ["status", "--help"]),
                        ("batchpipe status RUN", ["status", "bench"]), ("batchpipe status RUN --json", ["status", "bench", "--json"]),
                        ("batchpipe list", ["list"])):
        best = min(timed([*bp, *args], here, env)[0] for _ in range(CLI_RUNS))
        print(f"  {label:<28} {best:6.2f} s")
# -- sync mode against a plain thread pool of the raw client (`--sync N`) -------------------------
# The baseline: the same request bodies (read from the run's shard files), sent by a plain
# ThreadPoolExecutor of the raw `openai` client, answers thrown away. Run as `python -c RAW_POOL
# BASE_URL WORKERS SHARDS_DIR REPORT`; it writes the seconds its pool took (startup excluded) to REPORT.
RAW_POOL = """
import sys, time, json, pathlib
from concurrent.futures import ThreadPoolExecutor
import openai
base_url, workers, shards, report = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
bodies = [json.loads(line)["body"] for path in sorted(shards.glob("*.jsonl")) for line in open(path, "rb")]
client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
start = time.perf_counter()
with ThreadPoolExecutor(max_workers=workers) as pool:
    answers = list(pool.map(lambda body: client.chat.completions.create(**body), bodies))
seconds = time.perf_counter() - start
assert len(answers) == len(bodies) and all(a.choices for a in answers)
pathlib.Path(report).write_text(f"{seconds}")
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(work: Path, latency_ms: float) -> tuple[subprocess.Popen, str]:
    """`batchpipe emulator` on a free loopback port, its rate limits out of the way; (process, base URL).

    One request is sent before it is timed: the first loads its tokenizer (for the x-ratelimit
    headers), which neither side should pay for."""
    import urllib.request

    port = free_port()
    cmd = [sys.executable, "-m", "batchpipe", "emulator", "--port", str(port), "--rate-limit-requests", "1000000000",
           "--rate-limit-tokens", "1000000000000", "--sync-latency-seconds", str(latency_ms / 1000)]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    warm_up = urllib.request.Request(f"{base_url}/chat/completions", method="POST", headers={
        "Authorization": "Bearer bench", "Content-Type": "application/json"},
        data=orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}))
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(warm_up, timeout=30).read()
            return proc, base_url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the emulator did not start: {' '.join(cmd)}")
            time.sleep(0.05)


def send_phase(run_dir: Path) -> float:
    """Seconds from the first request handed out to the last answer journaled, from the run's events."""
    events = [orjson.loads(line) for line in open(run_dir / "events.jsonl", "rb")]
    starts = [e["ts"] for e in events if e.get("event") == "sync"]
    ends = [e["ts"] for e in events if e.get("call") == "sync"]
    return max(ends) - min(starts)


def timed_cpu(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process (CPU: user + system, of it and what it started)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, _ = timed(cmd, cwd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def bench_sync(work: Path, requests: int, workers: int, latency_ms: float, repeat: int) -> None:
    """Time `batchpipe run RUN --sync` against RAW_POOL, the same requests to the same emulator.

    The two take turns, `repeat` times each, and the fastest of each counts: the machine is shared."""
    work.mkdir(parents=True, exist_ok=True)
    write_job(work, requests)
    # free (no budget check in the way) and `workers` requests in flight, as the pool has
    (work / "sync.yaml").write_text(JOB + f"mode: sync\nsync: {{max_workers: {workers}}}\n"
                                    "pricing: {input_per_million: 0, output_per_million: 0}\n", encoding="utf-8")
    emulator, base_url = start_emulator(work, latency_ms)
    raw, ours, raw_send, ours_send = [], [], [], []
    try:
        env = {**os.environ, "BATCHPIPE_RUNS_DIR": str(work / "runs"), "OPENAI_API_KEY": "bench",
               "OPENAI_BASE_URL": base_url}
        bp = [sys.executable, "-m", "batchpipe"]
        for n in range(1, repeat + 1):
            run_dir = work / "runs" / f"sync-{n}"
            subprocess.run([*bp, "create", "sync.yaml", "--run", run_dir.name], cwd=work, env=env, check=True,
                           stdout=subprocess.DEVNULL)  # create is timed by the main benchmark, not here
            pool_seconds = work / ".pool-seconds"
            raw.append(timed_cpu([sys.executable, "-c", RAW_POOL, base_url, str(workers), str(run_dir / "shards"),
                                  str(pool_seconds)], work, env))
            raw_send.append(float(pool_seconds.read_text()))
            ours.append(timed_cpu([*bp, "run", run_dir.name, "--json"], work, env))
            ours_send.append(send_phase(run_dir))
    finally:
        emulator.terminate()
        emulator.wait()
    print(f"sync: {requests:,} requests, {workers} workers, emulator answers after {latency_ms:g} ms; "
          f"{os.cpu_count()} cores; fastest of {repeat}")
    print(f"{'':<28} {'seconds':>8} {'requests/s':>11} {'vs raw pool':>11} {'CPU ms/request':>14}")
    for name, seconds, base, cpu in (
        ("raw pool (whole process)", min(raw)[0], None, min(raw)[1]),
        ("run --sync (whole command)", min(ours)[0], min(raw)[0], min(ours)[1]),
        ("raw pool (sending only)", min(raw_send), None, None),
        ("run --sync (sending only)", min(ours_send), min(raw_send), None),
    ):
        ratio = f"{base / seconds:.2f}x" if base else ""
        per_request = f"{cpu / requests * 1000:.2f}" if cpu is not None else ""
        print(f"{name:<28} {seconds:>8.2f} {requests / seconds:>11,.0f} {ratio:>11} {per_request:>14}")
    print("(whole: as a user runs it, interpreter start and imports included; sending only: the raw pool's "
          "pool.map, batchpipe's first request to its last answer journaled, from events.jsonl)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="run each step (baselines too) K times and count the fastest (default 1)")
    parser.add_argument("--keep", type=Path, help="work in this (new) directory and keep it, instead of a temp dir")
    parser.add_argument("--no-tokenizer", action="store_true",
                        help="run batchpipe as if bpe-openai were not installed (tokens estimated from bytes)")
    parser.add_argument("--profile", action="store_true", help="run create and process under cProfile (DIR/*.prof)")
    parser.add_argument("--cli-only", action="store_true", help="time only the everyday commands (--help, status, list)")
    parser.add_argument("--sync", type=int, metavar="N",
                        help="instead: time sync mode (`run --sync`) against a plain thread pool of the openai client, "
                             "N requests each, against `batchpipe emulator`")
    parser.add_argument("--sync-workers", type=int, default=8, metavar="W", help="workers of both (default 8)")
    parser.add_argument("--sync-latency-ms", type=float, action="append", metavar="MS",
                        help="the emulator's answer time (repeatable; default: 0 and 20)")
    parser.add_argument("--sync-repeat", type=int, default=3, metavar="K",
                        help="time each side K times, the fastest counts (default 3)")
    parser.add_argument("--scattered-ids", action="store_true",
                        help="give the rows ids of 32 hex digits in no order (as UUIDs and hashes are), "
                             "not ascending ones")
    parser.add_argument("--baseline", choices=("write", "parse"), help=argparse.SUPPRESS)
    parser.add_argument("--parse-share", metavar="K/N", help=argparse.SUPPRESS)
    parser.add_argument("dir", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile and args.no_tokenizer:
        parser.error("--profile and --no-tokenizer cannot be combined")
    if args.baseline:
        (baseline_write if args.baseline == "write" else baseline_parse)(args.dir)
        return
    if args.parse_share:
        k, of = map(int, args.parse_share.split("/"))
        parse_share(args.dir, k, of)
        return
    if args.sync:
        for latency in args.sync_latency_ms or (0.0, 20.0):
            with tempfile.TemporaryDirectory() as tmp:
                bench_sync((args.keep / f"sync-{latency:g}ms") if args.keep else Path(tmp), args.sync,
                           args.sync_workers, latency, args.sync_repeat)
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=args.keep is None)
        env = {**timing_env(), "BATCHPIPE_RUNS_DIR": str(work / "runs"), "OPENAI_API_KEY": "bench"}
        me = [sys.executable, str(Path(__file__).resolve()), "--baseline"]
        bp = batchpipe_command()
        if args.profile:
            bp = [sys.executable, "-m", "cProfile", "-o", "{stage}.prof", "-m", "batchpipe"]
        if args.no_tokenizer:  # an import of bpe_openai fails, as in an install without it
            hide = ("import sys; sys.modules['bpe_openai'] = None; sys.argv[0] = 'batchpipe'; "
                    "import batchpipe.cli as c; c.console()")
            bp = [sys.executable, "-c", hide]
        if args.cli_only:
            return cli_figures(work, env)
        write_job(work, args.rows, scattered=args.scattered_ids)
        from batchpipe.pipeline.tokens import counter_for

        method = counter_for(MODEL, tokenizer=not args.no_tokenizer).method
        ids = "scattered ids" if args.scattered_ids else "ascending ids"
        print(f"{args.rows:,} rows ({ids}); tokens counted by {method}; python {sys.version.split()[0]}; "
              f"{os.cpu_count()} cores; each step the fastest of {args.repeat} run(s), a stage and its baseline "
              "in turns")
        run, answered = work / "runs" / "bench", work / "answered"

        def fresh_run() -> None:  # before each create: none there
            shutil.rmtree(run, ignore_errors=True)

        def answered_run() -> None:  # before each process: the run as the service answered it
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(answered, run)

        create = [a.format(stage="create") for a in bp] + ["create", "job.yaml", "--run", "bench"]
        w, c = in_turns(args.repeat, [([*me, "write", str(work)], None), (create, fresh_run)], work, env)
        results = fake_service(work)
        shutil.copytree(run, answered)
        process = [a.format(stage="process") for a in bp] + ["process", "bench"]
        p0, p = in_turns(args.repeat, [([*me, "parse", str(work)], None), (process, answered_run)], work, env)
        print(f"{'stage':<16} {'seconds':>8} {'rows/s':>10} {'vs baseline':>11} {'peak RSS MiB':>12}  target")
        for name, (seconds, mib), base, target in (
            ("write baseline", w, None, None), ("create", c, w, TARGETS["create"]),
            ("parse baseline", p0, None, None), ("process", p, p0, TARGETS["process"]),
        ):
            ratio = base[0] / seconds if base else None
            shown = f"{ratio:.2f}x" if ratio is not None else ""
            verdict = ""
            if target is not None:
                met = ratio >= target and mib < TARGET_RSS_MIB
                verdict = f">= {target}x, < {TARGET_RSS_MIB} MiB: {'met' if met else 'MISSED'}"
            print(f"{name:<16} {seconds:>8.2f} {args.rows / seconds:>10,.0f} {shown:>11} {mib:>12.1f}  {verdict}")
        print(f"({results:,} result lines; the baselines skip what batchpipe adds: hashing, the index, checks, fsync)")
        gain = second_core_gain(work, env, args.repeat)
        print(f"this machine: two processes parse the result lines {gain:.2f}x as fast as one (2.00 would be two "
              "whole cores; the baselines use one core, create and process every core)")
        cli_figures(work, env)


if __name__ == "__main__":
    main()
