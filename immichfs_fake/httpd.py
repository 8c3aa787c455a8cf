"""HTTP plumbing of the fake server: listener, request parsing, sending bodies.

:class:`Listener` owns the loopback socket and one thread per connection;
:class:`Connection` (``http.server`` parsing, HTTP/1.1 keep-alive) reads a
request, lets the :class:`App` answer it, and writes the answer: gzip and 304
for JSON like Express, the wire faults (cut, truncate, slow, stall), the
origin's latency and per-stream throughput cap, ``sendfile`` for bodies in
files. :func:`send_file` is ``res.sendFile``: ranges, conditional requests,
caching headers.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from immichfs_fake.dto import JSON, Version
from immichfs_fake.faults import Faults, RequestLog, RequestRecord

log = logging.getLogger(__name__)


def http_date(value: datetime) -> str:
    return format_datetime(value.astimezone(UTC).replace(microsecond=0), usegmt=True)


# -- requests and responses ------------------------------------------------------------


@dataclass(slots=True)
class Body:
    """A response body: bytes in memory or a slice of a file (sent with sendfile)."""

    data: bytes | None = None
    path: Path | None = None
    offset: int = 0
    length: int = 0
    json: bool = False  # a JSON document: may be gzipped, answers If-None-Match


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = field(default_factory=Body)


class HttpError(Exception):
    """Raised by a route to answer an error (shaped per version by the server)."""

    def __init__(
        self,
        status: int,
        message: str | list[str],
        *,
        headers: list[tuple[str, str]] | None = None,
        zod: list[JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.zod = zod


ERROR_NAMES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # http.client.HTTPMessage
    body: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> JSON:
        if not self.body:
            return {}
        try:
            parsed = json.loads(self.body)
        except ValueError:
            raise HttpError(400, "Unexpected token in JSON body") from None
        if not isinstance(parsed, dict):
            raise HttpError(400, "Request body must be an object")
        return parsed


class App(Protocol):
    """What a connection needs from the server it serves."""

    faults: Faults
    requests: RequestLog
    version_info: Version
    latency_ms: float
    stream_mib_s: float | None

    def dispatch(self, req: Request) -> Response: ...

    def error_response(self, err: HttpError) -> Response: ...


# -- the listener ----------------------------------------------------------------------


class Listener:
    """A listening socket; each accepted connection is served on its own thread."""

    def __init__(self, family: socket.AddressFamily, host: str, port: int, app: App) -> None:
        self.family = family
        self.host = host
        self.port = port
        self.app = app
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def listen(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(
            target=self._accept_loop, args=(sock,), name=f"fake-immich-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop listening (new connections are refused); open ones stay."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def drop_connections(self) -> None:
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()

    def _serve(self, conn: socket.socket, addr: Any) -> None:
        try:
            Connection(conn, addr, self.app)
        except (OSError, ValueError):
            pass  # the client went away or sent garbage: drop the connection
        except Exception:
            log.exception("fake server connection failed")
        finally:
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()


# -- files and ranges --------------------------------------------------------------------


def send_file(
    req: Request,
    *,
    size: int,
    mtime: datetime,
    content_type: str,
    download_name: str,
    cache_control: str,
    content: Callable[[], bytes | Path],
    version: Version,
    faults: Faults,
) -> Response:
    """``res.sendFile`` semantics: ranges, conditional GET, caching headers.

    ``content()`` gives the bytes (small) or the file holding them (large, sent
    with sendfile); it is not called for HEAD or 304.
    """
    etag = f'W/"{size:x}-{int(mtime.timestamp() * 1000):x}"'
    headers = [
        ("Cache-Control", cache_control),
        ("Content-Disposition", "inline; filename*=UTF-8''" + quote(download_name, safe="")),
        ("Accept-Ranges", "bytes"),
        ("Last-Modified", http_date(mtime)),
        ("ETag", etag),
        ("Content-Type", content_type),
    ]
    if_none_match = req.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = [t.strip() for t in if_none_match.split(",")]
        if "*" in tags or any(t.removeprefix("W/") == etag.removeprefix("W/") for t in tags):
            return Response(304, [h for h in headers if h[0] != "Content-Type"])
    else:
        since = req.headers.get("If-Modified-Since")
        if since:
            try:
                when = parsedate_to_datetime(since)
            except (TypeError, ValueError):
                when = None
            if when is not None and mtime.replace(microsecond=0) <= when:
                return Response(304, [h for h in headers if h[0] != "Content-Type"])

    start, end = 0, size - 1
    status = 200
    range_header = req.headers.get("Range")
    if range_header and faults.take("ignore_range", req.path) is None:
        if_range = req.headers.get("If-Range")
        if if_range and if_range.strip() != etag and if_range.strip() != http_date(mtime):
            range_header = None
    else:
        range_header = None
    if range_header:
        parsed = parse_range(range_header, size)
        if parsed == "unsatisfiable" or (parsed == "malformed" and version < (3, 0, 0)):
            extra = [("Content-Range", f"bytes */{size}")]
            if version >= (3, 0, 0):
                raise HttpError(404, "Not Found", headers=extra)
            raise HttpError(500, "Internal server error", headers=extra)
        if isinstance(parsed, tuple):
            start, end = parsed
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    body = Body(offset=start, length=end - start + 1)
    if req.method != "HEAD":
        source = content()
        if isinstance(source, Path):
            body.path = source
        else:
            body.data = source
    return Response(status, headers, body)


def parse_range(header: str, size: int) -> tuple[int, int] | str:
    """One byte range clamped to ``size`` (inclusive end), "multiple", "unsatisfiable"
    or "malformed" (the ``range-parser`` rules Express uses)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return "malformed"
    parts = [p.strip() for p in spec.split(",")]
    ranges: list[tuple[int, int]] = []
    for part in parts:
        first, dash, last = part.partition("-")
        if not dash:
            return "malformed"
        try:
            if first == "":
                suffix = int(last)
                start, end = size - suffix, size - 1
            else:
                start = int(first)
                end = int(last) if last else size - 1
        except ValueError:
            return "malformed"
        start = max(start, 0)
        end = min(end, size - 1)
        if start > end or start >= size:
            continue
        ranges.append((start, end))
    if not ranges:
        return "unsatisfiable"
    if len(parts) > 1:
        return "multiple"
    return ranges[0]


# -- one connection ----------------------------------------------------------------------


class Connection(BaseHTTPRequestHandler):
    """One connection: ``http.server`` parses, the :class:`App` answers, this class
    sends (faults on the wire, latency, throughput cap, sendfile)."""

    protocol_version = "HTTP/1.1"
    _progress = 0  # body bytes of the current response written so far
    timeout = 120  # idle keep-alive connections are closed after this
    server: Any

    def __init__(self, conn: socket.socket, addr: Any, app: App) -> None:
        self.app = app
        super().__init__(conn, addr, app)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests go to the app's request log, never to stderr

    def send_response(self, code: int, message: str | None = None) -> None:
        # like Express: no Server header
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline(1024)
                length = int(line.split(b";")[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(length))
                self.rfile.readline(8)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        app = self.app
        split = urlsplit(self.path)
        path = split.path
        body = self._read_body()
        received = time.monotonic()
        req = Request(
            self.command, path, parse_qs(split.query, keep_blank_values=True), self.headers, body
        )
        masked_query = re.sub(r"(?i)(apiKey=)[^&]*", r"\1***", split.query)
        range_header = self.headers.get("Range")

        delay = app.faults.take("delay", path)
        if delay is not None:
            time.sleep(delay.seconds)
        failure = app.faults.take("fail", path)
        try:
            if failure is not None:
                extra = (
                    [("Retry-After", str(failure.retry_after))]
                    if failure.retry_after is not None
                    else []
                )
                raise HttpError(
                    failure.status, ERROR_NAMES.get(failure.status, "Error"), headers=extra
                )
            response = app.dispatch(req)
        except HttpError as err:
            response = app.error_response(err)
        except Exception:
            log.exception("fake server failed on %s %s", self.command, path)
            response = app.error_response(HttpError(500, "Internal server error"))

        record = RequestRecord(
            self.command,
            path,
            masked_query,
            response.status,
            0,
            range_header,
            received=received,
            body=body,
        )
        latency = app.latency_ms / 1000
        if latency > 0:
            # the origin's cost before its first byte (a real Immich authenticates the
            # key and checks access in its database on every request)
            wait = received + latency - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._send(response, path, record)

    def _send(self, response: Response, path: str, record: RequestRecord) -> None:
        body = response.body
        data = body.data
        headers = response.headers
        app = self.app
        if data is not None and body.json:
            # compress like Immich (v1.133+) when the client accepts it
            if (
                app.version_info >= (1, 133, 0)
                and len(data) > 1024
                and "gzip" in self.headers.get("Accept-Encoding", "")
            ):
                data = gzip.compress(data, compresslevel=1)
                headers = [*headers, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
            body = Body(data=data, length=len(data))
            if response.status == 200 and self._not_modified(headers):
                response = Response(304, [h for h in headers if h[0] != "Content-Type"])
                body = Body()
        length = body.length
        self.send_response(response.status)
        cid = "X-Correlation-ID" if app.version_info >= (3, 0, 0) else "x-immich-cid"
        if not any(name == cid for name, _ in headers):  # Immich tags every response
            self.send_header(cid, secrets.token_hex(4))
        for name, value in headers:
            self.send_header(name, value)
        if response.status != 304 and not any(n.lower() == "content-length" for n, _ in headers):
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        record.status = response.status
        record.first_byte = time.monotonic()
        if self.command == "HEAD" or response.status == 304 or length == 0:
            app.requests.append(record)
            self.end_headers()
            return

        limit = length
        cut = app.faults.take("cut", path, length)
        truncate = None if cut else app.faults.take("truncate", path, length)
        if cut is not None:
            limit = min(length, cut.nbytes)
        elif truncate is not None:
            limit = length // 2 if truncate.nbytes < 0 else min(length, truncate.nbytes)
        slow = app.faults.take("slow", path)
        stall = app.faults.take("stall", path, length)
        record.bytes_sent = limit
        app.requests.append(record)
        self.end_headers()
        self._progress = 0
        rate = app.stream_mib_s * (1 << 20) if app.stream_mib_s else None
        try:
            if slow is not None or stall is not None:
                self._send_paced(
                    body,
                    limit,
                    rate=min(slow.nbytes, rate or slow.nbytes) if slow is not None else rate,
                    stall_at=stall.nbytes if stall is not None else None,
                    stall_for=stall.seconds if stall is not None else 0.0,
                )
            elif body.path is not None:
                with body.path.open("rb") as f:
                    self._sendfile(f, body.offset, limit, rate)
            elif body.data is not None:
                self._send_all(memoryview(body.data)[body.offset : body.offset + limit], rate)
        except OSError:
            self.close_connection = True
            record.bytes_sent = self._progress
            return
        record.bytes_sent = self._progress
        if cut is not None or truncate is not None:
            self.close_connection = True
            self.wfile.flush()
            if cut is not None:
                # abortive close: the client sees a reset, not a clean end
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            else:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_WR)

    def _send_all(self, data: bytes | memoryview, rate: float | None = None) -> None:
        """Send all of ``data``, counting each piece as it goes out (sendall would
        not say how much left before the client hung up)."""
        view = memoryview(data)
        self._pump(lambda pos, n: self.connection.send(view[pos : pos + n]), len(view), rate)

    def _sendfile(self, f: Any, offset: int, count: int, rate: float | None = None) -> None:
        # os.sendfile, not socket.sendfile: the latter loops internally and, when the
        # client hangs up midway, raises without saying how much was already sent.
        out = self.connection.fileno()

        def write(pos: int, n: int) -> int:
            while True:
                try:
                    return os.sendfile(out, f.fileno(), offset + pos, n)
                except BlockingIOError:
                    # the handler's timeout makes the socket non-blocking underneath
                    if not select.select([], [out], [], self.timeout)[1]:
                        raise TimeoutError("client stopped reading") from None

        self._pump(write, count, rate)

    def _pump(self, write: Callable[[int, int], int], count: int, rate: float | None) -> None:
        """Write ``count`` bytes with ``write(pos, n)`` (returns how many went out),
        adding each to ``_progress`` as it goes, never ahead of ``rate`` bytes/s:
        each piece waits (sleeps, no spinning) until the stream may have sent it."""
        step = count if rate is None else max(16 << 10, int(rate / 500))  # ~2 ms pieces
        start = time.monotonic()
        pos = 0
        while pos < count:
            n = min(step, count - pos)
            if rate is not None:
                wait = start + (pos + n) / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            written = write(pos, n)
            if written == 0:
                break
            pos += written
            self._progress += written

    def _send_paced(
        self,
        body: Body,
        limit: int,
        *,
        rate: float | None,
        stall_at: int | None,
        stall_for: float,
    ) -> None:
        """Send in small pieces: at ``rate`` bytes/s, and/or pausing at ``stall_at``."""
        chunk = 16 << 10 if rate is None else max(1, min(16 << 10, int(rate // 20)))
        fd = None
        try:
            if body.path is not None:
                fd = body.path.open("rb")
            while self._progress < limit:
                n = min(chunk, limit - self._progress)
                if stall_at is not None and self._progress + n > stall_at:
                    n = stall_at - self._progress
                    if n <= 0:
                        time.sleep(stall_for)
                        stall_at = None
                        continue
                start = body.offset + self._progress
                if fd is not None:
                    fd.seek(start)
                    piece = fd.read(n)
                else:
                    assert body.data is not None
                    piece = body.data[start : start + n]
                self._send_all(piece)
                if rate:
                    time.sleep(len(piece) / rate)
        finally:
            if fd is not None:
                fd.close()

    def _not_modified(self, headers: list[tuple[str, str]]) -> bool:
        wanted = self.headers.get("If-None-Match")
        if not wanted:
            return False
        etag = next((v for n, v in headers if n == "ETag"), None)
        return etag is not None and etag in [t.strip() for t in wanted.split(",")]
