"""`module:function` hooks: a job's own Python code, found beside its config.

A hook is written `module:function` (`hooks:check`, `pkg.mod:fix`) and imported from the job's
hooks directory (`hooks_dir`, by default the config file's directory; the run's config snapshot
records it as an absolute path, so every later step finds the same code). The module is loaded
from its file under a private name, so two jobs whose hook modules share a name never see each
other's code; while it loads, the hooks directory is first on sys.path so that it can import
its own helper modules.

Loading is the config's business (a missing module or function is a config error, exit 2, with
the field named); calling is the caller's: what a hook that raises means depends on where it
is used (batchpipe.pipeline.interpret, batchpipe.pipeline.fallback).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# module path (dotted identifiers) ':' function name
HOOK_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
_HOOK = re.compile(HOOK_PATTERN)

# Loaded modules by (file, mtime, size): one import per process, a changed file is loaded again.
_loaded: dict[tuple[str, int, int], Any] = {}


class HookError(Exception):
    """A hook that cannot be loaded; the message says which and why."""


def is_hook(text: Any) -> bool:
    return isinstance(text, str) and _HOOK.match(text) is not None


def _module_file(directory: Path, module: str) -> Path:
    base = directory.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise HookError(f"no module {module!r} in {directory} (looked for {base.with_suffix('.py').name} "
                    f"and {base.name}/__init__.py)")


def load_hook(ref: str, directory: Path) -> Callable[..., Any]:
    """The function `ref` (`module:function`) names, imported from `directory`."""
    if not is_hook(ref):
        raise HookError(f"{ref!r} is not a hook: write module:function, e.g. hooks:check")
    module_name, func_name = ref.split(":")
    path = _module_file(directory, module_name)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    module = _loaded.get(key)
    if module is None:
        private = f"_batchpipe_hook_{hashlib.sha256(key[0].encode()).hexdigest()[:12]}_{module_name.replace('.', '_')}"
        spec = importlib.util.spec_from_file_location(private, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(directory))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's module failed to import: say so, with its own words
            raise HookError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
        finally:
            sys.path.remove(str(directory))
        _loaded[key] = module
    func = getattr(module, func_name, None)
    if func is None:
        raise HookError(f"{path} has no function {func_name!r}")
    if not callable(func):
        raise HookError(f"{module_name}.{func_name} in {path} is not a function")
    return func
