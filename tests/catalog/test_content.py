"""The content cache on a real directory: verified blocks, whole-file checksums,
eviction, crash leftovers, and the byte-path wrapper over a fake fetcher."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from immichfs.catalog.content import CachedSource, ContentCache, content_key
from immichfs.errors import ConnectError, Offline

BLOCK = 1024


def checksum_of(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def blob(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def make(tmp_path: Path, limit: int = 1 << 20) -> ContentCache:
    return ContentCache(tmp_path / "content", limit, block_size=BLOCK)


def read(cache: ContentCache, key: str, start: int, n: int, size: int) -> bytes:
    buf = bytearray(n)
    got = cache.read_into(key, start, memoryview(buf), size)
    return bytes(buf[:got])


def test_whole_file_round_trip_and_verified(tmp_path: Path) -> None:
    data = blob(5 * BLOCK + 100)
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
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
    assert cache.has_whole(key)
    assert read(cache, key, 0, len(data), len(data)) == data


@pytest.mark.expect_log("failed verification: dropped")
def test_flipped_byte_is_never_served(tmp_path: Path) -> None:
    data = blob(3 * BLOCK)
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
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
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
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
    assert cache.covered(key, 0, len(data)) == 0
    assert not (cache.blobs / key).exists()
    cache.write(key, 0, data, len(data), checksum=wrong)  # not kept again
    assert cache.covered(key, 0, len(data)) == 0


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
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
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
    cache = make(tmp_path)
    key = content_key("a1", checksum_of(data))
    cache.write(key, 0, data, len(data), checksum=checksum_of(data))
    assert stat.S_IMODE(os.stat(tmp_path / "content").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.blobs).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.blobs / key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "content" / "content.sqlite").st_mode) == 0o600


def test_content_key_is_a_safe_file_name() -> None:
    key = content_key("../../etc/passwd", "a/b+c==", "preview")
    assert "/" not in key and not key.startswith(".")


# -- the byte path ---------------------------------------------------------------------


class FakeFetcher:
    """A RangeIntoFetcher over in-memory files, counting requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, int, int]] = []
        self.fail: Exception | None = None

    async def fetch_into(
        self,
        asset_id: str,
        start: int,
        view: memoryview,
        *,
        total: int | None = None,
        etag: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str | None:
        if self.fail is not None:
            raise self.fail
        self.requests.append((asset_id, start, len(view)))
        data = self.files[asset_id]
        view[:] = data[start : start + len(view)]
        if progress is not None:
            progress(len(view))
        return 'W/"v1"'


def version(checksum: str | None) -> Callable[[str], Awaitable[str | None]]:
    async def version_of(asset_id: str) -> str | None:
        return checksum

    return version_of


async def fetch(source: CachedSource, asset_id: str, start: int, n: int, total: int) -> bytes:
    buf = bytearray(n)
    await source.fetch_into(asset_id, start, memoryview(buf), total=total)
    return bytes(buf)


async def test_cached_source_serves_the_second_read_from_disk(tmp_path: Path) -> None:
    data = blob(3 * BLOCK + 17)
    fetcher = FakeFetcher({"a1": data})
    cache = make(tmp_path)
    online = [True]
    source = CachedSource(fetcher, cache, version(checksum_of(data)), online=lambda: online[0])
    assert await fetch(source, "a1", 0, len(data), len(data)) == data
    assert len(fetcher.requests) == 1
    assert await fetch(source, "a1", 0, len(data), len(data)) == data
    assert await fetch(source, "a1", 500, 2000, len(data)) == data[500:2500]
    assert len(fetcher.requests) == 1
    assert cache.stats.hits == 2
    online[0] = False  # offline: cached bytes still come
    fetcher.fail = ConnectError("refused")
    assert await fetch(source, "a1", 0, len(data), len(data)) == data
    fetcher.files["b2"] = blob(100)
    with pytest.raises(Offline):  # not transient: the reader does not retry it
        await fetch(source, "b2", 0, 100, 100)
    fetcher.fail = None  # the server is back before the mount noticed: one try works
    assert await fetch(source, "b2", 0, 100, 100) == blob(100)


async def test_cached_source_fetches_only_what_is_missing(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    fetcher = FakeFetcher({"a1": data})
    source = CachedSource(fetcher, make(tmp_path), version(checksum_of(data)))
    await fetch(source, "a1", 0, 2 * BLOCK, len(data))
    assert await fetch(source, "a1", 0, len(data), len(data)) == data
    assert fetcher.requests[-1] == ("a1", 2 * BLOCK, 2 * BLOCK)


async def test_cached_source_keeps_what_arrived_before_a_failure(tmp_path: Path) -> None:
    data = blob(3 * BLOCK)
    cache = make(tmp_path)

    class Partial(FakeFetcher):
        async def fetch_into(self, asset_id, start, view, *, total=None, etag=None, progress=None):  # type: ignore[no-untyped-def]
            view[: 2 * BLOCK] = data[start : start + 2 * BLOCK]
            assert progress is not None
            progress(2 * BLOCK)
            raise ConnectError("cut")

    source = CachedSource(Partial({}), cache, version(checksum_of(data)))
    with pytest.raises(ConnectError):
        await fetch(source, "a1", 0, len(data), len(data))
    assert cache.covered(content_key("a1", checksum_of(data)), 0, len(data)) == 2 * BLOCK


async def test_unknown_checksum_passes_through(tmp_path: Path) -> None:
    data = blob(BLOCK)
    fetcher = FakeFetcher({"a1": data})
    cache = make(tmp_path)
    source = CachedSource(fetcher, cache, version(None))
    assert await fetch(source, "a1", 0, BLOCK, BLOCK) == data
    assert await fetch(source, "a1", 0, BLOCK, BLOCK) == data
    assert len(fetcher.requests) == 2
    assert os.listdir(cache.blobs) == []
