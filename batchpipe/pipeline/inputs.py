"""Read the input dataset one row at a time, in memory that does not grow with its size.

Formats
-------
- **jsonl** (also `.ndjson`): one JSON object per line, UTF-8. A byte order mark at the
  start is ignored; blank (or whitespace-only) lines are skipped but still counted, so
  line numbers match what an editor shows. A line that is not valid JSON, or is JSON but
  not an object (`[...]`, `"text"`, `3`), stops the read with an InputError that names the
  file and the line.
- **csv**: UTF-8 (a BOM is ignored), comma-separated, first row is the header. Every value
  is text; an empty cell is the empty string (not missing). Blank lines are skipped. A row
  with more or fewer fields than the header, an empty or repeated header name, or a
  malformed quote stops the read with an InputError naming the file and the line.
  A quoted field may span lines; its row's `line_no` is the line where the row starts.

Integers beyond 64 bits (ids, counters) are kept exactly: orjson would read them as floats,
so a line holding a long run of digits is read with the stdlib json instead.

The bytes are hashed as they are read (`InputDigest`), in the same pass that parses them, so
the hash a run records is the hash of exactly the rows it rendered. A file that changes while
it is read (grows, shrinks, is rewritten or replaced) is an InputError at the end of the read.

Duplicate ids are not detected here (that needs an index on disk; see requests.py).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from batchpipe import fsio
from batchpipe.errors import InputError

if TYPE_CHECKING:
    from batchpipe.config import InputConfig

__all__ = [
    "InputDigest", "Row", "WholeRead", "block_lines", "block_rows", "count_rows", "count_sha256", "display_path",
    "dumps_row", "input_name", "input_sha256", "is_blank", "iter_rows", "json_blocks", "json_range_blocks",
    "numbered_blocks", "rows_in",
]

_BOM = b"\xef\xbb\xbf"
# The bytes json_blocks reads at a time: enough that the work per block is paid rarely, few
# enough that a block stays in the CPU's caches while it is worked on.
BLOCK_BYTES = 1 << 20
# csv refuses fields over 128 KiB by default; long documents in one cell are normal input.
# 256 MiB is beyond the 200 MB a whole batch file may hold, so nothing useful is refused.
_CSV_FIELD_LIMIT = 256 * 1024 * 1024
# orjson reads integers from -2**63 to 2**64-1 exactly and any other as a float. Those all have
# fewer than 19 digits, or 19 or 20; a run of 19 or more digits (in a number, or harmlessly in
# a string) in a line orjson read a float from sends the line to the stdlib parser, which keeps
# every integer exact.
_LONG_DIGITS = re.compile(rb"[0-9]{19,}")
DIGITS = b"0123456789"
_ONE_DIGIT = bytes.maketrans(DIGITS[1:], b"0" * 9)


def has_long_digits(block: bytes) -> bool:
    """Does `block` hold a run of 19 or more digits anywhere? If not, no line of it can have lost
    digits to orjson (see _LONG_DIGITS). At C speed in two passes, a tenth of the cost of a
    regular expression, and half that of counting each line's digits."""
    return b"0" * 19 in block.translate(_ONE_DIGIT)


class Row(NamedTuple):
    """One data row (a NamedTuple: a big input makes millions of them).

    `row_no` is its 1-based position among data rows (blank lines and the CSV header do not
    count); `line_no` the 1-based line of the file where it starts; `data` the parsed record.
    """

    row_no: int
    line_no: int
    data: dict[str, Any]


# Row((row_no, line_no, data)) at the cost of a plain tuple: a NamedTuple's own constructor is
# Python code, paid once per row of a million-row file.
_row = functools.partial(tuple.__new__, Row)


@dataclass
class InputDigest:
    """Size and sha256 of the bytes one read of the input consumed; set when the read reaches
    the end of the file unchanged (an error before that leaves it empty)."""

    bytes: int = 0
    sha256: str = ""


class _Source:
    """The input opened for one read: a buffered binary stream over a hashing raw file, and
    the file's identity (device, inode, size, mtime) when it was opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise _open_error(path, exc) from None
        self.opened = _identity(os.fstat(raw.fileno()))
        self.hashing = fsio.HashingReader(raw)
        self.stream = io.BufferedReader(self.hashing, 1 << 20)

    def close(self) -> None:
        self.stream.close()

    def finish(self, digest: InputDigest | None) -> None:
        """At the end of the file: refuse a file that changed while it was read; fill `digest`."""
        try:
            now = _identity(os.stat(self.path))
        except OSError:
            now = None  # deleted or unreadable now: changed as far as this read is concerned
        if now != self.opened or self.hashing.size != self.opened[2]:
            raise InputError(
                f"{display_path(self.path)}: the file changed while it was being read "
                "(it grew, shrank, or was rewritten or replaced)",
                hint="wait until whatever writes the file has finished (or work on a copy of it), "
                "then run the command again",
            )
        if digest is not None:
            digest.bytes, digest.sha256 = self.hashing.size, self.hashing.hash.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def dumps_row(data: dict[str, Any]) -> bytes:
    """A row as one compact JSON line (trailing newline included), integers of any size exact."""
    try:
        return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits; the stdlib writes them digit for digit.
        return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def display_path(path: Path) -> str:
    """`path` as a user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def iter_rows(cfg: InputConfig, digest: InputDigest | None = None) -> Iterator[Row]:
    """Yield the rows of `cfg.path` in file order; raises InputError naming file and line.

    A file with no data rows at all is an InputError too: a run with nothing in it is
    almost always a wrong path or an export that failed. When the last row has been read,
    `digest` (if given) holds the size and sha256 of the bytes the rows were parsed from.
    """
    if cfg.count is not None:
        rows = _iter_count(cfg.count, digest)
    elif cfg.format == "jsonl":
        rows = _iter_jsonl(Path(cfg.path), digest)
    elif cfg.format == "csv":
        rows = _iter_csv(Path(cfg.path), digest)
    else:
        raise InputError(
            f"{display_path(cfg.path)}: unknown input format {cfg.format!r}",
            hint="set input.format to jsonl or csv in the job config",
        )
    first = next(rows, None)
    if first is not None:
        yield first
        yield from rows  # delegated: no step of this generator's own per row
    else:
        raise InputError(
            f"{display_path(cfg.path)}: the file has no data rows",
            hint="check input.path in the job config, or fill the file",
        )


def count_sha256(count: int) -> str:
    """What stands for the input's sha256 in a generation job: a digest of its row count, so a
    run's checks that its input has not changed (create, process, recover) work unchanged."""
    return hashlib.sha256(f"batchpipe input.count {count}\n".encode()).hexdigest()


def input_sha256(cfg: InputConfig) -> str:
    """The sha256 of the input as a run records it (a file's bytes, or count_sha256)."""
    return count_sha256(cfg.count) if cfg.count is not None else fsio.sha256_file(Path(cfg.path))[1]


def input_name(cfg: InputConfig) -> str:
    """The input as messages name it: its file, or the generation job's count."""
    return display_path(cfg.path) if cfg.count is None else f"input.count ({cfg.count} rows)"


def _iter_count(count: int, digest: InputDigest | None) -> Iterator[Row]:
    """A generation job's rows: {"index": 0} to {"index": count-1}; row_no and line_no are index + 1."""
    for i in range(count):
        yield Row(i + 1, i + 1, {"index": i})
    if digest is not None:
        digest.bytes, digest.sha256 = 0, count_sha256(count)


def _open_error(path: Path, exc: OSError) -> InputError:
    name = display_path(path)
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{name}: input file not found", hint="check input.path in the job config")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"{name}: is a directory, not a file", hint="point input.path at a .jsonl or .csv file")
    if isinstance(exc, PermissionError):
        return InputError(f"{name}: permission denied", hint="make the file readable, or copy it somewhere readable")
    return InputError(f"{name}: cannot read the file ({exc.strerror or exc})")


def _iter_jsonl(path: Path, digest: InputDigest | None) -> Iterator[Row]:
    name = display_path(path)
    loads = orjson.loads
    for row_no, line_no, raw in json_lines(path, digest):
        # parse_json_line, its usual case written out (a call less per row); the rest goes to it
        try:
            data = loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is not dict or len(raw) - len(raw.translate(None, DIGITS)) >= 19:
            data = parse_json_line(name, line_no, raw)
        yield _row((row_no, line_no, data))


def json_lines(path: Path, digest: InputDigest | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(row_no, line_no, line) of each row of a JSONL file, the line as it is in the file (but a
    byte order mark): blank lines are skipped, nothing is parsed (see parse_json_line)."""
    source = _Source(path)
    row_no = 0
    try:
        for line_no, raw in enumerate(source.stream, start=1):
            if raw.isspace():  # blank: stops at the first other byte, so a row costs next to nothing
                continue
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
                if raw.isspace() or not raw:
                    continue
            row_no += 1
            yield row_no, line_no, raw
        source.finish(digest)
    finally:
        source.close()


def json_blocks(path: Path, digest: InputDigest | None = None) -> Iterator[bytes]:
    """The lines of a JSONL file as json_lines reads them, in blocks of whole lines (BLOCK_BYTES or
    so): each ends with a newline (the file's last line is given one if it has none), a byte order
    mark at the start of the file is left out. Which of the lines are rows: block_rows. `digest`
    and a file that changes while it is read: as json_lines."""
    source = _Source(path)
    try:
        yield from _blocks(source.stream, None, bom=True)
        source.finish(digest)
    finally:
        source.close()


def json_range_blocks(path: Path, start: int, end: int) -> Iterator[bytes]:
    """json_blocks of the bytes `start` to `end` of a JSONL file, each the start of a line (or its
    end), read as they are: neither hashed nor checked for a change (the caller reads the whole
    file for that)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _open_error(path, exc) from None
    with f:
        f.seek(start)
        yield from _blocks(f, end - start, bom=start == 0)


def _blocks(f: io.BufferedIOBase, size: int | None, *, bom: bool, end_last: bool = True,
            block: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The next `size` bytes of `f` (all that is left if None) in blocks of whole lines (json_blocks);
    with `end_last` False, a last line without a newline is left as it is (numbered_blocks)."""
    carry = b""  # a line begun in the last read
    while size is None or size > 0:
        chunk = f.read(block if size is None else min(block, size))  # all of it, but at the end
        if not chunk:
            break
        if size is not None:
            size -= len(chunk)
        if bom:  # the first read: a mark at the start of the file is whole in it
            chunk, bom = chunk.removeprefix(_BOM), False
        cut = chunk.rfind(b"\n") + 1
        if cut:
            yield carry + chunk[:cut]
            carry = chunk[cut:]
        else:
            carry += chunk  # a line longer than a block
    if carry:
        yield carry + b"\n" if end_last else carry


def block_rows(block: bytes, row_no: int, line_no: int) -> list[tuple[int, int, bytes]]:
    """(row_no, line_no, line) of the rows of a block of whole lines (json_blocks), as json_lines
    yields them (a blank or whitespace-only line is no row), numbered on from the row and line
    numbers of the block's first line."""
    rows = []
    for line_no, line in enumerate(block.split(b"\n")[:-1], line_no):  # noqa: B020 - numbered on from it
        if not is_blank(line):
            rows.append((row_no, line_no, line + b"\n"))
            row_no += 1
    return rows


def count_rows(path: Path, start: int, end: int) -> tuple[int, int]:
    """(rows, lines) of a JSONL file between bytes `start` and `end` (json_range_blocks), as
    json_lines counts them."""
    rows = lines = 0
    for block in json_range_blocks(path, start, end):
        rows += rows_in(block)
        lines += block.count(b"\n")
    return rows, lines


class WholeRead:
    """A file read whole to hash it while other processes read ranges of it (json_range_blocks).

    Open it before they start, then `hash` it; `finish`, once they are done, refuses a file that
    changed since it was opened (as json_lines does) and fills `digest`: what they read is what
    was hashed.
    """

    def __init__(self, path: Path) -> None:
        self._source = _Source(path)

    def hash(self) -> None:
        while self._source.stream.read(BLOCK_BYTES):  # hashed by the source as it is read
            pass

    def finish(self, digest: InputDigest) -> None:
        self._source.finish(digest)

    def __enter__(self) -> WholeRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._source.close()


# A line holding only whitespace, between two others (rows_in).
_BLANK_INSIDE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")


def numbered_blocks(
    path: Path, digest: InputDigest | None = None, size: int = BLOCK_BYTES,
) -> Iterator[tuple[bytes, int, int]]:
    """(block, line number of its first line, its offset in the file) of a JSONL file: each block
    whole lines (the last one's newline included, but at the end of a file without one) of about
    `size` bytes, the byte order mark left out of the first. json_lines' read in big pieces, for a
    caller that splits the lines itself (create's renderers): the same hashing and the same check
    for a changed file. Unlike json_blocks, a last line without a newline is left as it is: an
    error message about it must be the one json_lines' line would get."""
    source = _Source(path)
    try:
        line_no, offset = 1, len(_BOM) if source.stream.peek(len(_BOM)).startswith(_BOM) else 0
        for block in _blocks(source.stream, None, bom=True, end_last=False, block=size):
            yield block, line_no, offset
            line_no, offset = line_no + block.count(b"\n"), offset + len(block)
        source.finish(digest)
    finally:
        source.close()


def block_lines(block: bytes) -> list[bytes]:
    """The lines of a numbered_blocks block, without their newlines (a blank one: is_blank)."""
    lines = block.split(b"\n")
    if not lines[-1]:  # the block's last newline ends its last line: nothing follows it
        lines.pop()
    return lines


def is_blank(line: bytes) -> bool:
    """Is a line of block_lines blank (json_lines skips it)?"""
    return not line or line.isspace()


def rows_in(block: bytes) -> int:
    """How many rows (lines not blank) a block of whole lines holds (numbered_blocks', json_blocks'):
    counted at C speed when it has no blank line, the usual case."""
    framed = b"\n" + block + (b"" if block.endswith(b"\n") else b"\n")  # every line between two newlines
    if _BLANK_INSIDE.search(framed) is None:
        return framed.count(b"\n") - 1
    return sum(not is_blank(line) for line in block_lines(block))


def parse_json_line(name: str, line_no: int, raw: bytes) -> dict[str, Any]:
    """A JSONL row's object; an InputError naming `name` and the line if it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad_json(name, line_no, raw, exc) from None
    # Fewer than 19 digits in the whole line (the usual row; counted at C speed): none was lost.
    if len(raw) - len(raw.translate(None, DIGITS)) >= 19 and _may_have_lost_digits(data) and _LONG_DIGITS.search(raw):
        data = json.loads(raw)  # valid JSON (orjson read it); the stdlib keeps big integers exact
    if type(data) is not dict:
        raise InputError(
            f"{name} line {line_no}: expected a JSON object ({{...}}), got {_json_kind(data)}",
            hint=f'each line must be one JSON object such as {{"text": "..."}}; fix or delete line {line_no}',
        )
    return data


def _may_have_lost_digits(data: Any) -> bool:
    """Does the parsed value hold a float? orjson reads an integer beyond 64 bits as one, so only
    then can a number have lost digits (cheaper than searching every line for long digit runs)."""
    if type(data) is not dict and type(data) is not list:
        return type(data) is float
    stack = [data]
    while stack:
        value = stack.pop()
        for item in value.values() if type(value) is dict else value:
            kind = type(item)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(item)
    return False


def _bad_json(name: str, line_no: int, raw: bytes, exc: orjson.JSONDecodeError) -> InputError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return InputError(
            f"{name} line {line_no}: not valid UTF-8 (byte {uexc.start + 1} of the line)",
            hint="save the file as UTF-8 (for example with iconv -f latin1 -t utf-8)",
        )
    # orjson says "...: line 1 column 7 (char 6)"; the line is always 1 (one JSON line at a
    # time), so keep the reason and the column only.
    msg = str(exc)
    reason, _, where = msg.partition(": line 1 column ")
    column = where.split(" ", 1)[0] if where else ""
    detail = f"{reason} at column {column}" if column else reason
    return InputError(
        f"{name} line {line_no}: not valid JSON ({detail})",
        hint=f"each line must be one complete JSON object; fix or delete line {line_no}",
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _iter_csv(path: Path, digest: InputDigest | None) -> Iterator[Row]:
    name = display_path(path)
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    source = _Source(path)
    try:
        reader = csv.reader(io.TextIOWrapper(source.stream, encoding="utf-8-sig", newline=""))
        header: list[str] | None = None
        header_line = 0
        row_no = 0
        last_line = 0  # physical line where the previous record ended
        while True:
            start = last_line + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{name} line {_line_of_decode_error(path, exc)}: not valid UTF-8",
                    hint="save the file as UTF-8 (for example with iconv -f latin1 -t utf-8)",
                ) from None
            except csv.Error as exc:
                raise InputError(
                    f"{name} line {start}: not valid CSV ({exc})",
                    hint='quote fields that contain commas, quotes or line breaks ("a ""quoted"" word")',
                ) from None
            last_line = reader.line_num
            if not fields:
                continue  # blank line
            if header is None:
                header, header_line = fields, start
                _check_header(name, start, header)
                continue
            if len(fields) != len(header):
                more = "more" if len(fields) > len(header) else "fewer"
                raise InputError(
                    f"{name} line {start}: {len(fields)} fields, {more} than the {len(header)} columns "
                    f"of the header (line {header_line})",
                    hint='quote fields that contain commas ("a, b"), and give every row one value per column',
                )
            row_no += 1
            yield Row(row_no, start, dict(zip(header, fields)))
        source.finish(digest)
    finally:
        source.close()


def _check_header(name: str, line: int, header: list[str]) -> None:
    seen: set[str] = set()
    for i, col in enumerate(header, start=1):
        if col == "":
            raise InputError(
                f"{name} line {line}: column {i} of the header has no name",
                hint="give every column a name in the first row (a trailing comma adds an empty column)",
            )
        if col in seen:
            raise InputError(
                f"{name} line {line}: column name {col!r} appears twice in the header",
                hint="rename one of the columns so that every name is unique",
            )
        seen.add(col)


def _line_of_decode_error(path: Path, exc: UnicodeDecodeError) -> int:
    """Find the line of the first invalid UTF-8 byte (rescans the file; error path only)."""
    line = 1
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):  # noqa: B007 - line is used after the loop
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
    return line

