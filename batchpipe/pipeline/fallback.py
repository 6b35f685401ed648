"""`output.fallback`: the value a row gets when the model's did not come (or was invalid).

Applied when the output is written, to rows whose request finally failed or whose answer stayed
invalid (after its retries, or at once with `on_invalid: fallback`). Either a `module:function`
hook, called with a copy of the input row, whose return value is the row's value, or `{copy:
FIELD}`, the value of a field of the row. Nothing falls back silently: the row keeps its error
and is marked `<key>_source: fallback` (ops/process.py), and the run counts such rows. A hook
that raises, or a field that is not there, leaves the row failed with the code `fallback_failed`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchpipe.errors import ConfigError
from batchpipe.pipeline.hooks import HookError, load_hook
from batchpipe.pipeline.interpret import Interpreted
from batchpipe.pipeline.template import MissingField, lookup

FAILED = "fallback_failed"


class Fallback:
    """Built once per output written, from `output.fallback`; called per row that needs it."""

    def __init__(self, spec: str | Mapping[str, str], hooks_dir: Path) -> None:
        self.spec = spec
        self.hook = None
        if isinstance(spec, str):
            try:
                self.hook = load_hook(spec, hooks_dir)
            except HookError as exc:
                raise ConfigError(
                    f"output.fallback: the hook of this run cannot be loaded: {exc}",
                    hint=f"hooks are imported from {hooks_dir}; restore the module there and run `batchpipe "
                    "process` again (the answers are kept)",
                ) from None

    def __call__(self, row: dict[str, Any], why: dict[str, Any] | None) -> Interpreted:
        """The fallback value for `row` (whose own outcome failed with `why`), or a fallback_failed error."""
        if self.hook is None:
            field = self.spec["copy"]  # type: ignore[index]
            try:
                return Interpreted(True, lookup(row, field))
            except MissingField as exc:
                return self._failed(f"output.fallback copy: the row's field {field!r} {exc.reason}", why)
        try:
            return Interpreted(True, self.hook(copy.deepcopy(row)))
        except Exception as exc:  # the job's own code: the row stays failed, saying why
            return self._failed(f"output.fallback {self.spec} raised {type(exc).__name__}: {exc}", why)

    @staticmethod
    def _failed(message: str, why: dict[str, Any] | None) -> Interpreted:
        cause = f"; the row had failed with {why.get('code')}: {why.get('message')}" if why else ""
        return Interpreted(False, None, {"code": FAILED, "message": message + cause, "cause": why})
