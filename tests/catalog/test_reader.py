"""Read-ahead (immichfs.catalog.reader) against deterministic in-memory fetchers.

Content depends on position (byte p belongs to the 8-byte big-endian number
``p - p % 8``), so any offset can be checked and a byte served from the wrong
place is caught. No sockets: the HTTP side is covered by test_rangeget.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_source import ramp

from immichfs.catalog.reader import ReadaheadConfig, ReaderClosed, ReaderPool
from immichfs.client.originals import ByteRange, ChunkBody, ChunkSource
from immichfs.client.retry import RetryPolicy
from immichfs.errors import NotFound, ProtocolError, RequestTimeout, ServerError, TruncatedBody

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class FakeFetcher:
    """A RangeFetcher over ``ramp`` content with a request log and fault switches."""

    def __init__(self, sizes: dict[str, int], chunk: int = 64 * KiB) -> None:
        self.sizes = sizes
        self.chunk = chunk
        self.requests: list[tuple[str, int, int]] = []
        self.bytes_sent = 0
        self.active = 0
        self.cancelled = 0
        #: called with the request number (1-based); may raise to fail that request
        self.before: Callable[[int], None] | None = None
        #: stop the body after this many bytes (a cut connection), for the next N requests
        self.truncate_after: int | None = None
        self.truncate_times = 0
        #: the server answered 200 (whole file): a fetcher refuses that before any byte,
        #: as the connector and rangeget do after checking status and Content-Range
        self.ignore_range = False
        #: send this many bytes more than asked (a fetcher bug the reader must catch)
        self.overlong = 0
        self.gate: trio.Event | None = None

    @asynccontextmanager
    async def __call__(
        self, asset_id: str, start: int, end: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        size = self.sizes[asset_id]
        assert 0 <= start <= end < size, (start, end, size)  # never past EOF
        self.requests.append((asset_id, start, end))
        number = len(self.requests)
        if self.before is not None:
            self.before(number)
        if self.ignore_range:
            raise ProtocolError(f"asset {asset_id}: the server ignored the range and answered 200")
        limit = min(size, end + 1 + self.overlong)
        if self.truncate_after is not None and self.truncate_times > 0:
            self.truncate_times -= 1
            limit = min(limit, start + self.truncate_after)

        async def chunks() -> AsyncIterator[bytes]:
            self.active += 1
            try:
                position = start
                while position < limit:
                    if self.gate is not None:
                        await self.gate.wait()
                    await trio.lowlevel.checkpoint()
                    piece = ramp(position, min(limit, position + self.chunk))
                    position += len(piece)
                    self.bytes_sent += len(piece)
                    yield piece
            except trio.Cancelled:
                self.cancelled += 1
                raise
            finally:
                self.active -= 1

        yield chunks()


class FakeSource(FakeFetcher):
    """The same content as a RangeSource (the byte client's protocol), with an ETag."""

    @asynccontextmanager
    async def open_range(self, want: ByteRange) -> AsyncIterator[ChunkBody]:
        assert want.total == self.sizes[want.asset_id]
        async with ChunkSource(self).open_range(want) as body:
            body.etag = '"v1"'
            yield body


QUICK_RETRY = RetryPolicy(base_delay=0.01)


def small_config(retry: RetryPolicy = QUICK_RETRY, **overrides: float) -> ReadaheadConfig:
    values: dict[str, float] = {
        "initial_window": 64 * KiB,
        "max_window": 256 * KiB,
        "max_ahead": 512 * KiB,
        "backward_keep": 64 * KiB,
        "global_budget": 4 * MiB,
    }
    values.update(overrides)
    return ReadaheadConfig(retry=retry, **values)  # type: ignore[arg-type]


async def check_read(reader, offset: int, size: int) -> None:  # type: ignore[no-untyped-def]
    data = await reader.read(offset, size)
    expected = ramp(offset, min(offset + size, reader.size)) if offset < reader.size else b""
    assert len(data) == len(expected), (offset, size)
    assert data == expected, (offset, size)


# -- sequential ------------------------------------------------------------------------


async def test_sequential_random_sizes_exact_and_few_requests() -> None:
    size = 5 * MiB + 12345
    fetch = FakeFetcher({"a": size})
    pool = ReaderPool(fetch, small_config())
    reader = pool.open("a", size)
    sizes = [1, 7, 4096, 131072, 99999, 333, 65536, 1 << 20]
    offset = 0
    i = 0
    while offset < size:
        step = sizes[i % len(sizes)]
        await check_read(reader, offset, step)
        offset += step
        i += 1
    assert await reader.read(size, 100) == b""
    assert await reader.read(size + 5, 100) == b""
    # windows grow to max_window: far fewer requests than reads, no byte fetched twice
    assert len(fetch.requests) <= size // (256 * KiB) + 6
    assert fetch.bytes_sent == size
    await reader.aclose()
    assert pool.statistics()["readahead_bytes"] == 0
    assert pool.statistics()["open_readers"] == 0


async def test_small_file_is_one_request() -> None:
    size = 200 * KiB
    fetch = FakeFetcher({"s": size})
    pool = ReaderPool(fetch)  # default config: initial window 1 MiB + 128 KiB
    reader = pool.open("s", size)
    await check_read(reader, 0, 128 * KiB)
    await check_read(reader, 128 * KiB, 128 * KiB)
    assert fetch.requests == [("s", 0, size - 1)]
    await reader.aclose()


async def test_reading_a_header_does_not_read_the_file() -> None:
    size = 300 * MiB
    fetch = FakeFetcher({"v": size})
    pool = ReaderPool(fetch)
    reader = pool.open("v", size)
    await check_read(reader, 0, 1024)
    await trio.testing.wait_all_tasks_blocked()
    assert len(fetch.requests) == 1
    assert fetch.bytes_sent <= 2 * MiB
    await reader.aclose()


async def test_four_mib_photo_in_two_requests() -> None:
    size = 4 * MiB
    fetch = FakeFetcher({"p": size})
    pool = ReaderPool(fetch)
    reader = pool.open("p", size)
    for offset in range(0, size, 128 * KiB):
        await check_read(reader, offset, 128 * KiB)
    assert len(fetch.requests) == 2
    assert fetch.bytes_sent == size
    await reader.aclose()


async def read_whole(reader, step: int = 128 * KiB) -> None:  # type: ignore[no-untyped-def]
    for offset in range(0, reader.size, step):
        await check_read(reader, offset, step)


async def test_files_read_whole_make_the_next_one_a_single_request() -> None:
    size = 4 * MiB
    photos = {f"p{i}": size for i in range(8)}
    fetch = FakeFetcher({**photos, "big": 20 * MiB})
    pool = ReaderPool(fetch)  # whole_file_after=4, max_window=8 MiB
    for i in range(4):  # a cp: each file read to its end, two requests each
        reader = pool.open(f"p{i}", size)
        await read_whole(reader)
        await reader.aclose()
    assert len(fetch.requests) == 8
    fetch.requests.clear()
    reader = pool.open("p4", size)
    await read_whole(reader)
    await reader.aclose()
    assert fetch.requests == [("p4", 0, size - 1)]
    assert pool.statistics()["whole_file_windows"] == 1
    # a file larger than max_window still starts small: one request is never unbounded
    fetch.requests.clear()
    reader = pool.open("big", 20 * MiB)
    await check_read(reader, 0, 4096)
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.requests == [("big", 0, ReadaheadConfig().initial_window - 1)]
    await reader.aclose()


async def test_one_file_closed_early_turns_whole_file_reads_off() -> None:
    size = 4 * MiB
    fetch = FakeFetcher({f"p{i}": size for i in range(8)})
    pool = ReaderPool(fetch)
    for i in range(4):
        reader = pool.open(f"p{i}", size)
        await read_whole(reader)
        await reader.aclose()
    # a header reader (exiftool, file) reads the start and closes: the whole file
    # was fetched this once, but the next header costs one small window again
    for i in (4, 5):
        fetch.requests.clear()
        fetch.bytes_sent = 0
        reader = pool.open(f"p{i}", size)
        await check_read(reader, 0, 4096)
        await trio.testing.wait_all_tasks_blocked()
        await reader.aclose()
        expected = size if i == 4 else ReadaheadConfig().initial_window
        assert fetch.requests == [(f"p{i}", 0, expected - 1)], i
    # opened and never read, or read only in the middle: no evidence either way
    reader = pool.open("p6", size)
    await reader.aclose()
    assert pool._whole_streak == 0


async def test_whole_file_reads_can_be_turned_off() -> None:
    size = 4 * MiB
    fetch = FakeFetcher({f"p{i}": size for i in range(6)})
    pool = ReaderPool(fetch, ReadaheadConfig(whole_file_after=0))
    for i in range(6):
        reader = pool.open(f"p{i}", size)
        await read_whole(reader)
        await reader.aclose()
    assert len(fetch.requests) == 12
    assert pool.statistics()["whole_file_windows"] == 0


# -- random, backward, out of order ------------------------------------------------------


async def test_cold_far_read_is_one_small_request() -> None:
    size = GiB
    fetch = FakeFetcher({"big": size})
    pool = ReaderPool(fetch)
    reader = pool.open("big", size)
    await check_read(reader, 900 * MiB, 4 * KiB)
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.requests == [("big", 900 * MiB, 900 * MiB + 4 * KiB - 1)]
    assert fetch.bytes_sent <= 128 * KiB
    await reader.aclose()


async def test_a_far_read_and_the_kernels_read_ahead_stay_small() -> None:
    # Python's read(100) after a seek: the kernel asks for the page, then reads
    # ahead in pieces; that is one small read, not a stream to read ahead of
    size = 12 * MiB
    fetch = FakeFetcher({"v": size})
    pool = ReaderPool(fetch)
    reader = pool.open("v", size)
    middle = 6 * MiB
    for start, length in ((0, 128 * KiB), (128 * KiB, 384 * KiB), (512 * KiB, 512 * KiB)):
        await check_read(reader, middle + start, length)
        await trio.testing.wait_all_tasks_blocked()
    assert fetch.bytes_sent <= 128 * KiB + ReadaheadConfig().initial_window
    assert len(fetch.requests) == 2
    # reading on past that window is a stream: now it reads ahead
    await check_read(reader, middle + MiB, MiB)
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.bytes_sent == size - middle
    await reader.aclose()


async def test_read_past_eof_is_clamped() -> None:
    size = 1000
    fetch = FakeFetcher({"t": size})
    pool = ReaderPool(fetch)
    reader = pool.open("t", size)
    await check_read(reader, 900, 4096)  # crosses EOF: exactly 100 bytes
    await check_read(reader, 999, 1)
    assert await reader.read(1000, 1) == b""
    assert await reader.read(0, 0) == b""
    assert all(end < size for _, _, end in fetch.requests)
    await reader.aclose()


async def test_backward_and_forward_seeks() -> None:
    size = 3 * MiB
    fetch = FakeFetcher({"a": size})
    pool = ReaderPool(fetch, small_config())
    reader = pool.open("a", size)
    for offset in range(0, 512 * KiB, 32 * KiB):
        await check_read(reader, offset, 32 * KiB)
    queued_to = max(end for _, _, end in fetch.requests) + 1
    assert queued_to > 608 * KiB
    before = len(fetch.requests)
    # a small step back is served from kept windows, and a forward seek inside the
    # read-ahead waits for the data in flight: neither asks for those bytes again
    await check_read(reader, 480 * KiB, 16 * KiB)
    await check_read(reader, 600 * KiB, 8 * KiB)
    assert all(start >= queued_to for _, start, _ in fetch.requests[before:])
    # far backward and far forward reads are exact, and each is one small request
    await check_read(reader, 10, 100)
    await check_read(reader, 2 * MiB + 3, 5000)
    assert fetch.requests[-2:] == [("a", 10, 109), ("a", 2 * MiB + 3, 2 * MiB + 5002)]
    # continuing after the far read starts a new sequential stream there
    await check_read(reader, 2 * MiB + 5003, 64 * KiB)
    await check_read(reader, 2 * MiB + 5003 + 64 * KiB, 64 * KiB)
    await reader.aclose()


async def test_kernel_pattern_two_reads_in_flight() -> None:
    """128 KiB reads, two at a time, the second sometimes arriving first."""
    size = 9 * MiB + 77
    fetch = FakeFetcher({"k": size}, chunk=16 * KiB)
    pool = ReaderPool(fetch)
    reader = pool.open("k", size)
    offsets = list(range(0, size, 128 * KiB))
    for i in range(0, len(offsets), 2):
        pair = offsets[i : i + 2]
        if i % 4 == 2:
            pair.reverse()
        async with trio.open_nursery() as nursery:
            for offset in pair:
                nursery.start_soon(check_read, reader, offset, 128 * KiB)
    # nothing fetched twice, and requests grew to large windows
    assert fetch.bytes_sent == size
    assert len(fetch.requests) <= 6
    await reader.aclose()


def test_property_random_read_sequences() -> None:
    size = 3 * MiB + 321

    reads = st.lists(
        st.tuples(
            st.integers(0, size + 1000),
            st.integers(0, 300 * KiB),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(reads=reads, into=st.booleans(), sequential_start=st.integers(0, size))
    def check(reads: list[tuple[int, int, bool]], into: bool, sequential_start: int) -> None:
        async def main() -> None:
            fetch = (FakeSource if into else FakeFetcher)({"x": size}, chunk=40 * KiB)
            pool = ReaderPool(fetch, small_config(global_budget=1 * MiB))
            reader = pool.open("x", size)
            # a sequential run first, so reads hit windows in every state
            offset = sequential_start
            for _ in range(6):
                await check_read(reader, offset, 50 * KiB)
                offset += 50 * KiB
            async with trio.open_nursery() as nursery:
                for offset, length, concurrent in reads:
                    if concurrent:
                        nursery.start_soon(check_read, reader, offset, length)
                    else:
                        await check_read(reader, offset, length)
            await reader.aclose()
            await trio.testing.wait_all_tasks_blocked()
            stats = pool.statistics()
            assert stats["readahead_bytes"] == 0
            assert stats["fetch_tasks"] == 0

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    check()


# -- lifecycle, memory -------------------------------------------------------------------


async def test_aclose_cancels_background_fetches() -> None:
    size = 64 * MiB
    fetch = FakeFetcher({"v": size})
    pool = ReaderPool(fetch)
    reader = pool.open("v", size)
    await check_read(reader, 0, 128 * KiB)
    fetch.gate = trio.Event()  # stall the read-ahead in mid-body
    await check_read(reader, 128 * KiB, 64 * KiB)
    await trio.testing.wait_all_tasks_blocked()
    assert pool.statistics()["fetch_tasks"] >= 1
    assert fetch.active >= 1
    await reader.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert pool.statistics()["fetch_tasks"] == 0
    assert fetch.active == 0
    assert fetch.cancelled >= 1
    assert pool.statistics()["readahead_bytes"] == 0
    with pytest.raises(ReaderClosed):
        await reader.read(0, 1)


async def test_pool_running_owns_the_tasks() -> None:
    size = 64 * MiB
    fetch = FakeFetcher({"v": size})
    pool = ReaderPool(fetch)
    async with pool.running():
        reader = pool.open("v", size)
        await check_read(reader, 0, 128 * KiB)
        fetch.gate = trio.Event()
        await check_read(reader, 128 * KiB, 64 * KiB)
        await trio.testing.wait_all_tasks_blocked()
        assert fetch.active >= 1
    # leaving running() closed the reader and cancelled its fetches
    assert fetch.active == 0
    assert pool.statistics()["open_readers"] == 0
    assert pool.statistics()["readahead_bytes"] == 0


async def test_global_budget_holds_with_many_readers() -> None:
    size = 6 * MiB
    count = 24
    budget = 2 * MiB
    read = 128 * KiB
    fetch = FakeFetcher({f"f{i}": size for i in range(count)}, chunk=32 * KiB)
    config = ReadaheadConfig(
        initial_window=256 * KiB, max_window=1 * MiB, max_ahead=2 * MiB, global_budget=budget
    )
    pool = ReaderPool(fetch, config)
    readers = [pool.open(f"f{i}", size) for i in range(count)]

    async def stream(reader) -> None:  # type: ignore[no-untyped-def]
        for offset in range(0, size, read):
            await check_read(reader, offset, read)

    async with trio.open_nursery() as nursery:
        for reader in readers:
            nursery.start_soon(stream, reader)
    stats = pool.statistics()
    # beyond the budget only the bytes reads needed at that moment: one read per reader
    assert stats["readahead_peak"] <= budget + count * read
    # one reader alone would have used far more than budget / count
    assert stats["readahead_peak"] > budget // 2
    for reader in readers:
        await reader.aclose()
    assert pool.statistics()["readahead_bytes"] == 0


async def test_idle_readers_give_way(autojump_clock: trio.abc.Clock) -> None:
    size = 32 * MiB
    fetch = FakeFetcher({"a": size, "b": size})
    config = ReadaheadConfig(global_budget=12 * MiB, idle_reclaim=1.0)
    pool = ReaderPool(fetch, config)
    a = pool.open("a", size)
    for offset in range(0, 4 * MiB, 128 * KiB):
        await check_read(a, offset, 128 * KiB)
    await trio.testing.wait_all_tasks_blocked()
    held = pool.statistics()["readahead_bytes"]
    assert held > 6 * MiB
    await trio.sleep(2)  # a goes idle with its read-ahead
    b = pool.open("b", size)
    for offset in range(0, 8 * MiB, 128 * KiB):
        await check_read(b, offset, 128 * KiB)
    assert pool.statistics()["reclaimed_bytes"] > 0
    assert pool.statistics()["readahead_peak"] <= 12 * MiB + 128 * KiB
    # a still reads the right bytes after losing its windows
    for offset in range(4 * MiB, 6 * MiB, 128 * KiB):
        await check_read(a, offset, 128 * KiB)
    await a.aclose()
    await b.aclose()


# -- failures ----------------------------------------------------------------------------


async def test_permanent_error_reaches_the_read_then_recovers() -> None:
    size = 2 * MiB
    fetch = FakeFetcher({"a": size})
    pool = ReaderPool(fetch, small_config())
    reader = pool.open("a", size)

    def fail(number: int) -> None:
        raise NotFound("asset a: not found")

    fetch.before = fail
    with pytest.raises(NotFound):
        await reader.read(0, 4096)
    with pytest.raises(NotFound):
        await reader.read(100 * KiB, 4096)
    fetch.before = None
    await check_read(reader, 0, 4096)
    await check_read(reader, 4096, 128 * KiB)
    await reader.aclose()


async def test_a_read_waits_at_most_read_timeout(autojump_clock: trio.abc.Clock) -> None:
    """A server that stalls (or drips) must not block a read past the bound; the
    handle then fails at once for a while, and works again afterwards."""
    size = 1 * MiB
    fetch = FakeFetcher({"a": size})
    fetch.gate = trio.Event()  # no byte arrives until it is set
    pool = ReaderPool(fetch, small_config(read_timeout=5.0))
    reader = pool.open("a", size)
    started = trio.current_time()
    with pytest.raises(RequestTimeout):
        await reader.read(0, 4 * KiB)
    assert trio.current_time() - started == pytest.approx(5.0)
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.cancelled == 1 and fetch.active == 0  # the stalled fetch is dropped
    again = trio.current_time()
    with pytest.raises(RequestTimeout):
        await reader.read(0, 4 * KiB)  # the kernel retrying the page: no second wait
    assert trio.current_time() == again
    await trio.sleep(6.0)  # fail_fast (5 s) is over: reads start afresh
    fetch.gate.set()
    await check_read(reader, 0, 64 * KiB)
    await reader.aclose()


async def test_truncated_body_resumes_at_exact_offset(autojump_clock: trio.abc.Clock) -> None:
    size = 1 * MiB
    fetch = FakeFetcher({"a": size})
    fetch.truncate_after = 100_003
    fetch.truncate_times = 2
    pool = ReaderPool(fetch, small_config(initial_window=1 * MiB))
    reader = pool.open("a", size)
    await check_read(reader, 0, size)
    starts = [start for _, start, _ in fetch.requests]
    assert starts == [0, 100_003, 200_006]
    assert fetch.bytes_sent == size
    assert pool.statistics()["retries"] == 2
    await reader.aclose()


@pytest.mark.expect_log(r"; try \d+ of at most", logger="immichfs.client.retry")
async def test_transient_errors_retried_then_surface(autojump_clock: trio.abc.Clock) -> None:
    size = 1 * MiB
    fetch = FakeFetcher({"a": size})
    failures = {"left": 2}

    def flaky(number: int) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ServerError("503 from the server", status=503)

    fetch.before = flaky
    pool = ReaderPool(fetch, small_config(RetryPolicy(attempts=4, budget=10.0, base_delay=0.01)))
    reader = pool.open("a", size)
    await check_read(reader, 0, 200 * KiB)
    assert pool.statistics()["retries"] == 2
    # a server that stays down: the read fails after the budget, with the server's error
    failures["left"] = 10**9
    started = trio.current_time()
    with pytest.raises(ServerError):
        await reader.read(700 * KiB, 4096)
    assert trio.current_time() - started <= 10.0
    # and when it comes back, reads work again on the same handle
    failures["left"] = 0
    await check_read(reader, 700 * KiB, 4096)
    # a 500 is Immich's own failure, which repeats: raised at once, not retried
    retries = pool.statistics()["retries"]

    def broken(number: int) -> None:
        raise ServerError("500 from the server", status=500)

    fetch.before = broken
    started = trio.current_time()
    with pytest.raises(ServerError):
        await reader.read(900 * KiB, 4096)
    assert pool.statistics()["retries"] == retries
    assert trio.current_time() == started
    await reader.aclose()


async def test_retry_budget_zero_turns_retries_off() -> None:
    size = 1 * MiB
    fetch = FakeFetcher({"a": size})
    fetch.truncate_after = 1000
    fetch.truncate_times = 1
    pool = ReaderPool(fetch, small_config(RetryPolicy(attempts=1)))
    reader = pool.open("a", size)
    with pytest.raises(TruncatedBody):
        await reader.read(0, 4096)
    assert pool.statistics()["retries"] == 0
    await check_read(reader, 0, 4096)  # the next read asks again
    await reader.aclose()


async def test_range_ignored_is_an_error_never_wrong_bytes() -> None:
    size = 8 * MiB
    fetch = FakeFetcher({"a": size})
    fetch.ignore_range = True
    pool = ReaderPool(fetch)
    reader = pool.open("a", size)
    with pytest.raises(ProtocolError):
        await reader.read(5 * MiB, 4096)
    with pytest.raises(ProtocolError):
        await reader.read(5 * MiB + 4096, 128 * KiB)
    assert pool.statistics()["retries"] == 0  # not transient: no retry
    # a body longer than the range is refused too, for the read that reaches its end
    fetch.ignore_range = False
    fetch.overlong = 10
    with pytest.raises(ProtocolError):
        await reader.read(6 * MiB, 4096)
    await reader.aclose()
    await reader.aclose()


async def test_into_path_checks_and_pins_etag() -> None:
    size = 3 * MiB
    fetch = FakeSource({"a": size})
    pool = ReaderPool(fetch, small_config())
    reader = pool.open("a", size)
    for offset in range(0, size, 100 * KiB):
        await check_read(reader, offset, 100 * KiB)
    assert reader.etag == '"v1"'
    assert fetch.bytes_sent == size
    await reader.aclose()
