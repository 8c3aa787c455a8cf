"""The reader adapts to its origin: deterministic, on trio's mock clock.

``Origin`` is an in-memory byte source that costs what a server costs: a
latency before each response's first byte and a throughput per response, both
spent on trio's clock (autojump), so the times the reader measures are exact.
Two kinds of origin: one that serves each response at its own pace (a thread
per response: the bundled fake's Immich-like mode caps each response at
350 MiB/s), and one that is the bottleneck itself and splits its rate between
the responses in flight (Node's single thread, as real Immich servers measured).
Content depends on position (byte p belongs to the 8-byte big-endian number
``p - p % 8``), so every byte read is checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_source import ramp

from immichfs.catalog.reader import (
    AssetReader,
    OriginEstimate,
    RangeSource,
    ReadaheadConfig,
    ReaderPool,
)
from immichfs.client.originals import ByteRange
from immichfs.client.retry import RetryPolicy
from immichfs.errors import ProtocolError, StaleAsset, TruncatedBody

KiB = 1024
MiB = 1024 * KiB

#: what a real Immich costs on loopback (issue 17): 5 ms to the first byte, 350 MiB/s
IMMICH_LIKE = (0.005, 350 * MiB)


def immich(size: int, **kw: Any) -> Origin:
    """Real Immich: 5 ms, 350 MiB/s from one thread for all responses together."""
    return Origin(size, *IMMICH_LIKE, one_thread=True, **kw)


#: a local server that answers at once and streams fast
FAST = (0.00005, 2048 * MiB)


class Origin:
    """A RangeSource with a latency and a throughput.

    ``requests`` logs ``(start, end_inclusive)``; ``cut_after`` makes the next
    ``cut_times`` responses break after that many body bytes (a dropped
    connection); ``etag`` is what every response says. ``one_thread``: the
    responses being sent share ``throughput`` (else each has it).
    """

    def __init__(
        self,
        size: int,
        latency: float,
        throughput: float,
        piece: int = 64 * KiB,
        one_thread: bool = False,
    ):
        self.size = size
        self.latency = latency
        self.throughput = throughput
        self.piece = piece
        self.one_thread = one_thread
        self.sending = 0  # bodies being read now
        self.most_sending = 0
        self.requests: list[tuple[int, int]] = []
        self.bytes_sent = 0
        self.open_bodies = 0
        self.cancelled: list[tuple[int, int]] = []  # requests cancelled mid-body
        self.cut_after: int | None = None
        self.cut_times = 0
        self.etag = '"v1"'

    @asynccontextmanager
    async def open_range(self, want: ByteRange) -> AsyncIterator[Body]:
        start, end = want.start, want.end
        assert 0 <= start <= end < self.size, (start, end)  # never past EOF
        assert want.total == self.size
        self.requests.append((start, end))
        await trio.sleep(self.latency)
        if want.etag is not None and want.etag != self.etag:
            raise StaleAsset("changed")
        limit = end + 1
        if self.cut_after is not None and self.cut_times > 0 and start + self.cut_after < limit:
            self.cut_times -= 1
            limit = start + self.cut_after
        self.open_bodies += 1
        try:
            yield Body(self, start, limit, end + 1)
        except trio.Cancelled:
            self.cancelled.append((start, end))
            raise
        finally:
            self.open_bodies -= 1


class Body:
    """One response body, sent at the origin's throughput as it is read."""

    def __init__(self, origin: Origin, start: int, limit: int, end: int) -> None:
        self.origin = origin
        self.start = start
        self.position = start
        self.limit = limit  # where a cut connection stops
        self.end = end
        self.etag: str | None = origin.etag

    async def read_into(
        self, view: memoryview, progress: Callable[[int], None] | None = None
    ) -> None:
        assert self.position + len(view) <= self.end, "read past the range"
        origin = self.origin
        origin.sending += 1
        origin.most_sending = max(origin.most_sending, origin.sending)
        try:
            await self._read_into(view, progress)
        finally:
            origin.sending -= 1

    async def _read_into(self, view: memoryview, progress: Callable[[int], None] | None) -> None:
        filled = 0
        while filled < len(view):
            if self.position >= self.limit:
                raise TruncatedBody(f"cut at {self.position}")
            n = min(self.origin.piece, len(view) - filled, self.limit - self.position)
            if self.position > self.start:
                # the first piece comes with the latency, each next one after its
                # time at the origin's throughput
                share = self.origin.sending if self.origin.one_thread else 1
                await trio.sleep(n / self.origin.throughput * share)
            view[filled : filled + n] = ramp(self.position, self.position + n)
            self.position += n
            self.origin.bytes_sent += n
            filled += n
            if progress is not None:
                progress(filled)


async def check_read(reader: AssetReader, offset: int, size: int) -> None:
    data = await reader.read(offset, size)
    expected = ramp(offset, min(offset + size, reader.size))
    assert data == expected, (offset, size)


async def read_sequentially(reader: AssetReader, start: int, end: int, step: int = MiB) -> None:
    for offset in range(start, end, step):
        await check_read(reader, offset, step)


def taught(pool: ReaderPool, gain: float = 1.0) -> ReaderPool:
    """``pool`` as if it had read from a real Immich already: 5 ms, 350 MiB/s, and
    two responses at once bring ``gain`` times one (1: a single thread serves all)."""
    latency, rate = IMMICH_LIKE
    estimate = pool.estimate
    estimate.note_latency(latency)
    estimate.note_transfer(8 * MiB, 8 * MiB / rate)
    second = int(rate * 0.1)  # a tenth of a second alone, then one with two at once
    estimate.waiting(+1, 0.0, 0)  # a read waits all along: the origin sets the pace
    estimate.arriving(+1, 0.0, 0)
    estimate.arriving(+1, 0.1, second)
    estimate.arriving(-1, 0.2, second + int(second * gain))
    estimate.arriving(-1, 0.2, second + int(second * gain))
    estimate.waiting(-1, 0.2, second + int(second * gain))
    assert estimate.parallel_gain == pytest.approx(gain, rel=0.01)
    return pool


def test_origin_is_a_range_source() -> None:
    assert isinstance(Origin(MiB, *FAST), RangeSource)


# -- the estimate ------------------------------------------------------------------------


def test_estimate_is_an_ewma_and_gives_the_bandwidth_delay_window() -> None:
    estimate = OriginEstimate()
    assert estimate.request_bytes(0.03) is None  # nothing measured: no opinion
    estimate.note_latency(0.005)
    assert estimate.request_bytes(0.03) is None  # no throughput yet
    estimate.note_transfer(100 * KiB, 1.0)  # too short a body to say anything
    assert estimate.throughput is None
    estimate.note_transfer(350 * MiB, 1.0)
    # L·B·(1-p)/p: 5 ms × 350 MiB/s = 1.75 MiB, × 97/3
    assert estimate.request_bytes(0.03) == pytest.approx(1.75 * MiB * 97 / 3, rel=1e-6)
    estimate.note_latency(0.015)
    assert estimate.latency == pytest.approx(0.005 + 0.3 * 0.010)
    estimate.note_transfer(175 * MiB, 1.0)
    assert estimate.throughput == pytest.approx((350 - 0.3 * 175) * MiB)
    assert estimate.request_bytes(0) is None
    assert "ms" in estimate.describe()


# -- sequential: windows or one stream, by what the origin costs ----------------------------


async def test_immich_like_origin_reads_the_rest_of_the_file_in_one_request(
    autojump_clock: trio.abc.Clock,
) -> None:
    size = 48 * MiB + 12345
    origin = immich(size)
    config = ReadaheadConfig()
    pool = ReaderPool(origin, config)
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, size)
    # the first window (a header reader costs one request); two windows at once,
    # which show that the origin splits its rate between them; then all the rest
    first = config.initial_window
    assert origin.requests[:2] == [(0, first - 1), (first, 3 * first - 1)]
    # at most _EXPLORE windows ahead before the stream takes the rest
    assert len(origin.requests) <= 2 + 5
    assert origin.requests[-1][1] == size - 1
    assert origin.requests[-1][0] < 24 * MiB
    assert origin.most_sending >= 2
    assert origin.bytes_sent == size
    stats = pool.statistics()
    assert stats["streams"] == 1
    assert stats["origin_latency_ms"] == pytest.approx(5.0, rel=0.01)
    assert stats["origin_mib_s"] == pytest.approx(350, rel=0.02)
    gain = pool.estimate.parallel_gain
    assert gain is not None and gain < 1.1
    # the next file knows the origin: a stream right after its first window
    origin.requests.clear()
    again = pool.open("a", size)
    await read_sequentially(again, 0, 8 * MiB)
    assert origin.requests == [(0, first - 1), (first, size - 1)]
    await again.aclose()
    # memory: max_ahead ahead, plus the window being read (as with windows alone)
    bound = config.max_ahead + config.max_window
    assert stats["readahead_peak"] <= bound
    await reader.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert pool.statistics()["readahead_bytes"] == 0
    assert pool.statistics()["fetch_tasks"] == 0
    assert origin.open_bodies == 0


async def test_fast_origin_keeps_windows_of_growing_size(autojump_clock: trio.abc.Clock) -> None:
    size = 48 * MiB
    origin = Origin(size, *FAST)
    config = ReadaheadConfig()
    pool = ReaderPool(origin, config)
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, size)
    # 50 µs × 2 GiB/s × 97/3 ≈ 3.4 MiB: a window of max_window amortises a request
    need = pool.estimate.request_bytes(config.request_overhead)
    assert need is not None and need < config.max_window
    assert pool.statistics()["streams"] == 0
    lengths = [end + 1 - start for start, end in origin.requests]
    assert lengths[0] == config.initial_window
    assert max(lengths[:-1]) == config.max_window
    assert lengths[-1] <= config.max_window * 3 // 2  # a short rest joins the last window
    assert len(origin.requests) <= 2 + size // config.max_window + 1
    assert origin.bytes_sent == size
    await reader.aclose()


async def test_origin_serving_responses_side_by_side_keeps_two_windows_in_flight(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Latency too high for one window, but two at once hide it and bring twice as much
    (the bundled fake's Immich-like mode: each response has its own 350 MiB/s)."""
    size = 48 * MiB
    origin = Origin(size, *IMMICH_LIKE, one_thread=False)
    config = ReadaheadConfig()
    pool = ReaderPool(origin, config)
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, size)
    need = pool.estimate.request_bytes(config.request_overhead)
    assert need is not None and need > config.max_window
    assert pool.estimate.parallel_gain == pytest.approx(2.0, rel=0.1)
    assert pool.statistics()["streams"] == 0
    assert origin.most_sending == 2
    assert max(end + 1 - start for start, end in origin.requests[:-1]) == config.max_window
    await reader.aclose()


async def test_window_size_follows_the_bandwidth_delay_product(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With room for large windows, the window is the measured one at once."""
    size = 200 * MiB
    latency, throughput = 0.0005, 350 * MiB  # ≈ 5.66 MiB per request at 3 %
    origin = Origin(size, latency, throughput)
    config = ReadaheadConfig(max_window=32 * MiB, max_ahead=64 * MiB)
    pool = ReaderPool(origin, config)
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, 24 * MiB)
    need = int(latency * throughput * 0.97 / 0.03)
    lengths = [end + 1 - start for start, end in origin.requests]
    assert lengths[0] == config.initial_window
    # doubling from the second window would ask for 4.5 MiB next; the origin says more
    assert lengths[1] == 2 * config.initial_window  # measured only when the first is whole
    assert lengths[2] == pytest.approx(need, rel=0.02)
    assert pool.statistics()["streams"] == 0
    await reader.aclose()


async def test_streams_can_be_turned_off(autojump_clock: trio.abc.Clock) -> None:
    size = 32 * MiB
    origin = immich(size)
    pool = ReaderPool(origin, ReadaheadConfig(request_overhead=0))
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, size)
    assert pool.statistics()["streams"] == 0
    assert all(end + 1 - start <= 12 * MiB for start, end in origin.requests)
    await reader.aclose()


# -- random reads and seeks --------------------------------------------------------------


async def test_random_reads_stay_one_small_get(autojump_clock: trio.abc.Clock) -> None:
    size = 1024 * MiB
    origin = immich(size)
    pool = taught(ReaderPool(origin))
    reader = pool.open("a", size)
    for offset in (900 * MiB, 300 * MiB + 5, 700 * MiB, 10 * MiB):
        await check_read(reader, offset, 4 * KiB)
        await trio.testing.wait_all_tasks_blocked()
    assert origin.requests == [
        (900 * MiB, 900 * MiB + 4 * KiB - 1),
        (300 * MiB + 5, 300 * MiB + 5 + 4 * KiB - 1),
        (700 * MiB, 700 * MiB + 4 * KiB - 1),
        (10 * MiB, 10 * MiB + 4 * KiB - 1),
    ]
    assert pool.statistics()["streams"] == 0
    await reader.aclose()


async def test_seeking_away_cancels_the_stream(autojump_clock: trio.abc.Clock) -> None:
    size = 256 * MiB
    origin = immich(size)
    config = ReadaheadConfig()
    pool = taught(ReaderPool(origin, config))
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, 16 * MiB)
    await trio.testing.wait_all_tasks_blocked()
    assert pool.statistics()["streams"] == 1
    assert origin.open_bodies == 1  # the stream, waiting for the reader to move on
    sent = origin.bytes_sent
    assert sent <= 16 * MiB + config.max_ahead + origin.piece  # held back by max_ahead
    # seek far and read on from there: a new stream; the old request is cancelled
    far = 200 * MiB + 100
    origin.requests.clear()
    await read_sequentially(reader, far, far + 12 * MiB)
    await trio.testing.wait_all_tasks_blocked()
    assert (config.initial_window, size - 1) in origin.cancelled  # the first stream
    assert origin.open_bodies == 1  # only the new stream
    assert origin.requests[0] == (far, far + MiB - 1)  # the seek itself: one small GET
    assert origin.requests[-1][1] == size - 1
    assert pool.statistics()["streams"] == 2
    assert pool.statistics()["wasted_bytes"] > 0  # windows the old stream had not filled
    await reader.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert origin.open_bodies == 0
    assert origin.cancelled[-1] == origin.requests[-1]  # closing the file ends its stream


async def test_a_stream_whose_reader_stops_is_closed(autojump_clock: trio.abc.Clock) -> None:
    size = 48 * MiB
    origin = immich(size)
    config = ReadaheadConfig(stream_idle=3.0)
    pool = taught(ReaderPool(origin, config))
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, 10 * MiB)
    await trio.testing.wait_all_tasks_blocked()
    assert origin.open_bodies == 1
    await trio.sleep(2.0)
    assert origin.open_bodies == 1  # a pause, not yet a stop
    await trio.sleep(2.0)
    assert origin.open_bodies == 0  # a stop: the connection is given back
    # reading on works, from bytes kept and a new request
    await read_sequentially(reader, 10 * MiB, size)
    assert origin.bytes_sent == size
    assert pool.statistics()["streams"] == 2
    await reader.aclose()


# -- failures ------------------------------------------------------------------------------


async def test_a_cut_stream_resumes_at_the_exact_offset(autojump_clock: trio.abc.Clock) -> None:
    size = 64 * MiB
    origin = immich(size)
    config = ReadaheadConfig(retry=RetryPolicy(base_delay=0.01))
    pool = taught(ReaderPool(origin, config))
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, MiB)
    cut = 5 * MiB + 7
    origin.cut_after = cut
    origin.cut_times = 3  # three cuts in a row, each after progress: never given up
    await read_sequentially(reader, MiB, size)
    first = config.initial_window
    starts = [0] + [first + i * cut for i in range(4)]
    assert [start for start, _ in origin.requests] == starts
    assert origin.bytes_sent == size
    assert pool.statistics()["retries"] == 3
    assert pool.statistics()["streams"] == 1
    await reader.aclose()


async def test_a_changed_file_fails_the_stream(autojump_clock: trio.abc.Clock) -> None:
    size = 64 * MiB
    origin = immich(size)
    pool = taught(ReaderPool(origin, ReadaheadConfig(retry=RetryPolicy(base_delay=0.01))))
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, MiB)
    origin.cut_after, origin.cut_times = 3 * MiB, 1  # the stream will break...
    await read_sequentially(reader, MiB, 3 * MiB)
    assert pool.statistics()["streams"] == 1
    origin.etag = '"v2"'  # ...and the file is another one when it is asked again
    with pytest.raises(StaleAsset):
        await read_sequentially(reader, 3 * MiB, size)
    await reader.aclose()


async def test_a_stream_that_cannot_be_resumed_fails_reads(autojump_clock: trio.abc.Clock) -> None:
    size = 64 * MiB
    origin = immich(size)
    pool = taught(ReaderPool(origin, ReadaheadConfig(retry=RetryPolicy(attempts=1))))
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, MiB)
    origin.cut_after, origin.cut_times = 3 * MiB, 1  # the stream breaks, no retry
    with pytest.raises(TruncatedBody):
        await read_sequentially(reader, MiB, size)
    # the failed windows are dropped: reading again asks again, and gets the bytes
    await read_sequentially(reader, 8 * MiB, 24 * MiB)
    await reader.aclose()
    assert pool.statistics()["fetch_errors"] >= 1


async def test_read_timeout_stops_a_stalled_stream(autojump_clock: trio.abc.Clock) -> None:
    size = 64 * MiB
    origin = immich(size)
    pool = taught(ReaderPool(origin, ReadaheadConfig(read_timeout=5.0)))
    reader = pool.open("a", size)
    await read_sequentially(reader, 0, 4 * MiB)
    await trio.testing.wait_all_tasks_blocked()
    origin.throughput = 1.0  # the server drips
    with pytest.raises(Exception) as caught:
        await read_sequentially(reader, 4 * MiB, size)
    assert "did not arrive within 5 s" in str(caught.value)
    await trio.testing.wait_all_tasks_blocked()
    assert origin.open_bodies == 0
    await reader.aclose()


# -- memory and exactness under any read pattern ----------------------------------------------


async def test_streams_of_many_readers_stay_within_the_budget(
    autojump_clock: trio.abc.Clock,
) -> None:
    size = 16 * MiB
    count = 4
    budget = 12 * MiB
    origins = immich(size)
    pool = taught(ReaderPool(origins, ReadaheadConfig(global_budget=budget)))
    readers = [pool.open("a", size) for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for reader in readers:
            nursery.start_soon(read_sequentially, reader, 0, size)
    stats = pool.statistics()
    assert stats["streams"] >= 1
    assert stats["readahead_peak"] <= budget + count * MiB  # + the bytes reads needed
    for reader in readers:
        await reader.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert pool.statistics()["readahead_bytes"] == 0
    assert origins.open_bodies == 0


def test_property_exact_bytes_with_streams() -> None:
    size = 24 * MiB + 321
    reads = st.lists(
        st.tuples(st.integers(0, size + 1000), st.integers(0, 2 * MiB), st.booleans()),
        min_size=1,
        max_size=12,
    )

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(reads=reads, start=st.integers(0, size), budget=st.sampled_from([4, 24, 64]))
    def check(reads: list[tuple[int, int, bool]], start: int, budget: int) -> None:
        async def main() -> None:
            origin = immich(size, piece=256 * KiB)
            config = ReadaheadConfig(global_budget=budget * MiB, stream_idle=0.5)
            pool = taught(ReaderPool(origin, config))
            reader = pool.open("x", size)
            # a sequential run first: a stream, so the reads meet it in every state
            offset = start - start % MiB
            for _ in range(6):
                await check_read(reader, offset, MiB)
                offset += MiB
            async with trio.open_nursery() as nursery:
                for offset, length, concurrent in reads:
                    if concurrent:
                        nursery.start_soon(check_read, reader, offset, length)
                    else:
                        await check_read(reader, offset, length)
                        await trio.sleep(0.1)
            await reader.aclose()
            await trio.testing.wait_all_tasks_blocked()
            stats = pool.statistics()
            assert stats["readahead_bytes"] == 0
            assert stats["fetch_tasks"] == 0
            assert origin.open_bodies == 0

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    check()


async def test_a_body_longer_than_the_range_is_refused() -> None:
    """The ProtocolError of an over-long body reaches the read (never wrong bytes)."""

    class Overlong(Origin):
        @asynccontextmanager
        async def open_range(self, want: ByteRange) -> AsyncIterator[Body]:
            raise ProtocolError("the server sent more bytes than the range asked")
            yield  # an async generator all the same

    origin = Overlong(8 * MiB, *FAST)
    pool = ReaderPool(origin)
    reader = pool.open("a", 8 * MiB)
    with pytest.raises(ProtocolError):
        await reader.read(0, 4096)
    await reader.aclose()


async def test_streams_at_once_are_bounded(autojump_clock: trio.abc.Clock) -> None:
    """A parked stream keeps its connection: past max_streams, readers use windows."""
    size = 32 * MiB
    origin = immich(size)
    pool = taught(ReaderPool(origin, ReadaheadConfig(max_streams=2)))
    readers = [pool.open("a", size) for _ in range(3)]
    for reader in readers:
        await read_sequentially(reader, 0, 4 * MiB)  # then each one pauses
    await trio.sleep(1)  # on the mock clock: the windows in flight arrive
    assert pool.statistics()["streams"] == 2
    assert origin.open_bodies == 2  # the third reader's windows are complete
    for reader in readers:
        await read_sequentially(reader, 4 * MiB, size)
        await reader.aclose()
    assert origin.bytes_sent == 3 * size
