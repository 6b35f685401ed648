"""`batchpipe estimate`: token counts, the price table, the cost figures, and the CLI.

The estimate is checked against hand arithmetic, against the run `create` makes from the same
config, and against the usage the emulator reports for the same requests. The fallback counter
(no tokenizer) is tested by switching the tokenizer off through its parameter; the exact
counter's tests run when bpe-openai is installed (the test extra installs it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import review_rows, write_job

from batchpipe.config import load_config
from batchpipe.errors import ConfigError, ExitCode
from batchpipe.ops.estimate import DEFAULT_UNBOUNDED_OUTPUT_TOKENS, estimate
from batchpipe.paths import RunPaths
from batchpipe.pipeline.tokens import (
    ESTIMATE_METHOD,
    counter_for,
    encoding_name_for,
    max_output_tokens,
    tokenizer_available,
)
from batchpipe.pricing import (
    Price,
    UnknownModelPrice,
    cost_usd,
    format_usd,
    load_table,
    price_for,
    resolve_model,
)


CHAT = "/v1/chat/completions"
REQUIRED_MODELS = [
    "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5", "gpt-5-mini", "gpt-5-nano",
    "o3", "o4-mini", "o3-mini", "text-embedding-3-small", "text-embedding-3-large", "gpt-3.5-turbo",
]  # fmt: skip

# Film reviews of everyday length (150-400 characters of English prose).
PROSE = [
    "A quiet, patient film that trusts its audience. The performances are restrained and the cinematography "
    "is gorgeous, though the second act drags a little before a moving finale.",
    "The plot collapses under its own weight; the dialogue is clumsy and the twist can be seen coming from the "
    "opening scene. I wanted to like it, but by the end I was checking my watch every few minutes.",
    "An energetic, funny and surprisingly tender comedy about two sisters who inherit a failing bakery. The "
    "jokes land, the supporting cast is wonderful, and the ending earns every one of its tears.",
    "Beautiful to look at and impossible to care about. Every character speaks in speeches, nobody listens to "
    "anybody, and the score tells you what to feel in case the actors forgot to. Two hours I will not get back.",
    "A documentary about lighthouse keepers that somehow manages to be gripping from start to finish. The "
    "director lets long silences do the work, and the archive footage of storms on the northern coast is "
    "astonishing. Small in scale, enormous in feeling; I have thought about it every day since.",
    "Competent but forgettable. The action scenes are well staged and the lead is charming, yet the story "
    "follows every beat you expect, in exactly the order you expect them.",
]


def prose_rows(n: int) -> list[dict]:
    return [{"review_id": f"p{i:03d}", "stars": i % 5 + 1, "text": PROSE[i % len(PROSE)]} for i in range(n)]


def est_json(cli, target, code: int = 0) -> dict:
    return cli.json("estimate", target, code=code)


# --------------------------------------------------------------------------------------
# The CLI: a config and its run, the envelope, nothing written


def test_estimate_of_a_config_and_of_its_run_agree(cli, runs_dir: Path, tmp_path: Path):
    config = write_job(tmp_path / "job", review_rows(12))
    before = est_json(cli, config)["data"]
    assert not runs_dir.exists()  # nothing written: not even the runs dir

    cli("create", config, "--run", "reviews")
    after = est_json(cli, "reviews")["data"]
    assert after["source"] == "reviews" and before["source"] == str(config)
    assert {k: v for k, v in after.items() if k != "source"} == {k: v for k, v in before.items() if k != "source"}
    assert before["requests"] == 12
    assert before["shards"] == 3  # max_requests_per_shard: 5, as create splits them
    assert before["shards"] == len(json.loads((runs_dir / "reviews" / "state.json").read_text())["shards"])


def test_json_envelope_has_every_figure(cli, tmp_path: Path):
    doc = est_json(cli, write_job(tmp_path / "job", review_rows(3)))
    assert doc["command"] == "estimate" and doc["ok"] is True and doc["exit_code"] == 0
    data = doc["data"]
    for key in ("requests", "shards", "input_tokens", "max_output_tokens", "cost_usd_expected",
                "cost_usd_worst_case", "cost_usd_input", "token_method", "price", "warnings"):  # fmt: skip
        assert key in data, key
    assert data["max_output_tokens"] == 3 * 20  # max_tokens: 20 in write_job
    assert data["expected_output_tokens"] == 30
    assert data["price"]["as_of"] == load_table().as_of
    assert data["price"]["input_per_million"] == 0.075 and data["price"]["output_per_million"] == 0.30
    assert "Batch API" in data["price"]["note"]
    if tokenizer_available():
        assert data["token_method"] == "bpe-openai o200k_base" and data["warnings"] == []
    else:
        assert data["token_method"] == ESTIMATE_METHOD and len(data["warnings"]) == 1
    assert 0 < data["cost_usd_input"] < data["cost_usd_expected"] < data["cost_usd_worst_case"]


def test_human_output(cli, tmp_path: Path):
    out = cli("estimate", write_job(tmp_path / "job", review_rows(3))).stdout
    assert "3 in 1 shard(s)" in out
    assert "worst case $" in out and "expected $" in out
    assert "prices as of 2026-11-01" in out


def test_help_has_an_example(cli):
    out = cli("estimate", "--help").stdout
    assert "Example" in out and "batchpipe estimate" in out


def test_cost_arithmetic_by_hand(cli, tmp_path: Path):
    # Two rows whose user message is "hello world" and no system message: per request
    # 3 (message) + role "user" + "hello world" + 3 (reply priming). With o200k_base "user" is
    # 1 token and "hello world" 2: 9 tokens. With bytes/4: 1 + 3 (11 bytes): 10 tokens.
    rows = [{"review_id": "a", "text": "hello world"}, {"review_id": "b", "text": "hello world"}]
    config = write_job(
        tmp_path / "job", rows, prompt={"user": "{text}"}, params={"max_tokens": 10},
        pricing={"input_per_million": 1000, "output_per_million": 2000},
    )
    data = est_json(cli, config)["data"]
    per_request = 9 if data["token_method"] == "bpe-openai o200k_base" else 10
    assert data["input_tokens"] == 2 * per_request
    assert data["max_output_tokens"] == 20 and data["expected_output_tokens"] == 10
    input_cost = 2 * per_request * 1000 / 1e6  # $0.018 (or $0.02)
    assert data["cost_usd_input"] == pytest.approx(input_cost)
    assert data["cost_usd_expected"] == pytest.approx(input_cost + 10 * 2000 / 1e6)  # + $0.02
    assert data["cost_usd_worst_case"] == pytest.approx(input_cost + 20 * 2000 / 1e6)  # + $0.04
    assert data["price"]["source"] == f"pricing: in {config}"
    assert data["price"]["as_of"] is None


def test_unknown_model_is_exit_2_and_says_how_to_price_it(cli, tmp_path: Path):
    config = write_job(tmp_path / "job", review_rows(2), model="acme-llm-7")
    result = cli("estimate", config, code=2)
    assert "no price known for model 'acme-llm-7'" in result.stderr
    assert "pricing:" in result.stderr and "input_per_million" in result.stderr
    doc = est_json(cli, config, code=2)
    assert doc["error"]["type"] == "UnknownModelPrice" and "acme-llm-7" in doc["error"]["message"]


def test_unknown_model_with_pricing_is_fine_and_unbounded_uses_the_stated_default(cli, tmp_path: Path):
    config = write_job(
        tmp_path / "job", review_rows(2), model="acme-llm-7", params={"temperature": 0},
        pricing={"input_per_million": 0.5, "output_per_million": 1.5},
    )
    result = cli("estimate", config)
    assert "params.max_tokens" in result.stderr and "a default" in result.stderr
    data = est_json(cli, config)["data"]
    assert data["unbounded_requests"] == 2
    assert data["max_output_tokens"] == 2 * DEFAULT_UNBOUNDED_OUTPUT_TOKENS


def test_unbounded_output_warns_and_worst_case_uses_the_models_maximum(cli, tmp_path: Path):
    config = write_job(tmp_path / "job", review_rows(4), params={"temperature": 0})
    result = cli("estimate", config)
    assert "warning:" in result.stderr and "4 of 4 requests have no output limit" in result.stderr
    assert "params.max_tokens" in result.stderr
    data = est_json(cli, config)["data"]
    table_max = load_table().models["gpt-4o-mini"].max_output_tokens
    assert table_max == 16384
    assert data["max_output_tokens"] == 4 * table_max
    assert data["cost_usd_worst_case"] == pytest.approx(
        (data["input_tokens"] * 0.075 + 4 * table_max * 0.30) / 1e6, abs=1e-6
    )
    assert any("params.max_tokens" in w for w in data["warnings"])


def test_budget_warning_and_shards_split_to_fit_the_token_queue(cli, tmp_path: Path):
    limits = {"max_requests_per_shard": 5, "budget_usd": 0.001}
    config = write_job(tmp_path / "job", prose_rows(10), params={"max_tokens": 1000}, limits=limits)
    data = est_json(cli, config)["data"]
    assert data["budget_usd"] == 0.001
    assert any("over limits.budget_usd" in w for w in data["warnings"])
    assert data["shards"] == 2
    # With a queue that holds about two requests, shards are cut to fit it (create cuts the same way).
    per_request = data["largest_shard_input_tokens"] // 5
    queue = write_job(tmp_path / "queue", prose_rows(10), name="queue", params={"max_tokens": 1000},
                      limits={**limits, "enqueued_tokens": 2 * per_request + per_request // 2})
    split = est_json(cli, queue)["data"]
    assert split["shards"] >= 4 and split["largest_shard_input_tokens"] <= 2 * per_request + per_request // 2
    assert cli.json("create", queue, "--run", "q")["data"]["shards"] == split["shards"]
    # and a single request that could never fit the queue is refused, naming its row
    tiny = write_job(tmp_path / "tiny", prose_rows(3), name="tiny", limits={"enqueued_tokens": 5})
    assert "more than limits.enqueued_tokens (5)" in cli("create", tiny, code=2).stderr


def test_embeddings_have_no_output(cli, tmp_path: Path):
    config = write_job(
        tmp_path / "job", review_rows(3), model="text-embedding-3-small", endpoint="/v1/embeddings",
        prompt={"user": "{text}"}, params={},
    )
    data = est_json(cli, config)["data"]
    assert data["max_output_tokens"] == 0 and data["unbounded_requests"] == 0
    assert data["cost_usd_worst_case"] == pytest.approx(data["input_tokens"] * 0.01 / 1e6, abs=1e-6)
    if tokenizer_available():
        assert data["token_method"] == "bpe-openai cl100k_base"


def test_an_unknown_run_or_missing_config(cli, runs_dir: Path):
    assert "no run 'nope'" in cli("estimate", "nope", code=2).stderr
    assert "config file not found" in cli("estimate", "nope.yaml", code=2).stderr


def test_estimate_with_the_tokenizer_switched_off(tmp_path: Path):
    config = write_job(tmp_path / "job", review_rows(3))
    e = estimate(config, tokenizer=False)
    assert e.token_method == ESTIMATE_METHOD
    assert any("UTF-8 bytes / 4" in w and "batchpipe[tokens]" in w for w in e.warnings)
    cfg = load_config(config)
    counter = counter_for(cfg.model, tokenizer=False)
    # system (3 + "system" 2 + text) + user (3 + "user" 1 + text) + 3, texts at ceil(bytes / 4)
    by_hand = sum(
        3 + 2 + math.ceil(len("You judge film reviews.") / 4)
        + 3 + 1 + math.ceil(len(f"Review ({r['stars']} stars): {r['text']}") / 4) + 3
        for r in review_rows(3)
    )  # fmt: skip
    assert e.input_tokens == by_hand
    assert counter.method == ESTIMATE_METHOD


def test_estimate_of_a_run_reads_attempt_1_only(cli, emulator, runs_dir: Path, tmp_path: Path):
    config = write_job(tmp_path / "job", review_rows(7))
    first = estimate(config)
    cli("run", config, "--run", "x", "--wait", "--poll-interval", "0")
    of_run = estimate(RunPaths.of(runs_dir, "x"))
    assert (of_run.requests, of_run.shards, of_run.input_tokens) == (first.requests, first.shards, first.input_tokens)


# --------------------------------------------------------------------------------------
# Token counts against the usage the emulator reports


def test_input_tokens_agree_with_the_emulators_usage(cli, emulator, runs_dir: Path, tmp_path: Path):
    """The emulator does not tokenize: it bills ceil(characters / 4) of the message texts joined by
    newlines (batchpipe/emulator/answers.py), with no role tokens and no per-message overhead.
    We count BPE tokens (about 4.3 characters per token of English prose, so fewer than
    chars/4) plus 3 tokens per message, the role names and 3 for the reply priming (11 tokens
    for a system + user request, which the emulator does not bill). On paragraph-length English
    the two effects roughly cancel: agreement within 10% of the total. (On very short prompts
    they do not: "Review (3 stars): review number 7" is 25 tokens to us and 15 to the
    emulator, mostly our 11 tokens of message overhead.)

    With the tokenizer switched off the relation is exact up to rounding: per request we count
    ceil(system/4) + ceil(user/4) + 12 (3 + "system" 2 + 3 + "user" 1 + 3), the emulator
    ceil((system + 1 + user) / 4), so we are 11 to 13 tokens above it on every request.
    """
    rows = prose_rows(18)
    config = write_job(tmp_path / "job", rows)
    exact = estimate(config)
    rough = estimate(config, tokenizer=False)
    cli("run", config, "--run", "x", "--wait", "--poll-interval", "0")

    usage = 0
    lines = 0
    for path in sorted((runs_dir / "x" / "results").glob("*.output.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            usage += json.loads(line)["response"]["body"]["usage"]["prompt_tokens"]
            lines += 1
    assert lines == exact.requests == 18
    if tokenizer_available():  # measured: 1134 counted, 1128 billed by the emulator (+0.5%)
        assert abs(exact.input_tokens - usage) <= 0.10 * usage, (exact.input_tokens, usage, exact.token_method)
    assert 11 * lines <= rough.input_tokens - usage <= 13 * lines, (rough.input_tokens, usage)


# --------------------------------------------------------------------------------------
# The counter


def test_fallback_counter_counts_utf8_bytes_over_4():
    c = counter_for("gpt-4o-mini", tokenizer=False)
    assert c.method == "estimate: bytes/4" and not c.exact
    assert [c.text(t) for t in ("", "a", "abcd", "abcde", "é", "🎬🎬")] == [0, 1, 1, 2, 1, 2]
    # the cookbook formula: 3 per message + role + content, + 3 priming the reply
    assert c.messages([{"role": "user", "content": "hello world"}]) == 3 + 1 + 3 + 3
    assert c.messages([{"role": "user", "name": "bob", "content": "hi"}]) == 3 + 1 + 1 + 1 + 1 + 3
    assert c.body("/v1/embeddings", {"input": ["abcd", "abcdefgh"]}) == 3
    assert c.body("/v1/embeddings", {"input": [1, 2, 3, 4, 5]}) == 5  # token ids
    assert c.body("/v1/completions", {"prompt": "abcdefgh"}) == 2
    # responses: instructions as a system message, input as a user message
    assert c.body("/v1/responses", {"instructions": "abcd", "input": "abcd"}) == (3 + 2 + 1) + (3 + 1 + 1) + 3


def test_bpe_counter_matches_known_tiktoken_counts():
    o200k = counter_for("gpt-4o-mini")
    assert o200k.method == "bpe-openai o200k_base" and o200k.exact
    assert o200k.text("hello world") == 2
    assert o200k.text("tiktoken is great!") == 6
    assert o200k.messages([{"role": "user", "content": "hello world"}]) == 9
    assert o200k.text("<|endoftext|>") > 1  # user text is text, never a special token
    cl100k = counter_for("gpt-3.5-turbo")
    assert cl100k.method == "bpe-openai cl100k_base"
    assert cl100k.text("tiktoken is great!") == 6
    # content given as parts: the text parts count
    parts = [
        {"type": "text", "text": "hello"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": " world"},
    ]
    assert o200k.messages([{"role": "user", "content": parts}]) == 3 + 1 + 1 + 1 + 3  # "hello", " world": 1 each


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"), ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"), ("gpt-5-mini", "o200k_base"), ("o3", "o200k_base"), ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"), ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-4", "cl100k_base"), ("text-embedding-3-large", "cl100k_base"), ("acme-llm-7", "cl100k_base"),
    ],
)  # fmt: skip
def test_encoding_for_model(model: str, encoding: str):
    assert encoding_name_for(model) == encoding


@pytest.mark.parametrize(
    ("body", "endpoint", "bound"),
    [
        ({"max_tokens": 20}, CHAT, 20),
        ({"max_completion_tokens": 50}, CHAT, 50),
        ({"max_tokens": 20, "n": 3}, CHAT, 60),
        ({"max_output_tokens": 64}, "/v1/responses", 64),
        ({"temperature": 0}, CHAT, None),
        ({"max_tokens": None}, CHAT, None),
        ({}, "/v1/responses", None),
        ({}, "/v1/completions", 16),  # the completions API's default
        ({"max_tokens": 10, "best_of": 4}, "/v1/completions", 40),
        ({}, "/v1/embeddings", 0),
        ({}, "/v1/moderations", 0),
    ],
)
def test_max_output_tokens(body: dict, endpoint: str, bound: int | None):
    assert max_output_tokens(body, "gpt-4o-mini", endpoint) == bound


# --------------------------------------------------------------------------------------
# The price table


def test_shipped_table_is_dated_and_covers_the_common_models():
    table = load_table()
    assert table.as_of == "2026-11-01"
    assert "Batch API" in table.source and "50%" in table.source
    for model in REQUIRED_MODELS:
        assert model in table.models, model
        entry = table.models[model]
        assert entry.input_per_million > 0 and entry.output_per_million >= 0
    for model in ("text-embedding-3-small", "text-embedding-3-large"):
        assert table.models[model].output_per_million == 0 and table.models[model].max_output_tokens == 0
    assert table.models["gpt-4o-mini"].input_per_million == 0.075  # half of the standard $0.15
    assert table.models["gpt-4o-mini"].output_per_million == 0.30


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("o3-2025-04-16", "o3"),
        ("o3-pro", None),  # not a snapshot of o3, and priced differently: never guessed
        ("gpt-4o-audio-preview", None),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc", None),
    ],
)
def test_dated_snapshots_resolve_to_their_base_model(model: str, entry: str | None):
    assert resolve_model(model, load_table()) == entry


def test_price_for_a_snapshot_and_from_the_config(tmp_path: Path):
    price = price_for("gpt-4o-mini-2024-07-18")
    assert (price.input_per_million, price.output_per_million, price.as_of) == (0.075, 0.30, "2026-11-01")
    assert "gpt-4o-mini" in price.source and price.max_output_tokens == 16384

    cfg = load_config(write_job(tmp_path, pricing={"input_per_million": 0.1, "output_per_million": 0.4}))
    own = price_for(cfg.model, cfg)
    assert (own.input_per_million, own.output_per_million, own.as_of) == (0.1, 0.4, None)
    assert own.source == f"pricing: in {cfg.source}"
    assert own.max_output_tokens == 16384  # the table still knows the model's maximum output


def test_unknown_model_price_is_a_config_error():
    with pytest.raises(UnknownModelPrice) as info:
        price_for("gpt-4o-mini-search-preview")
    err = info.value
    assert isinstance(err, ConfigError) and err.exit_code == ExitCode.BAD_INPUT == 2
    assert "'gpt-4o-mini-search-preview'" in err.message and "pricing:" in (err.hint or "")


def test_cost_usd_and_format():
    price = Price(0.075, 0.30, source="test")
    assert cost_usd(price, 1_000_000, 0) == pytest.approx(0.075)
    assert cost_usd(price, 2_000_000, 1_000_000) == pytest.approx(0.45)
    assert cost_usd(price, 0, 0) == 0
    assert [format_usd(x) for x in (0, 0.000185, 0.0123, 0.5, 1234.567)] == [
        "$0.00", "$0.000185", "$0.0123", "$0.500", "$1,234.57",
    ]


def test_a_price_table_file_is_checked(tmp_path: Path):
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"as_of": "2027-01-01", "source": "mine", "models": {
        "acme-llm-7": {"input_per_million": 0.2, "output_per_million": 0.8}}}), encoding="utf-8")
    table = load_table(good)
    assert price_for("acme-llm-7", table=table).input_per_million == 0.2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"as_of": "x", "source": "y", "models": {"m": {"input_per_million": -1}}}))
    with pytest.raises(ConfigError, match="not a valid price table"):
        load_table(bad)


def test_a_price_table_file_overrides_the_shipped_one(cli, tmp_path: Path, monkeypatch):
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"as_of": "2026-12-01", "source": "our negotiated prices",
                                 "models": {"gpt-4o-mini": {"input_per_million": 1.0, "output_per_million": 2.0}}}))
    monkeypatch.setenv("BATCHPIPE_PRICES", str(table))
    config = write_job(tmp_path / "job", prose_rows(2), params={"max_tokens": 10})
    data = est_json(cli, config)["data"]
    assert data["price"]["input_per_million"] == 1.0 and data["price"]["as_of"] == "2026-12-01"
    assert data["cost_usd_worst_case"] == pytest.approx((data["input_tokens"] * 1.0 + 20 * 2.0) / 1e6)
    monkeypatch.setenv("BATCHPIPE_PRICES", str(tmp_path / "missing.json"))
    assert "cannot read the price table" in cli("estimate", config, code=2).stderr
