"""Hand-off by hand: `export` writes upload-ready shard files, a person uploads them with their own
client, downloads the results, and `import` brings them in; `process` then works as usual.

The person is played by the real `openai` client against the emulator; batchpipe never sees
the batches. What a user would notice is asserted: files on disk, exit codes, messages, the
output, and what the server saw (batchpipe itself never uploads or creates a batch for an
exported shard).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import read_jsonl, review_rows, sdk, write_job

RUN = "hand"


def hand_upload(emu, files: list[Path], dest: Path) -> dict[str, dict[str, Path]]:
    """Do what README.txt says, with the real client: upload, create, wait, download.

    Returns {export file name: {"output": path, "errors": path}} (only the files the batch has).
    """
    client = sdk(emu)
    dest.mkdir(parents=True, exist_ok=True)
    got: dict[str, dict[str, Path]] = {}
    for f in files:
        with open(f, "rb") as fh:
            up = client.files.create(file=fh, purpose="batch")
        batch = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = client.batches.retrieve(batch.id)  # the instant timeline: ended at the first look
        assert batch.status == "completed"
        got[f.name] = {}
        for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            if file_id:
                path = dest / f"{f.stem}.{kind}.jsonl"
                path.write_bytes(client.files.content(file_id).content)
                got[f.name][kind] = path
    return got


def exported(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{RUN}--*.jsonl"))


def create_and_hand_back(cli, emulator, tmp_path: Path, rows: list[dict]) -> dict[str, dict[str, Path]]:
    """Create run RUN of `rows` (config tmp_path/job.yaml), export it to tmp_path/handoff and play the person: upload each file,
    make its batch and download its results into tmp_path/downloads (see hand_upload)."""
    cli("create", write_job(tmp_path, rows), "--run", RUN)
    cli("export", RUN, tmp_path / "handoff")
    return hand_upload(emulator, exported(tmp_path / "handoff"), tmp_path / "downloads")


def all_results(got: dict[str, dict[str, Path]]) -> list[Path]:
    return [p for kinds in got.values() for p in kinds.values()]


def normal_output(cli, config: Path, emu) -> bytes:
    """The output of the same job run the ordinary way (another run id, batchpipe submitting)."""
    cli("run", config, "--run", "normal", "--wait", "--poll-interval", "0", code=None)
    return (Path("runs") / "normal" / "output.jsonl").read_bytes()


def test_export_writes_upload_ready_files_and_a_readme(cli, emulator, tmp_path):
    config = write_job(tmp_path, review_rows(12))
    cli("create", config, "--run", RUN)
    data = cli.json("export", RUN, tmp_path / "handoff")["data"]

    files = exported(tmp_path / "handoff")
    assert [f.name for f in files] == [f"{RUN}--00001.a1.jsonl", f"{RUN}--00002.a1.jsonl", f"{RUN}--00003.a1.jsonl"]
    assert data["handed_off"] == ["00001.a1", "00002.a1", "00003.a1"]
    # byte for byte the run's own shard files: what batchpipe would have uploaded
    for f, shard in zip(files, ("00001.a1", "00002.a1", "00003.a1"), strict=True):
        assert f.read_bytes() == (Path("runs") / RUN / "shards" / f"{shard}.jsonl").read_bytes()
    assert sum(len(read_jsonl(f)) for f in files) == 12
    readme = (tmp_path / "handoff" / "README.txt").read_text()
    for needed in ('purpose "batch"', 'endpoint "/v1/chat/completions"', 'completion_window "24h"',
                   f"batchpipe import {RUN} FILE...", f"batchpipe process {RUN}", f"{RUN}--00003.a1.jsonl",
                   "output file", "error file", emulator.base_url.rstrip("/") + "/files"):
        assert needed in readme, needed
    assert "sk-test-SECRET" not in readme


def test_export_then_run_submit_tick_never_upload_or_create(cli, emulator, tmp_path):
    config = write_job(tmp_path, review_rows(12))
    cli("create", config, "--run", RUN)
    cli("export", RUN, tmp_path / "handoff")

    ran = cli("run", RUN, "--wait", "--poll-interval", "0", code=5)  # returns: nothing to wait for
    assert "exported for you to upload" in ran.output and "never paid twice" in ran.output
    assert f"batchpipe import {RUN} FILE..." in ran.output
    submitted = cli("submit", RUN)
    assert "exported" in submitted.output and "nothing submitted" in submitted.output
    ticked = cli("tick", RUN, code=5)
    assert "attention" in ticked.output and f"batchpipe import {RUN}" in ticked.output
    status = cli("status", RUN)
    assert status.output.count("handed off") == 3 and "not upload or submit" in " ".join(status.output.split())
    assert cli.json("status", RUN)["data"]["handed_off"] == ["00001.a1", "00002.a1", "00003.a1"]
    assert cli.json("submit", RUN)["data"]["handed_off"] == ["00001.a1", "00002.a1", "00003.a1"]
    # a canary would re-cut files a person may already hold
    assert "cannot take a canary" in cli("submit", RUN, "--canary", "2", code=2).output

    counts = emulator.counts
    assert (counts["uploads"], counts["batch_creates"]) == (0, 0)


def test_by_hand_round_trip_equals_a_normal_run(cli, emulator, tmp_path):
    got = create_and_hand_back(cli, emulator, tmp_path, review_rows(12))

    imported = cli("import", RUN, *all_results(got))
    assert "complete: shard(s) 00001.a1, 00002.a1, 00003.a1" in imported.output
    cli("process", RUN)
    creates_by_hand = emulator.counts["batch_creates"]
    assert creates_by_hand == 3  # the person's three, and none of batchpipe's

    # the results, copied under results/ (one piece per shard and file), checksummed in the ledger
    pieces = sorted((Path("runs") / RUN / "results").iterdir())
    assert [p.name.split(".import-")[0] for p in pieces] == ["00001.a1", "00002.a1", "00003.a1"]
    shards = json.loads((Path("runs") / RUN / "state.json").read_text())["shards"]
    assert sorted(p["path"] for s in shards for p in s["handoff"]["pieces"]) == [f"results/{p.name}" for p in pieces]
    assert (Path("runs") / RUN / "output.jsonl").read_bytes() == normal_output(cli, tmp_path / "job.yaml", emulator)


def test_import_in_any_order_any_subset_and_twice(cli, emulator, tmp_path):
    rows = review_rows(12)
    rows[1]["text"] = "breaks [[fail:400]]"  # shard 1 gets an error file as well as an output file
    got = create_and_hand_back(cli, emulator, tmp_path, rows)
    first = got[f"{RUN}--00001.a1.jsonl"]
    assert set(first) == {"output", "errors"}

    # the error file alone: shard 1 is waiting for the rest, and says so
    partly = cli("import", RUN, first["errors"])
    assert "1 result line(s) imported" in partly.output and "shard 00001.a1: 1/5 results so far" in partly.output
    shards = {s["shard"]: s for s in cli.json("status", RUN)["data"]["shards"]}
    assert shards["00001.a1"]["state"] == "prepared" and shards["00001.a1"]["handoff"]["received"] == 1
    assert "1/5 results imported" in cli("status", RUN).output
    assert "handed off, 1/5 imported" in cli("status", RUN).output

    # the same file again: harmless
    again = cli("import", RUN, first["errors"])
    assert "already imported, skipped" in again.output

    # everything, in reverse order, the error file once more among them
    everything = list(reversed(all_results(got)))
    data = cli.json("import", RUN, *everything)["data"]
    assert data["completed"] == ["00001.a1", "00002.a1", "00003.a1"] and data["waiting"] == []
    assert [f["status"] for f in data["files"]].count("already imported") == 1
    assert cli.json("import", RUN, *everything)["data"]["completed"] == []  # a third time: nothing changes

    cli("process", RUN, code=6)  # done, one row failed (a 400 is not retried)
    out = read_jsonl(Path("runs") / RUN / "output.jsonl")
    assert [r["review_id"] for r in out] == [r["review_id"] for r in rows]
    assert out[1]["verdict"] is None and out[1]["verdict_error"]["status_code"] == 400
    assert all(r["verdict"] == f"echo: Review ({r['stars']} stars): {r['text']}" for i, r in enumerate(out) if i != 1)


def test_a_line_already_imported_in_another_file_is_skipped(cli, emulator, tmp_path):
    got = create_and_hand_back(cli, emulator, tmp_path, review_rows(5))
    output = got[f"{RUN}--00001.a1.jsonl"]["output"]
    lines = output.read_bytes().splitlines(keepends=True)
    head, tail = tmp_path / "head.jsonl", tmp_path / "tail.jsonl"
    head.write_bytes(b"".join(lines[:3]))
    tail.write_bytes(b"".join(lines[2:]))  # line 3 in both

    cli("import", RUN, head)
    data = cli.json("import", RUN, tail)["data"]
    assert data["files"][0]["routed"] == 2 and data["files"][0]["duplicates"] == 1
    assert data["completed"] == ["00001.a1"]
    cli("process", RUN)
    assert len(read_jsonl(Path("runs") / RUN / "output.jsonl")) == 5


def test_a_file_from_another_run_is_refused_and_nothing_is_written(cli, emulator, tmp_path):
    config = write_job(tmp_path, review_rows(6))
    other_rows = [{"review_id": f"x{i}", "stars": 3, "text": f"other {i}"} for i in range(4)]
    other = write_job(tmp_path / "other", other_rows, name="other")
    cli("create", config, "--run", RUN)
    cli("create", other, "--run", "other")
    cli("export", RUN, tmp_path / "handoff")
    cli("export", "other", tmp_path / "other-handoff")
    mine = hand_upload(emulator, exported(tmp_path / "handoff"), tmp_path / "downloads")
    theirs = hand_upload(emulator, sorted((tmp_path / "other-handoff").glob("other--*.jsonl")), tmp_path / "dl2")
    foreign = theirs["other--00001.a1.jsonl"]["output"]
    state = (Path("runs") / RUN / "state.json").read_bytes()

    # with a good file of this run before it: the whole command is refused, the good file too
    refused = cli("import", RUN, mine[f"{RUN}--00001.a1.jsonl"]["output"], foreign, code=2)
    assert f"{foreign} line 1: custom_id 'x" in refused.output
    assert f"is not a request of run {RUN}" in refused.output and "another run" in refused.output
    assert "Traceback" not in refused.output
    assert (Path("runs") / RUN / "state.json").read_bytes() == state
    assert not list((Path("runs") / RUN).glob("results/*"))

    as_json = cli.json("import", RUN, foreign, code=2)
    assert as_json["exit_code"] == 2 and "line 1" in as_json["error"]["message"]
    # the good file alone is then imported for the first time (it was not half-imported before)
    ok = cli.json("import", RUN, mine[f"{RUN}--00001.a1.jsonl"]["output"])["data"]
    assert ok["files"][0]["status"] == "imported"


def test_damaged_and_wrong_files_are_refused_naming_file_and_line(cli, emulator, tmp_path):
    got = create_and_hand_back(cli, emulator, tmp_path, review_rows(5))
    output = got[f"{RUN}--00001.a1.jsonl"]["output"]
    torn = tmp_path / "torn.jsonl"
    data = output.read_bytes()
    torn.write_bytes(data[: data.index(b"\n", 10) + 1] + data[data.index(b"\n", 10) + 1:][:40])  # line 2 cut short
    binary = tmp_path / "results.zip"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    state = (Path("runs") / RUN / "state.json").read_bytes()

    out = cli("import", RUN, torn, code=2).output
    assert f"{torn} line 2: not a JSON line" in " ".join(out.split()) and "Traceback" not in out
    assert f"{binary} line 1" in cli("import", RUN, binary, code=2).output
    request_file = exported(tmp_path / "handoff")[0]
    wrong = cli("import", RUN, request_file, code=2).output
    assert "line 1: a request (what is uploaded), not a result" in " ".join(wrong.split())
    assert "no such file" in cli("import", RUN, tmp_path / "nope.jsonl", code=2).output
    assert "is not a file" in cli("import", RUN, tmp_path, code=2).output
    assert (Path("runs") / RUN / "state.json").read_bytes() == state


def test_partial_shard_finished_by_partial_then_its_retry_is_exported_again(cli, emulator, tmp_path):
    got = create_and_hand_back(cli, emulator, tmp_path, review_rows(5))
    output = got[f"{RUN}--00001.a1.jsonl"]["output"]
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(output.read_bytes().splitlines(keepends=True)[:3]))

    cli("import", RUN, part)
    assert cli("process", RUN, code=3)  # not done: the shard is waiting for its other lines
    finished = cli.json("import", RUN, "--partial")["data"]
    assert finished["completed"] == ["00001.a1"]
    processed = cli("process", RUN, code=3)  # the 2 missing: a new attempt, which can be exported
    assert f"new attempt(s) 00001.a2 for the failed requests: `batchpipe export {RUN} DIR`" in processed.output

    again = cli.json("export", RUN, tmp_path / "handoff")["data"]
    assert [f["shard"] for f in again["files"]] == ["00001.a2"] and again["handed_off"] == ["00001.a2"]
    retry = tmp_path / "handoff" / f"{RUN}--00001.a2.jsonl"
    assert len(read_jsonl(retry)) == 2
    second = hand_upload(emulator, [retry], tmp_path / "downloads2")
    cli("import", RUN, *all_results(second))
    cli("process", RUN)
    out = read_jsonl(Path("runs") / RUN / "output.jsonl")
    assert [r["verdict_attempts"] for r in out].count(2) == 2
    assert all(r["verdict"].startswith("echo: ") for r in out)
    # the whole run: the person's two batches, none of batchpipe's
    assert emulator.counts["batch_creates"] == 2


def test_export_again_is_harmless(cli, emulator, tmp_path):
    config = write_job(tmp_path, review_rows(7))
    cli("create", config, "--run", RUN)
    first = cli.json("export", RUN, tmp_path / "handoff")["data"]
    before = {f.name: f.read_bytes() for f in (tmp_path / "handoff").iterdir()}
    second = cli.json("export", RUN, tmp_path / "handoff")["data"]
    assert first["handed_off"] == ["00001.a1", "00002.a1"] and second["handed_off"] == []
    assert [f["shard"] for f in second["files"]] == ["00001.a1", "00002.a1"]
    assert {f.name: f.read_bytes() for f in (tmp_path / "handoff").iterdir()} == before
    events = [json.loads(line) for line in (Path("runs") / RUN / "events.jsonl").read_text().splitlines()]
    assert [e["shards"] for e in events if e["event"] == "handoff"] == [["00001.a1", "00002.a1"]]


def test_only_unsent_shards_are_exported_and_import_needs_an_export(cli, emulator, tmp_path):
    config = write_job(tmp_path, review_rows(7))
    cli("run", config, "--run", RUN, "--wait", "--poll-interval", "0")
    nothing = cli("export", RUN, tmp_path / "handoff")
    assert "nothing to export" in nothing.output and not (tmp_path / "handoff").exists()
    refused = cli("import", RUN, tmp_path / "x.jsonl", code=2)
    assert "no exported shards" in refused.output


def test_a_run_waiting_in_another_terminal_hears_of_the_import(cli, emulator, tmp_path):
    from batchpipe.ops.changes import Watch
    from batchpipe.paths import RunPaths

    config = write_job(tmp_path, review_rows(3))
    cli("create", config, "--run", RUN)
    cli("export", RUN, tmp_path / "handoff")
    watch = Watch(RunPaths(Path("runs") / RUN))
    got = hand_upload(emulator, exported(tmp_path / "handoff"), tmp_path / "downloads")
    cli("import", RUN, *all_results(got))
    assert watch.changes() == ["shard 00001.a1 results imported by hand (batchpipe import)"]
    cli("process", RUN)
    assert watch.changes()[0] == "shard 00001.a1 merged: 3 ok, 0 failed"


def test_recover_forgets_a_damaged_import_so_the_file_can_be_imported_again(cli, emulator, tmp_path):
    rows = review_rows(5)
    rows[0]["text"] = "breaks [[fail:400]]"
    got = create_and_hand_back(cli, emulator, tmp_path, rows)
    files = got[f"{RUN}--00001.a1.jsonl"]
    cli("import", RUN, files["output"])
    piece = next((Path("runs") / RUN / "results").glob("00001.a1.import-*.jsonl"))
    piece.write_bytes(piece.read_bytes()[:-20])  # damaged on disk

    recovered = cli("recover", RUN)
    assert f"{piece.name} were missing or damaged: forgotten" in " ".join(recovered.output.split())
    assert cli.json("status", RUN)["data"]["shards"][0]["handoff"]["received"] == 0
    data = cli.json("import", RUN, files["output"], files["errors"])["data"]
    assert [f["status"] for f in data["files"]] == ["imported", "imported"] and data["completed"] == ["00001.a1"]
    cli("process", RUN, code=6)
    assert [r["verdict"] is None for r in read_jsonl(Path("runs") / RUN / "output.jsonl")] == [True] + [False] * 4


def test_killed_after_the_handoff_before_the_files_nothing_is_ever_sent(cli, emulator, tmp_path):
    from conftest import batchpipe

    config = write_job(tmp_path, review_rows(7))
    cli("create", config, "--run", RUN)
    killed = batchpipe("export", RUN, str(tmp_path / "handoff"), crash_at="export:after_handoff")
    assert killed.returncode == 99 and not exported(tmp_path / "handoff")
    # the promise was made before any file left: batchpipe still does not send them
    cli("run", RUN, code=5)
    assert (emulator.counts["uploads"], emulator.counts["batch_creates"]) == (0, 0)
    cli("export", RUN, tmp_path / "handoff")  # export again writes the files
    assert len(exported(tmp_path / "handoff")) == 2


def test_killed_between_a_piece_and_the_ledger_the_import_is_done_again(cli, emulator, tmp_path):
    from conftest import batchpipe

    got = create_and_hand_back(cli, emulator, tmp_path, review_rows(7))
    files = [str(p) for p in all_results(got)]
    killed = batchpipe("import", RUN, *files, crash_at="import:after_piece:2")
    assert killed.returncode == 99
    data = cli.json("import", RUN, *files)["data"]
    assert [f["status"] for f in data["files"]] == ["already imported", "imported"]
    assert data["completed"] == ["00002.a1"]  # the first file completed shard 1 in its own commit
    cli("process", RUN)
    assert (Path("runs") / RUN / "output.jsonl").read_bytes() == normal_output(cli, tmp_path / "job.yaml", emulator)


def test_lines_of_a_shard_batchpipe_sent_itself_are_ignored_and_named(cli, emulator, tmp_path):
    config = write_job(tmp_path, review_rows(7))
    cli("create", config, "--run", RUN)
    cli("submit", RUN, "--canary", "2")  # batchpipe sends the canary shard itself
    exported_now = cli.json("export", RUN, tmp_path / "handoff")["data"]
    assert exported_now["handed_off"] == ["00001.a1", "00002.a1"]
    cli("run", RUN, code=5)  # the canary is merged; only exported shards are left
    canary_results = Path("runs") / RUN / "results" / "00000.a1.output.jsonl"

    data = cli.json("import", RUN, canary_results)["data"]
    assert data["files"][0]["routed"] == 0 and data["files"][0]["skipped"] == 2
    assert "shard 00000.a1 was not exported: batchpipe downloads its results itself; line ignored" in data["warnings"][0]
    assert emulator.counts["batch_creates"] == 1


def test_a_second_batch_of_an_imported_shard_is_ignored_with_a_warning(cli, emulator, tmp_path):
    config = write_job(tmp_path, review_rows(5))
    cli("create", config, "--run", RUN)
    cli("export", RUN, tmp_path / "handoff")
    files = exported(tmp_path / "handoff")
    once = hand_upload(emulator, files, tmp_path / "first")
    twice = hand_upload(emulator, files, tmp_path / "second")  # uploaded twice by mistake: paid twice
    cli("import", RUN, *all_results(once))
    out = cli("import", RUN, *all_results(twice)).output
    flat = " ".join(out.split())
    assert "shard 00001.a1 already has its results; this line differs (was it uploaded twice?); line ignored" in flat
    assert "0 result line(s) imported" in flat
    cli("process", RUN)
    assert len(read_jsonl(Path("runs") / RUN / "output.jsonl")) == 5
