"""Reading asset bytes as ranged HTTP GETs, with read-ahead.

One ``AssetReader`` per open file handle turns FUSE reads into ranged GETs of
the original, clamped to the file size (Immich answers 500/404 for a range
that starts past EOF). Its design follows how the kernel really reads
(mountpoint-s3 ``prefetch``, rclone ``ReadFileHandle``):

*Windows.* Bytes are fetched into windows: contiguous byte ranges, each one
ranged GET filled by a background trio task. A read waits only for the bytes
it needs, not for the whole window, so a large window costs no latency.

*Sequential detection.* A read at offset 0 (or, as a handle's first read,
within ``initial_window`` of it), at the end of the previous read, or inside or
a little past the windows already queued is sequential: it extends a queue of
windows that grows from ``initial_window`` (1 MiB + 128 KiB: Linux adds 128 KiB
of readahead to a 1 MiB read) doubling up to ``max_window`` per request, and
keeps up to ``max_ahead`` bytes in flight or ready ahead of the reader. The
first read of a stream fetches one window only, so a program that reads just a
file's header costs one request; read-ahead starts with the first read past that
window (the kernel splits even one small read into a read and its own
read-ahead: those stay one request too). When the
last ``whole_file_after`` files of at most ``max_window`` bytes were each read
from start to end (``cp``, a training loop), a new read of such a file from its
start fetches all of it in that first request instead: one GET per photo, not
two, which halves the per-request cost on both ends. One file closed early
(``exiftool``, ``file``) turns this off until files are read whole again. Forward
seeks inside the queue wait for the data in flight; reads up to
``backward_keep`` behind the furthest read are served from windows kept for
that (the kernel sends several reads at once and they arrive in any order).

*The origin.* The pool learns what a request costs from the responses it
already gets (``OriginEstimate``): the latency to the first byte, the bytes
per second of one response, and how much more two responses at once bring.
A sequential stream past its first window then sizes its windows so that the
latency is ``request_overhead`` (3 %) of a request's time: the bandwidth-delay
product, ``L·B·(1-p)/p`` (a real Immich, 5 ms at 350 MiB/s: 57 MiB).

*Streams.* When that is more than ``max_window`` (memory allows no larger
windows), two windows in flight hide each other's latency if the origin
serves responses side by side, and two sockets buffer more for a reader
that is slower than the origin. If reads wait for bytes and two responses at
once bring no more than one (a single-threaded server, as Node is), the rest
of the file is read as ONE request instead, as ``curl`` does: its bytes go
into windows of ``stream_window`` as the reader frees ``max_ahead`` (TCP holds
the server back meanwhile), so the memory bound is that of windows. A stream
ends when the reader seeks away (its windows are dropped), closes the file,
or stops reading for ``stream_idle``; a read that still needs one of its
windows then gets that window fetched alone, from the byte reached. A cut
stream is resumed at the exact offset, like a window.

*Random reads.* Anything else is one ranged GET of exactly the bytes asked
for: a cold 4 KiB read at 900 MiB costs one small GET. If the next read
continues it, a new queue starts there.

*Memory.* Every window's bytes are counted against one budget shared by all
readers of a pool (``global_budget``), so many open files do not multiply
read-ahead memory. Read-ahead beyond the bytes a read needs is granted only
from free budget; when the budget is short, windows of other readers that no
read is using are reclaimed (least recently read first; read-ahead of readers
read within the last ``idle_reclaim`` seconds is left alone). Bytes a read
needs right now are always fetched, so the bound is ``global_budget`` plus the
reads in flight, plus at most half the budget (32 MiB) of emptied buffers kept
for reuse (see ``_Buffers``).

*Errors.* Transient failures (cut connections, truncated bodies, timeouts,
502/503/504, 429) are retried by the project's one retry loop,
``immichfs.client.retry.RetryPolicy.call`` (jittered exponential backoff,
``Retry-After``), each try resuming at the exact offset reached, within the
policy's budget (which starts again whenever bytes arrived). Anything else, or a transient error
after the budget, is raised (as ``immichfs.errors``) by every read that needs
the failed bytes; the failed window is dropped so a later read tries again.
A read returns exactly the bytes asked for (short only at EOF) or raises:
never wrong bytes, never a short read in the middle of a file.

*Tasks.* Window fetches run in the pool's nursery (``pool.start(nursery)`` or
``async with pool.running():``) or, when the pool was given none, as trio
system tasks. ``AssetReader.aclose`` cancels the reader's fetches.

Concurrency: all bookkeeping happens in synchronous methods (marked "no
checkpoint inside"), so concurrent reads of one handle always see a consistent
queue; reads only wait for bytes after their windows are planned and pinned.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

from immichfs.client.originals import ByteRange, ChunkSource
from immichfs.client.retry import RangeFetcher, RetryPolicy
from immichfs.errors import (
    ImmichfsError,
    ProtocolError,
    RequestTimeout,
    StaleAsset,
    TruncatedBody,
)

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB


class RangeBody(Protocol):
    """The body of one ranged GET, read piece by piece into the caller's buffers."""

    @property
    def etag(self) -> str | None:
        """The response's ETag (None if the server sent none)."""
        ...

    async def read_into(
        self, view: memoryview, progress: Callable[[int], None] | None = None
    ) -> None:
        """Fill ``view`` with the next ``len(view)`` bytes of the body, or raise.

        After each piece ``progress(n)`` gets the bytes of ``view`` filled so far,
        so a failure (TruncatedBody, a timeout) can be resumed at the exact offset.
        """
        ...


@runtime_checkable
class RangeSource(Protocol):
    """Where the reader gets bytes: one ranged GET, read at the caller's pace.

    ``open_range`` checks the answer (206, Content-Range, ``want.total``,
    ``want.etag``) before it returns the body, because the reader serves bytes as
    soon as they arrive. A window is one range read into one buffer; a stream is
    one range read into successive windows as memory allows (TCP holds the server
    back in between). ``immichfs.client.originals.RangeGetClient`` is one; a
    ``RangeFetcher`` (chunks, the connector's) becomes one through ``ChunkSource``.
    """

    def open_range(self, want: ByteRange) -> AbstractAsyncContextManager[RangeBody]: ...


def range_source(fetch: RangeSource | RangeFetcher) -> RangeSource:
    """``fetch`` as a RangeSource (a chunk fetcher through ``ChunkSource``)."""
    return fetch if isinstance(fetch, RangeSource) else ChunkSource(fetch)


class ReaderClosed(ImmichfsError):
    """A read on a file handle that was already released."""


@dataclass(frozen=True)
class ReadaheadConfig:
    """Tunables of the byte path; every default has its reason.

    - ``initial_window``: first request of a sequential stream. 1 MiB + 128 KiB
      because Linux adds 128 KiB of readahead to 1 MiB reads, so a reader that
      reads 1 MiB is served by one request (mountpoint-s3 does the same).
    - ``max_window``: cap of one window request; windows double up to it.
      Larger requests amortise per-request cost, smaller ones start serving
      sooner.
    - ``max_ahead``: most bytes in flight or ready ahead of one reader.
    - ``max_inflight``: concurrent window requests per reader.
    - ``request_overhead``: the share of a request's time that its latency
      (time to first byte) may take. With the origin's measured latency L and
      throughput B, a request must move ``L·B·(1-p)/p`` bytes (the
      bandwidth-delay product, scaled); when that is more than ``max_window``,
      an established sequential stream reads the rest of the file as one
      request instead (see *Streams* in the module doc). 0 turns streams off.
    - ``stream_idle``: a stream whose reader stopped reading for this long is
      closed (it holds a connection and a server's attention).
    - ``max_streams``: streams open at once in a pool; more sequential readers
      use windows (a parked stream keeps its connection, and the byte client
      has a limited number).
    - ``whole_file_after``: this many files in a row read from start to end make
      the first request of the next one cover the whole file (if at most
      ``max_window``); 0 turns that off.
    - ``backward_keep``: bytes kept behind the furthest read (reordered kernel
      reads, small backward seeks).
    - ``global_budget``: bytes held in windows across ALL readers of a pool.
    - ``idle_reclaim``: a reader idle this long may lose its read-ahead to others.
    - ``retry``: how transient failures are retried (``immichfs.client.retry``:
      not a 500, which Immich repeats), resuming at the exact offset;
      ``RetryPolicy(attempts=1)`` turns retries off.
    - ``read_timeout``: the longest one read waits for its bytes (the HTTP timeout
      plus the retry budget): a server that drips bytes resets the HTTP timeout with
      every packet, but no file-system call may block past this bound. A read that
      times out fails (EIO) and its fetch is dropped.
    - ``fail_fast``: for this long after that, every read of the handle fails at
      once: the kernel retries the failed pages one by one, and each retry waiting a
      bound of its own would make one read(2) wait many. Then reads start afresh.
    """

    initial_window: int = MiB + 128 * KiB
    max_window: int = 8 * MiB
    max_ahead: int = 16 * MiB
    max_inflight: int = 2
    request_overhead: float = 0.03
    stream_idle: float = 10.0
    max_streams: int = 4
    whole_file_after: int = 4
    backward_keep: int = MiB
    global_budget: int = 64 * MiB
    idle_reclaim: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    read_timeout: float = 60.0
    fail_fast: float = 5.0

    @property
    def stream_window(self) -> int:
        """Size of the windows a stream fills: a quarter of ``max_ahead``, so the
        stream keeps reading while the reader consumes, within ``max_window``."""
        return max(
            min(self.initial_window, self.max_ahead), min(self.max_window, self.max_ahead // 4)
        )


class OriginEstimate:
    """What one request to the origin costs, learnt from the responses the pool gets.

    ``latency`` is the time from asking for a range to its first byte (Immich
    checks the key and the asset in its database on every request: about 5 ms;
    the bundled fake, well under one). ``throughput`` is the bytes per second of
    one response arriving alone. Both are exponentially weighted moving
    averages, so the estimate follows a server that gets busier or faster.

    ``parallel_gain`` compares the bytes per second the pool receives while two
    or more responses arrive at once with those while one does, counting only
    while a read waits for bytes (else the reader, not the origin, sets the
    pace): about 2 from a server that streams each response at its own pace (a
    thread each, the bundled fake's Immich-like mode), about 1 from one that is
    the bottleneck itself (Node's single thread, CPU-bound, as real Immich
    servers measured). No checkpoint inside.
    """

    #: weight of a new sample
    ALPHA = 0.3
    #: bodies shorter than this say more about bursts and scheduling than throughput
    MIN_TRANSFER = 512 * KiB

    #: time and bytes needed in each state before parallel_gain says anything
    MIN_STATE_TIME = 0.01
    MIN_STATE_BYTES = 2 * MiB
    #: older time in a state counts half once there is this much
    STATE_MEMORY = 2.0

    def __init__(self) -> None:
        self.latency: float | None = None
        self.throughput: float | None = None
        self._alone = False  # throughput was measured on a response alone
        self._arriving = 0  # responses whose bytes are arriving now
        self._waiting = 0  # reads waiting for bytes now
        self._since = 0.0  # when _arriving or _waiting last changed
        self._since_bytes = 0
        # seconds and bytes received while one ([1]) or more ([2]) responses arrived
        self._time = [0.0, 0.0, 0.0]
        self._bytes = [0, 0, 0]

    def __repr__(self) -> str:
        return f"<OriginEstimate {self.describe()}>"

    def describe(self) -> str:
        if self.latency is None or self.throughput is None:
            return "not measured yet"
        text = f"latency {self.latency * 1000:.2f} ms, {self.throughput / MiB:.0f} MiB/s per stream"
        gain = self.parallel_gain
        if gain is not None:
            text += f", ×{gain:.2f} with two at once"
        return text

    def note_latency(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.latency = seconds if self.latency is None else _ewma(self.latency, seconds)

    def note_transfer(self, nbytes: int, seconds: float, *, alone: bool = True) -> None:
        """``nbytes`` of one body came in ``seconds``; ``alone``: no other body meanwhile
        (the others count only until one alone was measured: they may have shared)."""
        if nbytes < self.MIN_TRANSFER or seconds <= 0:
            return
        rate = nbytes / seconds
        if alone:
            self._alone = True
        elif self._alone:
            return
        self.throughput = rate if self.throughput is None else _ewma(self.throughput, rate)

    def arriving(self, change: int, now: float, received: int) -> None:
        """``change`` responses began (+1) or stopped (-1) arriving; ``received`` is a
        running count of the bytes the pool received."""
        self._account(now, received)
        self._arriving = max(0, self._arriving + change)

    def waiting(self, change: int, now: float, received: int) -> None:
        """``change`` reads began (+1) or stopped (-1) waiting for bytes."""
        self._account(now, received)
        self._waiting = max(0, self._waiting + change)

    def _account(self, now: float, received: int) -> None:
        state = min(self._arriving, 2)
        if state and self._waiting:
            self._time[state] += now - self._since
            self._bytes[state] += received - self._since_bytes
            if self._time[state] > self.STATE_MEMORY:
                self._time[state] /= 2
                self._bytes[state] //= 2
        self._since, self._since_bytes = now, received

    @property
    def parallel_gain(self) -> float | None:
        """Bytes per second with two or more responses arriving, relative to one alone."""
        time, got = self._time, self._bytes
        for state in (1, 2):
            if time[state] < self.MIN_STATE_TIME or got[state] < self.MIN_STATE_BYTES:
                return None
        return (got[2] / time[2]) / (got[1] / time[1])

    def request_bytes(self, overhead: float) -> int | None:
        """Bytes one request must move so that its latency is ``overhead`` of its time.

        ``L / (L + W/B) <= p``  ⇔  ``W >= L·B·(1-p)/p``: the bandwidth-delay
        product scaled by the overhead allowed. None until both are measured.
        """
        if self.latency is None or self.throughput is None or overhead <= 0:
            return None
        return int(self.latency * self.throughput * (1 - overhead) / overhead)


def _ewma(old: float, new: float) -> float:
    return old + OriginEstimate.ALPHA * (new - old)


class _Timing:
    """Times one response for the pool's estimate (no checkpoint inside).

    The latency is the time to its first bytes (``mark``); the throughput is
    measured from there to its end (a whole body evens out the bursts in which
    bytes arrive), if no other response arrived meanwhile. ``stop`` must follow
    in any case (a ``finally``).
    """

    __slots__ = ("asked", "first_at", "first_n", "next_mark", "overlaps", "pool", "receiving")

    def __init__(self, pool: ReaderPool) -> None:
        self.pool = pool
        self.asked = trio.current_time()
        self.first_at = -1.0
        self.first_n = 0
        self.next_mark = 1  # body bytes at which to call mark(): the first ones only
        self.receiving = False
        self.overlaps = -1

    def mark(self, n: int) -> None:
        """The first ``n`` bytes of the body have come."""
        now = trio.current_time()
        self.pool.estimate.note_latency(now - self.asked)
        self.begin(now, n)

    def begin(self, now: float, n: int = 0) -> None:
        """Bytes arrive from now on (``n`` of them already)."""
        pool = self.pool
        pool._receiving += 1
        pool._overlaps += pool._receiving > 1
        # alone from start to end: nobody arriving now, and nobody starting meanwhile
        self.overlaps = pool._overlaps if pool._receiving == 1 else -1
        pool.estimate.arriving(+1, now, pool._counters["bytes_fetched"])
        self.receiving = True
        self.first_at, self.first_n = now, n
        self.next_mark = 1 << 62

    def end(self, n: int) -> None:
        """The body (or the piece timed) is complete at ``n`` bytes."""
        if not self.receiving:
            return
        self.pool.estimate.note_transfer(
            n - self.first_n,
            trio.current_time() - self.first_at,
            alone=self.overlaps == self.pool._overlaps,
        )
        self.stop()

    def stop(self) -> None:
        if self.receiving:
            self.receiving = False
            pool = self.pool
            pool._receiving -= 1
            pool.estimate.arriving(-1, trio.current_time(), pool._counters["bytes_fetched"])


class _Budget:
    """Bytes held in windows across a pool; single-threaded (trio), so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, n: int) -> None:
        # no checkpoint inside
        self.used += n
        self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        self.used -= n


class _Buffers:
    """Recycled window buffers.

    A new ``bytearray`` is zero-filled and its pages faulted in: about 0.35 CPU s
    per GiB streamed, a large share of this process's CPU. Buffers of finished
    windows are kept (up to ``limit`` bytes) and handed to new windows instead.
    Sizes are rounded up to ``_STEP`` so steady-state windows reuse each other.
    A buffer comes back only once no fetch task can write into it any more.
    """

    _STEP = 256 * KiB

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._free: dict[int, list[bytearray]] = {}

    def get(self, size: int) -> bytearray:
        # no checkpoint inside
        if size < self._STEP:
            return bytearray(size)
        capacity = -(-size // self._STEP) * self._STEP
        for have in sorted(self._free):
            # any larger buffer will do: its pages are resident already
            if capacity <= have and self._free[have]:
                buf = self._free[have].pop()
                self.held -= have
                return buf
        return bytearray(capacity)

    def put(self, buf: bytearray) -> None:
        # no checkpoint inside
        have = len(buf)
        if have < self._STEP or have % self._STEP or have > self.limit:
            return
        while self.held + have > self.limit:  # so held > 0: some list is not empty
            # make room by dropping the largest kept buffer
            largest = max(size for size, bufs in self._free.items() if bufs)
            self._free[largest].pop()
            self.held -= largest
            self._free = {k: v for k, v in self._free.items() if v}
        if self.held + have <= self.limit:
            self._free.setdefault(have, []).append(buf)
            self.held += have


_EMPTY = bytearray()


class _Window:
    """Bytes ``[start, end)`` of one asset, filled by one background fetch.

    ``buf`` may be larger than the window (a recycled buffer): only its first
    ``size`` bytes belong to the window.
    """

    __slots__ = (
        "_waiters",
        "buf",
        "cancel_scope",
        "discarded",
        "done",
        "end",
        "error",
        "fetching",
        "filled",
        "pins",
        "reader",
        "released",
        "start",
        "stream",
    )

    def __init__(self, reader: AssetReader, start: int, end: int) -> None:
        self.reader = reader
        self.start = start
        self.end = end
        self.buf = reader._pool._buffers.get(end - start) if end > start else _EMPTY
        self.fetching = False  # a task may write into buf
        self.released = False
        self.filled = 0
        self.error: BaseException | None = None
        self.done = False
        self.pins = 0  # reads currently using this window
        self.discarded = False
        self.cancel_scope = trio.CancelScope()
        self.stream: _Stream | None = None  # the stream filling it, if one is
        self._waiters: list[tuple[int, trio.Event]] = []

    def __repr__(self) -> str:
        return f"<_Window {self.start}-{self.end} filled={self.filled} done={self.done}>"

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None

    def progress(self, filled: int) -> None:
        # no checkpoint inside
        self.filled = filled
        if self._waiters:
            still = []
            for need, event in self._waiters:
                if need <= filled:
                    event.set()
                else:
                    still.append((need, event))
            self._waiters = still

    def fail(self, error: BaseException) -> None:
        # no checkpoint inside
        if self.error is None and not self.done:
            self.error = error
        for _, event in self._waiters:
            event.set()
        self._waiters = []

    async def wait_until(self, offset: int) -> None:
        """Wait until the bytes before absolute ``offset`` are here, or raise the error."""
        need = offset - self.start
        while self.filled < need:
            if self.error is not None:
                raise self.error
            event = trio.Event()
            self._waiters.append((need, event))
            await event.wait()


class _Stream:
    """One ranged GET from ``position`` to ``end`` that fills a reader's windows in order.

    ``windows`` are the windows given to it and not yet filled, contiguous from
    ``position``. The fetch task waits on ``wakeup`` when it has none (the reader
    is far enough ahead): it then reads nothing, and TCP holds the server back.
    """

    __slots__ = ("cancel_scope", "end", "position", "wakeup", "windows")

    def __init__(self, start: int, end: int) -> None:
        self.position = start  # the next byte the body brings
        self.end = end
        self.windows: deque[_Window] = deque()
        self.wakeup = trio.Event()
        self.cancel_scope = trio.CancelScope()

    def __repr__(self) -> str:
        return f"<_Stream at {self.position} of {self.end} windows={len(self.windows)}>"

    @property
    def assigned_end(self) -> int:
        return self.windows[-1].end if self.windows else self.position

    def add(self, window: _Window) -> None:
        # no checkpoint inside
        window.stream = self
        window.fetching = True
        self.windows.append(window)
        self.wakeup.set()


class _StreamIdle(Exception):
    """The stream's reader stopped reading: close the request."""


class ReaderPool:
    """Creates one AssetReader per open file handle; owns the shared budget and counters.

    ``fetch`` is a RangeSource (``immichfs.client.originals.RangeGetClient``, the
    fast path) or a RangeFetcher (e.g. ``ImmichConnector.stream_full_resolution_file``).
    """

    def __init__(
        self,
        fetch: RangeSource | RangeFetcher,
        config: ReadaheadConfig | None = None,
        *,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self.source = range_source(fetch)
        self.config = config or ReadaheadConfig()
        #: what a request to the origin costs, learnt from every response
        self.estimate = OriginEstimate()
        self._streams = 0  # streams open now
        self._receiving = 0  # responses whose bytes are arriving now
        self._overlaps = 0  # times a response began to arrive while another one did
        self._budget = _Budget(self.config.global_budget)
        self._buffers = _Buffers(min(32 * MiB, self.config.global_budget // 2))
        self._nursery = nursery
        #: open readers, least recently read first
        self._readers: OrderedDict[int, AssetReader] = OrderedDict()
        self._next_id = 0
        self._counters = {
            "range_requests": 0,
            "bytes_fetched": 0,
            "random_reads": 0,
            "sequential_reads": 0,
            "windows": 0,
            "retries": 0,
            "fetch_errors": 0,
            "reclaimed_bytes": 0,
            "wasted_bytes": 0,  # asked for, then dropped before it arrived
            "whole_file_windows": 0,
            "streams": 0,  # sequential reads served by one request to the end
        }
        self._tasks = 0
        #: files in a row (of at most max_window bytes) read from start to end
        self._whole_streak = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        """Run background fetches in ``nursery`` (the mount's) from now on."""
        self._nursery = nursery

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ReaderPool]:
        """Own a nursery for background fetches; on exit every reader is closed."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                for reader in list(self._readers.values()):
                    reader._close_now()
                nursery.cancel_scope.cancel()

    def open(self, asset_id: str, size: int, *, edited: bool = False) -> AssetReader:
        """A reader of ``size`` bytes of the asset's original (its edited rendition
        with ``edited``: the fetcher is asked for that, with the same checks)."""
        reader = AssetReader(self, asset_id, size, self._next_id, edited=edited)
        self._readers[self._next_id] = reader
        self._next_id += 1
        return reader

    def statistics(self) -> dict[str, Any]:
        """Counters for logs, tests and the benchmark (trio style: plain values)."""
        return {
            "open_readers": len(self._readers),
            **self._counters,
            "readahead_bytes": self._budget.used,
            "readahead_peak": self._budget.peak,
            "readahead_budget": self._budget.limit,
            "fetch_tasks": self._tasks,
            "origin_latency_ms": _round(self.estimate.latency, 1000),
            "origin_mib_s": _round(self.estimate.throughput, 1 / MiB),
            "origin_parallel_gain": _round(self.estimate.parallel_gain, 1),
        }

    # -- how files are being read ---------------------------------------------------

    def _closed_reader(self, reader: AssetReader) -> None:
        """Note how a small file was read: whole, or not (no checkpoint inside)."""
        if not reader._from_start or reader.size > self.config.max_window:
            return  # never read, or not from its start: says nothing either way
        if reader._pos >= reader.size:
            self._whole_streak += 1
        else:
            self._whole_streak = 0

    def _whole_files_likely(self, size: int) -> bool:
        after = self.config.whole_file_after
        return 0 < after <= self._whole_streak and size <= self.config.max_window

    # -- budget -----------------------------------------------------------------

    def _grant(self, requester: AssetReader, want: int, *, demand: int) -> int:
        """Bytes granted for a new window of up to ``want`` bytes.

        ``demand`` bytes (needed by a read now) are always granted; the rest only
        from free budget, after reclaiming idle readers' windows. No checkpoint inside.
        """
        extra = want - demand
        if extra > 0 and self._budget.free < extra:
            self._reclaim(requester, extra - self._budget.free, idle_only=True)
        if demand > 0 and self._budget.free < demand:
            self._reclaim(requester, demand - self._budget.free, idle_only=False)
        # the demanded bytes use the free budget first; read-ahead only gets what is left
        granted = demand + min(max(0, extra), max(0, self._budget.free - demand))
        self._budget.take(granted)
        return granted

    def _reclaim(self, requester: AssetReader, need: int, *, idle_only: bool) -> None:
        # no checkpoint inside
        now = trio.current_time()
        freed = 0
        for reader in list(self._readers.values()):
            if freed >= need:
                break
            if reader is requester:
                continue
            if idle_only and now - reader.last_read < self.config.idle_reclaim:
                continue
            freed += reader._shed()
        self._counters["reclaimed_bytes"] += freed

    def _recycle(self, window: _Window) -> None:
        # no checkpoint inside; only once no task can write into window.buf
        buf, window.buf = window.buf, _EMPTY
        if buf is not _EMPTY:
            self._buffers.put(buf)

    def _release(self, window: _Window) -> None:
        # no checkpoint inside
        self._budget.give(window.size)
        if not window.done:
            self._counters["wasted_bytes"] += window.size - window.filled

    # -- tasks ------------------------------------------------------------------

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in the pool's nursery (a trio system task when it has none)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn)
        else:
            trio.lowlevel.spawn_system_task(fn)


def _round(value: float | None, scale: float) -> float | None:
    return None if value is None else round(value * scale, 3)


class AssetReader:
    """Reads one asset for one open file handle; see the module docstring."""

    #: two responses at once must bring this much more than one for windows to stay
    _PARALLEL_PAYS = 1.3

    def __init__(
        self, pool: ReaderPool, asset_id: str, size: int, reader_id: int, *, edited: bool = False
    ) -> None:
        #: the edited rendition is read (``edited=true``), not the original
        self.edited = edited
        self._pool = pool
        self._config = pool.config
        self._id = reader_id
        self.asset_id = asset_id
        self.size = size
        self.etag: str | None = None  # pinned by the first response that had one
        self.last_read = -1e9
        self._closed = False
        self._queue: list[_Window] = []  # contiguous, ascending
        self._pos = 0  # furthest end of a sequential read
        self._last_end = -1  # end of the previous read, for sequential detection
        self._next_window = self._config.initial_window
        self._from_start = False  # a stream began at offset 0 (for _closed_reader)
        self._first_end = 0  # end of the current stream's first window
        self._failing_until = -math.inf  # after a read timed out (see read_timeout)
        self._stream: _Stream | None = None  # the request reading ahead to EOF, if any

    def __repr__(self) -> str:
        return f"<AssetReader {self.asset_id} size={self.size} windows={len(self._queue)}>"

    # -- public -------------------------------------------------------------------

    async def read(self, offset: int, size: int, *, exact: bool = False) -> bytes:
        """Exactly ``min(size, filesize - offset)`` bytes at ``offset``; b"" at/after EOF.

        ``exact``: one ranged GET of exactly these bytes, outside any read-ahead
        (a caller that names the range it wants, as fsspec's ``cat_file``).
        """
        data = await self.read_buffer(offset, size, exact=exact)
        return data if isinstance(data, bytes) else data.tobytes()

    async def read_buffer(
        self, offset: int, size: int, *, exact: bool = False
    ) -> bytes | memoryview:
        """What :meth:`read` returns, but possibly a view of a read-ahead window.

        The view is valid only until the caller's next checkpoint: then a fetch
        may reuse the window's buffer. The FUSE adapter hands it to pyfuse3, which
        copies it into the reply before it yields, so a read costs no copy here
        (a 1 MiB ``bytes`` per read was about a tenth of this process's CPU).
        """
        if self._closed:
            raise ReaderClosed(f"asset {self.asset_id}: read after release")
        if size <= 0 or offset >= self.size:
            return b""
        if offset < 0:
            raise ValueError("negative offset")
        if self._failing_until > -math.inf and trio.current_time() < self._failing_until:
            raise RequestTimeout(f"asset {self.asset_id}: a read of this file timed out")
        end = min(offset + size, self.size)
        windows = self._plan(offset, end, exact=exact)
        data: bytes | memoryview
        try:
            for window in windows:
                if window.filled < min(end, window.end) - window.start:
                    # some bytes are still to come: wait for them, within the bound
                    await self._wait(windows, offset, end)
                    break
            # pinned windows are never recycled, so the bytes are still those checked
            if len(windows) == 1:
                window = windows[0]
                data = memoryview(window.buf)[offset - window.start : end - window.start]
            else:
                data = b"".join(
                    memoryview(w.buf)[max(offset, w.start) - w.start : min(end, w.end) - w.start]
                    for w in windows
                )
        finally:
            for window in windows:
                self._unpin(window)
        if len(data) != end - offset:  # cannot happen unless the bookkeeping is wrong
            raise ProtocolError(f"asset {self.asset_id}: internal short read at {offset}")
        return data

    async def _wait(self, windows: list[_Window], offset: int, end: int) -> None:
        """Wait until ``windows`` hold ``[offset, end)``, at most ``read_timeout``."""
        pool = self._pool
        counters = pool._counters
        pool.estimate.waiting(+1, trio.current_time(), counters["bytes_fetched"])
        try:
            with trio.move_on_after(self._config.read_timeout) as waited:
                for window in windows:
                    await window.wait_until(min(end, window.end))
        finally:
            pool.estimate.waiting(-1, trio.current_time(), counters["bytes_fetched"])
        if waited.cancelled_caught:
            error = RequestTimeout(
                f"asset {self.asset_id}: the bytes at {offset} did not arrive within "
                f"{self._config.read_timeout:g} s"
            )
            self._failing_until = trio.current_time() + self._config.fail_fast
            for window in windows:
                if window.stream is not None:
                    self._stop_stream(window.stream)
                window.cancel_scope.cancel()
                window.fail(error)  # other reads waiting for it fail now too
            raise error

    async def aclose(self) -> None:
        """Release: cancel background fetches and free this reader's windows."""
        self._close_now()

    # -- planning (no checkpoint inside any of these) ------------------------------

    def _plan(self, offset: int, end: int, *, exact: bool = False) -> list[_Window]:
        """The windows holding ``[offset, end)``, created as needed, each pinned."""
        pool = self._pool
        self.last_read = trio.current_time()
        pool._readers.move_to_end(self._id)
        queue = self._queue
        q_start = queue[0].start if queue else -1
        q_end = queue[-1].end if queue else -1
        if not exact and queue and q_start <= offset <= q_end + self._next_window:
            # inside the queue, or a little past its end: sequential (the kernel sends
            # several reads at once and they arrive in any order), a forward seek that
            # waits for data in flight, or a small backward step into kept windows
            if end > q_end:
                self._append_window(q_end, end)
            windows = [w for w in queue if w.end > offset and w.start < end]
            for window in windows:
                window.pins += 1  # before _advance, which drops unpinned windows behind
            pool._counters["sequential_reads"] += 1
            self._last_end = end
            self._advance(end)
            return windows
        elif not exact and (
            offset == self._last_end or offset == 0 or self._first_near_start(offset)
        ):
            # a new sequential stream starts here
            if self._first_near_start(offset):
                offset = 0  # the kernel's first reads arrive in any order: start at 0
            self._drop_queue()
            self._next_window = self._config.initial_window
            if offset == 0:
                self._from_start = True
                if pool._whole_files_likely(self.size):
                    # files are being read whole: one request for all of this one
                    self._next_window = self.size
                    pool._counters["whole_file_windows"] += 1
            self._append_window(offset, end)
            windows = list(self._queue)
            pool._counters["sequential_reads"] += 1
            # read-ahead starts with a read past this first window: a program that
            # reads only a file's header costs one window, not several, and neither
            # does one small read that the kernel's own read-ahead split in two
            self._first_end = self._queue[-1].end
            self._pos = end
            self._last_end = end
        else:
            # random (or exact): one GET of exactly these bytes, outside the queue
            window = self._new_window(offset, end, demand=end - offset)
            window.discarded = True  # freed as soon as this read is done with it
            windows = [window]
            pool._counters["random_reads"] += 1
            self._last_end = end
        for window in windows:
            window.pins += 1
        return windows

    def _first_near_start(self, offset: int) -> bool:
        return self._last_end < 0 and not self._queue and offset < self._config.initial_window

    def _append_window(self, start: int, demand_end: int) -> None:
        """Queue a window at ``start`` covering at least ``demand_end``, as large as allowed."""
        cfg = self._config
        streaming = bool(self._queue) and self._consider_stream() is not None
        next_window = cfg.stream_window if streaming else self._next_window
        want = max(next_window, demand_end - start)
        want = self._tail_merge(start, want)
        window = self._new_window(start, start + want, demand=demand_end - start)
        self._queue.append(window)
        self._next_window = min(self._next_window * 2, cfg.max_window)

    def _tail_merge(self, start: int, want: int) -> int:
        """Clamp to EOF; take a short remainder too, rather than a tiny last request."""
        remaining = self.size - start
        if remaining <= want + want // 2:
            return remaining
        return want

    def _new_window(self, start: int, end: int, *, demand: int) -> _Window:
        granted = self._pool._grant(self, end - start, demand=max(0, demand))
        window = _Window(self, start, start + granted)
        self._launch(window)
        return window

    def _launch(self, window: _Window) -> None:
        """Have ``window`` filled: by the stream if it continues the stream, else by a GET."""
        self._pool._counters["windows"] += 1
        stream = self._stream
        if stream is not None and window.size and window.start == stream.assigned_end:
            stream.add(window)
        else:
            self._start_fetch(window)

    def _advance(self, end: int) -> None:
        """Note sequential progress to ``end``: drop windows far behind, read further ahead."""
        cfg = self._config
        if end > self._pos:
            self._pos = end
        keep_from = self._pos - cfg.backward_keep
        while len(self._queue) > 1 and self._queue[0].end <= keep_from:
            self._discard(self._queue.pop(0))
        if self._pos <= self._first_end or not self._queue:
            return  # still inside the stream's first window (see _plan)
        stream = self._stream
        if stream is None:
            inflight = sum(1 for w in self._queue if not w.finished)
            if inflight >= cfg.max_inflight or self._queue[-1].end - self._pos >= cfg.max_ahead:
                return  # no window is due: nothing to decide
            stream = self._consider_stream()
        while self._queue:
            q_end = self._queue[-1].end
            ahead = q_end - self._pos
            if stream is not None:
                # one request brings the bytes: keep up to max_ahead of them in
                # windows, adding a whole stream_window at a time
                if q_end >= self.size or ahead > cfg.max_ahead - cfg.stream_window:
                    break
                want = cfg.stream_window
            else:
                if q_end >= self.size or ahead >= min(self._next_window, cfg.max_ahead):
                    break
                if sum(1 for w in self._queue if not w.finished) >= cfg.max_inflight:
                    break
                want = min(self._next_window, cfg.max_ahead - ahead)
            want = self._tail_merge(q_end, want)
            if want <= 0:
                break
            granted = self._pool._grant(self, want, demand=0)
            if granted < min(want, 128 * KiB):
                self._pool._budget.give(granted)
                break
            window = _Window(self, q_end, q_end + granted)
            self._launch(window)
            self._queue.append(window)
            self._next_window = min(self._next_window * 2, cfg.max_window)

    def _consider_stream(self) -> _Stream | None:
        """The stream reading ahead, started now if the origin makes windows too costly.

        Called past a stream's first window (no checkpoint inside). With the origin
        measured, windows grow at once to what amortises a request; when that is
        more than ``max_window``, the rest of the file becomes one request.
        """
        if self._stream is not None or not self._queue:
            return self._stream
        cfg = self._config
        estimate = self._pool.estimate
        need = estimate.request_bytes(cfg.request_overhead)
        if need is None:
            return None
        self._next_window = max(self._next_window, min(need, cfg.max_window))
        q_end = self._queue[-1].end
        if (
            need <= cfg.max_window
            or self._pool._streams >= cfg.max_streams
            # a rest that one window covers is one request anyway
            or self.size - q_end <= cfg.max_window
        ):
            return None
        gain = estimate.parallel_gain
        if gain is None or (gain >= self._PARALLEL_PAYS and cfg.max_inflight > 1):
            # not known to be the origin's limit (the reader may be slower than the
            # origin: two sockets then buffer more for it), or the origin serves
            # responses side by side: two windows at once hide each other's latency
            return None
        return self._start_stream(q_end)

    def _unpin(self, window: _Window) -> None:
        window.pins -= 1
        if window.error is not None and window in self._queue:
            # a failed window must not be served again: the next read fetches afresh
            self._drop_queue()
        if window.discarded and window.pins == 0:
            self._finish(window)

    def _discard(self, window: _Window) -> None:
        window.discarded = True
        if window.pins == 0:
            self._finish(window)

    def _finish(self, window: _Window) -> None:
        window.cancel_scope.cancel()
        if window.stream is not None and window.filled < window.size:
            # the stream's windows are contiguous: one dropped unfilled ends the request
            self._stop_stream(window.stream)
        if not window.released:
            window.released = True
            self._pool._release(window)
            window.end = window.start  # size 0 from now on
            if not window.fetching:
                self._pool._recycle(window)
            # else the fetch task recycles the buffer when it has really stopped:
            # a task woken before the cancel could still write into it once
        window.fail(ReaderClosed(f"asset {self.asset_id}: read-ahead dropped"))

    def _drop_queue(self) -> None:
        queue, self._queue = self._queue, []
        for window in queue:
            self._discard(window)
        self._check_stream()

    def _check_stream(self) -> None:
        """Stop the stream unless it still continues the queue (no checkpoint inside)."""
        stream = self._stream
        if stream is not None and (not self._queue or self._queue[-1].end != stream.assigned_end):
            self._stop_stream(stream)

    def _shed(self) -> int:
        """Give up every window no read is using (budget pressure). Returns bytes freed."""
        freed = 0
        kept = []
        for window in self._queue:
            if window.pins:
                kept.append(window)
            else:
                freed += window.size
                self._discard(window)
        # windows must stay contiguous: keep only the run starting at the first kept one
        contiguous: list[_Window] = []
        for window in kept:
            if contiguous and contiguous[-1].end != window.start:
                self._discard(window)
                continue
            contiguous.append(window)
        self._queue = contiguous
        self._check_stream()
        return freed

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_queue()
        self._pool._readers.pop(self._id, None)
        self._pool._closed_reader(self)

    # -- fetching -------------------------------------------------------------------

    def _start_fetch(self, window: _Window) -> None:
        if window.size == 0:
            window.done = True
            return
        pool = self._pool
        pool._tasks += 1

        async def run() -> None:
            try:
                with window.cancel_scope:
                    await self._fill(window)
                    window.done = True
            except Exception as exc:
                pool._counters["fetch_errors"] += 1
                log.debug("asset %s: fetch of %r failed: %r", self.asset_id, window, exc)
                window.fail(exc)
            finally:
                pool._tasks -= 1
                window.fetching = False
                if not window.done:
                    window.fail(ReaderClosed(f"asset {self.asset_id}: read-ahead cancelled"))
                if window.released:
                    pool._recycle(window)

        window.fetching = True
        pool.spawn(run)

    async def _fill(self, window: _Window) -> None:
        """Fetch the window, retrying transient failures from the exact offset reached."""
        await self._retrying(
            lambda: self._fetch_once(window),
            f"asset {self.asset_id} bytes {window.start}-{window.end - 1}",
            lambda: window.filled,
        )

    async def _retrying(
        self, attempt: Callable[[], Awaitable[None]], what: str, progress: Callable[[], int]
    ) -> None:
        """``attempt()`` under the project's one retry loop (``RetryPolicy.call``), which
        starts its count again whenever ``progress()`` moved: each try resumes there."""
        tries = 0

        async def counted() -> None:
            nonlocal tries
            tries += 1
            if tries > 1:
                self._pool._counters["retries"] += 1
            await attempt()

        await self._config.retry.call(counted, what=what, progress=progress)

    def _pin_etag(self, etag: str | None) -> None:
        """The first ETag seen is this handle's version; another one is a changed file."""
        if etag is not None:
            if self.etag is None:
                self.etag = etag
            elif etag != self.etag:
                raise StaleAsset(f"asset {self.asset_id} changed on the server")

    async def _fetch_once(self, window: _Window) -> None:
        pool = self._pool
        base = window.filled
        pool._counters["range_requests"] += 1
        timing = _Timing(pool)
        try:
            await self._fetch_timed(window, base, timing)
        finally:
            timing.stop()

    async def _fetch_timed(self, window: _Window, base: int, timing: _Timing) -> None:
        pool = self._pool
        start = window.start + base
        want = window.size - base

        def progress(n: int) -> None:
            if n >= timing.next_mark:
                timing.mark(n)
            if n == want:
                # timed before the waiting reads wake: they may decide on it
                timing.end(n)
            pool._counters["bytes_fetched"] += base + n - window.filled
            window.progress(base + n)

        async with pool.source.open_range(self._range(start, window.end - 1)) as body:
            await body.read_into(memoryview(window.buf)[base : window.size], progress)
            etag = body.etag
        if window.filled != window.size:
            raise TruncatedBody(
                f"asset {self.asset_id}: range at {start} ended after "
                f"{window.filled - base} of {want} bytes"
            )
        self._pin_etag(etag)

    def _range(self, start: int, end: int) -> ByteRange:
        return ByteRange(self.asset_id, start, end, self.size, self.etag, self.edited)

    # -- streams ----------------------------------------------------------------------

    def _start_stream(self, start: int) -> _Stream:
        """One request for ``[start, EOF)`` feeding the windows queued from now on."""
        pool = self._pool
        stream = _Stream(start, self.size)
        self._stream = stream
        pool._counters["streams"] += 1
        pool._streams += 1
        pool._tasks += 1
        log.debug(
            "asset %s: streaming from %d (%s)", self.asset_id, start, pool.estimate.describe()
        )

        async def run() -> None:
            error: BaseException | None = None
            try:
                with stream.cancel_scope:
                    await self._retrying(
                        lambda: self._stream_once(stream),
                        f"asset {self.asset_id} from {start}",
                        lambda: stream.position,
                    )
            except _StreamIdle:
                pass
            except Exception as exc:
                error = exc
                pool._counters["fetch_errors"] += 1
                log.debug("asset %s: %r failed: %r", self.asset_id, stream, exc)
            finally:
                pool._tasks -= 1
                pool._streams -= 1
                self._end_stream(stream, error)

        pool.spawn(run)
        return stream

    def _stop_stream(self, stream: _Stream) -> None:
        # no checkpoint inside; the task hands its unfilled windows on (_end_stream)
        if self._stream is stream:
            self._stream = None
        stream.cancel_scope.cancel()

    def _end_stream(self, stream: _Stream, error: BaseException | None) -> None:
        """The stream's task is over: what it did not fill fails, or gets a GET of its own."""
        # no checkpoint inside
        if self._stream is stream:
            self._stream = None
        pool = self._pool
        windows, stream.windows = stream.windows, deque()
        for window in windows:
            window.stream = None
            window.fetching = False
            if window.released:
                pool._recycle(window)
            elif window.finished:
                pass
            elif error is not None:
                window.fail(error)
            else:
                # still queued (a read holds it, or the stream stopped for another
                # window): the rest of this one is fetched alone, from where it stopped
                try:
                    self._start_fetch(window)
                except RuntimeError:  # the pool's nursery is closing
                    window.fail(ReaderClosed(f"asset {self.asset_id}: read-ahead cancelled"))

    async def _stream_once(self, stream: _Stream) -> None:
        """One request from ``stream.position`` to its end, read into its windows in turn."""
        pool = self._pool
        pool._counters["range_requests"] += 1
        asked = trio.current_time()
        async with pool.source.open_range(self._range(stream.position, stream.end - 1)) as body:
            pool.estimate.note_latency(trio.current_time() - asked)
            self._pin_etag(body.etag)
            counters = pool._counters
            while stream.position < stream.end:
                waited = False
                while not stream.windows:
                    # the reader is max_ahead ahead: read nothing until it moves on
                    waited = True
                    stream.wakeup = trio.Event()
                    with trio.move_on_after(self._config.stream_idle):
                        await stream.wakeup.wait()
                    if not stream.windows:
                        raise _StreamIdle()
                window = stream.windows[0]
                base = window.filled
                if window.start + base != stream.position:  # cannot happen
                    raise ProtocolError(f"asset {self.asset_id}: stream out of step at {window!r}")

                timing = _Timing(pool)
                timing.begin(trio.current_time())
                # after a pause the socket's buffer makes the first bytes look fast
                timed = window.size - base if not waited else -1

                def progress(
                    n: int,
                    window: _Window = window,
                    base: int = base,
                    timing: _Timing = timing,
                    timed: int = timed,
                ) -> None:
                    if n == timed:
                        timing.end(n)  # before the waiting reads wake
                    counters["bytes_fetched"] += base + n - window.filled
                    window.progress(base + n)
                    stream.position = window.start + base + n

                try:
                    await body.read_into(memoryview(window.buf)[base : window.size], progress)
                finally:
                    timing.stop()
                stream.windows.popleft()
                window.stream = None
                window.fetching = False
                window.done = True
                if window.released:
                    pool._recycle(window)
