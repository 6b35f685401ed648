"""YAML aliases that expand past a small bound ("billion laughs") are a config error naming the
file and line, found while the file is parsed, before anything grows; ordinary anchors work."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import review_rows, write_job


def laughs(levels: int) -> str:
    """Each level lists the one before nine times: 9**levels strings once expanded."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels + 1):
        lines.append(f"  l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]")
    return "params:\n" + "\n".join(lines) + "\n"


def job_with(tmp_path: Path, extra: str) -> Path:
    config = write_job(tmp_path / "job", review_rows(2))
    text = config.read_text()
    text = text[: text.index("params:")] + extra + text[text.index("output:") :]
    config.write_text(text)
    return config


@pytest.mark.parametrize("levels", [5, 9], ids=["59049-values", "billion-laughs"])
def test_aliases_that_expand_past_the_bound_are_refused(cli, runs_dir, tmp_path, levels):
    config = job_with(tmp_path, laughs(levels))
    line = next(i for i, t in enumerate(config.read_text().splitlines(), 1) if t.startswith("  l4:"))
    for command in ("create", "estimate"):
        result = cli(command, config, code=2)
        assert f"job.yaml line {line}: YAML aliases here expand to more than 10,000 values" in result.stderr
        assert "Traceback" not in result.output
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


def test_anchors_used_as_intended_still_work(cli, runs_dir, tmp_path):
    extra = (
        "params:\n"
        "  max_tokens: 20\n"
        "  response_format: &fmt {type: json_schema, json_schema: {name: v, schema: {type: object}}}\n"
        "  metadata: {a: &word shared, b: *word}\n"
    )
    config = job_with(tmp_path, extra)
    cli("create", config, "--run", "anchors")
    line = (runs_dir / "anchors" / "shards" / "00001.a1.jsonl").read_text().splitlines()[0]
    assert '"metadata":{"a":"shared","b":"shared"}' in line


def test_a_recursive_alias_is_refused(cli, runs_dir, tmp_path):
    config = job_with(tmp_path, "params:\n  loop: &loop [1, *loop]\n")
    result = cli("create", config, code=2)
    assert "job.yaml line" in result.stderr and "refers to itself" in result.stderr
    assert "Traceback" not in result.output
