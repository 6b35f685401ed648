"""The HTTP face of the emulator: OpenAI Files + Batches under /v1 on a loopback port.

`_Handler` only parses requests and serialises answers; the rules live in `store.Store`. It
speaks HTTP/1.1 with keep-alive (the SDK pools connections), always sends Content-Length and an
`x-request-id`, ignores `X-Stainless-*` headers, and answers every error with the OpenAI envelope
`{"error": {message, type, param, code}}` so the SDK raises the same exception classes as against
the real service. `GET /_emulator/counts` (no auth) exposes the counters to other processes.

Fault switches of EmulatorOptions act here when they are about the HTTP exchange: a transient
error replaces the answer to any routed /v1 call before it acts (`_inject_fault`), and a mutating
call (upload, batch create, cancel) that took effect may lose its answer (`_answer_mutation`):
an HTTP 500, or a connection closed without any response (the client sees EOF).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, TextIO
from urllib.parse import parse_qs, urlsplit

from .apierror import APIError
from .faults import lost_answer_error
from .multipart import nested, parse_form
from .options import EmulatorOptions
from .store import Clock, Store
from .sync import SYNC_ENDPOINTS

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)

# What `html_answer` sends instead of the API: a proxy's sign-in page.
_HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Proxy sign-in</h1></body></html>\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "batchpipe-emulator"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle + delayed ACK add
    # ~40 ms to every response on loopback.
    disable_nagle_algorithm = True
    server: _Server

    # (method, path pattern, handler name); path groups are passed as arguments
    ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("POST", re.compile(r"/v1/files"), "_upload"),
        ("GET", re.compile(r"/v1/files"), "_list_files"),
        ("GET", re.compile(r"/v1/files/([^/]+)"), "_get_file"),
        ("DELETE", re.compile(r"/v1/files/([^/]+)"), "_delete_file"),
        ("GET", re.compile(r"/v1/files/([^/]+)/content"), "_file_content"),
        ("POST", re.compile(r"/v1/batches"), "_create_batch"),
        ("GET", re.compile(r"/v1/batches"), "_list_batches"),
        ("GET", re.compile(r"/v1/batches/([^/]+)"), "_get_batch"),
        ("POST", re.compile(r"/v1/batches/([^/]+)/cancel"), "_cancel_batch"),
        ("POST", re.compile("|".join(re.escape(e) for e in SYNC_ENDPOINTS)), "_sync_answer"),
    ]

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    @property
    def store(self) -> Store:
        return self.server.store

    def _dispatch(self) -> None:
        self._request_id = f"req_{uuid.uuid4().hex}"
        try:
            body = self._read_body()  # always drain the body so the kept-alive connection stays in sync
            url = urlsplit(self.path)
            path = url.path.rstrip("/") or "/"
            if path == "/_emulator/counts" and self.command == "GET":
                self._send_json(200, self.store.counts())
                return
            self.store.note_request()
            if self.store.options.html_answer:
                self._send(200, _HTML_PAGE, "text/html; charset=utf-8")
                return
            self._authenticate()
            for method, pattern, name in self.ROUTES:
                match = pattern.fullmatch(path)
                if match and method == self.command:
                    self._inject_fault(path)
                    handler: Callable[..., None] = getattr(self, name)
                    handler(*match.groups(), query=parse_qs(url.query), body=body)
                    return
            raise APIError(404, f"Invalid URL ({self.command} {url.path})")
        except APIError as error:
            self._send_json(error.status, error.body(), error.headers)
        except Exception:  # a bug in the emulator: answer like the real service's 500, keep serving
            traceback.print_exc()
            self._send_json(500, APIError(500, "The server had an error while processing your request.",
                                          type="server_error").body())

    # --- hooks ---------------------------------------------------------------------------------

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() == "basic" and self.store.options.accept_basic_auth and key.strip():
            return
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, _NO_KEY)

    def _inject_fault(self, path: str) -> None:
        """`transient_error_rate`: answer a routed API call with 503/500/429 + retry-after, not acting on it."""
        error = self.store.faults.transient(self.store.options)
        if error is not None:
            raise error

    def _answer_mutation(self, op: str, payload: Any) -> None:
        """Answer a mutating call that took effect, unless `lost_answer_rate` loses the answer."""
        lost = self.store.faults.lost_answer(self.store.options, op)
        if lost is None:
            self._send_json(200, payload)
        elif lost == "http_500":
            error = lost_answer_error()
            self._send_json(error.status, error.body())
        else:
            self._drop_connection()

    def _drop_connection(self) -> None:
        """Close the connection without a byte of response: httpx sees EOF (RemoteProtocolError)."""
        self.close_connection = True
        if self.server.store.options.log_requests:
            self.log_message('"%s" answer dropped (lost_answer_rate)', self.requestline)
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- files ---------------------------------------------------------------------------------

    def _upload(self, *, query: dict[str, list[str]], body: bytes) -> None:
        form = parse_form(self.headers.get("Content-Type", ""), body)
        filename, content = form.files.get("file", (None, None))
        expires = nested(form.fields, "expires_after")
        self._answer_mutation("upload", self.store.upload(filename, form.fields.get("purpose"), content, expires))

    def _list_files(self, *, query: dict[str, list[str]], body: bytes) -> None:
        page = self.store.list_files(
            purpose=_one(query, "purpose"),
            limit=_int(query, "limit", 10_000),
            order=_one(query, "order") or "desc",
            after=_one(query, "after"),
        )
        self._send_json(200, page)

    def _get_file(self, file_id: str, *, query: dict[str, list[str]], body: bytes) -> None:
        self._send_json(200, self.store.get_file(file_id))

    def _delete_file(self, file_id: str, *, query: dict[str, list[str]], body: bytes) -> None:
        self._send_json(200, self.store.delete_file(file_id))

    def _file_content(self, file_id: str, *, query: dict[str, list[str]], body: bytes) -> None:
        self._send(200, self.store.file_content(file_id), "application/octet-stream")

    # --- batches -------------------------------------------------------------------------------

    def _create_batch(self, *, query: dict[str, list[str]], body: bytes) -> None:
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            raise APIError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload.)",
            ) from None
        self._answer_mutation("create", self.store.create_batch(payload))

    def _list_batches(self, *, query: dict[str, list[str]], body: bytes) -> None:
        self._send_json(200, self.store.list_batches(limit=_int(query, "limit", 20), after=_one(query, "after")))

    def _get_batch(self, batch_id: str, *, query: dict[str, list[str]], body: bytes) -> None:
        self._send_json(200, self.store.get_batch(batch_id))

    def _cancel_batch(self, batch_id: str, *, query: dict[str, list[str]], body: bytes) -> None:
        self._answer_mutation("cancel", self.store.cancel_batch(batch_id))

    # --- the regular endpoints (sync mode) --------------------------------------------------------

    def _sync_answer(self, *, query: dict[str, list[str]], body: bytes) -> None:
        status, payload, headers = self.store.sync.answer(urlsplit(self.path).path.rstrip("/"), body)
        self._send_json(status, payload, headers)

    # --- plumbing ------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", self._request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.store.options.log_requests:
            super().log_message(format, *args)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    value = _one(query, name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        message = f"Invalid type for '{name}': expected an integer."
        raise APIError(400, message, param=name, code="invalid_type") from None


class _Server(ThreadingHTTPServer):
    """Tracks open connections so `stop()` can cut kept-alive ones: a stopped emulator must not answer."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: Store) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.store = store
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Emulator:
    """An OpenAI Files + Batches server on a background thread.

    `emu.base_url` is what `OpenAI(base_url=...)` / `OPENAI_BASE_URL` gets. `emu.counts`,
    `emu.files` and `emu.batches` are snapshots (plain dicts shaped like the API's JSON; files and
    batches oldest first, deleted/expired files left out); `emu.file_content(id)` returns raw bytes.
    Pass `clock=ManualClock()` to move the batch timeline by hand.

    `emu.options` is a copy of the options passed in (a shared EmulatorOptions is never changed);
    assign its fields on a live emulator to flip switches: they are read at each request.
    """

    def __init__(
        self,
        options: EmulatorOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.options = dataclasses.replace(options) if options is not None else EmulatorOptions()
        self.host = host
        self.store = Store(self.options, clock or time.time)
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Emulator:
        """Bind and serve in a daemon thread; returns once the socket is listening."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _Server((self.host, self._requested_port), self.store)
        # A restart after stop() comes back on the same port, so base_url stays valid (server-down tests).
        self._requested_port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="batchpipe-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def counts(self) -> dict[str, Any]:
        return self.store.counts()

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.store.all_files()

    @property
    def batches(self) -> list[dict[str, Any]]:
        return self.store.all_batches()

    def file_content(self, file_id: str) -> bytes:
        return self.store.file_content(file_id)


def serve_forever(
    host: str = "127.0.0.1", port: int = 8089, options: EmulatorOptions | None = None, *, out: TextIO | None = None
) -> None:
    """Run an emulator in the foreground until Ctrl-C (what `batchpipe emulator` calls)."""
    out = out or sys.stdout
    with Emulator(options, host, port) as emu:
        print(f"batchpipe emulator listening on {emu.base_url}", file=out, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorOptions()
    parser = argparse.ArgumentParser(
        prog="python -m batchpipe.emulator",
        description="Serve an OpenAI-compatible Files + Batches API on loopback for offline runs and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--validating-seconds", type=float, default=defaults.validating_seconds)
    parser.add_argument("--in-progress-seconds", type=float, default=defaults.in_progress_seconds)
    parser.add_argument("--finalizing-seconds", type=float, default=defaults.finalizing_seconds)
    parser.add_argument("--cancelling-seconds", type=float, default=defaults.cancelling_seconds)
    parser.add_argument("--shuffle-seed", type=int, default=None, help="make the output order reproducible")
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests_per_batch,
                        help="requests per batch before `too_many_tasks`")
    parser.add_argument("--completion-window-seconds", type=float, default=defaults.completion_window_seconds,
                        help="requests not run by created_at + this expire")
    parser.add_argument("--log-requests", action="store_true", help="print an access-log line per request")
    faults = parser.add_argument_group("fault switches (all off by default)")
    faults.add_argument("--transient-error-rate", type=float, default=defaults.transient_error_rate,
                        help="fraction of API calls answered 503/500/429 without acting")
    faults.add_argument("--retry-after-ms", type=int, default=defaults.retry_after_ms,
                        help="retry-after-ms of transient errors (retry-after: rounded up to seconds)")
    faults.add_argument("--lost-answer-rate", type=float, default=defaults.lost_answer_rate,
                        help="fraction of uploads/creates/cancels that take effect, then answer 500 or drop the "
                             "connection")
    faults.add_argument("--fault-seed", type=int, default=defaults.fault_seed, help="make fault decisions reproducible")
    faults.add_argument("--request-failure-rate", type=float, default=defaults.request_failure_rate,
                        help="fraction of requests inside a batch that fail with a 500 error line")
    faults.add_argument("--invalid-json-share", type=float, default=defaults.invalid_json_share,
                        help="fraction of JSON answers (json_object / json_schema requests) cut in half")
    faults.add_argument("--expire-after-requests", type=int, default=defaults.expire_after_requests,
                        help="a bigger batch runs only its first N requests, then expires")
    faults.add_argument("--enqueued-token-limit", type=int, default=defaults.enqueued_token_limit,
                        help="enqueued prompt tokens per model before token_limit_exceeded")
    faults.add_argument("--token-limit-message-without-number", action="store_true",
                        help="token_limit_exceeded messages do not state the limit")
    faults.add_argument("--file-visibility-delay", type=int, default=defaults.file_visibility_delay,
                        help="the first N creates naming a file answer 400 'Cannot find file'")
    faults.add_argument("--creates-per-hour-limit", type=int, default=defaults.creates_per_hour_limit,
                        help="batch creates per hour before 429")
    faults.add_argument("--lose-output-of-batch", type=int, action="append", default=[], metavar="N",
                        help="the N-th batch's output file is deleted once written (repeatable)")
    faults.add_argument("--lose-errors-of-batch", type=int, action="append", default=[], metavar="N",
                        help="the N-th batch's error file is deleted once written (repeatable)")
    faults.add_argument("--lose-upload", type=int, action="append", default=[], metavar="N",
                        help="the N-th upload is deleted right after it is answered (repeatable)")
    faults.add_argument("--batch-list-lag", type=int, default=defaults.batch_list_lag,
                        help="a new batch is missing from the batch list for its first N list calls")
    faults.add_argument("--html-answer", action="store_true", help="answer every API call with an HTML page")
    faults.add_argument("--stray-result-lines", action="store_true",
                        help="output files also hold a blank line, a line of an unknown custom_id and a line twice")
    faults.add_argument("--accept-basic-auth", action="store_true",
                        help="accept credentials in the base URL (Basic auth), as a gateway would")
    faults.add_argument("--sync-rate-limit-first", type=int, default=defaults.sync_rate_limit_first,
                        help="the first N synchronous requests are answered 429 with retry-after")
    faults.add_argument("--sync-rate-limit-share", type=float, default=defaults.sync_rate_limit_share,
                        help="fraction of synchronous requests answered 429 with retry-after")
    faults.add_argument("--sync-latency-seconds", type=float, default=defaults.sync_latency_seconds,
                        help="every synchronous request takes this long")
    faults.add_argument("--rate-limit-requests", type=int, default=defaults.rate_limit_requests,
                        help="synchronous requests per window (x-ratelimit-*), then 429")
    faults.add_argument("--rate-limit-tokens", type=int, default=defaults.rate_limit_tokens,
                        help="tokens per window of synchronous requests (x-ratelimit-*), then 429")
    faults.add_argument("--rate-limit-window-seconds", type=float, default=defaults.rate_limit_window_seconds,
                        help="the rate limits' sliding window")
    faults.add_argument("--foreign-batches", type=int, default=defaults.foreign_batches,
                        help="start with N batches of another user in the batch list")
    return parser


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    return EmulatorOptions(
        validating_seconds=args.validating_seconds,
        in_progress_seconds=args.in_progress_seconds,
        finalizing_seconds=args.finalizing_seconds,
        cancelling_seconds=args.cancelling_seconds,
        shuffle_seed=args.shuffle_seed,
        max_requests_per_batch=args.max_requests,
        completion_window_seconds=args.completion_window_seconds,
        log_requests=args.log_requests,
        transient_error_rate=args.transient_error_rate,
        retry_after_ms=args.retry_after_ms,
        lost_answer_rate=args.lost_answer_rate,
        fault_seed=args.fault_seed,
        request_failure_rate=args.request_failure_rate,
        invalid_json_share=args.invalid_json_share,
        expire_after_requests=args.expire_after_requests,
        enqueued_token_limit=args.enqueued_token_limit,
        token_limit_message_has_number=not args.token_limit_message_without_number,
        file_visibility_delay=args.file_visibility_delay,
        creates_per_hour_limit=args.creates_per_hour_limit,
        lose_output_of_batches=tuple(args.lose_output_of_batch),
        lose_errors_of_batches=tuple(args.lose_errors_of_batch),
        lose_uploads=tuple(args.lose_upload),
        batch_list_lag=args.batch_list_lag,
        html_answer=args.html_answer,
        stray_result_lines=args.stray_result_lines,
        accept_basic_auth=args.accept_basic_auth,
        foreign_batches=args.foreign_batches,
        sync_rate_limit_first=args.sync_rate_limit_first,
        sync_rate_limit_share=args.sync_rate_limit_share,
        sync_latency_seconds=args.sync_latency_seconds,
        rate_limit_requests=args.rate_limit_requests,
        rate_limit_tokens=args.rate_limit_tokens,
        rate_limit_window_seconds=args.rate_limit_window_seconds,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    serve_forever(args.host, args.port, options_from_args(args))
    return 0
