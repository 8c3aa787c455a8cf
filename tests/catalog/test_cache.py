"""TTL caches: expiry with an injected timer, bounds, and single-flight loading."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from memory_source import Clock

from immichfs.catalog.cache import CacheSettings, MetadataCache, SingleFlightCache


async def test_hit_after_load_and_expiry_after_ttl() -> None:
    clock = Clock()
    cache: SingleFlightCache[str, int] = SingleFlightCache("t", maxsize=10, ttl=5, timer=clock)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        return loads

    assert await cache.get("k", load) == 1
    clock.now = 4.9
    assert await cache.get("k", load) == 1
    clock.now = 5.1
    assert await cache.get("k", load) == 2
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.loads) == (1, 2, 2)


async def test_bounded_by_entries() -> None:
    cache: SingleFlightCache[int, int] = SingleFlightCache("t", maxsize=3, ttl=60)
    for i in range(10):
        cache.put(i, i)
    assert cache.statistics().size == 3
    assert cache.peek(9) == 9 and cache.peek(0) is None


async def test_values_put_at_once_are_found_as_if_put_one_by_one() -> None:
    clock = Clock()
    cache: SingleFlightCache[str, str] = SingleFlightCache("t", maxsize=10, ttl=5, timer=clock)

    async def load() -> str:
        return "loaded"

    cache.put("a", "old a")
    cache.put_many({"a": "a", "b": "b", "c": "c", "d": "d"})
    assert cache.peek("a") == "a" and "b" in cache and await cache.get("c", load) == "c"
    assert sorted(cache.keys()) == ["a", "b", "c", "d"]
    assert cache.statistics().entries == 5  # the old "a" until it expires
    cache.put("b", "newer b")  # a later put wins
    cache.pop("c")
    assert cache.peek("b") == "newer b" and "c" not in cache
    clock.now = 4
    assert cache.renew("d")  # its time to live starts again: now it outlives the batch
    clock.now = 5.1
    assert cache.peek("a") is None and "a" not in cache and await cache.get("a", load) == "loaded"
    assert cache.peek("d") == "d" and cache.peek("b") is None  # put at 0
    cache.clear()
    assert cache.keys() == [] and cache.statistics().entries == 0


async def test_batches_are_bounded_by_entries_oldest_first() -> None:
    cache: SingleFlightCache[int, int] = SingleFlightCache("t", maxsize=5, ttl=60)
    cache.put_many({1: 1, 2: 2, 3: 3})
    cache.put_many({4: 4, 5: 5})
    assert cache.statistics().entries == 5 and cache.peek(1) == 1
    cache.put_many({6: 6, 7: 7})
    assert cache.peek(1) is None and cache.peek(4) == 4 and cache.peek(7) == 7
    assert cache.statistics().entries == 4
    cache.put_many({i: i for i in range(10, 20)})  # more than the whole cache: one by one
    assert cache.peek(19) == 19 and cache.peek(10) is None and cache.peek(7) == 7
    assert cache.statistics().entries == 5 + 4


async def test_bounded_by_size_and_oversized_values_are_not_cached() -> None:
    cache: SingleFlightCache[str, bytes] = SingleFlightCache(
        "bytes", maxsize=100, ttl=60, getsizeof=len
    )
    cache.put("a", b"x" * 60)
    cache.put("b", b"x" * 60)
    assert cache.statistics().size <= 100
    cache.put("huge", b"x" * 1000)
    assert cache.peek("huge") is None


async def test_concurrent_misses_make_one_load() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache("t", maxsize=10, ttl=60)
    release = trio.Event()
    calls = 0
    results: list[str] = []

    async def load() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "value"

    async def ask() -> None:
        results.append(await cache.get("k", load))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert cache.statistics().in_flight == 1
        release.set()
    assert calls == 1
    assert results == ["value"] * 50
    assert cache.statistics().joined == 49


async def test_failure_reaches_every_waiter_and_is_not_cached() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache("t", maxsize=10, ttl=60)
    release = trio.Event()
    calls = 0
    errors: list[BaseException] = []

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        raise ValueError("boom")

    async def ask() -> None:
        try:
            await cache.get("k", failing)
        except ValueError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert calls == 1 and len(errors) == 5

    async def works() -> str:
        return "ok"

    assert await cache.get("k", works) == "ok"
    assert cache.statistics().load_failures == 1


async def test_cancelled_loader_hands_over_to_a_waiter() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache("t", maxsize=10, ttl=60)
    calls = 0
    got: list[str] = []

    async def load() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep_forever()
        return "second"

    async def waiter() -> None:
        got.append(await cache.get("k", load))

    scope = trio.CancelScope()

    async def first() -> None:
        with scope:
            await cache.get("k", load)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)  # waits behind the first loader
        await trio.testing.wait_all_tasks_blocked()
        assert cache.statistics().joined == 1
        scope.cancel()
    assert got == ["second"]
    assert calls == 2


async def test_cancellation_is_not_swallowed() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache("t", maxsize=10, ttl=60)

    async def slow() -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with trio.move_on_after(0.01) as scope:
        await cache.get("k", slow)
    assert scope.cancelled_caught
    assert cache.statistics().in_flight == 0


def test_metadata_cache_statistics_names_every_cache() -> None:
    caches = MetadataCache(CacheSettings(listing_ttl=1, asset_ttl=2, max_assets=10))
    stats = caches.statistics()
    assert set(stats) == {
        "queries",
        "listings",
        "assets",
        "sizes",
        "thumbnail_info",
        "thumbnails",
        "misc",
        "files",
    }
    assert caches.listings.ttl == 1 and caches.assets.ttl == 2


@pytest.mark.parametrize("count", [1, 3])
async def test_listing_cache_counts_entries(count: int) -> None:
    caches = MetadataCache(CacheSettings(max_assets=5, max_listings=1))
    caches.listings.put("a", list(range(count)))
    assert caches.listings.statistics().size == count + 1
