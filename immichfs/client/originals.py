"""A narrow, fast client for one request: a ranged GET of an asset's original.

httpx stays the client of the JSON API (connector.py), but on the byte path it
costs about 2 CPU seconds per GiB on our 2-core machines, which makes the FUSE
process CPU-bound. This client does only ranged GETs of
``/api/assets/{id}/original``, on trio streams, with h11 parsing the response
head (and any body that is not plain ``Content-Length``-framed). A plain
body is then received straight into the caller's buffer (``recv_into`` on
TCP; one copy with TLS), so bytes are copied once on their way to FUSE.

What it does and checks:

- keep-alive connection pool (LIFO, at most ``max_connections`` requests at
  once); a pooled connection the server has closed is noticed before use, and a
  reused connection that breaks before the response starts is retried once on
  a fresh one (GET is idempotent), which is the usual keep-alive race;
- TLS through ``trio.SSLStream`` with the same ``verify`` values as httpx
  (True, False = ``--insecure``, or a CA file/directory = ``--ca-cert``);
- a ``206`` whose ``Content-Range`` names exactly the range asked for and whose
  ``Content-Length`` matches; a ``200`` (range ignored) is refused, never
  served as the range; a body that ends early raises TruncatedBody with the
  bytes received so far reported through ``progress``, so callers resume at
  the exact offset; a different total size or ETag raises StaleAsset;
- errors as :mod:`immichfs.errors` (the same translation as the connector);
- redirects, the one thing it does not handle, go to ``fallback`` (the
  connector's ``stream_full_resolution_file``) when one is given;
- ``edited=True`` asks for the edited rendition (``?edited=true``, Immich
  2.5+) with the same checks: its own size and ETag pin it, never the original's.

The API key is sent as ``x-api-key`` and kept out of logs, messages and reprs.
"""

from __future__ import annotations

import logging
import os
import select
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit

import h11
import trio

from immichfs import __version__
from immichfs.client.config import ClientConfig
from immichfs.client.http import (
    check_asset_id,
    check_content_range,
    parse_content_range,
    status_error,
)
from immichfs.client.retry import RangeFetcher
from immichfs.errors import (
    ConnectError,
    ImmichError,
    ProtocolError,
    RequestTimeout,
    StaleAsset,
    TruncatedBody,
    Unreachable,
)

log = logging.getLogger(__name__)

_HEAD_READ = 64 * 1024  # bytes asked of the socket while the response head arrives
_TLS_READ = 256 * 1024  # bytes asked of a TLS stream per receive
_YIELD_EVERY = 1024 * 1024  # bytes read from a busy socket between scheduler turns
_MAX_ERROR_BYTES = 64 * 1024
_MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ByteRange:
    """One ranged GET of an asset's bytes: ``start..end`` (inclusive) of its original,
    of its edited rendition with ``edited``. ``total`` is the file size the caller
    expects and ``etag`` the version it pinned: an answer with another raises
    StaleAsset."""

    asset_id: str
    start: int
    end: int
    total: int | None = None
    etag: str | None = None
    edited: bool = False

    @property
    def what(self) -> str:
        return f"asset {self.asset_id}"

    def at(self, start: int) -> ByteRange:
        """The same range from ``start`` on (a resumed or partly served one)."""
        return replace(self, start=start)


class _Redirected(Exception):
    """The server redirected: the fallback client takes over."""


class _Connection:
    """One HTTP/1.1 connection; ``sock`` is set for plain TCP (``recv_into`` fast path)."""

    __slots__ = ("closed", "requests", "sock", "stream")

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType | None) -> None:
        self.stream = stream
        self.sock = sock
        self.requests = 0
        self.closed = False

    def fileno(self) -> int:
        stream: Any = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        return int(stream.socket.fileno())

    def looks_closed(self) -> bool:
        """An idle keep-alive connection is readable only if the server closed it."""
        try:
            readable, _, _ = select.select([self.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        # synchronous on purpose: also runs while the calling task is being cancelled
        if self.closed:
            return
        self.closed = True
        stream: Any = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        with suppress(OSError):
            stream.socket.close()


class _Exchange:
    """One request/response on a checked-out connection.

    The body is read in pieces (:meth:`read_into`, as often as the caller
    likes) until ``expected`` bytes have come; then the exchange is
    ``complete`` if nothing follows them, and the connection can be reused.
    """

    def __init__(
        self,
        client: RangeGetClient,
        conn: _Connection,
        h: h11.Connection,
        response: h11.Response,
        expected: int,
        what: str,
    ) -> None:
        self.client = client
        self.conn = conn
        self.h = h
        self.response = response
        self.length: int | None = None  # None: framing other than Content-Length (chunked)
        self.expected = expected  # body bytes the range asked for
        self.what = what
        self.complete = False
        self.etag: str | None = None
        self._received = 0  # body bytes handed to the caller
        self._pending: memoryview | None = None  # body bytes h11 parsed, not handed yet
        self._drained = False  # h11 holds no more of the body: read the socket itself
        self._ended = False  # h11 saw the end of the message
        for name, value in response.headers:
            if name == b"etag":
                self.etag = value.decode("latin-1")

    @property
    def keep_alive(self) -> bool:
        if self.response.http_version != b"1.1":
            return False
        for name, value in self.response.headers:
            if name == b"connection" and b"close" in value.lower():
                return False
        return True

    async def _receive(self, max_bytes: int) -> bytes:
        with trio.move_on_after(self.client.timeout) as scope:
            return await self.client._receive(self.conn, max_bytes, self.what)
        assert scope.cancelled_caught
        raise RequestTimeout(
            f"{self.what}: no data from {self.client.url} within {self.client.timeout:g} s"
        )

    def _next_buffered(self) -> Any:
        try:
            return self.h.next_event()
        except h11.RemoteProtocolError as exc:
            raise TruncatedBody(f"{self.what}: the body broke off ({exc})") from exc

    async def _next_parsed(self) -> bool:
        """Move the next piece h11 parses to ``_pending``; False once it holds no more."""
        while True:
            event = self._next_buffered()
            if isinstance(event, h11.Data):
                self.client._bytes += len(event.data)
                self._pending = memoryview(event.data)
                return True
            if event is h11.NEED_DATA and self.length is None:
                # chunked or other framing: h11 parses all of it
                self.h.receive_data(await self._receive(_TLS_READ))
                continue
            if event is not h11.NEED_DATA:  # EndOfMessage or ConnectionClosed
                self._ended = True
            self._drained = True
            return False

    async def read_into(
        self, view: memoryview, progress: Callable[[int], None] | None = None
    ) -> None:
        """Fill ``view`` with the next ``len(view)`` bytes of the body, or raise."""
        want = len(view)
        if self._received + want > self.expected:
            raise ValueError(f"{self.what}: asked for more than the range")
        filled = 0
        # first whatever h11 already holds from reading the head
        while filled < want and (self._pending is not None or not self._drained):
            pending = self._pending
            if pending is None:
                await self._next_parsed()
                continue
            n = min(len(pending), want - filled)
            view[filled : filled + n] = pending[:n]
            self._pending = pending[n:] if n < len(pending) else None
            filled += n
            if progress is not None:
                progress(filled)
        if filled < want and self.length is not None and not self._ended:
            filled = await self._fast_body(view, filled, progress)
        self._received += filled
        if filled != want:
            raise TruncatedBody(
                f"{self.what}: the body ended after {self._received} of {self.expected} bytes"
            )
        if self._received == self.expected:
            await self._finish()

    async def _finish(self) -> None:
        """All of the range came: refuse more, and see whether the connection is reusable."""
        if self._pending is not None:
            raise ProtocolError(f"{self.what}: the server sent more than {self.expected} bytes")
        if self.length is None:
            while not self._drained:
                if await self._next_parsed() and len(self._pending or b""):
                    raise ProtocolError(
                        f"{self.what}: the server sent more than {self.expected} bytes"
                    )
                self._pending = None
        # junk after the body would corrupt the next response on this connection
        self.complete = self.h.trailing_data[0] == b""

    async def _fast_body(
        self, view: memoryview, filled: int, progress: Callable[[int], None] | None
    ) -> int:
        """The rest of a Content-Length body, straight from the socket into ``view``.

        On plain TCP the socket is read with ``os.readv`` until it is empty and only
        then waited on, instead of a scheduler round trip per ``recv_into``; other
        tasks still get a turn at least every ``_YIELD_EVERY`` bytes. (Receiving in
        worker threads was tried: thread hand-offs and the GIL made it slower.)
        """
        want = len(view)
        client = self.client
        sock = self.conn.sock
        stream = self.conn.stream
        timeout = client.timeout
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            try:
                if sock is not None:
                    fd = sock.fileno()
                    since_yield = 0
                    await trio.lowlevel.checkpoint_if_cancelled()
                    while filled < want:
                        try:
                            n = os.readv(fd, [view[filled:]])
                        except BlockingIOError:
                            scope.deadline = trio.current_time() + timeout
                            await trio.lowlevel.wait_readable(sock)
                            since_yield = 0
                            continue
                        if n == 0:
                            break
                        filled += n
                        client._bytes += n
                        if progress is not None:
                            progress(filled)
                        since_yield += n
                        if since_yield >= _YIELD_EVERY:
                            since_yield = 0
                            await trio.lowlevel.checkpoint()
                else:
                    while filled < want:
                        data = await stream.receive_some(min(_TLS_READ, want - filled))
                        if not data:
                            break
                        n = len(data)
                        view[filled : filled + n] = data
                        filled += n
                        client._bytes += n
                        if progress is not None:
                            progress(filled)
                        scope.deadline = trio.current_time() + timeout
            except (OSError, trio.BrokenResourceError) as exc:
                raise TruncatedBody(
                    f"{self.what}: the connection broke after {filled} of {want} bytes ({exc})"
                ) from exc
        if scope.cancelled_caught:
            raise RequestTimeout(
                f"{self.what}: the body stalled for {timeout:g} s after {filled} of {want} bytes"
            )
        if filled < want:
            raise TruncatedBody(
                f"{self.what}: the connection closed after {filled} of {want} bytes"
            )
        return filled

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as chunks (generic path, for the RangeFetcher interface)."""
        got = 0
        while True:
            event = self._next_buffered()
            if isinstance(event, h11.Data):
                got += len(event.data)
                if self.length is not None and got > self.length:
                    raise ProtocolError(f"{self.what}: the server sent more bytes than promised")
                if got > self.expected:
                    raise ProtocolError(f"{self.what}: the server sent more bytes than asked")
                self.client._bytes += len(event.data)
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA:
                data = await self._receive(_TLS_READ)
                self.h.receive_data(data)
            else:
                break
        if got != self.expected:
            raise TruncatedBody(f"{self.what}: the body ended after {got} of {self.expected} bytes")
        self.complete = self.h.trailing_data[0] == b""


class RangeGetClient:
    """Ranged GETs of originals over a keep-alive pool; see the module docstring.

    ``url`` is the server's base URL (as for the connector: a reverse-proxy
    path prefix is kept, a trailing ``/api`` removed). The client is both a
    ``RangeFetcher`` (call it, or use :meth:`stream`) and a ``RangeSource``
    (:meth:`open_range`, what ``ReaderPool`` uses).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        fallback: RangeFetcher | None = None,
    ) -> None:
        self.url = config.url
        self.timeout = config.timeout
        max_connections = config.max_connections
        key = config.api_key
        parts = urlsplit(self.url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._host_header = parts.netloc.encode("idna" if not parts.netloc.isascii() else "ascii")
        # a reverse proxy's path prefix, percent-encoded once (it may hold any character)
        self._prefix = quote(parts.path, safe="/%:@!$&'()*+,;=-._~")
        self._ssl: ssl.SSLContext | None = self._tls_context(config) if self._tls else None
        self._headers = [
            (b"Host", self._host_header),
            (b"User-Agent", f"immichfs/{__version__}".encode()),
            (b"Accept", b"*/*"),
            (b"Accept-Encoding", b"identity"),
            (b"x-api-key", key.encode("ascii")),
        ]
        self._fallback = fallback
        self._limiter = trio.CapacityLimiter(max_connections)
        self._max_idle = max_connections
        self._idle: list[_Connection] = []
        self._closed = False
        self._requests = 0
        self._connections = 0
        self._reused = 0
        self._retried = 0
        self._fallbacks = 0
        self._bytes = 0

    def __repr__(self) -> str:
        return f"<RangeGetClient url={self.url!r} idle={len(self._idle)}>"

    __str__ = __repr__

    @staticmethod
    def _tls_context(config: ClientConfig) -> ssl.SSLContext:
        context = config.ssl_context()
        context.set_alpn_protocols(["http/1.1"])
        return context

    def statistics(self) -> dict[str, int]:
        return {
            "requests": self._requests,
            "connections_opened": self._connections,
            "connections_reused": self._reused,
            "stale_retries": self._retried,
            "fallbacks": self._fallbacks,
            "bytes_received": self._bytes,
            "idle_connections": len(self._idle),
        }

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def __aenter__(self) -> RangeGetClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public API -----------------------------------------------------------------

    @asynccontextmanager
    async def open_range(self, want: ByteRange) -> AsyncIterator[_Exchange | ChunkBody]:
        """Ask for ``want``; the checked body, read at the caller's pace.

        ``body.read_into(view, progress)`` fills the next ``len(view)`` bytes, as
        often as needed; ``body.etag`` is the response's ETag. Leaving early closes
        the connection (the rest of the body is not read). See
        ``immichfs.catalog.reader.RangeSource``.
        """
        try:
            async with self._exchange(want) as exchange:
                yield exchange
                return
        except _Redirected:
            pass
        # a redirect: the connector (httpx) handles what this client does not
        assert self._fallback is not None
        self._fallbacks += 1
        async with ChunkSource(self._fallback).open_range(want) as body:
            yield body

    def stream(
        self, asset_id: str, start: int, end: int, *, edited: bool = False
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Bytes ``start..end`` (inclusive) as chunks: the RangeFetcher interface."""
        return self._stream(asset_id, start, end, edited)

    __call__ = stream

    @asynccontextmanager
    async def _stream(
        self, asset_id: str, start: int, end: int, edited: bool = False
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.open_range(ByteRange(asset_id, start, end, edited=edited)) as body:
            chunks = body.chunks()
            try:
                yield chunks
            finally:
                await chunks.aclose()

    # -- the exchange -------------------------------------------------------------------

    @asynccontextmanager
    async def _exchange(self, want: ByteRange) -> AsyncGenerator[_Exchange, None]:
        asset_id, start, end, total, edited = (
            want.asset_id,
            want.start,
            want.end,
            want.total,
            want.edited,
        )
        check_asset_id(asset_id)
        if start < 0 or end < start:
            raise ValueError(f"bad range {start}-{end}")
        if total is not None and end >= total:
            raise ValueError(f"range {start}-{end} goes past the end of the file ({total})")
        if self._closed:
            raise ConnectError("the byte client was closed")
        what = f"asset {asset_id}: {'edited' if edited else 'original'} bytes {start}-{end}"
        query = "?edited=true" if edited else ""
        target = f"{self._prefix}/api/assets/{asset_id}/original{query}".encode("ascii")
        headers = [*self._headers, (b"Range", f"bytes={start}-{end}".encode("ascii"))]
        request = h11.Request(method="GET", target=target, headers=headers)
        async with self._limiter:
            started = time.monotonic()
            conn, h, response = await self._send(request, what)
            exchange: _Exchange | None = None
            try:
                status = response.status_code
                log.debug(
                    "GET %s bytes=%d-%d → %d (%.1f ms)",
                    target.decode(),
                    start,
                    end,
                    status,
                    (time.monotonic() - started) * 1000,
                )
                if status != 206:
                    await self._refuse(conn, h, response, what)
                exchange = _Exchange(self, conn, h, response, end - start + 1, what)
                exchange.length = self._check_206(response, start, end, total, want.etag, what)
                if exchange.length is None and not self._chunked(response):
                    raise ProtocolError(f"{what}: 206 without Content-Length")
                yield exchange
            finally:
                if exchange is not None and exchange.complete and exchange.keep_alive:
                    self._checkin(conn)
                else:
                    conn.close()

    async def _send(
        self, request: h11.Request, what: str
    ) -> tuple[_Connection, h11.Connection, h11.Response]:
        """Send the request and read the response head, on a pooled or new connection."""
        for attempt in (1, 2):
            conn, reused = await self._checkout(what)
            h = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
            try:
                self._requests += 1
                conn.requests += 1
                data = h.send(request) + h.send(h11.EndOfMessage())
                with trio.move_on_after(self.timeout) as scope:
                    try:
                        await conn.stream.send_all(data)
                    except (OSError, trio.BrokenResourceError) as exc:
                        raise _StaleConnection(str(exc)) from exc
                    response = await self._read_head(conn, h, what)
                if scope.cancelled_caught:
                    conn.close()
                    raise RequestTimeout(
                        f"{what}: no answer from {self.url} within {self.timeout:g} s"
                    )
                return conn, h, response
            except _StaleConnection as exc:
                conn.close()
                if reused and attempt == 1:
                    self._retried += 1
                    log.debug(
                        "%s: kept-alive connection was closed by the server; reconnecting", what
                    )
                    continue
                raise ConnectError(
                    f"{what}: the connection to {self.url} broke before an answer ({exc})"
                ) from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _read_head(self, conn: _Connection, h: h11.Connection, what: str) -> h11.Response:
        received = 0
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                if received == 0:
                    # closed before answering: the keep-alive race, or a server going down
                    raise _StaleConnection(str(exc)) from exc
                raise ProtocolError(f"{what}: not an HTTP answer ({exc})") from exc
            if event is h11.NEED_DATA:
                try:
                    data = bytes(await conn.stream.receive_some(_HEAD_READ))
                except (OSError, trio.BrokenResourceError) as exc:
                    raise _StaleConnection(str(exc)) from exc
                received += len(data)
                h.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return event
            raise _StaleConnection(f"unexpected {type(event).__name__}")

    async def _receive(self, conn: _Connection, max_bytes: int, what: str) -> bytes:
        try:
            data = bytes(await conn.stream.receive_some(max_bytes))
        except (OSError, trio.BrokenResourceError) as exc:
            raise TruncatedBody(f"{what}: the connection broke mid-body ({exc})") from exc
        self._bytes += len(data)
        return data

    async def _checkout(self, what: str) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.looks_closed():
                conn.close()
                continue
            self._reused += 1
            return conn, True
        return await self._connect(what), False

    def _checkin(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    async def _connect(self, what: str) -> _Connection:
        with trio.move_on_after(self.timeout) as scope:
            try:
                tcp = await trio.open_tcp_stream(self._host, self._port)
            except OSError as exc:
                raise Unreachable(
                    f"cannot reach {self.url} — is the server running and the URL right? "
                    f"({exc.strerror or exc})"
                ) from exc
            self._connections += 1
            if self._ssl is None:
                return _Connection(tcp, tcp.socket)
            tls = trio.SSLStream(tcp, self._ssl, server_hostname=self._host, https_compatible=True)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, OSError) as exc:
                await tcp.aclose()
                cause = exc.__cause__ or exc
                raise ConnectError(f"TLS with {self.url} failed: {cause}") from exc
            return _Connection(tls, None)
        assert scope.cancelled_caught
        raise RequestTimeout(f"{what}: cannot connect to {self.url} within {self.timeout:g} s")

    # -- checks -------------------------------------------------------------------------

    @staticmethod
    def _header(response: h11.Response, name: bytes) -> str | None:
        for key, value in response.headers:
            if key == name:
                return str(value.decode("latin-1"))
        return None

    def _chunked(self, response: h11.Response) -> bool:
        value = self._header(response, b"transfer-encoding")
        return value is not None and "chunked" in value.lower()

    def _check_206(
        self,
        response: h11.Response,
        start: int,
        end: int,
        total: int | None,
        etag: str | None,
        what: str,
    ) -> int | None:
        encoding = (self._header(response, b"content-encoding") or "identity").lower()
        if encoding not in ("", "identity"):
            raise ProtocolError(f"{what}: the server sent it {encoding}-encoded")
        content_range = self._header(response, b"content-range")
        size = (parse_content_range(content_range) or (0, 0, None))[2]
        if total is not None and size is not None and size != total:
            raise StaleAsset(f"{what}: the file is now {size} bytes, not {total}")
        if etag is not None:
            got = self._header(response, b"etag")
            if got is not None and got != etag:
                raise StaleAsset(f"{what}: the file changed on the server (ETag {got})")
        first, last, _ = check_content_range(content_range, start, end, what)
        if last != end:  # ranges asked for here lie within the file: no early end
            raise ProtocolError(f"{what}: the server sent bytes {first}-{last} instead")
        length = self._header(response, b"content-length")
        if length is None:
            return None
        if not length.strip().isdigit() or int(length) != end - start + 1:
            raise ProtocolError(f"{what}: Content-Length {length} does not match the range")
        return int(length)

    async def _refuse(
        self, conn: _Connection, h: h11.Connection, response: h11.Response, what: str
    ) -> None:
        """Raise for a non-206 answer (or hand a redirect to the fallback)."""
        status = response.status_code
        if 300 <= status < 400 and self._fallback is not None:
            raise _Redirected()
        if status == 200:
            raise ProtocolError(
                f"{what}: the server ignored the range and answered 200; "
                "refusing to treat the whole file as the range",
                status=status,
            )
        body = b""
        try:
            with trio.move_on_after(min(self.timeout, 5.0)):
                while len(body) < _MAX_ERROR_BYTES:
                    event = h.next_event()
                    if isinstance(event, h11.Data):
                        body += event.data
                    elif event is h11.NEED_DATA:
                        data = bytes(await conn.stream.receive_some(_HEAD_READ))
                        h.receive_data(data)
                    else:
                        break
        except (h11.ProtocolError, OSError, trio.BrokenResourceError):
            pass  # the status alone says enough
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in response.headers
        }
        error: ImmichError = status_error(
            status=status,
            reason=response.reason.decode("latin-1", "replace"),
            body=body[:_MAX_ERROR_BYTES],
            headers=headers,
            what=what,
            base_url=self.url,
            about_id=True,
        )
        raise error


class ChunkBody:
    """A body of chunks (a ``RangeFetcher``'s) read into the caller's buffers (as ``_Exchange``)."""

    etag: str | None = None  # the fallback does not say

    def __init__(self, chunks: AsyncIterator[bytes], expected: int, what: str) -> None:
        self._chunks = chunks
        self._left = expected
        self._pending = memoryview(b"")
        self._what = what

    async def read_into(
        self, view: memoryview, progress: Callable[[int], None] | None = None
    ) -> None:
        want = len(view)
        if want > self._left:
            raise ValueError(f"{self._what}: asked for more than the range")
        filled = 0
        while filled < want:
            if not self._pending:
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    raise TruncatedBody(f"{self._what}: the body ended {self._left - filled} early")
                if len(chunk) > self._left - filled:
                    raise ProtocolError(f"{self._what}: more bytes than the range asked")
                self._pending = memoryview(chunk)
                continue
            n = min(len(self._pending), want - filled)
            view[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
            if progress is not None:
                progress(filled)
        self._left -= want
        if self._left == 0:
            # the stream must end here: read it to its end (an exhausted stream is
            # closed at once, not left to the garbage collector) and refuse any more
            async for extra in self._chunks:
                if extra:
                    raise ProtocolError(f"{self._what}: more bytes than the range asked")

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The rest of the body as it comes (the fetcher checks its length)."""
        if self._pending:
            yield bytes(self._pending)
            self._pending = memoryview(b"")
        async for chunk in self._chunks:
            yield chunk


class ChunkSource:
    """A ``RangeSource`` over a ``RangeFetcher`` (the connector's chunk stream): the
    ranged GET is the fetcher's; ``total`` and ``etag`` are not checked here (the
    fetcher checks its Content-Range; the reader pins the first ETag it sees)."""

    def __init__(self, fetch: RangeFetcher) -> None:
        self.fetch = fetch

    def chunks(self, want: ByteRange) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if want.edited:
            return self.fetch(want.asset_id, want.start, want.end, edited=True)  # type: ignore[call-arg]
        return self.fetch(want.asset_id, want.start, want.end)

    @asynccontextmanager
    async def open_range(self, want: ByteRange) -> AsyncIterator[ChunkBody]:
        async with self.chunks(want) as chunks:
            try:
                yield ChunkBody(chunks, want.end - want.start + 1, want.what)
            finally:
                # a body read to its last byte may not have seen the stream end: close
                # it now, not when the garbage collector runs
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()


class _StaleConnection(Exception):
    """The connection broke before any part of the response arrived."""
