"""Worker processes forked for a bulk pass (create's render, process's merge): each ends when the
process that started it does.

A pool's idle worker waits for its next task forever once its parent is killed (kill -9, the
OOM killer): it would keep the memory it holds, and the run's lock file it inherited open. A
thread of the worker watches for the parent's end instead, and ends the worker with it.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["end_with_parent"]

# How often a worker looks whether its parent is still there (seconds).
WATCH_EVERY = 0.5


def end_with_parent() -> None:
    """Call first thing in a forked worker (a pool's initializer): it exits when its parent does.

    The parent's end is seen as the worker being handed to another parent; its sentinel pipe would
    not do, as every worker forked after another holds that one's pipe open too."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_EVERY)
        os._exit(1)  # nothing to clean up: a worker's files are its parent's to remove

    threading.Thread(target=watch, name="batchpipe-parent-watch", daemon=True).start()
