"""An OpenAI-compatible Files + Batches HTTP server for offline runs, demos and tests.

    from batchpipe.emulator import Emulator, EmulatorOptions, answer_for

    with Emulator(EmulatorOptions(validating_seconds=0, in_progress_seconds=0, finalizing_seconds=0)) as emu:
        client = openai.OpenAI(base_url=emu.base_url, api_key="any")
        ...

Modules: options (knobs and fault switches), faults (transient errors, lost answers), store
(files, batches, counters, clock), timeline
(status at a moment), validation (input-file checks), answers (deterministic model answers),
checks (create-time 400s, list paging), results (output/error lines, `[[fail:<status>]]`
markers), multipart (upload parsing), apierror (the OpenAI error envelope), server (HTTP handler,
Emulator, serve_forever, main).
"""

from .answers import answer_for, estimate_batch_tokens
from .options import EmulatorOptions
from .server import Emulator, main, serve_forever
from .store import ManualClock, Store
from .validation import ALLOWED_ENDPOINTS

__all__ = [
    "ALLOWED_ENDPOINTS",
    "Emulator",
    "EmulatorOptions",
    "ManualClock",
    "Store",
    "answer_for",
    "estimate_batch_tokens",
    "main",
    "serve_forever",
]
