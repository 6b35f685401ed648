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
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# (filelock is imported by the functions that lock: `status`, `list` and `--help` take no lock, and
# do not load it; issue 9)
from batchpipe.errors import RunLocked

TEMP_SUFFIX = ".tmp"
WRITE_CHUNK = 1 << 20  # bytes a streamed file is written and hashed in (see _chunks)
NEW_SUFFIX = ".new"  # a build dir's name for the instant before its lock is held (see building_dir)
STALE_NEW_SECONDS = 3600.0
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


def fsync_file(path: Path) -> None:
    """Flush a file written by someone else (sqlite with syncs off) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A file being written is sent to disk in the background each time this many more bytes are
# written to it (fdatasync on a thread, while the writer goes on), so the fsync that ends it waits
# for at most this much: a 60 MB output took 0.1 s to fsync at the end, on the command's critical path.
EARLY_SYNC_BYTES = 8 << 20
_DATASYNC = getattr(os, "fdatasync", os.fsync)  # the data alone where the system can (macOS cannot)


class _SyncingFile:
    """A file opened for writing (atomic_writer) whose data goes to disk in the background as it is
    written (EARLY_SYNC_BYTES); `wait` for the last background flush before the file is closed."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._unsynced = 0
        self._flushing: threading.Thread | None = None
        self._error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._f.write(data)
        self._unsynced += n
        if self._unsynced >= EARLY_SYNC_BYTES and (self._flushing is None or not self._flushing.is_alive()):
            self.wait()  # an error of the last flush is raised here, not lost
            self._f.flush()
            self._flushing = threading.Thread(target=self._flush_to_disk, name="batchpipe-early-sync", daemon=True)
            self._flushing.start()
            self._unsynced = 0
        return n

    def _flush_to_disk(self) -> None:
        try:
            _DATASYNC(self._f.fileno())
        except OSError as exc:
            self._error = exc

    def wait(self) -> None:
        if self._flushing is not None:
            self._flushing.join()
            self._flushing = None
        if self._error is not None:
            raise self._error


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A new temp file (its fd, open, and its path) in `path`'s directory, named `.<name>.<random>.tmp`
    (unique: two writers never meet; the same filesystem: the rename is atomic; `recover` finds it)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    return fd, Path(name)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[_SyncingFile]:
    """Yield a binary file that replaces `path` atomically and durably when the block ends.

    Nothing is visible at `path` until the block finishes without error; on error the temp
    file is removed and `path` keeps its old content.
    """
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            syncing = _SyncingFile(f)
            try:
                yield syncing
            finally:
                syncing.wait()  # no fd is closed under a running fdatasync
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; published data files are not secret
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def scratch_files(path: Path, count: int) -> Iterator[list[Path]]:
    """`count` empty temp files beside `path`, for pieces of it that other processes write before
    one writer puts them together (write_lines_atomic): named as the temp files above, so that
    `recover` removes any a crash leaves, and removed when the block ends, whatever happens."""
    made: list[Path] = []
    try:
        for _ in range(count):
            fd, tmp = _temp_beside(path)
            os.close(fd)
            made.append(tmp)
        yield made
    finally:
        for tmp in made:
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, atomically and durably. Serialize before calling."""
    with atomic_writer(path) as f:
        f.write(data)


def _chunks(lines: Iterable[bytes]) -> Iterator[bytes]:
    """`lines` joined into pieces of about WRITE_CHUNK bytes: a writer then makes two calls (write,
    hash) per piece instead of two per line, and sha256 lets go of the GIL for big buffers."""
    chunk: list[bytes] = []
    pending = 0
    for line in lines:
        chunk.append(line)
        pending += len(line)
        if pending >= WRITE_CHUNK:
            yield b"".join(chunk)
            chunk, pending = [], 0
    if chunk:
        yield b"".join(chunk)


def write_lines_atomic(path: Path, lines: Iterable[bytes]) -> tuple[int, str]:
    """Stream `lines` into `path` atomically; return (bytes written, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    with atomic_writer(path) as f:
        for data in _chunks(lines):
            f.write(data)
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()


def append_line(path: Path, line: bytes) -> None:
    """Append one whole line to an append-only log and fsync it (an AppendLog of one line).

    Readers must skip a torn last line (a crash can cut a line short); the log is never
    rewritten in place. A torn last line is ended first, so the new line stays whole on its own.
    """
    log = AppendLog(path)
    try:
        log.append(line)
    finally:
        log.close()


class AppendLog:
    """An append-only log many threads write to, each line made durable with one fsync for many.

    `write(line)` appends a whole line (one at a time, under a lock) and returns its ticket;
    `sync(ticket)` returns once that line is on disk. The fsync is shared: a thread that finds
    the lines written meanwhile already fsynced by another returns at once, and one fsync covers
    every line written before it started (group commit). So N threads answering at once pay one
    fsync between them, not N in a row, and each still knows its own line is durable when
    sync returns. Readers skip a torn last line, as with append_line; the file is opened (and a
    torn last line ended) at the first write, so a log nothing was written to does not exist.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()  # one writer at a time: lines stay whole, tickets in file order
        self._sync_lock = threading.Lock()  # one fsync at a time; whoever holds it syncs for all before it
        self._written = 0
        self._synced = 0

    def write(self, line: bytes) -> int:
        """Append one line (not yet durable: pass the ticket to sync)."""
        if not line.endswith(b"\n"):
            line += b"\n"
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
            view = memoryview(line)
            while view:  # a regular file takes it all at once; a short write is finished, not lost
                view = view[os.write(self._fd, view):]
            self._written += 1
            return self._written

    def sync(self, ticket: int) -> None:
        """Return once the line of `ticket` (and every line before it) is on disk."""
        with self._sync_lock:
            if self._synced >= ticket:
                return  # another thread's fsync covered it
            upto = self._written  # every line counted here is written: one fsync makes all of them durable
            os.fsync(self._fd)
            self._synced = upto

    def append(self, line: bytes) -> None:
        """Append one line and return once it is durable."""
        self.sync(self.write(line))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int:
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")  # a torn last line, left by a kill: end it, so the next line is whole
        if not existed:
            fsync_dir(self.path.parent)
        return fd


class _Mismatch(Exception):
    pass


def write_lines_checked(path: Path, lines: Iterable[bytes], size: int, sha256: str) -> bool:
    """Stream `lines` into `path` only if they come to exactly `size` bytes with this sha256.

    For re-making a file the ledger names (and checksums): the new bytes replace the old file
    atomically if they match, and otherwise nothing changes. Returns whether they matched.
    """
    digest, written = hashlib.sha256(), 0
    try:
        with atomic_writer(path) as f:
            for line in lines:
                f.write(line)
                digest.update(line)
                written += len(line)
            if (written, digest.hexdigest()) != (size, sha256):
                raise _Mismatch  # leaves `path` as it was
    except _Mismatch:
        return False
    return True


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp file beside `path` for a writer that needs a file name (sqlite), put in place at the end.

    The writer must make its own data durable (sqlite does, on commit); the file is fsynced
    again, renamed over `path` and the directory fsynced. A stale sqlite journal of the old file
    is removed first: left beside the new one, sqlite would "roll it back" into it.
    """
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield tmp
        fsync_file(tmp)
        Path(f"{path}-journal").unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        Path(f"{tmp}-journal").unlink(missing_ok=True)
    fsync_dir(path.parent)


class HashingReader(io.RawIOBase):
    """A raw file that hashes every byte handed out: a reader reads through it (buffered) and the
    file is hashed by the same read, not by a pass of its own."""

    def __init__(self, raw: io.FileIO) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        n = self._raw.readinto(buffer)
        if n:
            self.hash.update(memoryview(buffer)[:n])
            self.size += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


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


@contextlib.contextmanager
def building_dir(parent: Path, name: str) -> Iterator[Path]:
    """A fresh hidden dir under `parent` to build `name` in (then publish_dir it), locked while the block runs.

    A create killed mid-way leaves this dir behind (up to a shard's worth of data); the lock is how
    remove_stale_build_dirs tells such a leftover from a create still writing. The lock file
    (`.lock` inside, which becomes the published run's own lock file) is taken before the dir gets
    its `.tmp` name, so no live build is ever seen without its lock held. On error the dir is removed.
    """
    from filelock import FileLock

    parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=NEW_SUFFIX))
    lock = FileLock(fresh / LOCK_NAME)
    lock.acquire(timeout=0)  # nobody else knows this dir yet
    tmp = fresh.with_suffix(TEMP_SUFFIX)
    try:
        os.rename(fresh, tmp)
        yield tmp
    except BaseException:
        remove_tree(fresh)
        remove_tree(tmp)  # nothing there once it was published
        raise
    finally:
        lock.release()


@dataclass(frozen=True)
class BuildDir:
    """A hidden dir a create builds a run in, found beside the runs (see building_dir)."""

    path: Path
    run_id: str
    live: bool | None  # a create is writing it (None: cannot tell, e.g. on a read-only disk)
    bytes: int


def build_dirs(parent: Path, name: str = "*") -> list[BuildDir]:
    """The build dirs under `parent` (of run `name`, or of every run), live or left by a killed create."""
    found = []
    for path in sorted(Path(parent).glob(f".{name}.*{TEMP_SUFFIX}")):
        if not path.is_dir():
            continue
        run_id = path.name[1:].rsplit(".", 2)[0]
        if name != "*" and run_id != name:
            continue  # `.a.*` also matches the build dirs of run `a.b`
        found.append(BuildDir(path, run_id, _is_locked(path / LOCK_NAME), _tree_size(path)))
    return found


def remove_stale_build_dirs(parent: Path, name: str = "*") -> list[BuildDir]:
    """Remove the build dirs no live create is writing; return them.

    A dir is removed only while its lock is held here, so a create that is still running (it
    holds the lock from the start) is never touched. A dir without a lock file was left by an
    older batchpipe; a dir still named `.new` by a create killed before it took its `.tmp` name.
    """
    from filelock import FileLock, Timeout

    removed = []
    for stray in build_dirs(parent, name):
        lock_file = stray.path / LOCK_NAME
        if not lock_file.exists():
            remove_tree(stray.path)
            removed.append(stray)
            continue
        lock = FileLock(lock_file)
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue  # a create is writing it (or it cannot be locked here): leave it
        try:
            remove_tree(stray.path)
            removed.append(stray)
        finally:
            lock.release()
    for fresh in Path(parent).glob(f".{name}.*{NEW_SUFFIX}"):
        with contextlib.suppress(OSError):
            if time.time() - fresh.stat().st_mtime > STALE_NEW_SECONDS:
                remove_tree(fresh)
    return removed


def _is_locked(lock_file: Path) -> bool | None:
    from filelock import FileLock, Timeout

    if not lock_file.exists():
        return False
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return None
    lock.release()
    return False


def _tree_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


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
    from filelock import FileLock, Timeout

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
    from filelock import FileLock, Timeout

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
