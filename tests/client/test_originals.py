"""The ranged-GET client (immichfs.client.originals) over real HTTP on loopback.

Most tests run against the bundled fake Immich (its request log and fault
switches); a few use a tiny h11 server in the test's own trio loop for what
the fake does not do on purpose: redirects, ``Connection: close``, junk after
a body, and TLS with a self-signed certificate.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from immichfs.catalog.reader import ReaderPool
from immichfs.client.config import ClientConfig
from immichfs.client.originals import ByteRange, RangeGetClient
from immichfs.errors import (
    AuthenticationError,
    ConnectError,
    NotFound,
    ProtocolError,
    RateLimited,
    ServerError,
    StaleAsset,
    TruncatedBody,
)

KiB = 1024
MiB = 1024 * KiB


# -- helpers ----------------------------------------------------------------------------


def content_of(library: Any, asset_id: str) -> bytes:
    with library.open_content(asset_id) as handle:
        data: bytes = handle.read()
    return data


def largest(library: Any) -> Any:
    return max(library.assets.values(), key=lambda a: a.size)


def photo(library: Any, min_size: int = 64 * KiB) -> Any:
    return next(
        a
        for a in sorted(library.assets.values(), key=lambda a: a.id)
        if a.type == "IMAGE" and a.size >= min_size and not a.is_trashed
    )


async def fill_into(
    client: RangeGetClient, asset_id: str, start: int, buf: bytearray, seen: list[int], **kw: Any
) -> None:
    """Fill ``buf`` from ``start`` with one ranged GET, as the reader's windows do."""
    want = ByteRange(asset_id, start, start + len(buf) - 1, **kw)
    async with client.open_range(want) as body:
        await body.read_into(memoryview(buf), seen.append)


async def fill(
    client: RangeGetClient, asset_id: str, start: int, length: int, **kw: Any
) -> tuple[bytes, list[int]]:
    buf = bytearray(length)
    seen: list[int] = []
    await fill_into(client, asset_id, start, buf, seen, **kw)
    return bytes(buf), seen


def originals(server: Any) -> list[Any]:
    return [r for r in server.requests if r.method == "GET" and r.path.endswith("/original")]


# -- against the fake server --------------------------------------------------------------


async def test_ranges_are_exact(fake_immich: Any, fake_library: Any) -> None:
    asset = largest(fake_library)
    content = content_of(fake_library, asset.id)
    async with RangeGetClient(ClientConfig.create(fake_immich.url, fake_immich.api_key)) as client:
        for start, length in [(0, 1), (0, 4096), (12345, 100_000), (asset.size - 7, 7)]:
            data, seen = await fill(client, asset.id, start, length, total=asset.size)
            assert data == content[start : start + length]
            assert seen and seen[-1] == length
        async with client.stream(asset.id, 1000, 299_999) as chunks:
            streamed = b"".join([chunk async for chunk in chunks])
        assert streamed == content[1000:300_000]
    ranges = [r.range for r in originals(fake_immich)]
    assert ranges[:2] == ["bytes=0-0", "bytes=0-4095"]
    assert all(r.status == 206 for r in originals(fake_immich))


async def test_keep_alive_reuses_one_connection(fake_immich: Any, fake_library: Any) -> None:
    asset = photo(fake_library)
    content = content_of(fake_library, asset.id)
    async with RangeGetClient(ClientConfig.create(fake_immich.url, fake_immich.api_key)) as client:
        for i in range(20):
            data, _ = await fill(client, asset.id, i * 100, 1000)
            assert data == content[i * 100 : i * 100 + 1000]
        stats = client.statistics()
    assert stats["connections_opened"] == 1
    assert stats["connections_reused"] == 19


async def test_reconnects_after_the_server_drops_connections(
    fake_immich: Any, fake_library: Any
) -> None:
    asset = photo(fake_library)
    content = content_of(fake_library, asset.id)
    async with RangeGetClient(
        ClientConfig.create(fake_immich.url, fake_immich.api_key, timeout=5)
    ) as client:
        assert (await fill(client, asset.id, 0, 500))[0] == content[:500]
        fake_immich.faults.refuse_connections()  # closes the kept-alive connection
        with pytest.raises(ConnectError):
            await fill(client, asset.id, 0, 500)
        fake_immich.faults.resume_connections()
        assert (await fill(client, asset.id, 500, 500))[0] == content[500:1000]
        assert client.statistics()["connections_opened"] >= 2


async def test_cut_body_reports_exact_progress(fake_immich: Any, fake_library: Any) -> None:
    asset = largest(fake_library)
    content = content_of(fake_library, asset.id)
    length = 2 * MiB
    async with RangeGetClient(
        ClientConfig.create(fake_immich.url, fake_immich.api_key, timeout=5)
    ) as client:
        fake_immich.faults.cut_after(300_000, path=f"/api/assets/{asset.id}/original")
        buf = bytearray(length)
        seen: list[int] = []
        with pytest.raises(TruncatedBody):
            await fill_into(client, asset.id, 1000, buf, seen)
        got = seen[-1] if seen else 0
        assert got <= 300_000
        # the bytes reported as received are right: a resume at 1000 + got is exact
        assert buf[:got] == content[1000 : 1000 + got]
        data, _ = await fill(client, asset.id, 1000 + got, length - got)
        assert bytes(buf[:got]) + data == content[1000 : 1000 + length]


async def test_truncated_body_is_an_error(fake_immich: Any, fake_library: Any) -> None:
    asset = largest(fake_library)
    content = content_of(fake_library, asset.id)
    async with RangeGetClient(
        ClientConfig.create(fake_immich.url, fake_immich.api_key, timeout=5)
    ) as client:
        fake_immich.faults.truncate(5000, path=f"/api/assets/{asset.id}/original")
        with pytest.raises(TruncatedBody):
            await fill(client, asset.id, 0, 100_000)
        # the connection that carried the short body is not reused for the next request
        data, _ = await fill(client, asset.id, 0, 100_000)
        assert data == content[:100_000]


async def test_range_answered_with_200_is_refused(fake_immich: Any, fake_library: Any) -> None:
    asset = photo(fake_library)
    async with RangeGetClient(ClientConfig.create(fake_immich.url, fake_immich.api_key)) as client:
        fake_immich.faults.ignore_range(times=1)
        buf = bytearray(b"\xee" * 1000)
        seen: list[int] = []
        with pytest.raises(ProtocolError, match="ignored the range"):
            await fill_into(client, asset.id, 100, buf, seen)
        assert seen == []
        assert buf == bytearray(b"\xee" * 1000)  # nothing written as if it were the range
        async with client.stream(asset.id, 0, 9) as chunks:
            assert b"".join([c async for c in chunks]) == content_of(fake_library, asset.id)[:10]


async def test_status_errors_map_to_immich_errors(fake_immich: Any, fake_library: Any) -> None:
    asset = photo(fake_library)
    path = f"/api/assets/{asset.id}/original"
    async with RangeGetClient(ClientConfig.create(fake_immich.url, fake_immich.api_key)) as client:
        fake_immich.faults.fail(503, retry_after=3, path=path)
        with pytest.raises(ServerError) as server_error:
            await fill(client, asset.id, 0, 10)
        assert server_error.value.retry_after == 3
        fake_immich.faults.fail(429, retry_after=2, path=path)
        with pytest.raises(RateLimited) as limited:
            await fill(client, asset.id, 0, 10)
        assert limited.value.retry_after == 2
        with pytest.raises(NotFound):
            await fill(client, "00000000-0000-4000-8000-000000000000", 0, 10)
        with pytest.raises(NotFound):
            await fill(client, "../server/version", 0, 10)
        with pytest.raises(StaleAsset):
            await fill(client, asset.id, 0, 10, total=asset.size + 1)
        # and afterwards the client still works
        assert (await fill(client, asset.id, 0, 10))[0] == content_of(fake_library, asset.id)[:10]
    async with RangeGetClient(ClientConfig.create(fake_immich.url, "wrong-key-123456")) as client:
        with pytest.raises(AuthenticationError):
            await fill(client, asset.id, 0, 10)


async def test_key_is_sent_and_never_logged(
    fake_immich: Any, fake_library: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = fake_immich.api_key
    asset = photo(fake_library)
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    async with RangeGetClient(ClientConfig.create(fake_immich.url, key)) as client:
        assert key not in repr(client) and key not in str(client)
        await fill(client, asset.id, 0, 100)  # accepted: the key was sent
        fake_immich.faults.fail(500, path=f"/api/assets/{asset.id}/original")
        for asset_id in (asset.id, "nope"):
            try:
                await fill(client, asset_id, 0, 10)
            except Exception as exc:
                messages.append(f"{exc!r} {exc}")
        fake_immich.faults.cut_after(10, path=f"/api/assets/{asset.id}/original")
        try:
            await fill(client, asset.id, 0, 5000)
        except Exception as exc:
            messages.append(f"{exc!r} {exc}")
    assert len(messages) == 3
    text = "\n".join(messages + [r.getMessage() for r in caplog.records])
    assert "original" in text  # the log and the errors did say something
    assert key not in text


async def test_reader_over_rangeget_reads_exact_bytes(fake_immich: Any, fake_library: Any) -> None:
    asset = largest(fake_library)
    content = content_of(fake_library, asset.id)
    async with RangeGetClient(ClientConfig.create(fake_immich.url, fake_immich.api_key)) as client:
        pool = ReaderPool(client)
        async with pool.running():
            reader = pool.open(asset.id, asset.size)
            digest = hashlib.sha1()
            offset = 0
            while offset < asset.size:
                # the kernel's pattern: two 128 KiB reads in flight
                results: dict[int, bytes] = {}

                async def read(at: int, results: dict[int, bytes] = results) -> None:
                    results[at] = await reader.read(at, 128 * KiB)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read, offset + 128 * KiB)
                    nursery.start_soon(read, offset)
                for at in sorted(results):
                    digest.update(results[at])
                offset += 256 * KiB
            # a far read, then the tail
            assert (
                await reader.read(asset.size // 3, 4096)
                == content[asset.size // 3 : asset.size // 3 + 4096]
            )
            await reader.aclose()
    assert digest.hexdigest() == hashlib.sha1(content).hexdigest()
    gets = originals(fake_immich)
    assert len(gets) <= asset.size // MiB  # large windows, not one GET per read
    for record in gets:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", record.range or "")
        assert match and int(match[2]) < asset.size  # never past EOF


# -- a tiny h11 server for what the fake does not do ----------------------------------------

SIZE = 3 * MiB
BODY = hashlib.sha256(b"seed").digest() * (SIZE // 32)


class TinyServer:
    """Serves BODY as the original of any asset; ``mode`` picks a behaviour."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.connections = 0
        self.port = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        h = h11.Connection(h11.SERVER)
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                h.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Request):
                await self.answer(stream, h, event)
                if h.our_state is h11.MUST_CLOSE or self.mode in ("close", "junk"):
                    await stream.aclose()
                    return
            elif isinstance(event, h11.EndOfMessage):
                if h.our_state is h11.DONE and h.their_state is h11.DONE:
                    h.start_next_cycle()
            else:
                return

    async def answer(
        self, stream: trio.abc.Stream, h: h11.Connection, request: h11.Request
    ) -> None:
        headers = dict(request.headers)
        target = request.target.decode()
        if self.mode == "redirect" and not target.endswith("?moved=1"):
            response = h11.Response(
                status_code=302,
                headers=[("location", target + "?moved=1"), ("content-length", "0")],
            )
            await stream.send_all(h.send(response) + h.send(h11.EndOfMessage()))
            return
        match = re.fullmatch(rb"bytes=(\d+)-(\d+)", headers[b"range"])
        assert match
        first, last = int(match[1]), int(match[2])
        body = BODY[first : last + 1]
        extra = [("connection", "close")] if self.mode == "close" else []
        response = h11.Response(
            status_code=206,
            headers=[
                ("content-length", str(len(body))),
                ("content-range", f"bytes {first}-{last}/{SIZE}"),
                *extra,
            ],
        )
        payload = h.send(response) + h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
        if self.mode == "junk":
            payload += b"HTTP/1.1 206 junk\r\n\r\n"
        await stream.send_all(payload)


async def start_tiny(
    nursery: trio.Nursery, wrap: Callable[[trio.SocketStream], Awaitable[trio.abc.Stream]] | None
) -> TinyServer:
    server = TinyServer()

    async def handler(stream: trio.SocketStream) -> None:
        wrapped: trio.abc.Stream = await wrap(stream) if wrap else stream
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await server.handle(wrapped)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


async def test_redirect_goes_to_the_fallback(nursery: trio.Nursery) -> None:
    server = await start_tiny(nursery, None)
    server.mode = "redirect"
    calls: list[tuple[str, int, int]] = []
    plain = RangeGetClient(ClientConfig.create(f"http://127.0.0.1:{server.port}", "k-123456"))

    def fallback(asset_id: str, start: int, end: int) -> Any:
        calls.append((asset_id, start, end))
        return plain.stream(asset_id, start, end)

    client = RangeGetClient(
        ClientConfig.create(f"http://127.0.0.1:{server.port}", "k-123456"), fallback=fallback
    )
    server.mode = "redirect"
    # the fallback gets the same request; here it is redirected too, and refuses
    with pytest.raises(ProtocolError):
        await fill(client, "abc", 10, 100)
    assert calls == [("abc", 10, 109)]
    server.mode = "ok"
    assert (await fill(client, "abc", 10, 100))[0] == BODY[10:110]
    assert client.statistics()["fallbacks"] == 1
    await client.aclose()
    await plain.aclose()


@pytest.mark.parametrize("mode", ["close", "junk"])
async def test_connection_not_reused_when_it_cannot_be(nursery: trio.Nursery, mode: str) -> None:
    server = await start_tiny(nursery, None)
    server.mode = mode
    async with RangeGetClient(
        ClientConfig.create(f"http://127.0.0.1:{server.port}", "k-123456")
    ) as client:
        for start in (0, 5000, 2 * MiB):
            assert (await fill(client, "abc", start, 70_000))[0] == BODY[start : start + 70_000]
        assert client.statistics()["connections_opened"] == 3
        assert client.statistics()["connections_reused"] == 0


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_with_custom_ca_and_insecure(nursery: trio.Nursery, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def wrap(stream: trio.SocketStream) -> trio.abc.Stream:
        tls = trio.SSLStream(stream, server_context, server_side=True)
        await tls.do_handshake()
        return tls

    server = await start_tiny(nursery, wrap)
    url = f"https://localhost:{server.port}"
    async with RangeGetClient(ClientConfig.create(url, "k-123456", verify=str(cert))) as client:
        for start in (0, 1 * MiB):
            assert (await fill(client, "abc", start, 200_000))[0] == BODY[start : start + 200_000]
        assert client.statistics()["connections_opened"] == 1
    async with RangeGetClient(ClientConfig.create(url, "k-123456", verify=False)) as client:
        assert (await fill(client, "abc", 7, 70))[0] == BODY[7:77]
    async with RangeGetClient(
        ClientConfig.create(url, "k-123456", verify=True, timeout=5)
    ) as client:
        with pytest.raises(ConnectError, match="TLS"):
            await fill(client, "abc", 7, 70)


# no WARNING: every cut comes after bytes arrived, which renews the tries (one retry
# loop, RetryPolicy.call with progress), so each retry is a first one (DEBUG)
async def test_reader_resumes_cut_downloads_at_the_exact_offset(
    fake_immich: Any, fake_library: Any
) -> None:
    asset = largest(fake_library)
    content = content_of(fake_library, asset.id)
    path = f"/api/assets/{asset.id}/original"
    fake_immich.faults.cut_after(200_001, times=2, path=path)
    fake_immich.faults.truncate(99_999, times=1, path=path)
    fake_immich.faults.fail(503, times=1, path=path)
    async with RangeGetClient(
        ClientConfig.create(fake_immich.url, fake_immich.api_key, timeout=5)
    ) as client:
        pool = ReaderPool(client)
        async with pool.running():
            reader = pool.open(asset.id, asset.size)
            data = await reader.read(0, 3 * MiB)
            await reader.aclose()
        assert pool.statistics()["retries"] >= 4
    assert data == content[: 3 * MiB]
    by_end: dict[int, list[int]] = {}
    for record in originals(fake_immich):
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", record.range or "")
        assert match
        by_end.setdefault(int(match[2]), []).append(int(match[1]))
    # a failed request is asked again from where its bytes stopped, never from the start
    # (the 503 is asked again at the same offset: nothing arrived)
    assert sum(len(starts) for starts in by_end.values()) >= len(by_end) + 4
    for starts in by_end.values():
        assert starts == sorted(starts)
        assert len(set(starts)) >= len(starts) - 1
    assert sum(r.bytes_sent for r in originals(fake_immich)) <= 3 * MiB + 2 * MiB


async def test_open_range_reads_a_body_in_pieces(fake_immich: Any, fake_library: Any) -> None:
    asset = largest(fake_library)
    content = content_of(fake_library, asset.id)
    async with RangeGetClient(ClientConfig.create(fake_immich.url, fake_immich.api_key)) as client:
        start, end = 1000, 5 * MiB + 999
        async with client.open_range(ByteRange(asset.id, start, end, asset.size)) as body:
            assert body.etag is not None
            got = b""
            for piece in (1, 64 * KiB - 1, 3 * MiB, 2 * MiB - 64 * KiB):
                buf = bytearray(piece)
                seen: list[int] = []
                await body.read_into(memoryview(buf), seen.append)
                assert seen[-1] == piece and seen == sorted(seen)
                got += buf
        assert got == content[start : end + 1]
        assert client.statistics()["idle_connections"] == 1  # read to its end: reusable
        # a body left early closes its connection (its rest is never read)
        async with client.open_range(ByteRange(asset.id, 0, asset.size - 1, asset.size)) as body:
            buf = bytearray(MiB)
            await body.read_into(memoryview(buf))
            assert bytes(buf) == content[:MiB]
        assert client.statistics()["idle_connections"] == 0
        with pytest.raises(StaleAsset):
            async with client.open_range(ByteRange(asset.id, 0, 10, asset.size + 1)):
                pass


@pytest.mark.parametrize("fake_immich", [{"realistic": True}], indirect=True)
async def test_reader_streams_from_an_immich_like_origin(
    fake_immich: Any, fake_library: Any
) -> None:
    """5 ms before each first byte, and (as the pool was told) responses that share one
    server thread: past its first window, the file is one request (RangeGetClient's
    ``open_range``, read window by window)."""
    asset = largest(fake_library)
    content = content_of(fake_library, asset.id)
    async with RangeGetClient(ClientConfig.create(fake_immich.url, fake_immich.api_key)) as client:
        pool = ReaderPool(client)
        # what a pool learns from a real Immich: two responses at once bring no more
        pool.estimate.note_transfer(8 * MiB, 8 / 350)
        pool.estimate.waiting(1, 0.0, 0)
        for change, now, received in ((1, 0.0, 0), (1, 0.1, 35 * MiB), (-2, 0.2, 70 * MiB)):
            pool.estimate.arriving(change, now, received)
        pool.estimate.waiting(-1, 0.2, 70 * MiB)
        async with pool.running():
            reader = pool.open(asset.id, asset.size)
            digest = hashlib.sha1()
            for offset in range(0, asset.size, MiB):
                digest.update(await reader.read(offset, MiB))
            await reader.aclose()
    assert digest.hexdigest() == hashlib.sha1(content).hexdigest()
    stats = pool.statistics()
    assert stats["streams"] == 1
    assert stats["origin_latency_ms"] >= 4.5  # learnt from the responses
    first = pool.config.initial_window
    assert [r.range for r in originals(fake_immich)] == [
        f"bytes=0-{first - 1}",
        f"bytes={first}-{asset.size - 1}",
    ]
