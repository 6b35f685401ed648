"""Issue 9: counting tokens loads only bpe-openai's compiled tokenizer (not the package, whose import
decodes all its vocabularies in Python), and counts exactly what the package's public
`encode_ordinary` counts; without it, the bytes/4 estimate."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import review_rows, write_job

from batchpipe.pipeline.tokens import counter_for, encoding_name_for, tokenizer_available


@pytest.fixture(autouse=True)
def _tokenizer() -> None:
    assert tokenizer_available(), "these tests need bpe-openai (pip install -e '.[test]')"


def public_api():
    """The `bpe_openai` package itself, imported as its README says (it warns about its own deprecated calls)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai
    return bpe_openai


# Run `batchpipe *args` in a fresh interpreter; print its stdout, then the bpe_openai modules it loaded.
PROBE = """
import json, runpy, sys
sys.argv = ["batchpipe", *sys.argv[1:]]
try:
    runpy.run_module("batchpipe", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "bpe_openai" and sys.modules[m] is not None)))
"""


def estimate_in_a_fresh_process(config: Path, *setup: str) -> tuple[dict, list[str]]:
    code = "\n".join([*setup, PROBE])
    proc = subprocess.run([sys.executable, "-c", code, "estimate", str(config), "--json"], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *output, modules = proc.stdout.strip().splitlines()
    return json.loads("\n".join(output))["data"], json.loads(modules)


def test_a_command_that_counts_loads_the_compiled_tokenizer_and_not_the_package(cli, tmp_path):
    config = write_job(tmp_path / "job", review_rows(7))
    data, modules = estimate_in_a_fresh_process(config)
    assert data["token_method"] == "bpe-openai o200k_base"
    assert modules == ["bpe_openai._bindings"]  # `bpe_openai` itself never ran: its vocabularies stay on disk
    public_api()  # this process has the whole package: same counts
    assert cli.json("estimate", config)["data"]["input_tokens"] == data["input_tokens"]


def test_without_the_package_counts_are_estimates(tmp_path):
    # As in an install without bpe-openai (how scripts/bench.py --no-tokenizer hides it).
    config = write_job(tmp_path / "job", review_rows(3))
    data, modules = estimate_in_a_fresh_process(config, "import sys; sys.modules['bpe_openai'] = None")
    assert data["token_method"] == "estimate: bytes/4"
    assert modules == []


def corpus() -> list[str]:
    """Texts of every kind: scripts, emoji, combining marks, whitespace runs, digits, lone surrogates."""
    rng = random.Random(9)
    alphabet = ([chr(c) for c in range(32, 127)] * 4 + [chr(c) for c in range(0xA0, 0x250)]
                + [chr(c) for c in range(0x300, 0x370)] + [chr(c) for c in range(0x400, 0x450)]
                + [chr(c) for c in range(0x4E00, 0x4E40)] + [chr(c) for c in range(0x1F300, 0x1F320)]
                + ["\n", "\r\n", "\t", "\u3000", "\u200b", "\ufeff", "e\u0301", "\u212b"])
    texts = ["".join(rng.choices(alphabet, k=rng.randint(1, 300))) for _ in range(2_000)]
    return texts + ["<|endoftext|>", "hello world", "  \n\n\t x", "1234567890" * 30,
                    "a\ud800b", "\ud83c\udfac film", "x\udfac", "\udfac\ud83c"]  # JSON may carry lone surrogates


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-3.5-turbo"])
def test_counts_are_those_of_the_packages_public_encoder(model):
    counter = counter_for(model)
    encoder = public_api().get_encoding(encoding_name_for(model))
    texts = corpus()
    assert [counter.text(t) for t in texts] == [len(encoder.encode_ordinary(t)) for t in texts]
    assert [counter.text(t) for t in texts] == [len(encoder.encode_ordinary(t)) for t in texts]  # the kept counts
    assert counter.too_long == 0


def test_a_text_over_the_tokenizers_limits_is_counted_by_bytes_where_the_package_refuses_it():
    counter, encoder = counter_for("gpt-4o-mini"), public_api().get_encoding("o200k_base")
    at_limit, over_limit = "é" * 200_000, "é" * 200_001  # one token each (2 bytes)
    assert counter.text(at_limit) == len(encoder.encode_ordinary(at_limit)) == 200_000
    with pytest.raises(ValueError):
        encoder.encode_ordinary(over_limit)
    assert counter.text(over_limit) == 100_001  # 400,002 bytes / 4
    short, long = "word " * 199_999 + "word", "word " * 200_000  # 999,999 and 1,000,000 characters
    assert counter.text(short) == len(encoder.encode_ordinary(short))
    with pytest.raises(ValueError):
        encoder.encode_ordinary(long)
    assert counter.text(long) == 250_000
    assert counter.too_long == 2
    assert counter.notes() == ["2 texts were too long for the tokenizer (it takes under a million characters and "
                               "200,000 tokens at once) and counted as UTF-8 bytes / 4: an estimate"]


def test_the_encoding_is_the_one_the_package_names_for_every_model_it_knows():
    bpe_openai = public_api()
    for model in bpe_openai.list_supported_models():
        named = bpe_openai.encoding_name_for_model(model)
        if named in ("o200k_base", "cl100k_base"):
            assert encoding_name_for(model) == named, model
            assert encoding_name_for(model.upper()) == named, model
