"""Bounded TTL caches with single-flight loading, for metadata.

cachetools provides the containers (``TTLCache`` with an injected ``timer``, so
tests control time); cachetools' ``@cached`` is not used because on an
``async def`` it caches the coroutine object, not its result.

Single-flight: when several tasks miss the same key at once, the first one
loads it and the others wait on a ``trio.Event`` for its result, so 50
concurrent ``stat`` calls cause one request. If the loader fails, the waiters
get the same error (they asked at the same moment; asking again at once would
only repeat the failure). If the loader is cancelled, a waiter takes over.

Concurrency invariant: between reading ``_flights`` and registering a new flight
there is no checkpoint, so two tasks can never both become the loader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio
from cachetools import TTLCache

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Timer = Callable[[], float]
#: what a batch of :meth:`SingleFlightCache.put_many` answers for a key it lacks
_ABSENT: Any = object()


@dataclass(frozen=True)
class CacheStatistics:
    """Counters of one cache, for tests and ``statistics()``."""

    name: str
    hits: int
    misses: int
    loads: int
    load_failures: int
    joined: int  # misses that waited for another task's load instead of loading
    in_flight: int
    size: float  # entries, or the getsizeof total
    maxsize: float
    entries: int = 0  # items held (``size`` counts bytes or listing entries for some)


class _Flight(Generic[V]):
    """One load in progress."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: BaseException | None = None
        self.finished = False


class SingleFlightCache(Generic[K, V]):
    """A bounded ``TTLCache`` whose misses are loaded once per key at a time."""

    def __init__(
        self,
        name: str,
        *,
        maxsize: int,
        ttl: float,
        timer: Timer = time.monotonic,
        getsizeof: Callable[[V], float] | None = None,
    ) -> None:
        self.name = name
        self.ttl = ttl
        self._cache: TTLCache[K, V] = TTLCache(
            maxsize=max(maxsize, 1), ttl=ttl, timer=timer, getsizeof=getsizeof
        )
        self._flights: dict[K, _Flight[V]] = {}
        self._sized = getsizeof is not None
        #: (expiry, values) put all at once (:meth:`put_many`), oldest first: each found
        #: as if it had been put itself; newer than the TTLCache's copy, if any
        self._batches: list[tuple[float, dict[K, V]]] = []
        self._batched = 0
        self._hits = 0
        self._misses = 0
        self._loads = 0
        self._failures = 0
        self._joined = 0

    def peek(self, key: K) -> V | None:
        """The cached value or None; counts nothing, loads nothing."""
        if self._batches:
            found = self._from_batches(key)
            if found is not _ABSENT:
                return found  # type: ignore[no-any-return]
        return self._cache.get(key)

    def __contains__(self, key: object) -> bool:
        if self._batches and self._from_batches(key) is not _ABSENT:  # type: ignore[arg-type]
            return True
        return key in self._cache

    def put(self, key: K, value: V) -> None:
        if self._batches:
            self._unbatch(key)
        try:
            self._cache[key] = value
        except ValueError:
            # larger than the whole cache: serve it uncached
            log.debug("%s: value for %r is larger than the cache", self.name, key)

    def put_many(self, values: dict[K, V]) -> None:
        """Cache all of ``values`` (taken as they are) at once, as one batch: found as
        if each had been put, all expiring together. A remount's listing of 100,000
        assets took a fifth of a second put one by one, a batch only its dict. Beside
        the TTLCache's entries the batches hold at most ``maxsize`` (the oldest go
        first); a cache bounded by ``getsizeof`` takes the values one by one."""
        if self._sized or len(values) > self._cache.maxsize:  # (never so for assets)
            for key, value in values.items():
                self.put(key, value)
            return
        self._drop_expired()
        self._batches.append((self.now() + self.ttl, values))
        self._batched += len(values)
        while self._batched > self._cache.maxsize:
            self._batched -= len(self._batches.pop(0)[1])

    def _drop_expired(self) -> None:
        now = self.now()
        while self._batches and not now < self._batches[0][0]:
            self._batched -= len(self._batches.pop(0)[1])

    def _from_batches(self, key: K) -> Any:
        """``key``'s value in the newest batch holding it, else ``_ABSENT``."""
        self._drop_expired()
        for _, values in reversed(self._batches):
            found = values.get(key, _ABSENT)
            if found is not _ABSENT:
                return found
        return _ABSENT

    def _unbatch(self, key: K) -> None:
        for _, values in self._batches:
            if values.pop(key, _ABSENT) is not _ABSENT:
                self._batched -= 1

    def renew(self, key: K) -> bool:
        """Start ``key``'s time to live again (False if it is not cached)."""
        value = self._from_batches(key) if self._batches else _ABSENT
        if value is _ABSENT:
            value = self._cache.get(key)
            if value is None:
                return False
        self.put(key, value)  # a TTLCache times an entry from when it was set
        return True

    def now(self) -> float:
        """The time on this cache's clock (the one its TTLs are counted in)."""
        return float(self._cache.timer())

    def pop(self, key: K) -> None:
        if self._batches:
            self._unbatch(key)
        self._cache.pop(key, None)

    def keys(self) -> list[K]:
        """The keys held now (expired ones may be among them until next touched)."""
        self._drop_expired()
        held = list(self._cache.keys())
        for _, values in self._batches:
            held.extend(values)
        return list(dict.fromkeys(held))

    def clear(self) -> None:
        self._batches.clear()
        self._batched = 0
        self._cache.clear()

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The value of ``key``, from the cache or from ``load()`` (once per key at a time)."""
        while True:
            # no checkpoint from here until the flight is registered
            if self._batches:
                found = self._from_batches(key)
                if found is not _ABSENT:
                    self._hits += 1
                    return found  # type: ignore[no-any-return]
            try:
                value = self._cache[key]
            except KeyError:
                pass
            else:
                self._hits += 1
                return value
            self._misses += 1
            flight = self._flights.get(key)
            if flight is None:
                return await self._load(key, load)
            self._joined += 1
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.finished:
                return flight.value  # type: ignore[return-value]
            # the loader was cancelled: loop, and one of the waiters loads

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        flight: _Flight[V] = _Flight()
        self._flights[key] = flight
        self._loads += 1
        try:
            value = await load()
        except Exception as exc:
            self._failures += 1
            flight.error = exc
            raise
        else:
            flight.value = value
            flight.finished = True
            self.put(key, value)
            return value
        finally:
            del self._flights[key]
            flight.done.set()

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            name=self.name,
            hits=self._hits,
            misses=self._misses,
            loads=self._loads,
            load_failures=self._failures,
            joined=self._joined,
            in_flight=len(self._flights),
            size=self._cache.currsize + self._batched,
            maxsize=self._cache.maxsize,
            entries=len(self._cache) + self._batched,
        )


@dataclass(frozen=True)
class CacheSettings:
    """TTLs and bounds of the metadata caches (from :class:`immichfs.options.Settings`)."""

    listing_ttl: float = 20.0
    asset_ttl: float = 60.0
    max_assets: int = 200_000
    max_listings: int = 4096
    thumbnail_bytes: int = 32 * 1024 * 1024
    #: thumbnail sizes/types and HEAD-learned sizes depend on the file, not the
    #: listing; they are re-learned after this long
    file_info_ttl: float = 600.0
    #: what an asset's stored files are (keyed by its updatedAt, see ``files``)
    files_ttl: float = 86400.0


class ThumbnailCache:
    """Thumbnails: their bytes, and their (length, content type), filled by one fetch.

    The bytes are bounded by size (``thumbnails``); what ``stat`` needs outlives
    them (``thumbnail_info``, bounded by entries), so a listing of 100,000
    thumbnails keeps exact sizes without keeping their bytes. Both are filled by
    the same single-flight fetch: ``stat``, ``open`` and the format probe of
    one thumbnail at the same moment make one request.
    """

    def __init__(self, *, max_bytes: int, max_entries: int, ttl: float, timer: Timer) -> None:
        self.data: SingleFlightCache[tuple[str, str], tuple[bytes, str]] = SingleFlightCache(
            "thumbnails",
            maxsize=max_bytes,
            ttl=ttl,
            timer=timer,
            getsizeof=lambda value: len(value[0]),
        )
        self.info: SingleFlightCache[tuple[str, str], tuple[int, str]] = SingleFlightCache(
            "thumbnail_info", maxsize=max_entries, ttl=ttl, timer=timer
        )

    async def get(
        self, key: tuple[str, str], load: Callable[[], Awaitable[tuple[bytes, str]]]
    ) -> tuple[bytes, str]:
        """(bytes, content type) of ``key``, from the cache or ``load()`` (once at a time)."""

        async def fetch() -> tuple[bytes, str]:
            data, content_type = await load()
            self.info.put(key, (len(data), content_type))
            return data, content_type

        value: tuple[bytes, str] = await self.data.get(key, fetch)
        return value

    async def get_info(
        self, key: tuple[str, str], load: Callable[[], Awaitable[tuple[bytes, str]]]
    ) -> tuple[int, str]:
        """(length, content type) of ``key``; fetches the thumbnail on first need."""

        async def fetch() -> tuple[int, str]:
            data, content_type = await self.get(key, load)
            return len(data), content_type

        info: tuple[int, str] = await self.info.get(key, fetch)
        return info

    def peek_info(self, key: tuple[str, str]) -> tuple[int, str] | None:
        return self.info.peek(key)


class MetadataCache:
    """All metadata caches of one mount.

    - ``queries``: what a catalog query answered (a tuple of assets), keyed by the
      query, for ``listing_ttl``; bounded by the total number of assets held.
    - ``listings``: directory key → listing, for ``listing_ttl``; bounded by the
      total number of entries across listings (``max_assets``).
    - ``assets``: asset id → Asset, for ``asset_ttl``; filled by every query
      (with a listing read back from disk, all at once: ``put_many``), so ``stat``
      of a listed file needs no request.
    - ``sizes``: (asset id, checksum) → size learned with HEAD when Immich did not
      say (external libraries not yet scanned).
    - ``thumbnails``: a :class:`ThumbnailCache` (bytes and (length, content type));
      it holds sidecars' bytes too.
    - ``files``: (asset id, updatedAt) → the asset's stored files of one kind (its
      sidecar's id or None), for ``files_ttl``: a new or rewritten file changes the
      asset's ``updatedAt``, so the key renews itself and the time can be long.
    - ``misc``: small things such as server features, collection lists and
      thumbnail formats.
    """

    def __init__(
        self, settings: CacheSettings | None = None, timer: Timer = time.monotonic
    ) -> None:
        self.settings = settings = settings or CacheSettings()
        # answers and listings are bounded by the assets they hold, across all of them
        self.queries, self.listings = (
            SingleFlightCache[Hashable, Any](
                name,
                maxsize=settings.max_assets + settings.max_listings,
                ttl=settings.listing_ttl,
                timer=timer,
                getsizeof=lambda held: 1 + len(held),
            )
            for name in ("queries", "listings")
        )
        self.assets: SingleFlightCache[str, Any] = SingleFlightCache(
            "assets", maxsize=settings.max_assets, ttl=settings.asset_ttl, timer=timer
        )
        self.sizes: SingleFlightCache[tuple[str, str], int] = SingleFlightCache(
            "sizes", maxsize=settings.max_assets, ttl=settings.file_info_ttl, timer=timer
        )
        self.thumbnails = ThumbnailCache(
            max_bytes=settings.thumbnail_bytes,
            max_entries=settings.max_assets,
            ttl=settings.file_info_ttl,
            timer=timer,
        )
        self.misc: SingleFlightCache[Hashable, Any] = SingleFlightCache(
            "misc", maxsize=256, ttl=settings.listing_ttl, timer=timer
        )
        self.files: SingleFlightCache[Hashable, Any] = SingleFlightCache(
            "files", maxsize=settings.max_assets, ttl=settings.files_ttl, timer=timer
        )

    def all(self) -> list[SingleFlightCache[Any, Any]]:
        return [
            self.queries,
            self.listings,
            self.assets,
            self.sizes,
            self.thumbnails.info,
            self.thumbnails.data,
            self.misc,
            self.files,
        ]

    def statistics(self) -> dict[str, CacheStatistics]:
        return {cache.name: cache.statistics() for cache in self.all()}
