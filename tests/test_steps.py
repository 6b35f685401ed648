"""Multi-step jobs (`steps:`): a run moves through its steps, each a run of its own under the run
dir; later steps read the earlier answers; a kill anywhere resumes to the same output with no batch
paid twice; `status` shows the step; a bad step is refused before anything is paid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import batchpipe, read_jsonl, write_config

from batchpipe import crash

ECHO = "echo: "


def rows(n: int = 5) -> list[dict[str, Any]]:
    out = [{"pid": f"p{i}", "topic": f"topic {i}", "image_url": f"https://img.example/{i}.png"} for i in range(1, n + 1)]
    return out


def steps_job(directory: Path, data: list[dict[str, Any]] | None = None, **overrides: Any) -> Path:
    """A three-step job: caption (with the image), a question about the caption (with the whole
    dialogue so far), an answer to the question (with the dialogue again)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "photos.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (rows() if data is None else data)), encoding="utf-8")
    config: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "input": {"path": "photos.jsonl", "id": "pid"},
        "params": {"temperature": 0, "max_tokens": 200},
        "limits": {"max_requests_per_shard": 2},
        "steps": [
            {"name": "caption", "prompt": {"system": "You caption photos.", "user": "Caption the photo of {topic}.",
                                            "images": ["{image_url}"]},
             "output": {"key": "caption"}},
            {"name": "qna", "params": {"temperature": 0.7},
             "prompt": {"user": "Caption: {caption} Ask one question.", "history": True},
             "output": {"key": "question"}},
            {"name": "answer", "model": "gpt-4o",
             "prompt": {"system": "You answer.", "user": "Answer: {question}", "history": True},
             "output": {"key": "answer"}},
        ],
    }
    return write_config(directory / "job.yaml", config, **overrides)


def expected_row(row: dict[str, Any]) -> dict[str, Any]:
    """The emulator echoes the last user message: every step's answer can be recomputed."""
    caption = ECHO + f"Caption the photo of {row['topic']}."
    question = ECHO + f"Caption: {caption} Ask one question."
    answer = ECHO + f"Answer: {question}"
    return {**row, "caption": caption, "caption_attempts": 1, "question": question, "question_attempts": 1,
            "answer": answer, "answer_attempts": 1}


def bodies(emu, step_tag: str) -> list[dict[str, Any]]:
    """The request bodies the server received in the batches of one step (`<run>.<n>-<name>`)."""
    out = []
    for batch in emu.batches:
        if batch["metadata"].get("batchpipe_run") == step_tag:
            out += [json.loads(line) for line in emu.file_content(batch["input_file_id"]).splitlines()]
    return sorted(out, key=lambda r: r["custom_id"])


def test_three_steps_run_to_done_each_answer_on_its_row(cli, emulator, runs_dir, tmp_path):
    config = steps_job(tmp_path / "job")
    result = cli("run", config, "--run", "cap", "--wait", "--poll-interval", "0")
    assert f"output: {runs_dir / 'cap' / 'output.jsonl'} (5 answered, 0 failed)" in result.stdout
    # the log (not a terminal) tells each step's changes, and each step's start
    assert "cap 1-caption: shard 00001.a1 submitted" in result.output
    assert "cap step 2-qna created" in result.output and "cap 3-answer: done: 5 answered" in result.output

    assert read_jsonl(runs_dir / "cap" / "output.jsonl") == [expected_row(r) for r in rows()]
    # each step is a run of its own, with its own batches (tagged with the step), 3 shards of <= 2 rows each
    for step in ("1-caption", "2-qna", "3-answer"):
        assert (runs_dir / "cap" / "steps" / step / "state.json").is_file()
        assert len(bodies(emulator, f"cap.{step}")) == 5
    assert sorted(emulator.counts["creates_by_tag"].values()) == [1] * 9

    # what the server saw: the image in step 1; step 2 with the dialogue so far and its own params;
    # step 3 with its own model and system message, then the whole dialogue
    first = bodies(emulator, "cap.1-caption")[0]
    assert first["body"]["messages"] == [
        {"role": "system", "content": "You caption photos."},
        {"role": "user", "content": [{"type": "text", "text": "Caption the photo of topic 1."},
                                     {"type": "image_url", "image_url": {"url": "https://img.example/1.png"}}]},
    ]
    out = expected_row(rows()[0])
    turn1 = {"role": "user", "content": first["body"]["messages"][1]["content"]}
    second = bodies(emulator, "cap.2-qna")[0]["body"]
    assert (second["model"], second["temperature"]) == ("gpt-4o-mini", 0.7)
    assert second["messages"] == [
        turn1, {"role": "assistant", "content": out["caption"]},
        {"role": "user", "content": f"Caption: {out['caption']} Ask one question."},
    ]
    third = bodies(emulator, "cap.3-answer")[0]["body"]
    assert (third["model"], third["temperature"]) == ("gpt-4o", 0)
    assert third["messages"] == [
        {"role": "system", "content": "You answer."},
        turn1, {"role": "assistant", "content": out["caption"]},
        {"role": "user", "content": f"Caption: {out['caption']} Ask one question."},
        {"role": "assistant", "content": out["question"]},
        {"role": "user", "content": f"Answer: {out['question']}"},
    ]

    # done: status says so, for the run and step by step
    data = cli.json("status", "cap")["data"]
    assert data["run"] == "cap" and data["done"] is True
    assert data["output"] == str(runs_dir / "cap" / "output.jsonl")
    assert data["step"]["at"] == 3 and [s["state"] for s in data["step"]["steps"]] == ["done"] * 3
    # running it again changes nothing and sends nothing
    cli("run", "cap", "--wait", "--poll-interval", "0")
    assert emulator.counts["batch_creates"] == 9


def test_a_row_that_failed_in_a_step_keeps_its_error_and_is_not_sent_on(cli, emulator, runs_dir, tmp_path):
    data = rows(4)
    data[1]["topic"] += " [[fail:400]]"  # fails at step 1, permanently
    config = steps_job(tmp_path / "job", data, limits={"max_requests_per_shard": 10, "max_attempts": 1})
    result = cli("run", config, "--run", "f", "--wait", "--poll-interval", "0", code=6)
    assert "(3 answered, 1 failed)" in result.stdout
    assert "1 row(s) failed in step 1 (caption; the error is under caption_error): they were not sent" in result.output

    out = read_jsonl(runs_dir / "f" / "output.jsonl")
    assert [r["pid"] for r in out] == ["p1", "p2", "p3", "p4"]  # every row, at its place
    assert out[1]["caption"] is None and out[1]["caption_error"]["status_code"] == 400
    assert "question" not in out[1] and "answer" not in out[1]
    assert [out[i] for i in (0, 2, 3)] == [expected_row(data[i]) for i in (0, 2, 3)]
    # the failed row was never sent again
    assert [b["custom_id"] for b in bodies(emulator, "f.2-qna")] == ["p1", "p3", "p4"]
    assert [b["custom_id"] for b in bodies(emulator, "f.3-answer")] == ["p1", "p3", "p4"]
    # cron says the same
    tick = cli.json("tick", "f", code=6)["data"]["runs"][0]
    assert tick["outcome"] == "done_with_failures" and "failed in step 1 (caption" in tick["message"]


def test_when_every_row_failed_the_later_steps_are_skipped(cli, emulator, runs_dir, tmp_path):
    data = [{**r, "topic": r["topic"] + " [[fail:400]]"} for r in rows(2)]
    config = steps_job(tmp_path / "job", data)
    cli("run", config, "--run", "none", "--wait", "--poll-interval", "0", code=6)
    out = read_jsonl(runs_dir / "none" / "output.jsonl")
    assert [r["caption_error"]["status_code"] for r in out] == [400, 400]
    data = cli.json("status", "none")["data"]
    assert [s["state"] for s in data["step"]["steps"]] == ["done", "skipped", "skipped"]
    assert emulator.counts["batch_creates"] == 1


def test_status_shows_the_step_while_the_run_moves(cli, slow_emulator, runs_dir, tmp_path):
    config = steps_job(tmp_path / "job", limits={"max_requests_per_shard": 10})
    cli("run", config, "--run", "st", code=3)  # step 1's batch is sent and runs until the clock moves
    data = cli.json("status", "st")["data"]
    assert data["run"] == "st" and data["done"] is False and data["output"] is None
    assert data["step"]["at"] == 1 and data["step"]["name"] == "caption"
    assert [s["state"] for s in data["step"]["steps"]] == ["running", "waiting", "waiting"]
    assert "step 1 of 3 (caption): 1. caption running, 2. qna waiting, 3. answer waiting" in cli("status", "st").stdout

    slow_emulator.clock.advance(10)
    cli("run", "st", code=3)  # step 1 is merged; step 2 is created and sent
    data = cli.json("status", "st")["data"]
    assert data["step"]["at"] == 2 and [s["state"] for s in data["step"]["steps"]] == ["done", "running", "waiting"]
    assert "step 2 of 3 (qna)" in cli("status", "st").stdout
    # a finished step can still be looked at by its own id; `list` shows the run once
    past = cli.json("status", "st.1-caption")["data"]
    assert (past["step"]["at"], past["finished"], past["shard_states"]["merged"]) == (1, 5, 1)
    assert [r["run"] for r in cli.json("list")["data"]["runs"]] == ["st"]


def test_manual_commands_move_the_run_step_by_step(cli, emulator, runs_dir, tmp_path):
    config = steps_job(tmp_path / "job", rows(2), limits={"max_requests_per_shard": 10})
    cli("create", config, "--run", "m")
    for step in ("1-caption", "2-qna"):
        cli("submit", "m")
        cli("download", "m")
        result = cli("process", "m", code=3)  # this step is done; the next one is made, not yet sent
        assert f"step {step} done" in result.stdout
    cli("submit", "m")
    cli("download", "m")
    cli("process", "m")
    assert read_jsonl(runs_dir / "m" / "output.jsonl") == [expected_row(r) for r in rows(2)]


@pytest.mark.parametrize("crash_at", [
    "steps:after_input:1",  # step 2's input written, its run not made
    "run_create:before_publish:2",  # the run built (with step 1's), not published
    "run_create:before_publish:3",  # step 2's run built, not published
    "steps:after_create:2",  # step 3's run published
    "batch_create:after:3",  # step 2's first batch made, its id not recorded
    "steps:after_output:1",  # the final output written, not recorded
])
def test_kill_in_the_middle_of_a_multi_step_run_then_resume(cli, emulator, runs_dir, tmp_path, crash_at):
    expected = [expected_row(r) for r in rows(3)]  # what an unbroken run writes (the first test runs one)
    config = steps_job(tmp_path / "job", rows(3))
    killed = batchpipe("run", str(config), "--run", "crashy", "--wait", "--poll-interval", "0", crash_at=crash_at)
    assert killed.returncode == crash.EXIT_CODE, f"{crash_at} was never reached:\n{killed.stdout}{killed.stderr}"

    if (runs_dir / "crashy").exists():
        # as if a write of the run's own files had been killed too: the next pass removes its temp file
        (runs_dir / "crashy" / "steps" / ".2-qna.input.jsonl.x1y2.tmp").write_text("half a row")
        cli("recover", "crashy")
        cli("run", "crashy", "--wait", "--poll-interval", "0")
    else:  # killed before the run was published: creating it again is the resume
        cli("run", config, "--run", "crashy", "--wait", "--poll-interval", "0")
    assert [p.name for p in runs_dir.iterdir() if p.name.startswith(".")] == []
    assert read_jsonl(runs_dir / "crashy" / "output.jsonl") == expected
    assert emulator.counts["duplicate_creates"] == 0
    creates = {tag: n for tag, n in emulator.counts["creates_by_tag"].items() if tag.startswith("crashy.")}
    assert creates == {f"crashy.{step}/{shard}": 1 for step in ("1-caption", "2-qna", "3-answer")
                       for shard in ("00001.a1", "00002.a1")}
    assert [p.name for p in (runs_dir / "crashy" / "steps").iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------------------
# A bad step is refused before anything is made or paid for


def write_steps_config(tmp_path: Path, steps_text: str) -> Path:
    (tmp_path / "photos.jsonl").write_text('{"pid": "p1", "topic": "cats"}\n', encoding="utf-8")
    path = tmp_path / "job.yaml"
    path.write_text("model: gpt-4o-mini\ninput:\n  path: photos.jsonl\nsteps:\n" + steps_text, encoding="utf-8")
    return path


@pytest.mark.parametrize("steps_text, line, message", [
    ("  - prompt: {user: 'Caption {topic}'}\n    output: {key: caption}\n",
     5, "steps.0.name is required"),
    ("  - name: caption\n    prompt: {user: 'Caption {topic}'}\n    output: {key: caption}\n"
     "  - name: caption\n    prompt: {user: 'Ask about {caption}'}\n    output: {key: question}\n",
     8, "step name 'caption' is used twice (steps 1 and 2)"),
    ("  - name: caption\n    prompt: {user: 'Caption {topic}'}\n    output: {key: caption}\n"
     "  - name: qna\n    prompt: {user: 'Ask about {captoin}'}\n    output: {key: question}\n",
     9, "step 2 (qna): prompt.user uses {captoin}, which is neither a field of the input"),
    ("  - name: two words\n    prompt: {user: 'Caption {topic}'}\n    output: {key: caption}\n",
     5, "step name 'two words' must be 1-32 letters, digits"),
    ("  - name: caption\n    prompt: {user: 'Caption {topic}'}\n    output: {key: caption}\n"
     "  - name: again\n    prompt: {user: 'Again {caption}'}\n    output: {key: caption}\n",
     10, "steps 1 and 2 both write output.key 'caption'"),
    ("  - name: caption\n    prompt: {user: 'Caption {topic}'}\n",
     5, "steps.0.output is required"),
])
def test_a_bad_step_is_refused_with_its_line(cli, runs_dir, tmp_path, steps_text, line, message):
    config = write_steps_config(tmp_path, steps_text)
    result = cli("create", config, code=2)
    assert f"job.yaml line {line}: {message}" in result.output, result.output
    assert not runs_dir.exists() or [p for p in runs_dir.iterdir() if not p.name.startswith(".")] == []


def test_a_field_missing_in_a_later_row_is_found_before_step_1_is_paid(cli, emulator, runs_dir, tmp_path):
    data = rows(3)
    data[2]["topic"] = None  # step 1 could run; step 1 uses it too, so take a field only step 3 uses
    config = steps_job(tmp_path / "job", rows(3))
    text = config.read_text().replace("Answer: {question}", "Answer {question} for {audience}")
    config.write_text(text)
    lines = [json.dumps({**r, "audience": "kids"}) for r in rows(3)]
    lines[2] = json.dumps(rows(3)[2])
    (tmp_path / "job" / "photos.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("run", config, "--run", "late", "--wait", code=2)
    assert "photos.jsonl line 3: field 'audience' used by step 3 (answer) prompt.user is missing" in result.output
    assert emulator.counts["uploads"] == 0 and not (runs_dir / "late").exists()

    (tmp_path / "job" / "photos.jsonl").write_text("\n".join(lines[:2] + [json.dumps({**rows(3)[2], "audience": "x",
                                                                                        "question": "mine"})]) + "\n")
    result = cli("run", config, "--run", "late", "--wait", code=2)
    assert ("photos.jsonl line 3: the row already has a field 'question', which step 2 (qna) writes (its output.key "
            "is 'question')") in result.output
    assert "for the step in job/job.yaml" in result.output  # the user's config, not the run's copy
    assert emulator.counts["uploads"] == 0 and not (runs_dir / "late").exists()


def test_a_steps_runs_share_the_runs_dirs_learned_queue_limit(cli, emulator, runs_dir, tmp_path):
    from batchpipe.ops.queue_limits import FILE_NAME

    config = steps_job(tmp_path / "job", rows(4), limits={"max_requests_per_shard": 4}, steps=[
        {"name": "caption", "prompt": {"user": "Caption the photo of {topic}, in a few words."}, "output": {"key": "caption"}},
        {"name": "short", "prompt": {"user": "Ok?"}, "output": {"key": "ok"}},
    ])
    tokens = cli.json("estimate", config)["data"]["input_tokens"]
    emulator.options.enqueued_token_limit = tokens * 3 // 4  # step 1's one shard does not fit: refused once
    cli("create", config, "--run", "q")
    codes = [cli("tick", "--all", code=None).exit_code for _ in range(8)]
    assert codes[-1] == 0, codes
    assert [r["ok"] for r in read_jsonl(runs_dir / "q" / "output.jsonl")] == ["echo: Ok?"] * 4
    assert emulator.counts["token_limit_failures"] >= 1
    # what the refusal taught is kept for every run of the runs dir, not inside this run's steps
    assert (runs_dir / FILE_NAME).is_file()
    assert not list(runs_dir.glob(f"*/steps/{FILE_NAME}"))


def test_the_json_schema_checks_steps_as_the_loader_does(cli):
    import jsonschema

    schema = json.loads(cli("schema").stdout)
    good = {"model": "gpt-4o-mini", "input": {"path": "photos.jsonl"}, "steps": [
        {"name": "caption", "prompt": {"user": "Caption.", "images": ["{image_url}"]}, "output": {"key": "caption"}},
        {"name": "qna", "model": "gpt-4o", "params": {"temperature": 0.7},
         "prompt": {"user": "Caption: {caption}.", "history": True}, "output": {"key": "question"}},
    ]}
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(good)) == []
    for bad in ({**good, "steps": [{"prompt": {"user": "x"}, "output": {"key": "k"}}]},  # no name
                {**good, "steps": [{"name": "two words", "output": {"key": "k"}}]},
                {**good, "steps": [{"name": "a", "prompt": {"user": "x"}}]},  # no output.key
                {"model": "gpt-4o-mini", "input": {"path": "photos.jsonl"}}):  # neither prompt nor steps
        assert list(validator.iter_errors(bad)), bad


def test_a_cancelled_run_does_not_move_on_to_its_next_step_until_resumed(cli, emulator, runs_dir, tmp_path):
    config = steps_job(tmp_path / "job", rows(2), limits={"max_requests_per_shard": 10})
    cli("create", config, "--run", "c")
    cli("submit", "c")
    cli("download", "c")
    cli("cancel", "c")  # nothing running any more: the run is held
    tick = cli.json("tick", "c", code=5)["data"]["runs"][0]
    assert tick["outcome"] == "attention" and "held" in tick["message"]
    assert cli("process", "c", code=3).exit_code == 3  # step 1 merged; the run is not done, and stays held
    assert not (runs_dir / "c" / "steps" / "2-qna").exists()
    assert cli.json("status", "c")["data"]["step"]["at"] == 1
    cli("run", "c", "--wait", "--poll-interval", "0")  # resumes, and moves on
    assert read_jsonl(runs_dir / "c" / "output.jsonl") == [expected_row(r) for r in rows(2)]


def test_the_budget_is_the_whole_jobs_each_step_gets_what_the_steps_before_it_left(cli, emulator, runs_dir, tmp_path):
    config = steps_job(tmp_path / "job", rows(2), limits={"max_requests_per_shard": 10, "budget_usd": 1.0})
    cli("run", config, "--run", "b", "--wait", "--poll-interval", "0")
    spent = [cli.json("status", f"b.{step}")["data"]["cost_usd"] for step in ("1-caption", "2-qna")]
    assert all(cost > 0 for cost in spent)
    budgets = [yaml.safe_load((runs_dir / "b" / "steps" / f"{step}.yaml").read_text())["limits"]["budget_usd"]
               for step in ("1-caption", "2-qna", "3-answer")]
    assert budgets == [1.0, round(1.0 - spent[0], 9), round(1.0 - spent[0] - spent[1], 9)]
