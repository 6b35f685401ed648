"""The five shipped examples (configs/*.yaml, one per workflow batchpipe replaces) run end to end.

Each test copies the repo's configs/ into its own directory and drives the real CLI against the
emulator, as a user following the README's recipes would, then checks what that user would look
at: the output rows (the masked text beside each tweet, the entity labels, each step's answer,
the exploded records), the marks that say where a value came from, and what the service saw.
"""

from __future__ import annotations

import base64
import glob
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from conftest import read_jsonl, sdk

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ("masking", "ner", "caption_qna", "dialogue", "refusal_dataset")


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A copy of the repo's configs/ (configs, sample data, hooks) in the test's directory."""
    shutil.copytree(REPO / "configs", tmp_path / "configs", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "configs"


def hooks(name: str) -> Any:
    """A hook module of the examples, loaded from the repo (to compute what a row must hold)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sent_requests(emu) -> list[dict[str, Any]]:
    """Every request line of every batch the emulator was asked to run."""
    lines = []
    for batch in emu.batches:
        lines += [json.loads(line) for line in emu.file_content(batch["input_file_id"]).splitlines() if line.strip()]
    return lines


# --------------------------------------------------------------------------------------
# Every example is there, valid for editors and for the loader


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_validates_against_the_schema_and_loads(cli, configs: Path, name: str) -> None:
    config = configs / f"{name}.yaml"
    schema = json.loads(cli("schema").stdout)
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(document)] == []
    cli("estimate", f"configs/{name}.yaml")  # the loader agrees, the input is there, the templates render
    # every field set outside the prompts, params and steps says what it does for this workflow
    section = None
    for line in config.read_text(encoding="utf-8").splitlines():
        if re.match(r"[a-z_]+:", line):
            section = line.split(":")[0]
        if section in ("prompt", "params", "steps") or not re.match(r"(  )?[a-z_]+:\s*[^\s#]", line):
            continue
        assert "#" in line, f"{name}.yaml: a field without a comment: {line}"


# --------------------------------------------------------------------------------------
# masking: nested records, written back beside each tweet; a fallback that says so


def test_masking_writes_masked_text_beside_each_tweet_and_marks_the_fallback(cli, emulator, runs_dir, configs):
    # One tweet fails for good (the emulator's [[fail:400]] marker) and falls back: the run is done
    # (exit 0: every row has a value) and says how many came from the fallback.
    result = cli("run", "configs/masking.yaml", "--run", "masking", "--wait")
    assert "1 by fallback" in result.output
    users = read_jsonl(configs / "masking_users.jsonl")
    rows = read_jsonl(runs_dir / "masking" / "output.jsonl")
    assert [r["user_id"] for r in rows] == [u["user_id"] for u in users]
    mask = hooks("masking_hooks").mask_text
    sources = []
    for user, row in zip(users, rows):
        # the rest of the line comes back as it went in, fields in the same order
        assert [k for k in row if k in user] == list(user)
        assert {k: v for k, v in row.items() if k in user and k != "tweets"} == {k: v for k, v in user.items()
                                                                                  if k != "tweets"}
        assert len(row["tweets"]) == len(user["tweets"])
        for tweet, out in zip(user["tweets"], row["tweets"]):
            assert [k for k in out if k in tweet] == list(tweet)
            assert {k: out[k] for k in tweet} == tweet
            if "[[fail:400]]" in tweet["full_text"]:
                assert out["masked_text"] == mask(tweet["full_text"])  # the deterministic masker's text
                assert "[MASKED]" in out["masked_text"]
            else:
                assert out["masked_text"] == "echo: Mask opinion words in: " + tweet["full_text"]
            sources.append(out["masked_text_source"])
    assert sources.count("fallback") == 1 and sources.count("model") == 5
    assert emulator.counts["duplicate_creates"] == 0


# --------------------------------------------------------------------------------------
# ner: batch and sync, the same output file byte for byte


def test_ner_batch_and_sync_write_the_same_output_file(cli, emulator, runs_dir, configs):
    cli("run", "configs/ner.yaml", "--run", "ner-batch", "--wait")
    batches = emulator.counts["batch_creates"]
    assert batches >= 1
    cli("run", "configs/ner.yaml", "--run", "ner-sync", "--sync", "--wait")
    assert emulator.counts["batch_creates"] == batches  # sync mode made no batch
    batch_out = (runs_dir / "ner-batch" / "output.jsonl").read_bytes()
    sync_out = (runs_dir / "ner-sync" / "output.jsonl").read_bytes()
    assert batch_out == sync_out
    sentences = read_jsonl(configs / "ner_sentences.jsonl")
    rows = read_jsonl(runs_dir / "ner-sync" / "output.jsonl")
    assert [r["sentence_id"] for r in rows] == [s["sentence_id"] for s in sentences]
    for sentence, row in zip(sentences, rows):
        assert row["text"] == sentence["text"]
        assert row["ner"]["entities"], row
        for entity in row["ner"]["entities"]:
            assert entity["label"] in {"PER", "ORG", "LOC", "MISC"}
            assert entity["text"] == f"text: Sentence: {sentence['text']}"  # the emulator's fitted answer


# --------------------------------------------------------------------------------------
# caption_qna: five steps, each reading the earlier answers; images by URL and a local file


def test_caption_qna_runs_every_step_with_the_dialogue_so_far(cli, emulator, runs_dir, configs):
    cli("run", "configs/caption_qna.yaml", "--run", "captions", "--wait")
    images = read_jsonl(configs / "captions.jsonl")
    rows = read_jsonl(runs_dir / "captions" / "output.jsonl")
    assert [r["image_id"] for r in rows] == [i["image_id"] for i in images]
    for image, row in zip(images, rows):
        assert row["image_url"] == image["image_url"] and row["headline"] == image["headline"]
        caption = f"echo: Describe this image in two sentences. It was published with the headline: {image['headline']}"
        assert row["caption"] == caption
        assert row["question"] == (f"echo: Caption: {caption}\n"
                                   "Ask one question about the image that the caption does not answer.")
        assert row["answer"] == "echo: Answer the last question in one or two sentences."
        assert row["question_2"] == "echo: Ask one follow-up question that the dialogue has not answered yet."
        assert row["answer_2"] == "echo: Answer the last question in one or two sentences."
    requests = sent_requests(emulator)
    # What the service saw: the last step got each row's whole dialogue, its own answers in order.
    last = [r["body"]["messages"] for r in requests if len(r["body"]["messages"]) == 10]
    assert len(last) == len(rows)
    for row in rows:
        [dialogue] = [m for m in last if row["headline"] in m[1]["content"][0]["text"]]
        assert [m["role"] for m in dialogue] == ["system"] + ["user", "assistant"] * 4 + ["user"]
        assert [m["content"] for m in dialogue if m["role"] == "assistant"] == [
            row["caption"], row["question"], row["answer"], row["question_2"]]
    # The image URLs went as they are, the local file as a data URL of its bytes.
    urls = []
    for request in requests:
        for message in request["body"]["messages"]:
            parts = message["content"] if isinstance(message["content"], list) else []  # text only: no image
            urls += [part["image_url"]["url"] for part in parts if part.get("type") == "image_url"]
    png = (configs / "caption_swatch.png").read_bytes()
    data_urls = [u for u in urls if u.startswith("data:")]
    assert data_urls and all(u == "data:image/png;base64," + base64.b64encode(png).decode() for u in data_urls)
    assert {u for u in urls if not u.startswith("data:")} == {i["image_url"] for i in images
                                                              if i["image_url"].startswith("https://")}
    assert emulator.counts["duplicate_creates"] == 0


# --------------------------------------------------------------------------------------
# dialogue: export, upload and download by hand, import, process, post-process


def test_dialogue_goes_through_a_hand_off_and_the_post_processing(cli, emulator, runs_dir, configs, tmp_path):
    cli("create", "configs/dialogue.yaml", "--run", "dialogue-nov")
    cli("export", "dialogue-nov", "handoff")
    exported = sorted((tmp_path / "handoff").glob("*.jsonl"))
    assert exported and (tmp_path / "handoff" / "README.txt").is_file()
    # A person uploads each file, creates its batch and downloads the results: the real client.
    client = sdk(emulator)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for path in exported:
        with path.open("rb") as f:
            upload = client.files.create(file=f, purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        batch = client.batches.retrieve(batch.id)  # the instant emulator: finished at the first look
        assert batch.status == "completed"
        (downloads / f"{path.stem}.output.jsonl").write_bytes(client.files.content(batch.output_file_id).read())
        if batch.error_file_id:
            (downloads / f"{path.stem}.errors.jsonl").write_bytes(client.files.content(batch.error_file_id).read())
    assert emulator.counts["batch_creates"] == len(exported)  # batchpipe sent nothing itself
    files = sorted(str(p) for p in downloads.iterdir())
    cli("import", "dialogue-nov", *files)
    cli("import", "dialogue-nov", *files)  # the same files again: harmless
    cli("process", "dialogue-nov")
    assert emulator.counts["batch_creates"] == len(exported)
    scenarios = read_jsonl(configs / "dialogue.jsonl")
    rows = read_jsonl(runs_dir / "dialogue-nov" / "output.jsonl")
    assert [r["scenario_id"] for r in rows] == [s["scenario_id"] for s in scenarios]
    for scenario, row in zip(scenarios, rows):
        turns = row["dialogue"]["turns"]
        assert 4 <= len(turns) <= 8
        user = (f"Language: {scenario['lang']}\nSituation: {scenario['situation']}\n"
                "Write a conversation of 4 to 8 turns.")
        assert all(t["speaker"] in ("aac_user", "partner") and t["text"] == f"text: {user}" for t in turns)
    # the post-processing: one file per language, the AAC user's turns with a noisy version
    script = [sys.executable, "configs/dialogue_hooks.py", str(runs_dir / "dialogue-nov" / "output.jsonl"), "out"]
    done = subprocess.run(script, capture_output=True, text=True, check=True, timeout=60)
    assert "aac_conversations_en-GB.jsonl: 3 conversation(s)" in done.stdout
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert sorted(written) == ["aac_conversations_en-GB.jsonl", "aac_conversations_fr-FR.jsonl"]
    for name, data in written.items():
        lang = name.removeprefix("aac_conversations_").removesuffix(".jsonl")
        conversations = [json.loads(line) for line in data.decode().splitlines()]
        assert [c["scenario_id"] for c in conversations] == [s["scenario_id"] for s in scenarios if s["lang"] == lang]
        for turn in (t for c in conversations for t in c["turns"]):
            assert ("noisy" in turn) == (turn["speaker"] == "aac_user")
            if "noisy" in turn:
                assert len(turn["noisy"]) == len(turn["text"]) and turn["noisy"] != turn["text"]
    subprocess.run(script, capture_output=True, check=True, timeout=60)  # again: the same files
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == written


# --------------------------------------------------------------------------------------
# refusal_dataset: a generation job, one answer exploded into many records, a target


def test_refusal_dataset_explodes_validates_and_stops_at_the_target(cli, emulator, runs_dir, configs):
    config = yaml.safe_load((configs / "refusal_dataset.yaml").read_text(encoding="utf-8"))
    target, count = config["limits"]["target"], config["input"]["count"]
    result = cli("run", "configs/refusal_dataset.yaml", "--run", "refusal", "--wait")
    assert "valid" in result.output  # the summary line: answers, records, valid, invalid, success rate
    records = read_jsonl(runs_dir / "refusal" / "output.jsonl")
    assert len(records) == target  # valid records only, up to the target
    check = hooks("refusal_hooks").check
    by_parent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        pair = record["scenario"]
        assert set(pair) == {"harmful_prompt", "benign_prompt", "topic"}
        assert check(pair) is True
        assert 0 <= record["index"] < count  # the generation row's {index}, carried by each of its records
        by_parent[record["scenario_parent"]].append(record)
    for parent, group in by_parent.items():
        assert [r["scenario_index"] for r in group] == list(range(len(group)))  # every pair, in order
        assert len(group) <= 5  # at most the answer's 5 pairs
        assert len({r["index"] for r in group}) == 1
    assert len({r["index"] for r in records}) == len(by_parent)
    # Each record's pair came from its own request: the emulator fills strings with the user text.
    for record in records:
        assert record["scenario"]["harmful_prompt"].endswith(f"Batch {record['index']}: write 3 to 5 new minimal "
                                                             "pairs, on topics unlike those of other batches.")


def test_refusal_dataset_drops_invalid_answers_without_paying_for_them_again(cli, emulator, runs_dir, configs):
    emulator.options.invalid_json_share = 1.0  # every answer comes back as broken JSON
    result = cli("run", "configs/refusal_dataset.yaml", "--run", "refusal-broken", "--wait")  # done, nothing valid
    assert "invalid_json" in result.output  # counted, by reason
    rows = read_jsonl(runs_dir / "refusal-broken" / "output.jsonl")
    assert all(row.get("scenario") is None for row in rows)  # no record from an invalid answer
    count = yaml.safe_load((configs / "refusal_dataset.yaml").read_text())["input"]["count"]
    assert len(sent_requests(emulator)) == count  # on_invalid: drop sends none of them again


def test_the_emulator_command_breaks_json_answers_as_the_refusal_recipe_says() -> None:
    """`batchpipe emulator --invalid-json-share 1` (the recipe's way to see invalid answers)."""
    command = [sys.executable, "-m", "batchpipe", "emulator", "--port", "0", "--invalid-json-share", "1",
               "--validating-seconds", "0", "--in-progress-seconds", "0", "--finalizing-seconds", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline().strip()
            assert line.startswith("batchpipe emulator listening on "), line
            client = sdk(line.rsplit(" ", 1)[1])
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "pairs"}],
                    "response_format": {"type": "json_object"}}
            request = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": body}
            upload = client.files.create(file=("requests.jsonl", json.dumps(request).encode()), purpose="batch")
            batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            batch = client.batches.retrieve(batch.id)
            [result] = [json.loads(x) for x in client.files.content(batch.output_file_id).read().splitlines()]
            answer = result["response"]["body"]["choices"][0]["message"]["content"]
            with pytest.raises(json.JSONDecodeError):
                json.loads(answer)
        finally:
            process.terminate()
            process.wait(timeout=60)


# --------------------------------------------------------------------------------------
# The README's recipes, pasted


def recipe_lines() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Recipes\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        lines += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return lines


def test_the_recipes_work_pasted_one_after_another(cli, emulator, runs_dir, configs, tmp_path):
    """Every line of the Recipes' bash blocks, in order: `batchpipe` lines run in-process, python
    lines as the processes they are. The emulator fixture stands in for `batchpipe emulator ... &`
    and the `export` of its URL and key; `kill %1` has nothing to stop."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = []
    for line in recipe_lines():
        words = shlex.split(line, comments=True)
        if not words or words[0] in ("export", "kill") or words[:2] == ["batchpipe", "emulator"]:
            continue
        ran.append(line)
        if words[0] == "batchpipe":
            words = [m for w in words for m in (sorted(glob.glob(w)) if "*" in w else [w])]  # as the shell does
            result = cli(*words[1:], code=None)
            assert result.exit_code == 0, f"`{line}` exited {result.exit_code}:\n{result.output}"
        else:
            done = subprocess.run(line, shell=True, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{done.stdout}{done.stderr}"
    for name in EXAMPLES:
        assert any(f"batchpipe run configs/{name}.yaml" in line or f"batchpipe create configs/{name}.yaml" in line
                   for line in ran), name
    for run in ("masking", "ner", "ner-sync", "captions", "dialogue-nov", "refusal"):
        assert (runs_dir / run / "output.jsonl").is_file(), run
    assert emulator.counts["duplicate_creates"] == 0
