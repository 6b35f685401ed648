"""Post-processing of configs/dialogue.yaml: one file per language, with noisy AAC utterances.

    python3 configs/dialogue_hooks.py runs/dialogue-nov/output.jsonl dialogue_out/

reads the run's merged output and writes `dialogue_out/aac_conversations_<lang>.jsonl`: per
scenario its turns, each AAC user's turn with `noisy` beside `text` (the same message as typed
on a QWERTY keyboard with a few slips of the finger: training data for a corrector, as the seed's
augmentation step made). Deterministic: the same output gives the same files. Rows whose request
failed (`dialogue_error`) are counted and left out. Each file is written whole or not at all (a
temporary file renamed into place), so running it again after a crash is safe.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

KEY = "dialogue"  # output.key of dialogue.yaml

# Neighbouring keys on a QWERTY keyboard: the slips a tired finger makes.
ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
NEIGHBOURS = {
    ch: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)) for row in ROWS for i, ch in enumerate(row)
}
SLIP_RATE = 0.08  # share of letters that slip


def noisy(text: str, seed: str) -> str:
    """`text` with about SLIP_RATE of its letters replaced by a neighbouring key (seeded: stable)."""
    rng = random.Random(seed)
    out = []
    for ch in text:
        near = NEIGHBOURS.get(ch.lower())
        if near and rng.random() < SLIP_RATE:
            slip = rng.choice(near)
            ch = slip.upper() if ch.isupper() else slip
        out.append(ch)
    return "".join(out)


def conversation(row: dict) -> dict:
    turns = []
    for n, turn in enumerate(row[KEY]["turns"]):
        turn = dict(turn)
        if turn.get("speaker") == "aac_user":
            turn["noisy"] = noisy(turn["text"], f"{row['scenario_id']}/{n}")
        turns.append(turn)
    return {"scenario_id": row["scenario_id"], "lang": row["lang"], "situation": row["situation"], "turns": turns}


def write_atomic(path: Path, lines: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(output_jsonl: str, out_dir: str) -> int:
    by_lang: dict[str, list[str]] = {}
    failed = 0
    with open(output_jsonl, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get(KEY) is None:  # the request failed for good: its error is under dialogue_error
                failed += 1
                continue
            by_lang.setdefault(row["lang"], []).append(json.dumps(conversation(row), ensure_ascii=False) + "\n")
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    for lang, lines in sorted(by_lang.items()):
        path = target / f"aac_conversations_{lang}.jsonl"
        write_atomic(path, lines)
        print(f"{path}: {len(lines)} conversation(s)")
    if failed:
        print(f"{failed} row(s) left out: their request failed (see {KEY}_error in {output_jsonl})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 configs/dialogue_hooks.py RUNS/RUN/output.jsonl OUT_DIR")
    sys.exit(main(sys.argv[1], sys.argv[2]))
