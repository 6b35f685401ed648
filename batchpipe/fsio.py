"""Durable local writes and the run lock.

This is the only module that calls os.replace, os.fsync or FileLock (DESIGN.md §4). The rules,
each learned the hard way by other projects (see reference/style-anchors.md):
- write to a unique temp name in the same directory (a rename is atomic only within one
  filesystem, and a fixed temp name corrupts data when two writers meet);
- flush + fsync the file before the rename, or the rename can reach disk before the data;
- fsync the directory after the rename, or the rename itself can be lost on power loss;
- on any failure, including Ctrl-C, remove the temp file and re-raise.
Temp files are named `.<name>.<random>.tmp` so `recover` can find and remove strays.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from batchpipe.errors import RunLocked

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
DEFAULT_LOCK_TIMEOUT = 10.0


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable.

    Some filesystems (network mounts) refuse to fsync a directory with EINVAL; that is the
    only error ignored, as borg's sync_dir does. Others (EIO) must not be silenced.
    """
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` atomically and durably when the block ends.

    Nothing is visible at `path` until the block finishes without error; on error the temp
    file is removed and `path` keeps its old content.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; published data files are not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, atomically and durably. Serialize before calling."""
    with atomic_writer(path) as f:
        f.write(data)


def write_lines_atomic(path: Path, lines: Iterable[bytes]) -> tuple[int, str]:
    """Stream `lines` into `path` atomically; return (bytes written, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    with atomic_writer(path) as f:
        for line in lines:
            f.write(line)
            digest.update(line)
            size += len(line)
    return size, digest.hexdigest()


def append_line(path: Path, line: bytes) -> None:
    """Append one whole line to an append-only log and fsync it.

    Readers must skip a torn last line (a crash can cut a line short); the log is never
    rewritten in place.
    """
    if not line.endswith(b"\n"):
        line += b"\n"
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(path.parent)


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[int, str]:
    """Return (size, sha256 hex) of a file, reading it in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def publish_dir(tmp_dir: Path, final: Path) -> None:
    """Move a fully written directory into place in one rename, then make that durable.

    `create` builds a run in a temp directory and publishes it here, so an interrupted
    create never leaves a half-made run dir. Fails if `final` already exists.
    """
    for sub in [tmp_dir, *(p for p in tmp_dir.rglob("*") if p.is_dir())]:
        fsync_dir(sub)
    os.rename(tmp_dir, final)  # on POSIX, fails with ENOTEMPTY/EEXIST if final exists non-empty
    fsync_dir(final.parent)


def make_temp_dir(parent: Path, name: str) -> Path:
    """A fresh, uniquely named hidden directory under `parent` (for publish_dir)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=TEMP_SUFFIX))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def stray_temp_files(directory: Path) -> list[Path]:
    """Temp files and dirs left behind by a crash mid-write (never a published file)."""
    return sorted(p for p in directory.rglob(f".*{TEMP_SUFFIX}"))


def lock_timeout() -> float:
    raw = os.environ.get("BATCHPIPE_LOCK_TIMEOUT")
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT
    try:
        return max(0.0, float(raw))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT


@contextlib.contextmanager
def file_lock(path: Path, what: str, timeout: float | None = None) -> Iterator[None]:
    """Hold a sidecar lock file for a short read-modify-write of a shared file (not a run)."""
    lock = FileLock(path, is_singleton=True)
    try:
        lock.acquire(timeout=lock_timeout() if timeout is None else timeout)
    except Timeout:
        raise RunLocked(f"{what} is busy: another batchpipe process holds {path}",
                        hint="wait for it to finish (or set BATCHPIPE_LOCK_TIMEOUT to wait longer) and try again") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def run_lock(run_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the run's sidecar lock (never state.json itself) for a mutating command.

    One lock object per run per process (filelock's singleton), so an op that already holds
    the lock (`tick`, say) can call others that take it again without waiting on itself.
    A Unix lock file left behind is harmless and is never deleted. Correctness does not
    depend on the lock: every write above is atomic on its own.
    """
    timeout = lock_timeout() if timeout is None else timeout
    lock = FileLock(run_dir / LOCK_NAME, is_singleton=True)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise RunLocked(
            f"run {run_dir.name} is busy: another batchpipe process holds {run_dir / LOCK_NAME}",
            hint="wait for it to finish (or set BATCHPIPE_LOCK_TIMEOUT to wait longer) and try again",
        ) from None
    try:
        yield
    finally:
        lock.release()
