#!/usr/bin/env python3
"""Benchmark: time and peak memory of each step of a whole run, at two dataset sizes.

Each step runs as its own `batchpipe` process (as a user runs it), against an emulator in
another process, so the memory figures are batchpipe's alone. Memory should stay flat as the
dataset grows: compare the peak RSS of each step across the sizes.

    .venv/bin/python scripts/bench.py                  # 10,000 and 100,000 rows
    .venv/bin/python scripts/bench.py --rows 5000 50000 --shard 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

STEPS = [["create", "{config}", "--run", "bench"], ["submit", "bench"], ["download", "bench"], ["process", "bench"]]


def write_job(directory: Path, rows: int, shard: int) -> Path:
    with open(directory / "rows.jsonl", "w", encoding="utf-8") as f:
        for i in range(1, rows + 1):
            f.write(json.dumps({"id": f"row-{i}", "stars": i % 5 + 1, "text": f"review text number {i} " * 4}) + "\n")
    config = directory / "job.yaml"
    config.write_text(
        "model: gpt-4o-mini\n"
        "input: {path: rows.jsonl, id: id}\n"
        "prompt: {system: You judge film reviews., user: 'Review ({stars} stars): {text}'}\n"
        "params: {max_tokens: 5}\n"
        f"limits: {{max_requests_per_shard: {shard}}}\n",
        encoding="utf-8",
    )
    return config


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit code) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def wait_listening(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url.replace("/v1", "/_emulator/counts"), timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def bench(rows: int, shard: int, port: int) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = write_job(work, rows, shard)
        emu = subprocess.Popen(
            [sys.executable, "-m", "batchpipe.emulator", "--port", str(port),
             "--validating-seconds", "0", "--in-progress-seconds", "0", "--finalizing-seconds", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        base_url = f"http://127.0.0.1:{port}/v1"
        env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench", "BATCHPIPE_RUNS_DIR": str(work / "runs")}
        results = []
        try:
            wait_listening(base_url)
            for step in STEPS:
                args = [a.format(config=config) for a in step]
                seconds, mib, code = timed([sys.executable, "-m", "batchpipe", *args], env, work)
                if code not in (0, 3):
                    raise SystemExit(f"batchpipe {' '.join(args)} exited {code}")
                results.append((step[0], seconds, mib))
        finally:
            emu.terminate()
            emu.wait()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shard", type=int, default=50_000, help="max_requests_per_shard")
    parser.add_argument("--port", type=int, default=18089)
    args = parser.parse_args()
    print(f"{'rows':>9} {'step':<9} {'seconds':>8} {'rows/s':>9} {'peak MiB':>9}")
    for n in args.rows:
        for step, seconds, mib in bench(n, args.shard, args.port):
            print(f"{n:>9} {step:<9} {seconds:>8.2f} {n / seconds:>9.0f} {mib:>9.1f}")


if __name__ == "__main__":
    main()
