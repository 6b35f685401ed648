"""Rows -> Batch API request lines, one at a time (memory does not grow with the dataset).

Each request line is

    {"custom_id": <id>, "method": "POST", "url": <endpoint>, "body": <body>}\\n

serialized with orjson (compact, UTF-8, keys in insertion order), so the same config and
input always give the same bytes.

custom_id: with `input.id`, the value at that (dotted) path of the row, which must be a
non-empty string or a whole number; without it, the 1-based row number. With `input.records`
(one request per record of a list in each line), `<line id>#<record id>`: the record id is the
record's `input.record_id` (a string without `#`, or a whole number) or its 0-based position, so
the last `#` always splits a custom_id back into line and record. Duplicate ids are
**not** checked here: that needs an index on disk to keep memory flat, and the caller that
writes the shards does it.
"""

from __future__ import annotations

import base64
import functools
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from batchpipe.config import NO_SYSTEM_ENDPOINTS, RESERVED_PARAMS, JobConfig
from batchpipe.errors import ConfigError, InputError
from batchpipe.pipeline.inputs import (
    DIGITS,
    InputDigest,
    Row,
    block_lines,
    display_path,
    has_long_digits,
    input_name,
    iter_rows,
    parse_json_line,
)
from batchpipe.pipeline.template import (
    MissingField,
    Template,
    TemplateSyntaxError,
    check_field,
    compile_template,
    lookup,
)
from batchpipe.pipeline.tokens import BYTES_PER_TOKEN, estimate_tokens

if TYPE_CHECKING:
    from batchpipe.pipeline.tokens import TokenCounter

__all__ = [
    "RECORD_SEPARATOR", "Block", "BlockRenderer", "Request", "block_renderer", "build_body", "custom_id_for",
    "line_records", "record_scope", "render_requests",
]


class Request(NamedTuple):
    """One rendered request: its id, where its row is in the input, and the JSONL line
    (trailing b"\\n" included) exactly as it goes into a shard file. (A NamedTuple: a big job
    makes millions of them.)"""

    custom_id: str
    row_no: int
    line_no: int
    line: bytes
    # The request's body as a dict, kept so that counting its tokens needs no second parse of
    # `line`. Shares nested params with the config: read it, don't mutate it.
    body: dict[str, Any]
    # 1-based position among the job's requests (the index's order): the row number, or with
    # `input.records` (several requests per line) the count of requests up to this one.
    seq: int
    # The text the user message was rendered to: what its tokens are counted from, beside those of
    # the job's token_base_body, when it has one.
    user: str = ""


_request = functools.partial(tuple.__new__, Request)  # Request((...)) at a plain tuple's cost (see inputs._row)


def user_content(text: str, images: list[str] | tuple[str, ...] = ()) -> str | list[dict[str, Any]]:
    """A chat user message's content: the text alone, or with images a list of parts (the text,
    then one `image_url` part per image URL)."""
    if not images:
        return text
    return [{"type": "text", "text": text}, *({"type": "image_url", "image_url": {"url": url}} for url in images)]


def build_body(
    cfg: JobConfig,
    system: str | None,
    user: str,
    *,
    images: list[str] | tuple[str, ...] = (),
    history: list[tuple[str, list[str], str]] | tuple = (),
) -> dict[str, Any]:
    """The request body for `cfg.endpoint` from the rendered system and user texts.

    chat completions: model, messages (system first if given, then each turn of `history` as a
    user and an assistant message, then user), params; with `images` (URLs), a user message's
    content is a list of parts (see user_content).
    responses: model, input (user), instructions (system, if given), params.
    embeddings and moderations: model, input (user), params. completions: model, prompt
    (user), params. Nested param values are shared with `cfg`, not copied: serialize the
    body, don't mutate it.
    """
    endpoint = cfg.endpoint
    body: dict[str, Any] = {"model": cfg.model}
    if endpoint == "/v1/chat/completions":
        messages = [{"role": "system", "content": system}] if system is not None else []
        for turn_user, turn_images, answer in history:
            messages.append({"role": "user", "content": user_content(turn_user, turn_images)})
            messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": user_content(user, images)})
        body["messages"] = messages
    elif endpoint == "/v1/responses":
        body["input"] = user
        if system is not None:
            body["instructions"] = system
    elif endpoint in ("/v1/embeddings", "/v1/moderations"):
        body["input"] = user
    elif endpoint == "/v1/completions":
        body["prompt"] = user
    else:
        raise ConfigError(f"{display_path(cfg.source)}: endpoint {endpoint!r} is not supported")
    if system is not None and endpoint in NO_SYSTEM_ENDPOINTS:
        raise ConfigError(
            f"{display_path(cfg.source)}: prompt.system cannot be used with endpoint {endpoint}",
            hint="remove prompt.system, or move its text into prompt.user",
        )
    body.update(cfg.params)
    return body


def custom_id_for(cfg: JobConfig, row: Row) -> str:
    """The row's custom_id (see the module docstring); raises InputError naming the id field."""
    return _custom_id(cfg, row, None)


def _custom_id(cfg: JobConfig, row: Row, segments: tuple[str, ...] | None) -> str:
    id_field = cfg.input.id
    if id_field is None:
        return str(row.row_no)
    try:
        value = lookup(row.data, id_field, segments)
    except MissingField as exc:
        raise InputError(
            f"{input_name(cfg.input)} line {row.line_no}: id field '{id_field}' (input.id) {exc.reason}",
            hint=f"give every row a '{id_field}', or remove input.id from {display_path(cfg.source)} "
            "to number the rows instead",
        ) from None
    if isinstance(value, str):
        if value.strip():
            return value
        problem = "is empty"
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    else:
        problem = f"must be a non-empty string or a whole number (got {_json(value)})"
    raise InputError(
        f"{input_name(cfg.input)} line {row.line_no}: id field '{id_field}' (input.id) {problem}",
        hint=f"give every row a unique text or number in '{id_field}', or remove input.id from "
        f"{display_path(cfg.source)}",
    )


def _json(value: Any) -> str:
    text = orjson.dumps(value).decode("utf-8")
    return text if len(text) <= 40 else text[:37] + "..."


def _compile(cfg: JobConfig, key: str, text: str) -> Template:
    try:
        return compile_template(text)
    except TemplateSyntaxError as exc:
        raise ConfigError(
            f"{display_path(cfg.source)}: prompt.{key} has a template error at column {exc.column}: {exc.message}",
            hint="placeholders look like {field} or {a.b}; write {{ and }} for literal braces",
        ) from None


def _check_prompt(cfg: JobConfig) -> tuple[Template | None, Template]:
    """The system and user templates; a ConfigError for what load_config would have refused (a
    JobConfig built by hand) before a single row is read."""
    reserved = sorted(k for k in cfg.params if k in RESERVED_PARAMS)
    if reserved:
        raise ConfigError(
            f"{display_path(cfg.source)}: params.{reserved[0]} cannot be set: {RESERVED_PARAMS[reserved[0]]}",
            hint=f"remove params.{reserved[0]}",
        )
    system_t = _compile(cfg, "system", cfg.prompt.system) if cfg.prompt.system is not None else None
    user_t = _compile(cfg, "user", cfg.prompt.user)
    build_body(cfg, "" if system_t is not None else None, "")  # an endpoint that takes no system prompt
    return system_t, user_t


def render_requests(cfg: JobConfig, digest: InputDigest | None = None) -> Iterator[Request]:
    """Yield one Request per input row, in file order.

    Raises InputError for a bad row (file, line, row id, field) and ConfigError for a
    config that load_config would have refused (when a JobConfig is built by hand).
    After the last request, `digest` holds the size and sha256 of the input bytes read.
    """
    system_t, user_t = _check_prompt(cfg)
    image_ts = [_compile(cfg, f"images.{i}", t) for i, t in enumerate(cfg.prompt.images)]
    turns = [(_compile(cfg, f"history.{i}.user", t.user), [_compile(cfg, f"history.{i}.images.{j}", im)
              for j, im in enumerate(t.images)], _compile(cfg, f"history.{i}.assistant", t.assistant))
             for i, t in enumerate(cfg.prompt.history)]  # fmt: skip
    endpoint = cfg.endpoint
    id_segments = _id_segments(cfg)
    output_fields = _output_fields(cfg.output.key)
    if cfg.output.explode is not False:
        output_fields += (f"{cfg.output.key}_parent", f"{cfg.output.key}_index")
    if cfg.input.records is None and not image_ts and not turns:
        yield from _plain_requests(cfg, system_t, user_t, id_segments, output_fields, digest)
        return
    seq = 0
    for row in iter_rows(cfg.input, digest):
        cid = _custom_id(cfg, row, id_segments)
        if cfg.input.records is None:
            _check_output_fields(cfg, row, row.data, cid, output_fields)
            units = [(cid, row.data)]
        else:
            units = []
            for rid, record in line_records(cfg, row, cid):
                _check_output_fields(cfg, row, record, rid, output_fields)
                units.append((rid, record_scope(row.data, record)))
        for rid, scope in units:
            system = _render(cfg, system_t, "prompt.system", row, rid, scope) if system_t is not None else None
            user = _render(cfg, user_t, "prompt.user", row, rid, scope)
            images = [_image_url(cfg, _render(cfg, t, f"prompt.images.{i}", row, rid, scope), row, rid)
                      for i, t in enumerate(image_ts)]
            history = [(_render(cfg, u, f"prompt.history.{i}.user", row, rid, scope),
                        [_image_url(cfg, _render(cfg, t, f"prompt.history.{i}.images", row, rid, scope), row, rid)
                         for t in ims],
                        _render(cfg, a, f"prompt.history.{i}.assistant", row, rid, scope))
                       for i, (u, ims, a) in enumerate(turns)]  # fmt: skip
            body = build_body(cfg, system, user, images=images, history=history)
            line = orjson.dumps(
                {"custom_id": rid, "method": "POST", "url": endpoint, "body": body}, option=orjson.OPT_APPEND_NEWLINE
            )
            seq += 1
            yield Request(rid, row.row_no, row.line_no, line, body, seq, user)


def _plain_requests(
    cfg: JobConfig, system_t: Template | None, user_t: Template, id_segments: tuple[str, ...] | None,
    output_fields: tuple[str, ...], digest: InputDigest | None,
) -> Iterator[Request]:
    """render_requests for the usual job (a request per row, no images, no history), made for a
    million rows: the same requests byte for byte, in one tight loop. Whatever is unusual in a row
    (a missing field, an id that is not text) goes to the general functions, which name it."""
    endpoint = cfg.endpoint
    id_name = id_segments[0] if id_segments is not None and len(id_segments) == 1 else None
    fixed_system = system_t.render({}) if system_t is not None and not system_t.fields else None
    taken = frozenset(output_fields)
    make_body = _body_maker(cfg, system_t, fixed_system)
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    for row in iter_rows(cfg.input, digest):
        row_no, line_no, data = row  # one unpacking: this runs once per row
        if id_segments is None:
            cid = str(row_no)
        else:
            cid = data.get(id_name) if id_name is not None else None
            if type(cid) is not str or not cid.strip():
                cid = _custom_id(cfg, row, id_segments)  # a number, a nested id, or an error naming the row
        if not taken.isdisjoint(data):
            _check_output_fields(cfg, row, data, cid, output_fields)
        system = fixed_system
        if system is None and system_t is not None:
            system = _render(cfg, system_t, "prompt.system", row, cid, data)
        try:
            user = user_t.render(data)
        except MissingField:
            user = _render(cfg, user_t, "prompt.user", row, cid, data)  # raises, naming the row and field
        body = make_body(system, user)
        line = dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body}, option=newline)
        yield _request((cid, row_no, line_no, line, body, row_no, user))


class Block(NamedTuple):
    """The requests of a block of input lines (BlockRenderer): their lines joined, and for each in
    order its custom_id, input line, size in bytes and tokens."""

    data: bytearray
    ids: list[str]
    line_nos: array[int]
    sizes: array[int]
    tokens: array[int]
    by_bytes: list[int]  # which of them (positions) the tokenizer refused: their tokens are an estimate
    error: InputError | None  # the block's first bad row, if any: the requests above stop before it


def block_renderer(cfg: JobConfig, counter: TokenCounter) -> BlockRenderer | None:
    """create's renderer of whole blocks of a JSONL input (inputs.numbered_blocks), for the usual job
    (a request per row, no images or history, a system prompt without placeholders); None for any
    other job, which render_requests renders a row at a time."""
    prompt = cfg.prompt
    if (cfg.input.count is not None or cfg.input.format != "jsonl" or cfg.input.records is not None
            or prompt.images or prompt.history):
        return None
    system_t, user_t = _check_prompt(cfg)
    base_body = token_base_body(cfg)
    if base_body is None:
        return None
    system = system_t.render({}) if system_t is not None else None  # it has no placeholders (token_base_body)
    pieces = _line_pieces(cfg, system)
    if pieces is None:
        return None
    return BlockRenderer(cfg, counter, counter.body(cfg.endpoint, base_body), user_t, pieces)


class BlockRenderer:
    """`(block, first_line, first_row) -> Block`: render_requests' requests of a block of whole
    JSONL lines, byte for byte, in one loop made for a million rows; a block can be rendered on
    any core (ops/create.py), as it needs nothing but itself and where it starts. `first_row`
    matters only to a job without input.id (the row number is the custom_id).

    The first bad row (not JSON, a missing field...) ends the block with the InputError that
    render_requests would raise for it; whatever is unusual in a row goes to the same functions.
    """

    def __init__(self, cfg: JobConfig, counter: TokenCounter, base_tokens: int, user_t: Template,
                 pieces: tuple[bytes, bytes, bytes]) -> None:
        self.cfg, self.counter, self.base_tokens, self.user_t, self.pieces = cfg, counter, base_tokens, user_t, pieces
        self.name = input_name(cfg.input)
        self.segments = _id_segments(cfg)
        self.output_fields = _output_fields(cfg.output.key)
        self.tokens_of = counter.text if counter.exact else estimate_tokens  # a call less per row

    def __call__(self, block: bytes, first_line: int, first_row: int) -> Block:
        cfg, counter, name, segments = self.cfg, self.counter, self.name, self.segments
        id_name = segments[0] if segments is not None and len(segments) == 1 else None
        taken, output_fields = frozenset(self.output_fields), self.output_fields
        render, base, tokens_of, estimated = self.user_t.render, self.base_tokens, self.tokens_of, not counter.exact
        head, middle, tail = self.pieces
        loads, dumps, decode_error = orjson.loads, orjson.dumps, orjson.JSONDecodeError
        # The lines go straight into one buffer: orjson's results kept alive in a list cost
        # several times what making them does (their memory is not reused).
        out = bytearray()
        ids: list[str] = []
        line_nos: list[int] = []
        sizes: list[int] = []
        tokens: list[int] = []
        by_bytes: list[int] = []
        error = None
        lines = block_lines(block)
        whole = len(lines) if block.endswith(b"\n") else len(lines) - 1  # lines that had a newline
        long_digits = has_long_digits(block)  # else no line's digits need counting (parse_json_line)
        row_no, too_long = first_row - 1, counter.too_long
        try:
            for k, raw in enumerate(lines):
                if not raw or raw.isspace():  # blank: skipped, as json_lines does
                    continue
                line_no = first_line + k
                row_no += 1
                try:
                    data = loads(raw)
                except decode_error:
                    data = None
                if type(data) is not dict or (long_digits and len(raw) - len(raw.translate(None, DIGITS)) >= 19):
                    data = parse_json_line(name, line_no, raw + b"\n" if k < whole else raw)  # the line as in the file
                if segments is None:
                    cid = str(row_no)
                else:
                    cid = data.get(id_name) if id_name is not None else None
                    if type(cid) is not str or not cid.strip():
                        cid = _custom_id(cfg, Row(row_no, line_no, data), segments)  # or an error naming the row
                if not taken.isdisjoint(data):
                    _check_output_fields(cfg, Row(row_no, line_no, data), data, cid, output_fields)
                try:
                    user = render(data)
                except MissingField:
                    user = _render(cfg, self.user_t, "prompt.user", Row(row_no, line_no, data), cid, data)  # raises
                start = len(out)
                out += head
                out += dumps(cid)
                out += middle
                out += dumps(user)
                out += tail
                ids.append(cid)
                line_nos.append(line_no)
                sizes.append(len(out) - start)
                # estimate_tokens written out for an ASCII text (the usual one): a call less per row
                count = -(-len(user) // BYTES_PER_TOKEN) if estimated and user.isascii() else tokens_of(user)
                tokens.append(base + count)
                if counter.too_long != too_long:
                    too_long = counter.too_long
                    by_bytes.append(len(ids) - 1)
        except InputError as exc:
            error = exc
        return Block(out, ids, array("q", line_nos), array("q", sizes), array("q", tokens), by_bytes, error)


def _line_pieces(cfg: JobConfig, system: str | None) -> tuple[bytes, bytes, bytes] | None:
    """(head, middle, tail): a request line of the job is head + the JSON of its custom_id +
    middle + the JSON of its user text + tail, the very bytes orjson makes of the whole request
    (it writes a dict as its keys and values, each on its own). Found by rendering a request with
    two markers; None in the unheard-of case of a config that holds one of them."""
    cid_mark, user_mark = "\x00batchpipe custom_id\x00", "\x00batchpipe user\x00"
    cid, user = orjson.dumps(cid_mark), orjson.dumps(user_mark)
    request = {"custom_id": cid_mark, "method": "POST", "url": cfg.endpoint, "body": build_body(cfg, system, user_mark)}
    line = orjson.dumps(request, option=orjson.OPT_APPEND_NEWLINE)
    if line.count(cid) != 1 or line.count(user) != 1 or line.index(cid) > line.index(user):
        return None
    head, rest = line.split(cid)
    middle, tail = rest.split(user)
    return head, middle, tail


def _body_maker(cfg: JobConfig, system_t: Template | None, fixed_system: str | None) -> Any:
    """(system, user) -> the body build_body makes; for a chat job with a fixed system prompt (or
    none), a dict literal that shares the system message between bodies."""
    if cfg.endpoint != "/v1/chat/completions" or (system_t is not None and fixed_system is None):
        return lambda system, user: build_body(cfg, system, user)
    model, params = cfg.model, cfg.params
    if system_t is None:
        return lambda _, user: {"model": model, "messages": [{"role": "user", "content": user}], **params}
    system_message = {"role": "system", "content": fixed_system}
    return lambda _, user: {"model": model, "messages": [system_message, {"role": "user", "content": user}], **params}


def token_base_body(cfg: JobConfig) -> dict[str, Any] | None:
    """A body whose input tokens, plus those of a request's user text (Request.user), are that
    request's: the body with an empty user text. None when that does not hold (records, images,
    history, or a system prompt with placeholders): then count each request's body."""
    prompt = cfg.prompt
    if cfg.input.records is not None or prompt.images or prompt.history:
        return None
    system = None
    if prompt.system is not None:
        system_t = _compile(cfg, "system", prompt.system)
        if system_t.fields:
            return None
        system = system_t.render({})
    return build_body(cfg, system, "")


# Joins a line's id and its record's id in a custom_id; a record id may not hold it (see above).
RECORD_SEPARATOR = "#"


def record_scope(line: dict[str, Any], record: Any) -> dict[str, Any]:
    """What a template sees for one record: the line's fields, and `record` (the record itself)."""
    return {**line, "record": record}


def line_records(cfg: JobConfig, row: Row, line_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(custom_id, record) of each record in a line's `input.records` list, in list order.

    A missing, null or non-list field, a record that is not an object, or a bad record id is an
    InputError naming the file, the line and the field; an empty list has no records.
    """
    path = cfg.input.records
    where = f"{input_name(cfg.input)} line {row.line_no} (row id {line_id})"
    try:
        records = lookup(row.data, path)
    except MissingField as exc:
        raise InputError(
            f"{where}: records field '{path}' (input.records) {exc.reason}",
            hint=f"give every line a list in '{path}' (an empty list [] for none), or fix input.records in "
            f"{display_path(cfg.source)}",
        ) from None
    if not isinstance(records, list):
        raise InputError(
            f"{where}: records field '{path}' (input.records) must be a list of records (got {_json(records)})",
            hint=f"make '{path}' a list of JSON objects in every line, or fix input.records in {display_path(cfg.source)}",
        )
    out = []
    for pos, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(
                f"{where}: record {pos} of '{path}' must be a JSON object (got {_json(record)}): its answer is "
                "written into it",
                hint=f"make every item of '{path}' an object such as {{\"text\": \"...\"}}",
            )
        out.append((f"{line_id}{RECORD_SEPARATOR}{_record_id(cfg, where, path, pos, record)}", record))
    return out


def _record_id(cfg: JobConfig, where: str, path: str, pos: int, record: dict[str, Any]) -> str:
    name = cfg.input.record_id
    if name is None:
        return str(pos)
    try:
        value = lookup(record, name)
    except MissingField as exc:
        problem = exc.reason
    else:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip() and RECORD_SEPARATOR not in value:
            return value
        problem = (f"contains '{RECORD_SEPARATOR}', which separates line and record in a custom_id"
                   if isinstance(value, str) and value.strip()
                   else f"must be a non-empty string or a whole number (got {_json(value)})")
    raise InputError(
        f"{where}: record {pos} of '{path}': record id field '{name}' (input.record_id) {problem}",
        hint=f"give every record a text (without '{RECORD_SEPARATOR}') or number in '{name}', or remove "
        f"input.record_id from {display_path(cfg.source)} to name records by position",
    )


def _output_fields(key: str) -> tuple[str, ...]:
    """The fields `process` writes into every output row (see README, "The output")."""
    return (key, f"{key}_error", f"{key}_attempts")


def _check_output_fields(cfg: JobConfig, row: Row, data: dict[str, Any], cid: str, fields: tuple[str, ...]) -> None:
    """A row (or record) that already has a field the output writes would lose it (or keep a
    stale error beside a fresh answer): refuse it before anything is paid."""
    for name in fields:
        if name in data:
            label = f"row id {cid}" if cfg.input.id is not None or cfg.input.records else f"row {row.row_no}"
            what = "record" if cfg.input.records else "row"
            raise InputError(
                f"{input_name(cfg.input)} line {row.line_no} ({label}): the {what} already has a field "
                f"'{name}', which the output writes (output.key is '{cfg.output.key}')",
                hint=f"choose another output.key in {display_path(cfg.source)} (for example "
                f"key: {cfg.output.key}_2), or rename the field '{name}' in the input",
            )


def _id_segments(cfg: JobConfig) -> tuple[str, ...] | None:
    if cfg.input.id is None:
        return None
    try:
        check_field(cfg.input.id)
    except TemplateSyntaxError as exc:
        raise ConfigError(
            f"{display_path(cfg.source)}: input.id is not a valid field path: {exc.message}",
            hint="name the field that holds each row's id, as in id: review_id or id: meta.id",
        ) from None
    return tuple(cfg.input.id.split("."))


def _render(cfg: JobConfig, template: Template, what: str, row: Row, cid: str, scope: dict[str, Any]) -> str:
    try:
        return template.render(scope)
    except MissingField as exc:
        label = f"row id {cid}" if cfg.input.id is not None or cfg.input.records else f"row {row.row_no}"
        raise InputError(
            f"{input_name(cfg.input)} line {row.line_no} ({label}): field '{exc.field}' used by {what} "
            f"{exc.reason}",
            hint=f"add the field to the row, or change the placeholder in {display_path(cfg.source)}",
        ) from None



# What a local image file is sent as, by suffix (the image types the chat models take).
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
_URL_SCHEMES = ("http://", "https://", "data:")


IMAGE_HINT = ("give an image URL, or the path of a PNG, JPEG, GIF or WebP file (a relative path is read from the "
              "config's directory, or prompt.images_dir)")


def _local_image(images_dir: Path | None, value: str) -> Path | None:
    """The file an image value names (None: it is a URL, sent as it is)."""
    if value.startswith(_URL_SCHEMES):
        return None
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() or images_dir is None else images_dir / path


def _not_an_image(value: str, path: Path) -> str | None:
    if path.suffix.lower() not in IMAGE_TYPES:
        return f"image {value!r} is neither a URL (http://, https://, data:) nor a {', '.join(IMAGE_TYPES)} file"
    return None


def image_problem(images_dir: Path | None, value: str) -> str | None:
    """What is wrong with an image value, without reading the file (None: nothing)."""
    path = _local_image(images_dir, value)
    if path is None:
        return None
    if problem := _not_an_image(value, path):
        return problem
    if not path.is_file():
        return f"image file {display_path(path)} is not there"
    return None


def _image_url(cfg: JobConfig, value: str, row: Row, cid: str) -> str:
    """An image's URL as it is sent: a URL as it is, a local file inline as a base64 data URL."""
    path = _local_image(cfg.prompt.images_dir or cfg.source.parent, value)
    if path is None:
        return value
    label = f"row id {cid}" if cfg.input.id is not None else f"row {row.row_no}"
    where = f"{input_name(cfg.input)} line {row.line_no} ({label})"
    if problem := _not_an_image(value, path):
        raise InputError(f"{where}: {problem}", hint=IMAGE_HINT)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: image file {display_path(path)} cannot be read ({exc.strerror or exc})",
                         hint=IMAGE_HINT) from None
    return f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{base64.b64encode(data).decode('ascii')}"
