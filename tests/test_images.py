"""Images in user messages (`prompt.images`) and dialogue turns (`prompt.history` as a list), in a
one-step job: what the server receives, what comes back, what is refused before anything is paid."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from conftest import read_jsonl, write_job

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake png bytes"
JPEG = b"\xff\xd8\xff\xe0" + b"fake jpeg bytes"


def sent(emu) -> dict[str, dict]:
    """Every request body the server received, by custom_id."""
    out = {}
    for batch in emu.batches:
        for line in emu.file_content(batch["input_file_id"]).splitlines():
            request = json.loads(line)
            out[request["custom_id"]] = request["body"]
    return out


def image_rows(tmp_path: Path) -> list[dict]:
    (tmp_path / "job" / "pics").mkdir(parents=True)
    (tmp_path / "job" / "pics" / "cat.png").write_bytes(PNG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dog.JPG").write_bytes(JPEG)
    return [
        {"review_id": "url", "stars": 1, "text": "by URL", "img": "https://img.example/a.png"},
        {"review_id": "local", "stars": 2, "text": "a local file", "img": "pics/cat.png"},
        {"review_id": "absolute", "stars": 3, "text": "an absolute path", "img": str(elsewhere / "dog.JPG")},
        {"review_id": "data", "stars": 4, "text": "a data URL", "img": "data:image/gif;base64,R0lGOD=="},
    ]


def test_images_by_url_and_by_local_file_reach_the_server(cli, emulator, runs_dir, tmp_path):
    data = image_rows(tmp_path)
    config = write_job(tmp_path / "job", data,
                       prompt={"system": "You describe.", "user": "Describe: {text}", "images": ["{img}", "{img}"]})
    cli("run", config, "--run", "img", "--wait", "--poll-interval", "0")

    bodies = sent(emulator)
    url = {"url": "https://img.example/a.png"}
    local = {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}
    absolute = {"url": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()}
    data_url = {"url": "data:image/gif;base64,R0lGOD=="}
    for cid, image in (("url", url), ("local", local), ("absolute", absolute), ("data", data_url)):
        text = next(r["text"] for r in data if r["review_id"] == cid)
        assert bodies[cid]["messages"] == [
            {"role": "system", "content": "You describe."},
            {"role": "user", "content": [{"type": "text", "text": f"Describe: {text}"},
                                         {"type": "image_url", "image_url": image},
                                         {"type": "image_url", "image_url": image}]},
        ], cid
    # the emulator answers the text of a message given as parts; each answer on its own row
    out = read_jsonl(runs_dir / "img" / "output.jsonl")
    assert [(r["review_id"], r["verdict"]) for r in out] == [(r["review_id"], f"echo: Describe: {r['text']}") for r in data]
    # the snapshot records where local images are read from: the run reads the same files wherever it runs
    snapshot = (runs_dir / "img" / "config.yaml").read_text()
    assert f"images_dir: {tmp_path / 'job'}" in snapshot


def test_images_dir_is_where_relative_image_paths_are_read(cli, emulator, runs_dir, tmp_path):
    (tmp_path / "job" / "media").mkdir(parents=True)
    (tmp_path / "job" / "media" / "x.webp").write_bytes(b"RIFFfakeWEBP")
    config = write_job(tmp_path / "job", [{"review_id": "r", "stars": 1, "text": "t", "img": "x.webp"}],
                       prompt={"user": "{text}", "images": ["{img}"], "images_dir": "media"})
    cli("run", config, "--run", "d", "--wait", "--poll-interval", "0")
    part = sent(emulator)["r"]["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/webp;base64,"
                                                       + base64.b64encode(b"RIFFfakeWEBP").decode()}}


def test_a_missing_or_unknown_image_is_refused_before_anything_is_sent(cli, emulator, runs_dir, tmp_path):
    rows = [{"review_id": "a", "stars": 1, "text": "t", "img": "https://x/1.png"},
            {"review_id": "b", "stars": 1, "text": "t", "img": "pics/gone.png"}]
    config = write_job(tmp_path / "job", rows, prompt={"user": "{text}", "images": ["{img}"]})
    result = cli("run", config, "--wait", code=2)
    assert "job.jsonl line 2 (row id b): image file" in result.output and "gone.png cannot be read" in result.output
    rows[1]["img"] = "notes.txt"
    config = write_job(tmp_path / "job", rows, prompt={"user": "{text}", "images": ["{img}"]})
    result = cli("run", config, "--wait", code=2)
    assert "job.jsonl line 2 (row id b): image 'notes.txt' is neither a URL" in result.output
    assert emulator.counts["uploads"] == 0
    assert not runs_dir.exists() or [p for p in runs_dir.iterdir() if not p.name.startswith(".")] == []


def test_images_and_history_need_chat_completions(cli, tmp_path):
    config = write_job(tmp_path / "job", endpoint="/v1/responses", prompt={"user": "{text}", "images": ["{x}"]})
    result = cli("create", config, code=2)
    assert "job.yaml line 7: prompt.images needs endpoint /v1/chat/completions (this one is /v1/responses)" in result.output
    config = write_job(tmp_path / "job", prompt={"user": "{text}", "history": True})
    result = cli("create", config, code=2)
    assert "prompt.history: true replays earlier steps, and this config has no steps:" in result.output


def test_history_turns_in_a_one_step_job(cli, emulator, runs_dir, tmp_path):
    rows = [{"review_id": "r1", "stars": 5, "text": "great", "first": "Hello", "reply": "Hi, how can I help?"}]
    turns = [{"user": "{first}", "assistant": "{reply}"}, {"user": "Stars: {stars}", "assistant": "Noted."}]
    config = write_job(tmp_path / "job", rows, prompt={"system": "Be brief.", "user": "Review: {text}", "history": turns})
    cli("run", config, "--run", "h", "--wait", "--poll-interval", "0")
    assert sent(emulator)["r1"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Stars: 5"}, {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Review: great"},
    ]
    assert read_jsonl(runs_dir / "h" / "output.jsonl")[0]["verdict"] == "echo: Review: great"


def test_estimate_counts_the_text_of_an_image_message_and_says_images_are_not_counted(cli, tmp_path):
    rows = [{"review_id": "r", "stars": 1, "text": "some words to count", "img": "https://x/1.png"}]
    plain = cli.json("estimate", write_job(tmp_path / "plain", rows, prompt={"user": "{text}"}))["data"]
    with_image = cli.json("estimate", write_job(tmp_path / "img", rows,
                                                prompt={"user": "{text}", "images": ["{img}"]}))["data"]
    assert with_image["input_tokens"] == plain["input_tokens"] > 0  # the text part counts the same
    assert any("prompt.images) are not counted" in w for w in with_image["warnings"])
    assert not any("images" in w for w in plain["warnings"])
