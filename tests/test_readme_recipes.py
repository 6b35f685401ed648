"""The README's first hour: its recipes, pasted in order, work (against the emulator, not a paid key).

Every `batchpipe` line of the bash (and cron) blocks from "A real job" to "Cost, budget and the
provider's queue" is run as written, in the README's order, in a directory holding the repo's
configs/. The emulator fixture stands in for `batchpipe emulator` and for the key the
recipes export; `VAR=value` prefixes and `export` lines are left to it.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("## A real job", "### Rehearse against the emulator first", "### From cron",
            "### Cost, budget and the provider's queue")


def recipe_commands() -> list[list[str]]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,3} .*)$", readme, flags=re.M)
    commands = []
    for heading, body in zip(parts[1::2], parts[2::2]):
        if heading.strip() not in SECTIONS:
            continue
        for lang, block in re.findall(r"```(bash|cron)\n(.*?)```", body, flags=re.S):
            for line in block.splitlines():
                if lang == "cron":  # m h dom mon dow  cd DIR && COMMAND >> LOG 2>&1
                    line = line.split("&&", 1)[1].split(">>", 1)[0]
                words = shlex.split(line, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                    words.pop(0)  # OPENAI_BASE_URL=... : the emulator fixture's environment instead
                if words and Path(words[0]).name == "batchpipe" and words[1:2] != ["emulator"]:
                    commands.append(words[1:])
    return commands


def test_the_recipes_work_pasted_one_after_another(cli, emulator, runs_dir, tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    commands = recipe_commands()
    assert ["run", "configs/reviews.yaml", "--wait"] in commands and ["tick", "--all"] in commands
    for args in commands:
        result = cli(*args, code=None)
        assert result.exit_code == 0, f"`batchpipe {shlex.join(args)}` exited {result.exit_code}:\n{result.output}"
    for run in ("reviews-nov", "rehearsal", "reviews-canary"):
        assert (runs_dir / run / "output.jsonl").is_file()
    assert emulator.counts["duplicate_creates"] == 0


def test_a_canary_on_a_run_that_has_sent_says_how_to_get_one(cli, emulator, tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    cli("run", "configs/reviews.yaml", "--wait")
    refused = cli("run", "configs/reviews.yaml", "--canary", "5", "--wait", code=2)
    assert "already sent shards" in refused.stderr
    assert "batchpipe run CONFIG --run NEW_ID --canary 5" in refused.stderr
