"""The content cache on a real directory: verified blocks, whole-file checksums,
eviction, crash leftovers, the writer thread, and the byte path (the tee and the
files read from disk) over a fake source."""

from __future__ import annotations

import base64
import hashlib
import itertools
import mmap
import os
import sqlite3
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from mountutil import poll

from immichfs.catalog.content import (
    CachedFile,
    CachedSource,
    ContentCache,
    _BlobWriter,
    _Writer,
    content_key,
)
from immichfs.catalog.reader import ReaderPool
from immichfs.client.originals import ByteRange, ChunkBody
from immichfs.errors import ConnectError, Offline

BLOCK = 4096  # the filesystem's block: what a file takes on disk is counted in them


def checksum_of(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def blob(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def make(tmp_path: Path, limit: int = 1 << 20, when_idle: float = 0) -> ContentCache:
    """A cache whose whole-file checks run as soon as a file is complete (``when_idle``)."""
    return ContentCache(tmp_path / "content", limit, block_size=BLOCK, verify_when_idle=when_idle)


def cached_blob(tmp_path: Path, data: bytes) -> tuple[ContentCache, str]:
    """A cache holding all of ``data`` as asset a1's original (verified)."""
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
    cache.verifier.drain()
    return cache, key


def read(cache: ContentCache, key: str, start: int, n: int, size: int) -> bytes:
    buf = bytearray(n)
    got = cache.read_into(key, start, memoryview(buf), size)
    return bytes(buf[:got])


def test_whole_file_round_trip_and_verified(tmp_path: Path) -> None:
    data = blob(5 * BLOCK + 100)
    cache, key = cached_blob(tmp_path, data)
    assert cache.has_whole(key)
    assert read(cache, key, 0, len(data), len(data)) == data
    assert read(cache, key, 1000, 3000, len(data)) == data[1000:4000]


def test_ranges_unaligned_windows_are_joined(tmp_path: Path) -> None:
    """Windows that split blocks (the reader's are not block-aligned) still fill them."""
    data = blob(4 * BLOCK)
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cut = BLOCK + 300
    cache.write(key, 0, data[:cut], len(data), checksum=checksum_of(data))
    assert cache.covered(key, 0, len(data)) == BLOCK  # the split block waits
    cache.write(key, cut, data[cut:], len(data), checksum=checksum_of(data))
    assert cache.covered(key, 0, len(data)) == len(data)
    cache.verifier.drain()
    assert cache.has_whole(key)
    assert read(cache, key, 0, len(data), len(data)) == data


def test_ranges_finishing_in_any_order_fill_every_block(tmp_path: Path) -> None:
    data = blob(6 * BLOCK + 77)
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cuts = [0, 300, BLOCK + 700, 3 * BLOCK + 5, 3 * BLOCK + 9, 5 * BLOCK + 1000, len(data)]
    ranges = list(itertools.pairwise(cuts))
    for lo, hi in reversed(ranges):  # the later window finishes first
        cache.write(key, lo, data[lo:hi], len(data), checksum=checksum_of(data))
    assert cache.covered(key, 0, len(data)) == len(data)
    cache.verifier.drain()
    assert cache.has_whole(key)
    assert read(cache, key, 0, len(data), len(data)) == data


@pytest.mark.expect_log("failed verification: dropped")
def test_flipped_byte_is_never_served(tmp_path: Path) -> None:
    data = blob(3 * BLOCK)
    cache, key = cached_blob(tmp_path, data)
    path = cache.blobs / key
    raw = bytearray(path.read_bytes())
    raw[BLOCK + 5] ^= 0xFF
    path.write_bytes(raw)
    got = read(cache, key, 0, len(data), len(data))
    assert got == data[:BLOCK]  # the verified prefix only, never the flipped byte
    assert cache.stats.dropped_blocks == 1
    assert not cache.has_whole(key)
    assert cache.covered(key, 0, len(data)) == BLOCK


@pytest.mark.expect_log("failed verification: dropped")
def test_truncated_file_is_noticed_at_start_and_on_read(tmp_path: Path) -> None:
    data = blob(3 * BLOCK)
    cache, key = cached_blob(tmp_path, data)
    os.truncate(cache.blobs / key, BLOCK + 10)
    assert read(cache, key, 0, len(data), len(data)) == data[:BLOCK]
    cache.close()
    again = make(tmp_path)  # a restart drops what the file cannot hold
    assert again.covered(key, 0, len(data)) == BLOCK


def test_checksum_mismatch_drops_the_whole_entry(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    cache = make(tmp_path)
    wrong = checksum_of(b"something else")
    key = content_key("a1", wrong)
    cache.write(key, 0, data, len(data), checksum=wrong)
    cache.verifier.drain()
    assert cache.covered(key, 0, len(data)) == 0
    assert not (cache.blobs / key).exists()
    cache.write(key, 0, data, len(data), checksum=wrong)  # not kept again
    assert cache.covered(key, 0, len(data)) == 0


def test_whole_file_check_waits_for_quiet_and_resumes_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The SHA-1 of a complete file is not taken while the cache is busy (a first read
    must not pay for it); one not taken before the cache closed is taken at the next
    start. Until then the blocks are served, each by its own check value."""
    data = blob(3 * BLOCK + 5)
    cache = make(tmp_path, when_idle=3600)  # never quiet enough in this test
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
    poll(lambda: cache.verifier.waits, until=bool, every=0.01)  # the check began, and waits
    assert not cache.has_whole(key)
    assert read(cache, key, 0, len(data), len(data)) == data
    cache.close()  # does not wait for the check
    again = make(tmp_path)
    again.verifier.drain()
    assert again.has_whole(key)
    assert read(again, key, 0, len(data), len(data)) == data


@pytest.mark.expect_log("failed verification: dropped")
def test_whole_file_check_drops_a_damaged_block_without_refusing(tmp_path: Path) -> None:
    """Damage on disk found by the whole-file check costs the block, not the version:
    the block is fetched again and the file checked once more."""
    data = blob(3 * BLOCK)
    cache = make(tmp_path, when_idle=3600)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
    path = cache.blobs / key
    raw = bytearray(path.read_bytes())
    raw[2 * BLOCK + 1] ^= 0x01
    path.write_bytes(raw)
    cache.check_whole(key)
    assert cache.covered(key, 0, len(data)) == 2 * BLOCK
    assert not cache.has_whole(key)
    cache.write(key, 2 * BLOCK, data[2 * BLOCK :], len(data), checksum=checksum_of(data))
    cache.check_whole(key)
    assert cache.has_whole(key)
    assert read(cache, key, 0, len(data), len(data)) == data


def test_new_checksum_is_another_file(tmp_path: Path) -> None:
    old, new = blob(BLOCK, 1), blob(BLOCK, 2)
    cache = make(tmp_path)
    cache.write(content_key("a1", checksum_of(old)), 0, old, BLOCK, checksum=checksum_of(old))
    key = content_key("a1", checksum_of(new))
    assert cache.covered(key, 0, BLOCK) == 0
    assert read(cache, key, 0, BLOCK, BLOCK) == b""


def test_other_etag_under_the_same_key_starts_over(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    cache = make(tmp_path)
    key = content_key("a1", "not-a-sha1")
    cache.write(key, 0, data[:BLOCK], len(data), etag='W/"1"')
    cache.write(key, BLOCK, data[BLOCK:], len(data), etag='W/"2"')
    assert cache.covered(key, 0, len(data)) == 0
    assert cache.covered(key, BLOCK, len(data)) == BLOCK
    assert cache.etag(key) == 'W/"2"'


def test_eviction_least_recently_read_first(tmp_path: Path) -> None:
    clock = iter(range(1000))
    cache = ContentCache(
        tmp_path / "content", 3 * BLOCK, block_size=BLOCK, clock=lambda: float(next(clock))
    )
    files = {name: blob(BLOCK, i) for i, name in enumerate("abcd")}
    keys = {name: content_key(name, checksum_of(d)) for name, d in files.items()}
    for name in "abc":
        cache.write(keys[name], 0, files[name], BLOCK, checksum=checksum_of(files[name]))
    read(cache, keys["a"], 0, BLOCK, BLOCK)  # a is now the most recently read
    cache.write(keys["d"], 0, files["d"], BLOCK, checksum=checksum_of(files["d"]))
    held = {name for name in "abcd" if cache.covered(keys[name], 0, BLOCK)}
    assert held == {"a", "c", "d"}
    assert cache.stats.evictions == 1
    assert cache.stats.bytes_on_disk <= 3 * BLOCK
    assert sorted(os.listdir(cache.blobs)) == sorted(keys[n] for n in held)


def test_file_larger_than_the_cache_is_not_kept(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    cache = make(tmp_path, limit=2 * BLOCK)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
    assert cache.stats.bytes_on_disk <= 2 * BLOCK


def test_size_zero_keeps_nothing(tmp_path: Path) -> None:
    data = blob(BLOCK)
    cache = make(tmp_path, limit=0)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
    assert os.listdir(cache.blobs) == []


def test_crash_leftovers_are_cleaned_at_start(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    cache, key = cached_blob(tmp_path, data)
    # bytes written but never recorded (killed between the write and the commit)
    (cache.blobs / "orphan.0000").write_bytes(b"x" * 100)
    cache.close()
    os.unlink(tmp_path / "content" / "blobs" / key)  # recorded, then the file vanished
    again = make(tmp_path)
    assert os.listdir(again.blobs) == []
    assert again.covered(key, 0, len(data)) == 0
    assert again.stats.bytes_on_disk == 0


def test_permissions_are_private(tmp_path: Path) -> None:
    data = blob(BLOCK)
    cache, key = cached_blob(tmp_path, data)
    assert stat.S_IMODE(os.stat(tmp_path / "content").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.blobs).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.blobs / key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "content" / "content.sqlite").st_mode) == 0o600


def test_content_key_is_a_safe_file_name() -> None:
    key = content_key("../../etc/passwd", "a/b+c==", "preview")
    assert "/" not in key and not key.startswith(".")


# -- the byte path ---------------------------------------------------------------------


class FakeSource:
    """A RangeSource over in-memory files, counting requests; ``cut_after`` bytes of
    a body arrive before the connection breaks."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, int, int]] = []
        self.fail: Exception | None = None
        self.cut_after: int | None = None

    @asynccontextmanager
    async def open_range(self, want: ByteRange) -> AsyncIterator[ChunkBody]:
        if self.fail is not None:
            raise self.fail
        self.requests.append((want.asset_id, want.start, want.end + 1 - want.start))
        data = self.files[want.asset_id][want.start : want.end + 1]
        cut = self.cut_after

        async def chunks() -> AsyncGenerator[bytes, None]:
            yield data[:cut]
            if cut is not None:
                raise ConnectError("cut")

        stream = chunks()
        body = ChunkBody(stream, len(data), want.what)
        body.etag = 'W/"v1"'
        try:
            yield body
        finally:
            await stream.aclose()


def version(checksum: str | None) -> Callable[[str], Awaitable[str | None]]:
    async def version_of(asset_id: str) -> str | None:
        return checksum

    return version_of


async def read_file(
    source: CachedSource, pool: ReaderPool, asset_id: str, start: int, n: int, total: int
) -> bytes:
    """Open the asset as the tree does, read, close; what was fetched is on disk after."""
    handle = await source.open_file(asset_id, total, pool)
    assert isinstance(handle, CachedFile) == (await source.version_of(asset_id) is not None)
    try:
        return await handle.read(start, n)
    finally:
        await handle.aclose()
        await trio.to_thread.run_sync(source.cache.writer.drain)


async def test_cached_file_serves_the_second_read_from_disk(tmp_path: Path) -> None:
    data = blob(3 * BLOCK + 17)
    origin = FakeSource({"a1": data})
    cache = make(tmp_path)
    online = [True]
    source = CachedSource(origin, cache, version(checksum_of(data)), online=lambda: online[0])
    pool = ReaderPool(source)
    assert await read_file(source, pool, "a1", 0, len(data), len(data)) == data
    assert len(origin.requests) == 1
    assert await read_file(source, pool, "a1", 0, len(data), len(data)) == data
    assert await read_file(source, pool, "a1", 500, 2000, len(data)) == data[500:2500]
    assert len(origin.requests) == 1
    assert cache.stats.hits == 2
    online[0] = False  # offline: cached bytes still come
    origin.fail = ConnectError("refused")
    assert await read_file(source, pool, "a1", 0, len(data), len(data)) == data
    origin.files["b2"] = blob(100)
    with pytest.raises(Offline):  # not transient: the reader does not retry it
        await read_file(source, pool, "b2", 0, 100, 100)
    origin.fail = None  # the server is back before the mount noticed: one try works
    assert await read_file(source, pool, "b2", 0, 100, 100) == blob(100)


async def test_cached_file_fetches_only_what_is_missing(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    origin = FakeSource({"a1": data})
    source = CachedSource(origin, make(tmp_path), version(checksum_of(data)))
    pool = ReaderPool(source)
    assert await read_file(source, pool, "a1", 0, 2 * BLOCK, len(data)) == data[: 2 * BLOCK]
    first = len(origin.requests)
    assert await read_file(source, pool, "a1", 0, len(data), len(data)) == data
    assert all(start >= 2 * BLOCK for _, start, _ in origin.requests[first:])


async def test_cached_source_keeps_what_arrived_before_a_failure(tmp_path: Path) -> None:
    data = blob(3 * BLOCK)
    cache = make(tmp_path)
    origin = FakeSource({"a1": data})
    origin.cut_after = 2 * BLOCK
    source = CachedSource(origin, cache, version(checksum_of(data)))
    buf = bytearray(len(data))
    with pytest.raises(ConnectError):
        async with source.open_range(ByteRange("a1", 0, len(data) - 1, len(data))) as body:
            await body.read_into(memoryview(buf))
    await trio.to_thread.run_sync(cache.writer.drain)
    assert cache.covered(content_key("a1", checksum_of(data)), 0, len(data)) == 2 * BLOCK


async def test_unknown_checksum_passes_through(tmp_path: Path) -> None:
    data = blob(BLOCK)
    origin = FakeSource({"a1": data})
    cache = make(tmp_path)
    source = CachedSource(origin, cache, version(None))
    pool = ReaderPool(source)
    assert await read_file(source, pool, "a1", 0, BLOCK, BLOCK) == data
    assert await read_file(source, pool, "a1", 0, BLOCK, BLOCK) == data
    assert len(origin.requests) == 2
    assert os.listdir(cache.blobs) == []


@pytest.mark.expect_log("has format 1: starting a new one")
def test_a_cache_of_another_format_is_emptied(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    cache, key = cached_blob(tmp_path, data)
    cache.close()
    db = sqlite3.connect(tmp_path / "content" / "content.sqlite")
    db.execute("PRAGMA user_version = 1")  # as a build with CRC-32 block digests left it
    db.close()
    again = make(tmp_path)
    assert again.covered(key, 0, len(data)) == 0
    assert os.listdir(again.blobs) == []


async def test_writer_keeps_everything_and_waits_for_room(tmp_path: Path) -> None:
    """More bytes than the writer's buffers: put waits, nothing is lost."""
    data = blob(40 * BLOCK)
    cache = make(tmp_path)
    writer = _Writer(cache, limit=4 * BLOCK)
    key = content_key("a1", checksum_of(data))
    view = memoryview(data)
    for at in range(0, len(data), 3 * BLOCK + 100):  # pieces that split blocks
        piece = view[at : at + 3 * BLOCK + 100]
        await writer.put(key, at, piece, len(data), checksum=checksum_of(data))
    await trio.to_thread.run_sync(writer.drain)
    writer.close()
    await trio.to_thread.run_sync(cache.verifier.drain)
    assert cache.has_whole(key)
    assert read(cache, key, 0, len(data), len(data)) == data


def test_writer_put_nowait_drops_what_does_not_fit(tmp_path: Path) -> None:
    data = blob(8 * BLOCK)
    cache = make(tmp_path)
    writer = _Writer(cache, limit=2 * BLOCK)
    key = content_key("a1", checksum_of(data))
    with cache._lock:  # the writer thread waits in its first write: no buffer comes back
        writer.put_nowait(key, 0, memoryview(data), len(data))
    writer.drain()
    writer.close()
    assert cache.covered(key, 0, len(data)) == 2 * BLOCK


@pytest.mark.expect_log("failed verification: dropped")
async def test_cached_file_reads_a_damaged_block_from_the_server(tmp_path: Path) -> None:
    data = blob(4 * BLOCK + 5)
    origin = FakeSource({"a1": data})
    cache = make(tmp_path)
    source = CachedSource(origin, cache, version(checksum_of(data)))
    pool = ReaderPool(source)
    assert await read_file(source, pool, "a1", 0, len(data), len(data)) == data
    await trio.to_thread.run_sync(cache.writer.drain)
    await trio.to_thread.run_sync(cache.verifier.drain)  # checked before the damage
    key = content_key("a1", checksum_of(data))
    with open(cache.blobs / key, "r+b") as f:  # a flipped bit in block 2
        f.seek(2 * BLOCK + 7)
        byte = f.read(1)
        f.seek(2 * BLOCK + 7)
        f.write(bytes([byte[0] ^ 1]))
    before = len(origin.requests)
    # reads of every size and alignment, as the kernel may send them
    for step in (BLOCK, 300, 3 * BLOCK):
        handle = await source.open_file("a1", len(data), pool)
        got = b"".join([await handle.read(at, step) for at in range(0, len(data), step)])
        await handle.aclose()
        assert got == data
    assert cache.stats.dropped_blocks == 1
    assert len(origin.requests) > before  # the damaged block came from the server


def test_blob_writer_goes_around_the_page_cache_where_it_can(tmp_path: Path) -> None:
    """Aligned whole blocks are written with O_DIRECT; an unaligned buffer or tail
    through the page cache: the file holds the same bytes either way."""
    data = blob(3 * 4096 + 10)
    aligned = mmap.mmap(-1, 2 * 4096)
    aligned[:] = data[: 2 * 4096]
    unaligned = memoryview(bytearray(b"x" + data))[1 : 1 + 4096]  # one byte off
    writer = _BlobWriter(tmp_path / "blob")
    writer.write(memoryview(aligned), 0)
    writer.write(unaligned[:4096], 4096)
    writer.write(unaligned[:4096], 2 * 4096)  # rewritten below with the right bytes
    writer.write(memoryview(data)[2 * 4096 :], 2 * 4096)  # the tail: not a whole page
    writer.close()
    assert (tmp_path / "blob").read_bytes() == data[:4096] + data[:4096] + data[2 * 4096 :]


async def test_concurrent_reads_of_one_cached_file_get_their_own_bytes(tmp_path: Path) -> None:
    """The kernel sends a file's reads side by side; block buffers are reused once the
    reads move past them, never while a read still waits on one."""
    data = blob(12 * BLOCK + 333)
    origin = FakeSource({"a1": data})
    cache = make(tmp_path, limit=1 << 24)
    source = CachedSource(origin, cache, version(checksum_of(data)))
    pool = ReaderPool(source)
    assert await read_file(source, pool, "a1", 0, len(data), len(data)) == data
    misses = cache.stats.misses

    async def read(handle: CachedFile, got: dict[int, bytes], at: int) -> None:
        got[at] = await handle.read(at, 1500)

    for _ in range(3):  # later handles take the buffers the earlier ones gave back
        handle = await source.open_file("a1", len(data), pool)
        assert isinstance(handle, CachedFile)
        got: dict[int, bytes] = {}
        async with trio.open_nursery() as nursery:
            for at in range(0, len(data), 700):
                nursery.start_soon(read, handle, got, at)
        await handle.aclose()
        assert all(got[at] == data[at : at + 1500] for at in got)
    assert cache.stats.misses == misses and len(origin.requests) == 1  # all from disk


def test_files_read_in_the_same_order_as_last_time_are_asked_for_ahead(tmp_path: Path) -> None:
    """The order the files were last read in outlives a restart; opening them in that
    order has the disk read the next ones, any other order asks for nothing."""
    clock = itertools.count()
    cache = ContentCache(
        tmp_path / "content", 1 << 24, block_size=BLOCK, clock=lambda: float(next(clock))
    )
    files = {f"a{i}": blob(BLOCK + i, i) for i in range(6)}
    keys = {name: content_key(name, checksum_of(data)) for name, data in files.items()}
    for name, data in files.items():  # a first pass, in this order
        cache.write(keys[name], 0, data, len(data), checksum=checksum_of(data))
    cache.close()
    again = make(tmp_path, limit=1 << 24)
    assert again.read_after(keys["a1"]) == keys["a2"]
    assert again.read_after(keys["a5"]) is None
    asked: list[str] = []
    again.prefetch = asked.append  # type: ignore[method-assign,assignment]

    async def second_pass(order: str) -> None:
        source = CachedSource(FakeSource(files), again, lambda a: _checksum(files[a]))
        pool = ReaderPool(source)
        for i in order:
            handle = await source.open_file(f"a{i}", len(files[f"a{i}"]), pool)
            assert isinstance(handle, CachedFile)
            await handle.aclose()
        await trio.testing.wait_all_tasks_blocked()

    trio.run(second_pass, "0123")
    assert sorted(asked) == [keys["a2"], keys["a3"], keys["a4"], keys["a5"]]  # each once
    asked.clear()
    trio.run(second_pass, "3102")  # shuffled: no file follows the one before as last time
    assert asked == []


async def _checksum(data: bytes) -> str:
    return checksum_of(data)


def test_bytes_held_count_what_the_filesystem_takes_for_a_file_with_holes(
    tmp_path: Path,
) -> None:
    """Ranges of a file cached apart leave holes; the filesystem then keeps extents
    besides the data, and the limit counts those too."""
    data = blob(16 * BLOCK)
    cache = make(tmp_path, limit=1 << 24)
    key = content_key("a1", checksum_of(data))
    for idx in (14, 0, 10, 2, 6, 4, 12, 8):  # every other block, out of order
        at = idx * BLOCK
        cache.write(key, at, data[at : at + BLOCK], len(data), checksum=checksum_of(data))
    taken = os.stat(cache.blobs / key).st_blocks * 512
    assert taken >= 8 * BLOCK
    assert cache.stats.bytes_on_disk == taken
    cache.close()
    again = make(tmp_path, limit=1 << 24)
    assert again.stats.bytes_on_disk == taken
