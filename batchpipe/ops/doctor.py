"""`doctor`: check that everything a run needs is in place, and say what to fix.

The API key is checked for presence and accepted by the service, never shown.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from batchpipe.config import load_config
from batchpipe.errors import BatchpipeError, ExitCode
from batchpipe.ops import queue_limits
from batchpipe.providers import base_url_from_env, key_source, open_provider


# Checks of what the user gives batchpipe: when one fails, doctor exits with the bad-input code
# (README "Exit codes": 2 for a missing API key or an invalid config); any other failure is 1.
BAD_INPUT_CHECKS = frozenset({"api key", "config"})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


def _key() -> tuple[Check, str | None]:
    key, source = key_source()
    if key is None:
        return Check("api key", False, "OPENAI_API_KEY is not set",
                     "export OPENAI_API_KEY=... or put OPENAI_API_KEY=... in ./.env"), None
    return Check("api key", True, f"set ({source}, {len(key)} characters)"), key


def _service(key: str | None, base_url: str | None) -> Check:
    if key is None:
        return Check("service", False, "not checked: no API key", "set the key first")
    try:
        provider = open_provider(base_url=base_url, api_key=key)
        provider.ping()
    except BatchpipeError as exc:
        return Check("service", False, exc.message, exc.hint or "check OPENAI_BASE_URL and the network")
    return Check("service", True, f"{provider.base_url} answers and accepts the key")


def _config(config: Path | None) -> tuple[Check | None, str | None]:
    if config is None:
        return None, None
    try:
        cfg = load_config(config)
    except BatchpipeError as exc:
        return Check("config", False, exc.message, exc.hint or "fix the config"), None
    return Check("config", True, f"{config}: valid ({cfg.model}, {cfg.endpoint}, input {cfg.input.path or f'count {cfg.input.count}'})"), cfg.provider.base_url


def _runs_dir(runs_dir: Path) -> Check:
    """The runs dir is writable, or can be made where it does not exist yet. Doctor makes nothing:
    a missing runs dir is left for the first `create` (the write test leaves no file behind)."""
    fix = "choose another with --runs-dir or BATCHPIPE_RUNS_DIR"
    if not runs_dir.exists():
        parent = next(p for p in runs_dir.absolute().parents if p.exists())
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return Check("runs dir", True, f"{runs_dir} does not exist yet: the first run creates it (in {parent}, writable)")
        return Check("runs dir", False, f"{runs_dir} cannot be created: {parent} is not a writable directory", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=runs_dir, prefix=".doctor.", suffix=".tmp") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return Check("runs dir", False, f"{runs_dir} is not writable ({exc.strerror})", fix)
    return Check("runs dir", True, f"{runs_dir.resolve()} is writable")


def _tokenizer() -> Check:
    if find_spec("bpe_openai") is not None:
        return Check("tokenizer", True, "bpe-openai is installed: estimates count real tokens")
    return Check("tokenizer", True, "not installed: estimates use bytes/4",
                 "pip install 'batchpipe[tokens]' for exact token counts")


def _queue(runs_dir: Path, config: Path | None, base_url: str | None) -> Check:
    """The enqueued-token limit in force for the config's model, or every one learned in the runs dir."""
    try:
        cfg = load_config(config) if config is not None else None
    except BatchpipeError:
        cfg = None  # the config check says what is wrong with it
    if cfg is not None:
        limit = queue_limits.in_force(runs_dir, base_url, cfg.model, cfg.limits.enqueued_tokens)
        return Check("queue limit", True, f"{cfg.model}: {limit.describe()}")
    learned = queue_limits.load_all(runs_dir)
    if not learned:
        return Check("queue limit", True, "none learned yet: learned from the service's first token_limit_exceeded "
                                          "(or set limits.enqueued_tokens)")
    return Check("queue limit", True, "; ".join(
        f"{key}: {e['tokens']:,} tokens ({e.get('source')})" if e.get("tokens") else f"{key}: not known"
        for key, e in sorted(learned.items())))


def doctor(runs_dir: Path, config: Path | None = None) -> list[Check]:
    key_check, key = _key()
    config_check, config_base_url = _config(config)
    base_url = config_base_url or base_url_from_env()
    checks = [key_check, _service(key, base_url), _runs_dir(Path(runs_dir)), _tokenizer(),
              _queue(Path(runs_dir), config, base_url)]
    if config_check is not None:
        checks.insert(2, config_check)
    return checks


def exit_code(checks: list[Check]) -> ExitCode:
    failed = {c.name for c in checks if not c.ok}
    if failed & BAD_INPUT_CHECKS:
        return ExitCode.BAD_INPUT
    return ExitCode.ERROR if failed else ExitCode.OK
