"""Count the input tokens of a request body, and read the bound on its output. Pure: no network.

Counting. With the optional package `bpe-openai` installed (`pip install "batchpipe[tokens]"`),
texts are split with OpenAI's own BPE vocabularies, which that package ships inside its wheel
(no download): `o200k_base` for the gpt-4o, gpt-4.1, gpt-4.5, gpt-5, gpt-oss, codex and
o-series models, `cl100k_base` for gpt-3.5/gpt-4, the embedding models and any other name (as
bpe-openai's own table of models says, for every model in it). Only its compiled tokenizer is
loaded, and only the vocabulary asked for (see `_bindings`). Without it, each text counts
`ceil(UTF-8 bytes / 4)` tokens: English averages
about 4 bytes per token, other scripts use more tokens per byte, so this is an estimate, and
every count says which method made it (`TokenCounter.method`).

What is counted, per endpoint:

* `/v1/chat/completions` (`messages`), as OpenAI's cookbook "How to count tokens with tiktoken"
  does for the current models: 3 tokens per message, plus the tokens of each of its text fields
  (`role`, `content`, `name`; a `name` costs 1 more), plus 3 that prime the reply. A content
  given as a list of parts counts its text parts; images, audio and files are not counted.
* `/v1/responses`: `instructions` as a system message and `input` (a text, or a list of
  message items) as messages, with the same formula.
* `/v1/embeddings`, `/v1/moderations` (`input`) and `/v1/completions` (`prompt`): the text, or
  the sum over a list of texts; a list of token ids counts its length.

A text the tokenizer will not take (bpe-openai refuses a million characters, or 200,000
tokens, in one go) is counted as `ceil(UTF-8 bytes / 4)` too; `TokenCounter.notes()` says how
many were. Such a request is not refused: only the service decides what is too long (a
request past the model's context fails alone, unbilled).

Not counted anywhere: `tools`, function definitions and `response_format` schemas, which the
service adds to the prompt. The service's count for a chat request may differ from this one by
a few tokens per request; the BPE count of the texts themselves is exact.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

__all__ = [
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "ESTIMATE_METHOD",
    "TokenCounter",
    "counter_for",
    "encoding_name_for",
    "input_tokens",
    "max_output_tokens",
    "tokenizer_available",
]

ESTIMATE_METHOD = "estimate: bytes/4"
BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3  # <|start|>{role}<|message|> ... <|end|>
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # /v1/completions: max_tokens defaults to 16
NO_OUTPUT_ENDPOINTS = frozenset({"/v1/embeddings", "/v1/moderations"})
OUTPUT_LIMIT_PARAMS = ("max_completion_tokens", "max_tokens", "max_output_tokens")

# The texts bpe-openai's `encode_ordinary` refuses ("Input too long to encode safely", its
# TokenLimitError); they are counted by bytes here, so every other count is the one it gives.
_TOKENIZER_MAX_CHARS = 1_000_000  # a text of this many characters or more
_TOKENIZER_MAX_TOKENS = 200_000  # a text of more tokens than this
_CACHED_TEXTS = 256  # see TokenCounter._seen
_CACHED_TEXT_CHARS = 16_384
_O200K_FAMILIES = re.compile(r"(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|codex|o\d)")
_USABLE_ENCODINGS = ("o200k_base", "cl100k_base")
_BINDINGS = "bpe_openai._bindings"


def tokenizer_available() -> bool:
    """True when bpe-openai's tokenizer can be loaded (the exact counts), False when counts are estimates."""
    return _bindings() is not None


@lru_cache(maxsize=1)
def _bindings() -> Any:
    """bpe-openai's compiled tokenizer, loaded without running the `bpe_openai` package; None if absent.

    `import bpe_openai` decodes every vocabulary the package ships (three of them, 600,000 base64
    lines) into Python dicts for its tiktoken-style decoding: about a second in each process
    that counts. Counting needs none of it: the compiled module `bpe_openai._bindings` (its
    interface is the `_bindings.pyi` shipped beside it) carries its own vocabularies and
    deserializes only the one asked for, about 0.1 s for o200k_base. So that module alone is
    loaded from the package's folder, as importlib loads any extension module, and registered
    under its own name, so that a later `import bpe_openai` in the process uses the same one.
    A bpe-openai without it reads as not installed (counts say "estimate"); tests/test_tokens.py
    pins the counts made this way to those of the package's public `encode_ordinary`.
    """
    if _BINDINGS in sys.modules:  # `import bpe_openai` ran already (or the module is hidden: None)
        return sys.modules[_BINDINGS]
    try:
        package = importlib.util.find_spec("bpe_openai")  # finds the package without running it
    except (ImportError, ValueError):
        return None
    if package is None or not package.submodule_search_locations:
        return None
    extensions = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    for folder in package.submodule_search_locations:
        spec = importlib.machinery.FileFinder(folder, extensions).find_spec(_BINDINGS)
        if spec is not None and spec.loader is not None:
            break
    else:
        return None
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None
    if not hasattr(getattr(module, "PyTokenizer", None), "count_till_limit"):
        return None
    sys.modules[_BINDINGS] = module
    return module


def _base_name(model: str) -> str:
    """`ft:gpt-4o-mini-2024-07-18:org::id` -> `gpt-4o-mini-2024-07-18`."""
    return model.split(":")[1] if model.startswith("ft:") else model


def encoding_name_for(model: str) -> str:
    """`o200k_base` or `cl100k_base`: the vocabulary `model` splits text with (see the module docstring)."""
    base = _base_name(model).lower()
    if base in _USABLE_ENCODINGS:  # bpe-openai takes an encoding's name for a model's
        return base
    return "o200k_base" if _O200K_FAMILIES.match(base) else "cl100k_base"


@lru_cache(maxsize=4)
def _count_till_limit(name: str) -> Callable[[str, int], int | None]:
    return _bindings().tokenizer_for_encoding(name).count_till_limit


def estimate_tokens(text: str) -> int:
    """ceil(UTF-8 bytes / 4); an ASCII text, the usual one, has as many bytes as characters."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return -(-size // BYTES_PER_TOKEN)


def _as_utf8(text: str) -> str:
    """`text` as bpe-openai encodes it: a lone surrogate (JSON allows "\\ud800") becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class TokenCounter:
    """Counts tokens for one model. `method` says how: "bpe-openai o200k_base" or "estimate: bytes/4"."""

    def __init__(self, model: str, *, tokenizer: bool = True) -> None:
        self.model = model
        self._count: Callable[[str, int], int | None] | None = None
        if tokenizer and tokenizer_available():
            name = encoding_name_for(model)
            # A count: no list of token ids is made. User text is text: this tokenizer has no
            # special tokens, "<|endoftext|>" is split like any other text.
            self._count = _count_till_limit(name)
            self.method = f"bpe-openai {name}"
        else:
            self.method = ESTIMATE_METHOD
        self.too_long = 0  # texts the tokenizer refused, counted by bytes instead
        # Counts of texts that recur on every request (role names, a fixed system prompt): a job
        # of a million requests would otherwise tokenize them a million times. Bounded: cleared
        # when full, and only short texts are kept, so memory stays flat. The estimate keeps
        # nothing: it costs less than a lookup.
        self._seen: dict[str, int] = {}

    @property
    def exact(self) -> bool:
        return self._count is not None

    def text(self, text: str) -> int:
        """Tokens of one text."""
        if self._count is None:
            return estimate_tokens(text)
        count = self._seen.get(text)
        return self._tokens(text) if count is None else count

    def _tokens(self, text: str) -> int:
        """The tokenizer's count of a text not seen lately; its estimate if the tokenizer refuses it."""
        if len(text) < _TOKENIZER_MAX_CHARS:
            try:
                count = self._count(text, _TOKENIZER_MAX_TOKENS)
            except UnicodeEncodeError:  # a lone surrogate: looked for only when the tokenizer meets one
                count = self._count(_as_utf8(text), _TOKENIZER_MAX_TOKENS)
        else:  # bpe-openai measures the text it would encode (rarely shorter)
            readable = _as_utf8(text)
            count = self._count(readable, _TOKENIZER_MAX_TOKENS) if len(readable) < _TOKENIZER_MAX_CHARS else None
        if count is None:
            self.too_long += 1  # counted each time it is met: not kept
            return estimate_tokens(text)
        if len(text) <= _CACHED_TEXT_CHARS:
            if len(self._seen) >= _CACHED_TEXTS:
                self._seen.clear()
            self._seen[text] = count
        return count

    def notes(self) -> list[str]:
        """What a user should know about the counts made so far (empty when nothing to say)."""
        if not self.too_long:
            return []
        texts = "1 text was" if self.too_long == 1 else f"{self.too_long:,} texts were"
        return [
            f"{texts} too long for the tokenizer (it takes under a million characters and 200,000 tokens "
            "at once) and counted as UTF-8 bytes / 4: an estimate"
        ]

    def messages(self, messages: Any) -> int:
        """Chat messages, with the cookbook's per-message overhead and the reply priming."""
        if not isinstance(messages, list):
            return 0
        text = estimate_tokens if self._count is None else self.text  # chosen once per body: the estimate keeps no cache
        total = REPLY_PRIMING
        for message in messages:
            # Once per message and request, a million times over: a JSON object is a dict, checked
            # by its type first (an isinstance of the abstract Mapping costs more).
            if type(message) is not dict and not isinstance(message, Mapping):
                continue
            content, role = message.get("content"), message.get("role")
            total += TOKENS_PER_MESSAGE
            if isinstance(content, str):
                total += text(content)
            elif isinstance(content, list):  # parts: {"type": "text" | "input_text", "text": ...}; images not counted
                total += self._parts(content, text)
            if isinstance(role, str):
                total += text(role)
            if "name" in message and isinstance(message["name"], str):
                total += text(message["name"]) + TOKENS_PER_NAME
        return total

    @staticmethod
    def _parts(content: list[Any], text: Callable[[str], int]) -> int:
        total = 0
        for part in content:
            if type(part) is dict or isinstance(part, Mapping):
                value = part.get("text")
                if isinstance(value, str):
                    total += text(value)
        return total

    def inputs(self, value: Any) -> int:
        """`input` of embeddings/moderations or `prompt` of completions: a text, texts, or token ids."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return len(value)  # one input given as token ids
            return sum(self.inputs(v) for v in value)
        return 0

    def body(self, endpoint: str, body: Mapping[str, Any]) -> int:
        """The input tokens of one request `body` sent to `endpoint` (see the module docstring)."""
        if endpoint == "/v1/chat/completions":
            return self.messages(body.get("messages"))
        if endpoint == "/v1/responses":
            messages: list[Any] = []
            if isinstance(body.get("instructions"), str):
                messages.append({"role": "system", "content": body["instructions"]})
            value = body.get("input")
            if isinstance(value, str):
                messages.append({"role": "user", "content": value})
            elif isinstance(value, list):
                messages.extend(item for item in value if isinstance(item, Mapping))
            return self.messages(messages)
        if endpoint == "/v1/completions":
            return self.inputs(body.get("prompt"))
        return self.inputs(body.get("input"))


def counter_for(model: str, *, tokenizer: bool = True) -> TokenCounter:
    """A counter for `model`; `tokenizer=False` forces the bytes/4 estimate even when bpe-openai is there."""
    return TokenCounter(model, tokenizer=tokenizer)


def input_tokens(body: Mapping[str, Any], endpoint: str, *, tokenizer: bool = True) -> int:
    """The input tokens of one request body (a counter for `body["model"]`; reuse one for many bodies)."""
    return counter_for(str(body.get("model", "")), tokenizer=tokenizer).body(endpoint, body)


def max_output_tokens(body: Mapping[str, Any], model: str, endpoint: str | None = None) -> int | None:
    """The most output tokens one request can be billed for; None when nothing bounds it.

    The first of `max_completion_tokens`, `max_tokens`, `max_output_tokens` (responses) set to a
    whole number, times the number of choices asked for (`n`, and `best_of` for completions).
    Embeddings and moderations (by endpoint, or by an embedding model's name) produce no output:
    0. Completions without `max_tokens` stop at the API's default of 16. For the reasoning models,
    the bound includes the reasoning tokens, which are billed as output.
    """
    if endpoint in NO_OUTPUT_ENDPOINTS or (endpoint is None and ("embedding" in model or "moderation" in model)):
        return 0
    bound: int | None = None
    for key in OUTPUT_LIMIT_PARAMS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            bound = value
            break
    if bound is None and endpoint == "/v1/completions":
        bound = COMPLETIONS_DEFAULT_MAX_TOKENS
    if bound is None:
        return None
    choices = [body.get("n"), body.get("best_of") if endpoint in (None, "/v1/completions") else None]
    return bound * max([1] + [c for c in choices if isinstance(c, int) and not isinstance(c, bool) and c > 0])
