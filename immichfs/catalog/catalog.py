"""What is known about one Immich library: typed queries over the connector.

Every read of library data by the filesystem goes through :class:`Catalog`:
the timeline, the archive, favourites, trash, a text search, an album's,
person's or tag's assets, a month of the timeline, the date buckets, the
collection lists, one asset, an original's size and a thumbnail's bytes and
type. Answers are model values (:mod:`immichfs.model`), never JSON.

Paging lives here once (:meth:`Catalog.assets_matching`): pages of
``/search/metadata`` are parsed while the next is fetched, each item becomes an
:class:`~immichfs.model.Asset`, trashed assets are dropped (the trash keeps only
those), and an asset that offset paging repeats is kept once. Queries are
written in Immich's flat search fields; the connector sends them as search v2's
filter tree and pages by cursor on 3.2+ (:func:`immichfs.client.search.filter_tree`),
so every listing makes that one choice.

Files: what an asset's file serves is decided here too: the original, or with
``edited`` an edited asset's edited rendition (:meth:`Catalog.file_size`,
:meth:`Catalog.content_tag`); and whether it has an XMP sidecar
(:meth:`Catalog.sidecar`, asked once per version of the asset). A text search
means what :func:`immichfs.client.search.search_assets` says, as it does for
the library and the gateway.

Concurrency (all in one trio thread):

- every cached query is single-flight: callers asking the same query while it
  loads share one request and its answer or error; a cancelled loader hands
  over to a waiter (:mod:`immichfs.catalog.cache`). Different queries load
  concurrently; no lock is held across a request.
- answers are immutable (tuples of frozen values) and replaced, never changed:
  a caller may keep one while a newer one replaces it, and whatever is derived
  from an answer (a directory listing) tells a new answer by its identity.
- what reports changes (:meth:`Catalog.changed_since`, :meth:`Catalog.present_ids`,
  :meth:`Catalog.asset_statistics`) is never cached.

Freshness: everything is held in one :class:`~immichfs.catalog.cache.MetadataCache`.
Asset lists (``queries``) and collection lists (``misc``) live ``listing_ttl``,
single assets ``asset_ttl``; sizes learned with HEAD and thumbnails
``file_info_ttl``. Every asset a list brings replaces its copy in the asset
cache, so a listed file is never fetched alone. Nothing is refreshed here: the
refresh task (:mod:`immichfs.vfs.refresh`) drops or renews entries by the keys
below (:meth:`Catalog.query_keys_for` names those an asset's state decides).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import trio

from immichfs.catalog.cache import MetadataCache
from immichfs.catalog.store import CatalogMemory, Namer
from immichfs.client import search as text_search
from immichfs.errors import ImmichError, NotFound, Offline
from immichfs.model import Album, Asset, Person, Tag, Thumbnail, TimeBucket, iso_instant

log = logging.getLogger(__name__)

Key = Hashable

#: what Immich serves by default, used until one thumbnail has been seen
DEFAULT_THUMBNAIL_TYPES = {"preview": "image/jpeg", "thumbnail": "image/webp"}
#: any ``trashedAfter`` makes Immich answer trashed assets, and only those
_TRASHED = "1970-01-01T00:00:00.000Z"
#: the visibilities whose changes the refresh task follows (hidden motion parts and
#: locked assets are never shown)
VISIBILITIES = ("timeline", "archive")


class CatalogSource(text_search.SearchApi, Protocol):
    """What the catalog needs from :class:`immichfs.client.connector.ImmichConnector`
    (its two searches, and these)."""

    def iter_search_metadata(
        self, filters: Mapping[str, Any], *, page_size: int = ...
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def get_server_features(self) -> dict[str, Any]: ...

    async def get_asset_info(self, asset_id: str) -> dict[str, Any]: ...

    async def get_asset_statistics(self) -> dict[str, Any]: ...

    async def head_original(self, asset_id: str, *, edited: bool = ...) -> int: ...

    async def get_thumbnail_response(
        self, asset_id: str, size: str = ..., *, edited: bool = ...
    ) -> tuple[bytes, str]: ...

    async def get_albums(self) -> list[dict[str, Any]]: ...

    async def get_asset_files(
        self, asset_id: str, type: str | None = ..., is_edited: bool | None = ...
    ) -> list[dict[str, Any]]: ...

    async def get_asset_file(self, file_id: str, *, limit: int = ...) -> bytes: ...

    async def get_people(self, *, with_hidden: bool = ...) -> list[dict[str, Any]]: ...

    async def get_tags(self) -> list[dict[str, Any]]: ...

    async def get_timeline_buckets(self, **filters: Any) -> list[dict[str, Any]]: ...


Fetch = Callable[[], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class CatalogSettings:
    #: most assets a text search answers (``search_limit``)
    search_limit: int = 250
    #: assets per ``/search/metadata`` page (Immich's largest)
    page_size: int = 1000
    #: serve edited assets' edited renditions (``edits = "edited"``), else originals
    edited: bool = False
    #: most asset-files requests in flight when a directory's sidecars are learned
    sidecar_concurrency: int = 8


# -- keys of cached answers (the refresh task drops and renews by them) -----------------


def timeline_key(asset_type: str) -> Key:
    return ("timeline", asset_type)


FAVORITES: Key = ("favorites",)
ARCHIVE: Key = ("archive",)
TRASH: Key = ("trash",)
ALBUMS: Key = ("albums",)
TAGS: Key = ("tags",)
BUCKETS: Key = ("buckets",)
FEATURES: Key = ("features",)


def people_key(with_hidden: bool) -> Key:
    return ("people", with_hidden)


def album_key(album_id: str) -> Key:
    return ("album", album_id)


def person_key(person_id: str) -> Key:
    return ("person", person_id)


def tag_key(tag_id: str) -> Key:
    return ("tag", tag_id)


def month_key(year: int, month: int) -> Key:
    return ("month-assets", year, month)


def search_key(query: str) -> Key:
    return ("search", query)


# -- dates --------------------------------------------------------------------------------


def month_window(year: int, month: int) -> tuple[str, str]:
    """(takenAfter, takenBefore) covering a local month: a day wider on each side.

    ``localDateTime`` is at most ±14 h from the UTC instant the search compares.
    """
    first = datetime(year, month, 1, tzinfo=UTC)
    following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return iso_instant(first - timedelta(days=1)), iso_instant(following + timedelta(days=1))


def local_day(asset: Asset) -> date:
    """The asset's local capture date (UTC date if the server gave no local time)."""
    moment = asset.local_datetime or asset.file_created_at.replace(tzinfo=None)
    return moment.date()


# -- garbage collection during large loads ---------------------------------------------

_gc_pauses = 0


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large answer loads.

    A listing of 100,000 assets creates some two million objects, none of them in
    reference cycles; the collector walks all of them again and again as the heap
    grows (measured: a quarter of the load's time). Whatever cycles other tasks
    leave meanwhile are collected once it runs again. Nested and concurrent loads
    count, so the collector resumes when the last one ends.

    Before it resumes, everything allocated meanwhile is moved to the oldest
    generation (``freeze`` then ``unfreeze``: two list splices, no walk). Left
    young, the next collections walked those two million objects three times
    over (young, middle, then a full pass), half a second inside the first
    ``readdir`` of the new listing. In the oldest generation they wait for the
    next full collection, which Python runs only once enough new objects have
    survived; cycles among them are still found then.
    """
    global _gc_pauses
    if _gc_pauses == 0 and not gc.isenabled():
        yield  # disabled by someone else: leave it so
        return
    _gc_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


# -- the catalog --------------------------------------------------------------------------


class Catalog:
    """Typed, cached, single-flight queries about one library (see the module doc)."""

    def __init__(
        self,
        source: CatalogSource,
        cache: MetadataCache | None = None,
        settings: CatalogSettings | None = None,
    ) -> None:
        self.source = source
        self.cache = cache or MetadataCache()
        self.settings = settings or CatalogSettings()
        #: the catalog on disk (:mod:`immichfs.catalog.store`), when the mount keeps one:
        #: answers saved by an earlier mount come first, and stand in while offline
        self.memory: CatalogMemory | None = None
        #: how the tree names a directory of a listing's assets: the names are saved
        #: with the listing, and a remount that serves it needs not name them again
        self.namer: Namer | None = None

    # -- paging: the one loop of "search, parse, drop trashed"

    async def assets_matching(
        self,
        filters: Mapping[str, Any],
        *,
        trashed: bool | None = False,
        remember: bool = True,
    ) -> tuple[Asset, ...]:
        """Every asset ``/search/metadata`` finds for ``filters``, each once.

        ``trashed``: False keeps the assets not in the trash, True only those in
        it, None both. ``remember`` puts each in the asset cache as it is parsed
        (False for answers compared with the cache before they replace it).

        Pages are parsed while the next one is fetched: parsing here and the
        server preparing the next page overlap instead of taking turns (a listing
        of 100,000 assets is 100 pages). Errors are raised as themselves, never as
        an ExceptionGroup.
        """
        size = self.settings.page_size
        found: dict[str, Asset] = {}
        cached = self.cache.assets
        send, receive = trio.open_memory_channel[list[dict[str, Any]]](math.inf)
        failures: list[Exception] = []

        async def fetch() -> None:
            try:
                batch: list[dict[str, Any]] = []
                async for item in self.source.iter_search_metadata(filters, page_size=size):
                    batch.append(item)
                    if len(batch) >= size:
                        send.send_nowait(batch)  # no checkpoint: on to the next page
                        batch = []
                if batch:
                    send.send_nowait(batch)
            except Exception as exc:
                failures.append(exc)
            finally:
                send.close()

        async def parse(items: list[dict[str, Any]]) -> None:
            for index, item in enumerate(items):
                asset = Asset.from_json(item)
                # offset paging over a changing library can repeat an asset: first one kept
                if (
                    (trashed is None or asset.is_trashed == trashed)
                    and found.setdefault(asset.id, asset) is asset
                    and remember
                ):
                    cached.put(asset.id, asset)  # now, while the next page is fetched
                if index % 100 == 99:
                    # let the request for the next page go out while this one is parsed
                    await trio.lowlevel.checkpoint()

        with cyclic_gc_paused():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch)
                try:
                    with receive:
                        async for batch in receive:
                            await parse(batch)
                except Exception as exc:
                    failures.insert(0, exc)
                    nursery.cancel_scope.cancel()
            if failures:
                raise failures[0]
            return tuple(found.values())

    async def _query(
        self, key: Key, load: Callable[[], Awaitable[tuple[Asset, ...]]]
    ) -> tuple[Asset, ...]:
        memory = self.memory
        if memory is not None:
            fetch = load

            def remember(saved: Sequence[Asset]) -> None:
                # assets served from disk are known one by one too, as listed ones are
                self.cache.assets.put_many({asset.id: asset for asset in saved})

            async def load() -> tuple[Asset, ...]:
                with cyclic_gc_paused():  # a saved listing is decoded as a loaded one is parsed
                    found = await memory.load(key, fetch, remember=remember, namer=self.namer)
                # a tuple already (NamedAssets among them) is kept as it is, names and all
                return found if isinstance(found, tuple) else tuple(found)

        assets: tuple[Asset, ...] = await self.cache.queries.get(key, load)
        return assets

    # -- asset lists

    async def timeline(self, asset_type: str) -> tuple[Asset, ...]:
        """The timeline's assets of one type (``IMAGE``, ``VIDEO``): not archived, not trashed."""

        async def load() -> tuple[Asset, ...]:
            assets = await self.assets_matching({"type": asset_type, "visibility": "timeline"})
            log.debug("listed %d %s assets", len(assets), asset_type)
            return assets

        return await self._query(timeline_key(asset_type), load)

    async def favorites(self) -> tuple[Asset, ...]:
        """Favourite timeline assets."""
        return await self._query(
            FAVORITES,
            lambda: self.assets_matching({"isFavorite": True, "visibility": "timeline"}),
        )

    async def archive(self) -> tuple[Asset, ...]:
        """Archived assets."""
        return await self._query(ARCHIVE, lambda: self.assets_matching({"visibility": "archive"}))

    async def trash(self) -> tuple[Asset, ...]:
        """Trashed assets (of the timeline)."""
        return await self._query(
            TRASH,
            lambda: self.assets_matching(
                {"trashedAfter": _TRASHED, "visibility": "timeline"}, trashed=True
            ),
        )

    async def album_assets(self, album_id: str) -> tuple[Asset, ...]:
        """An album's assets: timeline and archived ones, as Immich's album page shows."""

        async def load() -> tuple[Asset, ...]:
            assets: dict[str, Asset] = {}
            for visibility in ("timeline", "archive"):
                found = await self.assets_matching(
                    {"albumIds": [album_id], "visibility": visibility}
                )
                for asset in found:
                    assets.setdefault(asset.id, asset)
            return tuple(assets.values())

        return await self._query(album_key(album_id), load)

    async def person_assets(self, person_id: str) -> tuple[Asset, ...]:
        """The timeline assets a person appears in."""
        return await self._query(
            person_key(person_id),
            lambda: self.assets_matching({"personIds": [person_id], "visibility": "timeline"}),
        )

    async def tag_assets(self, tag_id: str) -> tuple[Asset, ...]:
        """The timeline assets of a tag, its descendant tags' included (as Immich shows)."""
        return await self._query(
            tag_key(tag_id),
            lambda: self.assets_matching({"tagIds": [tag_id], "visibility": "timeline"}),
        )

    async def month_assets(self, year: int, month: int) -> tuple[Asset, ...]:
        """The timeline assets whose local capture date is in the month (one search window)."""

        async def load() -> tuple[Asset, ...]:
            after, before = month_window(year, month)
            assets = await self.assets_matching(
                {"takenAfter": after, "takenBefore": before, "visibility": "timeline"}
            )
            inside = tuple(
                a for a in assets if (local_day(a).year, local_day(a).month) == (year, month)
            )
            log.debug(
                "%04d-%02d: %d of %d assets in the window", year, month, len(inside), len(assets)
            )
            return inside

        return await self._query(month_key(year, month), load)

    async def search(self, query: str) -> tuple[Asset, ...]:
        """Assets matching a text ``query``, at most ``search_limit``.

        What a query matches is :func:`immichfs.client.search.search_assets`:
        smart search where the server has it, else metadata search over file
        names, descriptions, places and cameras.
        """

        async def load() -> tuple[Asset, ...]:
            smart = (await self.features()).get("smartSearch") is True
            items = await text_search.search_assets(
                self.source, query, size=max(self.settings.search_limit, 1), smart=smart
            )
            assets = tuple(Asset.from_json(item) for item in items)
            for asset in assets:
                self.cache.assets.put(asset.id, asset)
            return assets

        return await self._query(search_key(query), load)

    # -- one asset

    async def asset(self, asset_id: str) -> Asset:
        """One asset (NotFound if Immich has no such asset for this key)."""

        async def fetch() -> Asset:
            return Asset.from_json(await self.source.get_asset_info(asset_id))

        async def load() -> Asset:
            if self.memory is not None:
                return await self.memory.asset(asset_id, fetch)
            return await fetch()

        asset: Asset = await self.cache.assets.get(asset_id, load)
        return asset

    # -- collections and the server

    async def _answer(
        self, key: Key, fetch: Callable[[], Awaitable[list[dict[str, Any]]]]
    ) -> list[dict[str, Any]]:
        """A collection list as the server sent it (saved in the on-disk catalog, which
        answers instead while the server is unreachable)."""
        if self.memory is None:
            return await fetch()
        return await self.memory.answer(key, fetch)

    async def features(self) -> Mapping[str, Any]:
        """``/server/features`` (whether smart search is on)."""
        features: Mapping[str, Any] = await self.cache.misc.get(
            FEATURES, self.source.get_server_features
        )
        return features

    async def _collection(
        self, key: Key, parse: Callable[[Mapping[str, Any]], Any], fetch: Fetch, fresh: bool
    ) -> Any:
        """A collection list, parsed into model values (``fresh``: asked for again)."""

        async def load() -> tuple[Any, ...]:
            items = await self._answer(key, fetch)
            return tuple(value for value in map(parse, items) if value is not None)

        if fresh:
            self.cache.misc.pop(key)
        return await self.cache.misc.get(key, load)

    async def albums(self, *, fresh: bool = False) -> tuple[Album, ...]:
        """Every album the key sees (owned and shared); ``fresh`` asks the server again."""
        albums: tuple[Album, ...] = await self._collection(
            ALBUMS, Album.from_json, self.source.get_albums, fresh
        )
        return albums

    async def people(self, *, with_hidden: bool = False, fresh: bool = False) -> tuple[Person, ...]:
        """Every person; those hidden in Immich's UI only ``with_hidden``."""
        people: tuple[Person, ...] = await self._collection(
            people_key(with_hidden),
            Person.from_json,
            lambda: self.source.get_people(with_hidden=with_hidden),
            fresh,
        )
        return people

    async def tags(self, *, fresh: bool = False) -> tuple[Tag, ...]:
        """Every tag, flat (a tag's ``value`` is its full path)."""
        tags: tuple[Tag, ...] = await self._collection(
            TAGS, Tag.from_json, self.source.get_tags, fresh
        )
        return tags

    async def buckets(self) -> tuple[TimeBucket, ...]:
        """The months with timeline assets, oldest first (``/timeline/buckets``)."""

        async def load() -> tuple[TimeBucket, ...]:
            found = {
                (b.year, b.month): b
                for b in map(
                    TimeBucket.from_json,
                    await self._answer(
                        BUCKETS, lambda: self.source.get_timeline_buckets(visibility="timeline")
                    ),
                )
                if b is not None and (b.count is None or b.count > 0)
            }
            return tuple(found[month] for month in sorted(found))

        buckets: tuple[TimeBucket, ...] = await self.cache.misc.get(BUCKETS, load)
        return buckets

    async def asset_statistics(self) -> Mapping[str, Any] | None:
        """``/assets/statistics`` (never cached), or None when the key may not see it."""
        try:
            return await self.source.get_asset_statistics()
        except ImmichError as exc:  # e.g. a key without asset.statistics
            log.debug("asset statistics unavailable: %s", exc)
            return None

    # -- files

    def serves_edited(self, asset: Asset) -> bool:
        """Whether the asset's file is its edited rendition (``edited`` and edited in Immich)."""
        return self.settings.edited and asset.is_edited is True

    @staticmethod
    def _edited_key(asset: Asset) -> tuple[str, str]:
        # an edit changes updatedAt, never the checksum (that is the original's)
        when = iso_instant(asset.updated_at) if asset.updated_at else ""
        return (asset.id, f"edited {asset.checksum} {when}")

    def known_file_size(self, asset: Asset) -> int | None:
        """The size of what the asset's file serves, if known without a request."""
        if self.serves_edited(asset):
            return self.cache.sizes.peek(self._edited_key(asset))
        return self.known_size(asset)

    async def file_size(self, asset: Asset) -> int:
        """The size of what the asset's file serves: the original's
        (:meth:`original_size`) or the edited rendition's, which no JSON answer
        carries: one HEAD with ``edited=true``, kept ``file_info_ttl`` per version."""
        if not self.serves_edited(asset):
            return await self.original_size(asset)
        size: int = await self.cache.sizes.get(
            self._edited_key(asset), lambda: self.source.head_original(asset.id, edited=True)
        )
        return size

    def content_tag(self, asset: Asset) -> str:
        """What pins the bytes of the asset's file: the original's checksum, or for an
        edited rendition the edit's version (the checksum is not of those bytes)."""
        if self.serves_edited(asset):
            return " ".join(self._edited_key(asset))
        return asset.checksum

    def known_size(self, asset: Asset) -> int | None:
        """The original's size if known without a request (Immich's, or learned before)."""
        if asset.size is not None:
            return asset.size
        return self.cache.sizes.peek((asset.id, asset.checksum))

    async def original_size(self, asset: Asset) -> int:
        """The original's size: Immich's ``fileSizeInByte``, else HEAD (never a download)."""
        if asset.size is not None:
            return asset.size
        size: int = await self.cache.sizes.get(
            (asset.id, asset.checksum), lambda: self.source.head_original(asset.id)
        )
        return size

    def _thumbnail_loader(
        self, asset_id: str, size: str
    ) -> Callable[[], Awaitable[tuple[bytes, str]]]:
        if self.settings.edited:
            # edited=true: an edited asset's rendition of its edit, any other's as usual
            # (not kept on disk: the catalog's thumbnails are the unedited renditions)
            return lambda: self.source.get_thumbnail_response(asset_id, size, edited=True)

        async def fetch() -> tuple[bytes, str]:
            return await self.source.get_thumbnail_response(asset_id, size)

        memory = self.memory
        if memory is None:
            return fetch

        async def load() -> tuple[bytes, str]:
            # verified bytes from disk when this version of the asset was seen before
            return await memory.thumbnail(await self.asset(asset_id), size, fetch)

        return load

    async def thumbnail(self, asset_id: str, size: str) -> Thumbnail:
        """A rendition's bytes and type (``size``: Immich's name, ``preview``/``thumbnail``)."""
        data, content_type = await self.cache.thumbnails.get(
            (size, asset_id), self._thumbnail_loader(asset_id, size)
        )
        return Thumbnail(data, content_type)

    async def thumbnail_info(self, asset_id: str, size: str) -> tuple[int, str]:
        """(length, content type) of a rendition; fetched (and kept) on first need."""
        known = self.known_thumbnail_info(asset_id, size)
        if known is not None:
            return known
        probe = getattr(self.source, "get_thumbnail_length", None)
        if probe is None or self.settings.edited:
            return await self.cache.thumbnails.get_info(
                (size, asset_id), self._thumbnail_loader(asset_id, size)
            )
        memory = self.memory

        async def load_info() -> tuple[int, str]:
            # ``Range: bytes=0-0``: the length without the bytes (a server that ignores
            # the range sends them all: kept then, they are the thumbnail)
            if memory is not None and not memory.reachability():
                raise Offline(f"asset {asset_id}: offline, and its {size} was never seen")
            length, content_type, data = await probe(asset_id, size)
            if data is not None:
                self.cache.thumbnails.data.put((size, asset_id), (data, content_type))
            if memory is not None:
                asset = self.cache.assets.peek(asset_id)
                if asset is not None:
                    await memory.remember_thumbnail(asset, size, length, content_type)
            return length, content_type

        info: tuple[int, str] = await self.cache.thumbnails.info.get((size, asset_id), load_info)
        return info

    def known_thumbnail_info(self, asset_id: str, size: str) -> tuple[int, str] | None:
        """(length, content type) of a rendition if known, without a request (also
        from the catalog on disk: ``ls -l`` of thumbnails seen before downloads none)."""
        known = self.cache.thumbnails.peek_info((size, asset_id))
        if known is None and self.memory is not None and not self.settings.edited:
            asset = self.cache.assets.peek(asset_id)
            if asset is not None:
                known = self.memory.known_thumbnail_info(asset, size)
        return known

    def known_thumbnail_type(self, size: str) -> str | None:
        """The Content-Type of ``size`` if learned (see :meth:`thumbnail_type`)."""
        known: str | None = self.cache.misc.peek(("thumbnail-type", size))
        return known

    async def thumbnail_type(self, size: str, assets: Sequence[Asset]) -> str:
        """The Content-Type the server serves for ``size`` (a server setting, the same for
        every asset), learned from one of ``assets``."""

        async def probe() -> str:
            if self.memory is not None:
                saved = self.memory.thumbnail_type(size)
                if saved is not None:
                    return saved
            for asset in sorted(assets, key=lambda a: a.id)[:3]:
                try:
                    _, content_type = await self.thumbnail_info(asset.id, size)
                except NotFound:
                    continue  # not generated yet: try another
                return content_type
            return DEFAULT_THUMBNAIL_TYPES.get(size, "image/jpeg")

        content_type: str = await self.cache.misc.get(("thumbnail-type", size), probe)
        return content_type

    # -- sidecars (the asset files API, 3.2+)

    @staticmethod
    def _sidecar_key(asset: Asset) -> tuple[str, str, str]:
        when = iso_instant(asset.updated_at) if asset.updated_at else asset.checksum
        return ("sidecar", asset.id, when)

    def known_sidecar(self, asset: Asset) -> tuple[bool, str | None]:
        """(known, the sidecar's file id or None) without a request."""
        key = self._sidecar_key(asset)
        if key not in self.cache.files:
            return False, None
        file_id: str | None = self.cache.files.peek(key)
        return True, file_id

    async def sidecar(self, asset: Asset) -> str | None:
        """The id of the asset's XMP sidecar file, None if it has none: one
        ``GET /asset-files?type=sidecar`` per version of the asset, single-flight."""

        async def load() -> str | None:
            files = await self.source.get_asset_files(asset.id, type="sidecar")
            ids = sorted(str(f["id"]) for f in files if f.get("type") == "sidecar")
            return ids[0] if ids else None

        file_id: str | None = await self.cache.files.get(self._sidecar_key(asset), load)
        return file_id

    async def sidecars(self, assets: Sequence[Asset]) -> dict[str, str]:
        """asset id → sidecar file id for those of ``assets`` that have one; asked
        ``sidecar_concurrency`` at a time for the assets not known yet."""
        found: dict[str, str] = {}
        unknown: list[Asset] = []
        for asset in assets:
            known, file_id = self.known_sidecar(asset)
            if not known:
                unknown.append(asset)
            elif file_id is not None:
                found[asset.id] = file_id
        if unknown:
            limit = trio.CapacityLimiter(max(self.settings.sidecar_concurrency, 1))
            failures: list[Exception] = []

            async def learn(asset: Asset) -> None:
                async with limit:
                    if failures:
                        return
                    try:
                        file_id = await self.sidecar(asset)
                    except Exception as exc:
                        failures.append(exc)
                        return
                if file_id is not None:
                    found[asset.id] = file_id

            async with trio.open_nursery() as nursery:
                for asset in unknown:
                    nursery.start_soon(learn, asset)
            if failures:
                raise failures[0]
        return found

    async def sidecar_content(self, asset: Asset, file_id: str) -> bytes:
        """The sidecar's exact bytes (``/asset-files/{id}/download``), kept per version."""
        when = self._sidecar_key(asset)[2]
        data, _ = await self.cache.thumbnails.get(
            ("sidecar", f"{file_id} {when}"), lambda: self._sidecar_download(file_id)
        )
        return data

    def known_sidecar_size(self, asset: Asset, file_id: str) -> int | None:
        when = self._sidecar_key(asset)[2]
        info = self.cache.thumbnails.peek_info(("sidecar", f"{file_id} {when}"))
        return info[0] if info is not None else None

    async def _sidecar_download(self, file_id: str) -> tuple[bytes, str]:
        return await self.source.get_asset_file(file_id), "application/octet-stream"

    # -- what changed (for the refresh task)

    async def changed_since(self, since: datetime) -> tuple[Asset, ...]:
        """Assets of the timeline and archive updated after ``since``, trashed ones
        included (not put in the asset cache: the caller compares first)."""
        changed: dict[str, Asset] = {}
        for visibility in VISIBILITIES:
            for asset in await self.assets_matching(
                {"updatedAfter": iso_instant(since), "withDeleted": True, "visibility": visibility},
                trashed=None,
                remember=False,
            ):
                changed[asset.id] = asset
        return tuple(changed.values())

    async def present_ids(self) -> set[str]:
        """The id of every asset of the timeline and archive, trashed ones included."""
        present: set[str] = set()
        for visibility in VISIBILITIES:
            async for item in self.source.iter_search_metadata(
                {"withDeleted": True, "visibility": visibility},
                page_size=self.settings.page_size,
            ):
                present.add(str(item.get("id")))
        return present

    @staticmethod
    def query_keys_for(asset: Asset) -> set[Key]:
        """Keys of the cached answers whose contents depend on ``asset``'s own state.

        Albums, people, tags and searches cannot be told from the asset alone:
        the refresh task finds those by scanning what is cached.
        """
        if asset.is_trashed:
            return {TRASH}
        if asset.visibility == "archive":
            return {ARCHIVE}
        if asset.visibility != "timeline":
            return set()
        keys = {timeline_key(asset.type)}
        if asset.is_favorite:
            keys.add(FAVORITES)
        day = local_day(asset)
        keys.add(month_key(day.year, day.month))
        return keys
