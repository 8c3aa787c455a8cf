"""Freshness: a background task that finds what changed in Immich and forgets it.

Every ``interval`` seconds (``refresh_interval``, 15 s by default) one cycle runs:

1. **Delta**: ``POST /search/metadata`` with ``updatedAfter`` = the newest
   ``updatedAt`` seen so far minus ``overlap`` and ``withDeleted: true``, once for
   the timeline and once for the archive. Immich bumps ``updatedAt`` on every
   change of an asset row (upload, favourite, archive, trash, restore, edit), so
   this finds every change of that kind in one or two small requests. Each
   changed asset replaces its cached copy, and the listings it was in or now
   belongs in are dropped: those that hold it (found by scanning the cached
   listings) and those its state puts it in (``/photos`` or ``/videos``, its
   ``/by-date`` month, ``/favorites``, ``/archive``, ``/trash``).
2. **Albums**: ``GET /albums`` (one request; two up to v2). An album whose
   ``updatedAt``, ``assetCount`` or name changed has its listing dropped;
   adding an asset to an album does not touch the asset's ``updatedAt``.
3. **Full pass**, every ``full_interval`` (10 min by default) and on a forced
   refresh: permanently deleted assets vanish from delta queries, so the ids of
   every asset are listed (``withDeleted``, all pages) and cached assets that are
   gone are dropped with every listing that holds them; the people and tag
   lists are reloaded too.

4. **Renewal**: ``GET /assets/statistics`` (one small request). After a cycle
   that found no change and whose counts equal the previous cycle's, the cached
   listings these checks keep current (``/photos``, ``/videos``, ``/thumbs``,
   ``/favorites``, ``/archive``, ``/by-date``, ``/albums`` and each album) start
   their ``listing_ttl`` again instead of expiring: a directory of 100,000
   assets is not listed again every 20 s while nothing changes. Their assets
   are put back in the asset cache every half ``asset_ttl``, so opening those
   files by inode costs no request either. A permanent deletion (which no
   delta shows) lowers the counts: after any cycle that saw a change, the
   listings cached at that moment are never renewed again and expire as if
   there were no refresh task, so the bound below holds for them too.
   People, tags, searches and ``/trash`` always simply expire.

The keys of everything dropped are handed to ``on_change`` so the FUSE adapter
can tell the kernel (``pyfuse3.invalidate_inode``, from a thread). A listing
that nobody asked for again costs nothing: dropping is lazy, the next ``ls``
reloads it.

The catalog on disk (:class:`~immichfs.catalog.store.CatalogMemory`, when the
mount keeps one) is kept the same way: after each cycle the saved listings of
everything dropped and those holding another version of an asset a delta brought
are dropped too, assets the full pass found gone leave every saved listing, and
where the deltas stand
is saved with them (the watermark, the assets the overlap repeats, the albums'
signatures). A remount resumes from there: its first cycle (the catch-up) runs
a moment after the mount (1 s, plus 1 s per 25,000 assets in the catalog, at
most 10 s, so the first ``ls`` is served before it competes for the CPU; at
once when a file is opened before that) and is a full one, since permanent
deletions while unmounted show in no delta. Until it has succeeded, assets
served from disk are checked one by one before their cached bytes are read
(:meth:`~immichfs.catalog.store.CatalogMemory.confirmed`).

Bound: a change a delta or the album check sees appears at most ``interval`` +
the time of one cycle + the kernel's ``kernel_ttl`` after Immich made it (about
16 s with the defaults). Other changes (permanent deletions, people, tags) show
in a listing read after it expired: at most ``listing_ttl`` after they were made
(plus the time of one cycle for a listing renewed while the change was made).
Clock skew: the first watermark is this machine's time minus ``overlap``; later
ones are the server's own ``updatedAt`` values, so only the first cycle depends
on the two clocks agreeing within ``overlap``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from immichfs.catalog import catalog as answers
from immichfs.catalog.cache import SingleFlightCache
from immichfs.catalog.store import CatalogMemory
from immichfs.model import Asset
from immichfs.vfs.tree import AssetFile, Key, Listing, SidecarFile, ThumbnailFile, Tree
from immichfs.vfs.views import (
    ALBUMS_KEY,
    ARCHIVE_KEY,
    BY_DATE_KEY,
    FAVORITES_KEY,
    PEOPLE_KEY,
    PHOTOS_KEY,
    TAGS_KEY,
    THUMBNAIL_KEYS,
    VIDEOS_KEY,
    Views,
)

log = logging.getLogger(__name__)

OnChange = Callable[[set[Key]], Awaitable[object]]
#: listings (and the catalog answers they are built from) whose every change a delta or
#: the album check finds (see Renewal)
_RENEWABLE = frozenset(
    {
        PHOTOS_KEY,
        VIDEOS_KEY,
        FAVORITES_KEY,
        ARCHIVE_KEY,
        BY_DATE_KEY,
        ALBUMS_KEY,
        *THUMBNAIL_KEYS,
        answers.timeline_key("IMAGE"),
        answers.timeline_key("VIDEO"),
        answers.FAVORITES,
        answers.ARCHIVE,
    }
)
_RENEWABLE_KINDS = (("date",), ("month-assets",), ("album",))


def _album(key: Key) -> bool:
    return isinstance(key, tuple) and key[:1] == ("album",)


def renewable(key: Key) -> bool:
    """Whether the refresh task keeps the listing or answer of ``key`` current (see Renewal)."""
    return key in _RENEWABLE or (isinstance(key, tuple) and key[:1] in _RENEWABLE_KINDS)


@dataclass
class RefreshResult:
    """What one refresh cycle found."""

    changed: int = 0  # assets changed or added
    removed: int = 0  # assets permanently deleted (full pass)
    albums: int = 0  # albums whose contents or name changed
    full: bool = False
    keys: set[Key] = field(default_factory=set)  # everything dropped, for the kernel
    #: every asset a delta brought (for the catalog on disk), by id
    delta: dict[str, Asset] = field(default_factory=dict)
    removed_ids: set[str] = field(default_factory=set)  # assets permanently deleted

    def summary(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "removed": self.removed,
            "albums": self.albums,
            "full": self.full,
            "invalidated": len(self.keys),
        }


def _utcnow() -> datetime:
    return datetime.now(UTC)


#: the name of the refresh task's state in the catalog on disk
STATE = "refresh"


def _when(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def held_assets(value: Any) -> Iterator[Asset]:
    """The assets a cached listing holds: a Listing's files and thumbnails, or a
    tuple of assets (a month's)."""
    if isinstance(value, Listing):
        for _, node in value.entries:
            if isinstance(node, AssetFile | ThumbnailFile | SidecarFile):
                yield node.asset
    elif isinstance(value, tuple):
        for item in value:
            if isinstance(item, Asset):
                yield item


def cached_keys(cache: SingleFlightCache[Any, Any]) -> list[Hashable]:
    """The keys a cache holds now."""
    return cache.keys()


class RefreshTask:
    """Polls Immich for changes and keeps the tree's caches honest (see the module doc)."""

    def __init__(
        self,
        tree: Tree,
        views: Views,
        *,
        interval: float = 15.0,
        full_interval: float = 600.0,
        overlap: float = 60.0,
        on_change: OnChange | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.tree = tree
        self.views = views
        self.catalog = tree.catalog
        #: what holds what an asset change can touch: the catalog's answers, the listings
        self._holders = (tree.cache.queries, tree.cache.listings)
        self.interval = interval
        self.full_interval = full_interval
        self.overlap = timedelta(seconds=overlap)
        self.on_change = on_change
        self._now = now
        #: the newest updatedAt seen (the server's clock after the first cycle)
        self.watermark = now() - self.overlap
        #: asset id → updatedAt already applied (the overlap returns them again)
        self._seen: dict[str, datetime] = {}
        self._albums: dict[str, tuple[Any, ...]] | None = None
        self._collections: dict[str, Any] = {}
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self._stopped = False
        self._failing = False
        self._last_full = -math.inf
        #: the asset counts of the previous cycle (None: unknown)
        self._statistics: Any = None
        #: (cache, key) of what was cached when a cycle saw a change → id of that value
        self._tainted: dict[tuple[str, Key], int] = {}
        #: renewed (cache, key) → when its assets were last put back in the asset cache
        self._assets_kept: dict[tuple[str, Key], float] = {}
        self.renewed = 0
        self.cycles = 0
        self.last_result: RefreshResult | None = None
        #: when the last successful cycle ended (for ``/.immichfs/status``)
        self.last_refresh_at: datetime | None = None
        #: the catalog on disk (None: none kept)
        self.memory: CatalogMemory | None = self.catalog.memory
        #: the state last saved in it
        self._saved_state: Any = None
        #: the catalog holds listings of an earlier mount: the first cycle is a full
        #: one, after this delay
        self.catch_up: float | None = None
        if self.memory is not None:
            self._restore(self.memory)

    # -- the catalog on disk

    def _restore(self, memory: CatalogMemory) -> None:
        """Resume the deltas where the catalog's last cycle left them."""
        state = memory.saved_state(STATE)
        try:
            watermark = _when(state["watermark"])
            seen = {i: _when(u) for i, u in state["seen"].items()}
            albums = {i: (_when(u), n, name) for i, (u, n, name) in state["albums"].items()}
        except (TypeError, KeyError, ValueError, AttributeError):
            watermark = None
        if watermark is None:
            if memory.saved_assets:
                # listings saved without where their deltas stand: nothing says what
                # changed since, so none is served
                log.info("the catalog does not say how current it is: its listings are dropped")
                memory.store.forget_all_listings()
                memory.saved_assets = 0
            memory.mark_caught_up()
            # where this mount's deltas start: every listing it saves is newer
            self._saved_state = self._state()
            memory.save_state_now(STATE, self._saved_state)
            return
        self.watermark = watermark
        self._seen = {i: u for i, u in seen.items() if u is not None}
        self._albums = albums or None
        self._saved_state = state
        if memory.saved_assets:
            self.catch_up = min(10.0, 1.0 + memory.saved_assets / 25_000)
            memory.hurry = self.trigger

    def _state(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark.isoformat(),
            "seen": {i: u.isoformat() for i, u in self._seen.items()},
            "albums": {
                i: [u.isoformat() if u is not None else None, n, name]
                for i, (u, n, name) in (self._albums or {}).items()
            },
        }

    async def _keep(self, result: RefreshResult) -> None:
        """Bring the catalog on disk where this cycle brought the caches, then say so."""
        memory = self.memory
        if memory is None:
            return
        try:
            if result.keys or result.delta or result.removed_ids:
                await memory.forget(
                    result.keys, changed=result.delta.values(), gone=result.removed_ids
                )
            state = self._state()
            if state != self._saved_state and not memory.outdated:
                await memory.save_state(STATE, state)
                self._saved_state = state
        except Exception as exc:  # a full disk must not stop the refresh
            log.warning("cannot update the catalog on disk: %s", exc)
            return
        if result.full and not memory.outdated:
            self.catch_up = None
            memory.mark_caught_up()

    # -- lifecycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh every ``interval`` until :meth:`stop` (or cancellation)."""
        self._last_full = trio.current_time()
        with trio.CancelScope() as scope:
            self._cancel = scope
            if self._stopped:
                scope.cancel()
            # the counts before anything is listed, so a quiet first cycle renews too
            # (bounded: the mount waits for this; without them nothing is renewed)
            with trio.move_on_after(5):
                try:
                    self._statistics = await self._count_assets()
                except Exception as exc:
                    log.debug("no asset counts at start: %s", exc)
            task_status.started()
            wait = self.interval if self.catch_up is None else self.catch_up
            while True:
                with trio.move_on_after(wait):
                    await self._wake.wait()
                wait = self.interval
                self._wake = trio.Event()
                # a catch-up is full until one succeeds
                full = (
                    self.catch_up is not None
                    or trio.current_time() - self._last_full >= self.full_interval
                )
                try:
                    await self.refresh(full=full)
                except Exception as exc:
                    # the server may be down for a while: say so once, try every cycle
                    if not self._failing:
                        log.warning("refresh failed (retrying every %g s): %s", self.interval, exc)
                    else:
                        log.debug("refresh failed again: %s", exc)
                    self._failing = True
                else:
                    if self._failing:
                        log.info("refresh works again")
                    self._failing = False

    @property
    def failing(self) -> bool:
        """The last cycle failed (the server may be unreachable)."""
        return self._failing

    def stop(self) -> None:
        self._stopped = True
        if self._cancel is not None:
            self._cancel.cancel()

    def trigger(self) -> None:
        """Run a cycle now instead of at the end of the interval."""
        self._wake.set()

    async def refresh_now(self) -> Mapping[str, Any]:
        """A full refresh at once (``getfattr -n user.immichfs.refresh MOUNTPOINT``)."""
        return (await self.refresh(full=True)).summary()

    # -- one cycle

    async def refresh(self, *, full: bool = False) -> RefreshResult:
        """One cycle; returns what changed (``on_change`` has been called with its keys)."""
        async with self._lock:
            result = RefreshResult(full=full)
            await self._delta(result)
            await self._check_albums(result)
            if full:
                await self._full_pass(result)
                self._last_full = trio.current_time()
            await self._renew(result)
            if result.keys:
                self.tree.cache.misc.pop(("membership",))
                # a changed directory's manifest changes too (its size, for the kernel)
                result.keys |= {
                    ("manifest", key)
                    for key in result.keys
                    if not (isinstance(key, tuple) and key[:1] in (("asset",), ("month-assets",)))
                }
            await self._keep(result)
            self.cycles += 1
            self.last_result = result
            self.last_refresh_at = self._now()
        if result.keys:
            log.info(
                "refresh: %d changed, %d removed, %d albums; %d entries invalidated",
                result.changed,
                result.removed,
                result.albums,
                len(result.keys),
            )
            if self.on_change is not None:
                try:
                    await self.on_change(set(result.keys))
                except Exception:
                    log.exception("invalidating kernel caches failed")
        return result

    async def _count_assets(self) -> Any:
        """``GET /assets/statistics``, or None (then nothing is renewed: listings simply
        expire)."""
        return await self.catalog.asset_statistics()

    async def _renew(self, result: RefreshResult) -> None:
        """Renew the listings this cycle vouches for, or taint them (see Renewal)."""
        counts = await self._count_assets()
        quiet = (
            counts is not None
            and counts == self._statistics
            and not (result.changed or result.removed or result.albums)
        )
        self._statistics = counts
        tainted: dict[tuple[str, Key], int] = {}
        kept: dict[tuple[str, Key], float] = {}
        seen: set[str] = set()  # assets already kept this cycle (views overlap)
        for holder in self._holders:
            for key in cached_keys(holder):
                value = holder.peek(key)
                if value is None or not renewable(key):
                    continue
                where = (holder.name, key)
                if not quiet or self._tainted.get(where) == id(value):
                    # cached while something changed: it expires, then is loaded afresh
                    tainted[where] = id(value)
                elif holder.renew(key):
                    if holder is self.tree.cache.listings:
                        self.renewed += 1
                    self._keep_assets(where, value, kept, seen)
        self._tainted = tainted
        self._assets_kept = kept

    def _keep_assets(
        self,
        key: tuple[str, Key],
        listing: Any,
        kept: dict[tuple[str, Key], float],
        seen: set[str],
    ) -> None:
        """Keep a renewed listing's assets cached too, at most every half ``asset_ttl``.

        Opening or ``stat``-ing a file by inode looks its asset up in the asset cache;
        left to expire, every file of a long-lived listing would cost a request.
        """
        assets = self.tree.cache.assets
        now = assets.now()
        last = self._assets_kept.get(key)
        if last is not None and now - last < assets.ttl / 2:
            kept[key] = last
            return
        kept[key] = now
        for asset in held_assets(listing):
            if asset.id in seen:
                continue
            seen.add(asset.id)
            if not assets.renew(asset.id):  # a newer copy from a delta stays
                assets.put(asset.id, asset)

    async def _delta(self, result: RefreshResult) -> None:
        fresh = []
        for asset in await self.catalog.changed_since(self.watermark - self.overlap):
            updated = asset.updated_at
            if updated is not None:
                if self._seen.get(asset.id) == updated:
                    continue  # applied in an earlier cycle (the overlap repeats it)
                self._seen[asset.id] = updated
                self.watermark = max(self.watermark, updated)
            fresh.append(asset)
        floor = self.watermark - self.overlap * 2
        self._seen = {i: u for i, u in self._seen.items() if u >= floor}
        if fresh:
            self.apply(fresh, result)

    def apply(self, assets: Iterable[Asset], result: RefreshResult) -> None:
        """Replace cached copies of changed ``assets`` and drop the listings they touch."""
        assets = list(assets)
        cache = self.tree.cache
        keys: set[Key] = set()
        for asset in assets:
            old: Asset | None = cache.assets.peek(asset.id)
            if old is not None and old.updated_at == asset.updated_at and old == asset:
                continue
            keys |= self.views.keys_for(asset) | self.catalog.query_keys_for(asset)
            if old is not None:
                keys |= self.views.keys_for(old) | self.catalog.query_keys_for(old)
            cache.assets.put(asset.id, asset)
            keys.add(("asset", asset.id))
            result.changed += 1
        keys |= self._listings_with({a.id for a in assets})
        # saved listings may hold an older copy than the one cached here
        result.delta.update((a.id, a) for a in assets)
        self._drop(keys, result)

    def _listings_with(self, asset_ids: set[str]) -> set[Key]:
        """Keys of cached listings and answers that hold any of ``asset_ids``."""
        found: set[Key] = set()
        if not asset_ids:
            return found
        for holder in self._holders:
            for key in cached_keys(holder):
                if any(a.id in asset_ids for a in held_assets(holder.peek(key))):
                    found.add(key)
                    if isinstance(key, tuple) and key[:1] == ("month-assets",):
                        found.add(("date", *key[1:]))
        return found

    def _drop(self, keys: set[Key], result: RefreshResult) -> None:
        cache = self.tree.cache
        for key in keys:
            for holder in self._holders:
                holder.pop(key)
        if keys & {BY_DATE_KEY} or any(
            isinstance(k, tuple) and k[:1] == ("date",) and len(k) <= 2 for k in keys
        ):
            cache.misc.pop(answers.BUCKETS)
        result.keys |= keys

    async def _check_albums(self, result: RefreshResult) -> None:
        albums = await self.catalog.albums(fresh=True)
        signature = {a.id: (a.updated_at, a.asset_count, a.name) for a in albums}
        previous, self._albums = self._albums, signature
        if previous is None:
            return
        keys: set[Key] = set()
        for album_id in previous.keys() | signature.keys():
            if previous.get(album_id) != signature.get(album_id):
                keys.add(("album", album_id))
                result.albums += 1
        names_before = {(i, s[2]) for i, s in previous.items()}
        names_now = {(i, s[2]) for i, s in signature.items()}
        if names_before != names_now:
            keys.add(ALBUMS_KEY)
        self._drop(keys, result)

    async def _full_pass(self, result: RefreshResult) -> None:
        present = await self.catalog.present_ids()
        held: set[str] = set()
        for holder in self._holders:
            for key in cached_keys(holder):
                if _album(key):
                    continue  # others' assets in shared albums: the album check covers them
                held.update(a.id for a in held_assets(holder.peek(key)))
        if self.memory is not None:
            held |= await self.memory.held_ids(exclude=_album)
        gone = held - present
        if gone:
            keys = self._listings_with(gone)
            for asset_id in gone:
                self.tree.cache.assets.pop(asset_id)
                keys.add(("asset", asset_id))
            result.removed += len(gone)
            result.removed_ids |= gone
            self._drop(keys, result)
        # people and tags change rarely: compared here, not every cycle
        with_hidden = self.views.options.show_hidden_people
        misc = self.tree.cache.misc
        people = misc.peek(answers.people_key(with_hidden))
        if people is not None and people != await self.catalog.people(
            with_hidden=with_hidden, fresh=True
        ):
            self._drop({PEOPLE_KEY}, result)
        tags = misc.peek(answers.TAGS)
        if tags is not None and tags != await self.catalog.tags(fresh=True):
            self._drop({TAGS_KEY}, result)
