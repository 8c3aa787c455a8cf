"""The organised views: albums, people, tags, dates, favourites and the archive.

    /albums/<album>/          every album the key sees (owned and shared)
    /people/<name>/           named people; unnamed ones as ``unnamed-<id prefix>``
    /tags/<a>/<b>/...         Immich's "/"-separated tag paths as nested directories
    /by-date/YYYY/MM/         by the local capture date (``localDateTime``)
    /favorites/               favourite timeline assets
    /archive/                 archived assets (they appear in no other view but albums)

Each is a :class:`~immichfs.vfs.tree.Directory` registered with
:meth:`Tree.add_view <immichfs.vfs.tree.Tree.add_view>`; directories made on demand
(one album, one person, ...) are found again from their key through
:meth:`Tree.add_resolver <immichfs.vfs.tree.Tree.add_resolver>`. Every asset is the
same ``("asset", id)`` node in every view, so it has one inode everywhere.

Contents come from ``POST /search/metadata`` with ``albumIds``, ``personIds``
or ``tagIds`` (it works on every supported version; v3 no longer embeds an
album's assets). An album lists its timeline and archived assets, as Immich's
album page (and its ``assetCount``) does. A tag directory holds the assets
Immich finds for the tag — including those of its descendant tags, as Immich's
tag page shows — and the child tags as subdirectories.

``/by-date``: years and months come from ``/timeline/buckets`` (one request,
keyed on ``localDateTime``); one month's contents come from a search window of
``fileCreatedAt`` (the UTC instant) widened by a day on each side and filtered
on ``localDateTime``, so no month lists the whole library.

Names: album and person names are not unique and may hold ``/``; they go
through :func:`immichfs.vfs.names.assign_names` ordered by creation time then id
(albums) or id (people), so the same album keeps the bare name on every mount.

All data comes from the tree's :class:`~immichfs.catalog.catalog.Catalog`; a
directory holding assets is rebuilt whenever the catalog answers anew.

Also here, because they are derived from the same listings: the
``.manifest.jsonl`` of each asset directory (:class:`ManifestFile`), the
membership index behind ``user.immich.albums/people/tags``, and the rules that
tell the refresh task which listings an asset change touches.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import trio

from immichfs.catalog.catalog import Catalog, local_day
from immichfs.model import Album, Asset, Person, Tag
from immichfs.vfs import metadata
from immichfs.vfs.metadata import Membership
from immichfs.vfs.names import NameRequest, assign_names
from immichfs.vfs.tree import (
    ROOT_KEY,
    AssetDirectory,
    AssetFile,
    Attributes,
    Directory,
    FileNode,
    Key,
    Listing,
    Node,
    Tree,
    VirtualFile,
    asset_listing,
    derived_listing,
)

log = logging.getLogger(__name__)

ALBUMS_KEY: Key = ("dir", "albums")
PEOPLE_KEY: Key = ("dir", "people")
TAGS_KEY: Key = ("dir", "tags")
BY_DATE_KEY: Key = ("dir", "by-date")
FAVORITES_KEY: Key = ("dir", "favorites")
ARCHIVE_KEY: Key = ("dir", "archive")
PHOTOS_KEY: Key = ("dir", "photos")
VIDEOS_KEY: Key = ("dir", "videos")
TRASH_KEY: Key = ("dir", "trash")
THUMBNAIL_KEYS: tuple[Key, ...] = (("dir", "thumbs", "preview"), ("dir", "thumbs", "thumbnail"))

MANIFEST_NAME = ".manifest.jsonl"
#: ``getfattr -n user.immichfs.refresh MOUNTPOINT``: refresh now (a read, not a write)
REFRESH_XATTR = "user.immichfs.refresh"
UNNAMED_PREFIX = "unnamed-"
#: manifests whose (listing, size) is remembered for their next open
MAX_MANIFEST_SNAPSHOTS = 256
#: seconds a forced refresh's answer is reused for the next ask
REFRESH_COALESCE = 2.0


@dataclass(frozen=True)
class ViewOptions:
    """Choices about what the views show."""

    #: unnamed face clusters as ``unnamed-<first 8 of id>``; False hides them
    show_unnamed_people: bool = True
    #: people hidden in Immich's UI
    show_hidden_people: bool = False
    #: ``/by-date/YYYY/MM/DD/`` (months then hold day directories instead of files)
    by_date_days: bool = False
    #: the virtual ``.manifest.jsonl`` in asset directories
    manifest: bool = True


# -- helpers ---------------------------------------------------------------------


class CachedDirectory(Directory):
    """A directory whose listing is built by :meth:`build` and kept in the listing cache."""

    async def listing(self) -> Listing:
        listing: Listing = await self.tree.cache.listings.get(self.key, self.build)
        return listing

    def cached_listing(self) -> Listing | None:
        listing: Listing | None = self.tree.cache.listings.peek(self.key)
        return listing

    def subdirectories(self) -> int:
        listing = self.cached_listing()
        if listing is None:
            return 0
        return sum(1 for _, node in listing.entries if isinstance(node, Directory))

    @abstractmethod
    async def build(self) -> Listing:
        """Load the entries (called on a cache miss)."""


class TopDirectory(CachedDirectory):
    """A view at the root (``/albums``, ``/people``, ``/tags``, ``/by-date``): every
    entry is a directory."""

    def __init__(self, views: Views, key: Key) -> None:
        super().__init__(views.tree, key, ROOT_KEY)
        self.views = views

    def subdirectories(self) -> int:
        listing = self.cached_listing()
        return len(listing) if listing is not None else 0


# -- albums ------------------------------------------------------------------------


class AlbumsDirectory(TopDirectory):
    """``/albums``: one directory per album, under a distinct, stable name."""

    async def build(self) -> Listing:
        albums = await self.views.albums()
        names = self.views.album_names(albums)
        items: dict[str, Directory | FileNode] = {
            names[album.id]: self.views.album_directory(album.id) for album in albums
        }
        newest = max((a.updated_at for a in albums if a.updated_at is not None), default=None)
        return Listing.build(items, newest)


# -- people ------------------------------------------------------------------------


class PeopleDirectory(TopDirectory):
    """``/people``: named people, and unnamed ones under an id-based name (optional)."""

    async def build(self) -> Listing:
        people = await self.views.people()
        names = self.views.person_names(people)
        items: dict[str, Directory | FileNode] = {
            name: self.views.person_directory(person_id) for person_id, name in names.items()
        }
        return Listing.build(items)


# -- tags ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TagIndex:
    """Immich's flat tag list as a tree: ids, full paths and children."""

    values: Mapping[str, str]  # tag id → full path ("Travel/Japan")
    children: Mapping[str | None, tuple[str, ...]]  # parent id (None = top) → child ids
    parents: Mapping[str, str | None]  # tag id → parent id

    @classmethod
    def build(cls, tags: Iterable[Tag]) -> TagIndex:
        values = {tag.id: tag.value for tag in tags}
        by_value = {value: tag_id for tag_id, value in sorted(values.items())}
        parents: dict[str, str | None] = {}
        children: dict[str | None, list[str]] = {}
        for tag_id, value in sorted(values.items()):
            # the nearest existing ancestor by path (a missing level is skipped)
            parent: str | None = None
            head = value
            while "/" in head:
                head = head.rpartition("/")[0]
                if head in by_value:
                    parent = by_value[head]
                    break
            parents[tag_id] = parent
            children.setdefault(parent, []).append(tag_id)
        return cls(values, {k: tuple(v) for k, v in children.items()}, parents)

    def leaf(self, tag_id: str) -> str:
        value = self.values[tag_id]
        parent = self.parents.get(tag_id)
        if parent is not None and value.startswith(self.values[parent] + "/"):
            return value[len(self.values[parent]) + 1 :]
        return value.rpartition("/")[2] or value

    def child_names(self, parent: str | None) -> dict[str, str]:
        """child tag id → directory name under ``parent``."""
        return assign_names(
            NameRequest(tag_id, self.leaf(tag_id), tag_id)
            for tag_id in self.children.get(parent, ())
        )


class TagsDirectory(TopDirectory):
    """``/tags``: the top-level tags."""

    async def build(self) -> Listing:
        index = await self.views.tag_index()
        names = index.child_names(None)
        return Listing.build(
            {name: self.views.tag_directory(tag_id) for tag_id, name in names.items()}
        )


class TagDirectory(CachedDirectory):
    """One tag: its assets (descendants' included, as in Immich) and its child tags."""

    def __init__(self, views: Views, tag_id: str, parent: Key) -> None:
        super().__init__(views.tree, ("tag", tag_id), parent)
        self.views = views
        self.tag_id = tag_id

    async def listing(self) -> Listing:
        index = await self.views.tag_index()
        assets = await self.tree.catalog.tag_assets(self.tag_id)
        return await derived_listing(self, assets, lambda: self._make(index, assets))

    async def build(self) -> Listing:
        return await self.listing()

    def _make(self, index: TagIndex, assets: Sequence[Asset]) -> Listing:
        names = index.child_names(self.tag_id)
        children: dict[str, Directory] = {
            name: self.views.tag_directory(tag_id) for tag_id, name in names.items()
        }
        return asset_listing(assets, children)


# -- by date -------------------------------------------------------------------------


class ByDateDirectory(TopDirectory):
    """``/by-date``: the years that have assets."""

    async def build(self) -> Listing:
        buckets = await self.tree.catalog.buckets()
        years = sorted({bucket.year for bucket in buckets})
        return Listing.build({f"{y:04d}": YearDirectory(self.views, y) for y in years})


class YearDirectory(CachedDirectory):
    """``/by-date/YYYY``: its months that have assets."""

    def __init__(self, views: Views, year: int) -> None:
        super().__init__(views.tree, ("date", year), BY_DATE_KEY)
        self.views = views
        self.year = year

    async def build(self) -> Listing:
        buckets = await self.tree.catalog.buckets()
        months = sorted(b.month for b in buckets if b.year == self.year)
        return Listing.build({f"{m:02d}": MonthDirectory(self.views, self.year, m) for m in months})


class MonthDirectory(CachedDirectory):
    """``/by-date/YYYY/MM``: the month's assets (or its days, with ``by_date_days``)."""

    def __init__(self, views: Views, year: int, month: int) -> None:
        super().__init__(views.tree, ("date", year, month), ("date", year))
        self.views = views
        self.year = year
        self.month = month

    async def listing(self) -> Listing:
        assets = await self.tree.catalog.month_assets(self.year, self.month)
        return await derived_listing(self, assets, lambda: self._make(assets))

    async def build(self) -> Listing:
        return await self.listing()

    def _make(self, assets: Sequence[Asset]) -> Listing:
        if not self.views.options.by_date_days:
            return asset_listing(assets)
        days = sorted({local_day(a).day for a in assets})
        return Listing.build(
            {f"{d:02d}": DayDirectory(self.views, self.year, self.month, d) for d in days},
            assets=assets,
        )


class DayDirectory(CachedDirectory):
    """``/by-date/YYYY/MM/DD``: one local day, cut from its month's assets."""

    def __init__(self, views: Views, year: int, month: int, day: int) -> None:
        super().__init__(views.tree, ("date", year, month, day), ("date", year, month))
        self.views = views
        self.day = date(year, month, day)

    async def listing(self) -> Listing:
        assets = await self.tree.catalog.month_assets(self.day.year, self.day.month)

        return await derived_listing(
            self,
            assets,
            lambda: asset_listing([a for a in assets if local_day(a) == self.day], answer=assets),
        )

    async def build(self) -> Listing:
        return await self.listing()


# -- manifest ------------------------------------------------------------------------


class ManifestHandle:
    """An open ``.manifest.jsonl``: lines generated as they are read."""

    #: the adapter opens it with ``direct_io``: reads go to the end of what this
    #: handle serves, whatever ``st_size`` the kernel last saw
    direct_io = True

    def __init__(self, stream: metadata.ManifestStream) -> None:
        self._stream: metadata.ManifestStream | None = stream

    async def read(self, offset: int, size: int) -> bytes:
        if self._stream is None:
            return b""
        return self._stream.read(offset, size)

    async def aclose(self) -> None:
        self._stream = None


class ManifestFile:
    """``<asset directory>/.manifest.jsonl``: one JSON line per asset of the listing.

    Made from the cached listing and the membership index: no per-asset request.
    Not an entry of the listing (``ls -a``, ``cp -r`` and globs never see it); it
    is found only by name.
    """

    def __init__(self, views: Views, directory: Directory) -> None:
        self.views = views
        self.directory = directory

    @property
    def key(self) -> Key:
        return ("manifest", self.directory.key)

    async def _snapshot(self) -> tuple[Listing, Mapping[str, Membership]]:
        listing = await self.directory.listing()
        membership = await self.views.membership()
        return listing, membership

    def _lines(self, listing: Listing, membership: Mapping[str, Membership]) -> Iterator[bytes]:
        entries = (
            (name, node.asset) for name, node in listing.entries if isinstance(node, AssetFile)
        )
        return metadata.manifest_lines(
            entries,
            lambda asset_id: membership.get(asset_id, metadata.NO_MEMBERSHIP),
            self.views.known_size,
        )

    async def size(self) -> int:
        """The exact length now; remembered with the listing it was made from."""
        listing, membership = await self._snapshot()
        cached = self.views.manifest_sizes.get(self.directory.key)
        if cached is not None and cached[0] is listing and cached[1] is membership:
            return cached[2]
        size = metadata.manifest_size(self._lines(listing, membership))
        self.views.remember_manifest(self.directory.key, (listing, membership, size))
        return size

    async def attributes(self) -> Attributes:
        size = await self.size()
        listing = self.directory.cached_listing()
        when = (listing.newest if listing is not None else None) or self.views.tree.mounted_at
        return Attributes(False, size, when, when, 1)

    async def open(self) -> ManifestHandle:
        """The content whose length the kernel was last told (``st_size``).

        The kernel reads a regular file up to the size of its last ``lookup`` or
        ``getattr``, so the handle serves the listing that size was computed from,
        even if the listing was reloaded since (that is at most the kernel's
        attribute timeout old).
        """
        cached = self.views.manifest_sizes.get(self.directory.key)
        if cached is None:
            await self.size()
            cached = self.views.manifest_sizes[self.directory.key]
        listing, membership, _ = cached
        return ManifestHandle(metadata.ManifestStream(lambda: self._lines(listing, membership)))


# -- the views ---------------------------------------------------------------------

RefreshHook = Callable[[], Awaitable[Mapping[str, Any]]]


class Views:
    """State shared by the views of one tree: collection lists, names, parents."""

    def __init__(self, tree: Tree, options: ViewOptions) -> None:
        self.tree = tree
        self.catalog: Catalog = tree.catalog
        self.options = options
        #: the tag list the index was last built from, and that index
        self._tag_index: tuple[Sequence[Tag], TagIndex] | None = None
        #: tag id → parent key, kept from the last tag list (for ``..`` of a tag directory)
        self._tag_parents: dict[str, Key] = {}
        #: directory key → (listing, membership, manifest size) last computed (bounded)
        self.manifest_sizes: OrderedDict[Key, tuple[Listing, Mapping[str, Membership], int]] = (
            OrderedDict()
        )

    # -- collection lists (the catalog's, with the views' options)

    async def albums(self) -> tuple[Album, ...]:
        return await self.catalog.albums()

    async def people(self) -> tuple[Person, ...]:
        return await self.catalog.people(with_hidden=self.options.show_hidden_people)

    async def tag_index(self) -> TagIndex:
        """The tags as a tree (rebuilt when the catalog's tag list is a new one)."""
        tags = await self.catalog.tags()
        built = self._tag_index
        if built is not None and built[0] is tags:
            return built[1]
        index = TagIndex.build(tags)
        self._tag_parents = {
            tag_id: (("tag", parent) if parent is not None else TAGS_KEY)
            for tag_id, parent in index.parents.items()
        }
        self._tag_index = (tags, index)
        return index

    # -- names

    @staticmethod
    def album_names(albums: Iterable[Album]) -> dict[str, str]:
        """album id → directory name (the oldest album keeps a shared name)."""
        return assign_names(
            NameRequest(album.id, album.name, (album.created_at, album.id)) for album in albums
        )

    def person_names(self, people: Iterable[Person]) -> dict[str, str]:
        """person id → directory name, for the people shown."""
        requests = []
        for person in people:
            if person.is_hidden and not self.options.show_hidden_people:
                continue
            name = person.name
            if not name:
                if not self.options.show_unnamed_people:
                    continue
                name = UNNAMED_PREFIX + person.id[:8]
            requests.append(NameRequest(person.id, name, person.id))
        return assign_names(requests)

    # -- directories from keys

    def album_directory(self, album_id: str) -> AssetDirectory:
        return self._members("album", album_id, ALBUMS_KEY, self.catalog.album_assets)

    def person_directory(self, person_id: str) -> AssetDirectory:
        return self._members("person", person_id, PEOPLE_KEY, self.catalog.person_assets)

    def _members(
        self,
        kind: str,
        ident: str,
        parent: Key,
        load: Callable[[str], Awaitable[Sequence[Asset]]],
    ) -> AssetDirectory:
        """The directory of one album's or person's assets, keyed ``(kind, id)``."""
        return AssetDirectory(self.tree, (kind, ident), parent, lambda: load(ident))

    def tag_directory(self, tag_id: str) -> TagDirectory:
        return TagDirectory(self, tag_id, self._tag_parents.get(tag_id, TAGS_KEY))

    def date_directory(self, parts: tuple[int, ...]) -> CachedDirectory | None:
        try:
            if len(parts) == 1:
                return YearDirectory(self, parts[0])
            if len(parts) == 2 and 1 <= parts[1] <= 12:
                return MonthDirectory(self, parts[0], parts[1])
            if len(parts) == 3 and self.options.by_date_days:
                date(*parts)  # ValueError for a day the month does not have
                return DayDirectory(self, *parts)
        except (TypeError, ValueError):
            return None
        return None

    def resolve(self, key: Key) -> Directory | None:
        """A directory made on demand, from its key (the tree's resolvers call this)."""
        if not isinstance(key, tuple) or len(key) < 2:
            return None
        kind, rest = key[0], key[1:]
        if kind == "album" and len(rest) == 1:
            return self.album_directory(str(rest[0]))
        if kind == "person" and len(rest) == 1:
            return self.person_directory(str(rest[0]))
        if kind == "tag" and len(rest) == 1:
            return self.tag_directory(str(rest[0]))
        if kind == "date" and all(isinstance(p, int) for p in rest):
            return self.date_directory(tuple(int(p) for p in rest))
        return None

    # -- membership (albums, people, tags of each asset)

    async def membership(self) -> Mapping[str, Membership]:
        """asset id → its albums, people and tags, from the collections' listings.

        One search per album, person and tag (each shared with its directory's
        listing cache), never one per asset; kept for the listing TTL.
        """
        index: Mapping[str, Membership] = await self.tree.cache.misc.get(
            ("membership",), self._build_membership
        )
        return index

    async def _build_membership(self) -> Mapping[str, Membership]:
        albums: dict[str, list[str]] = {}
        people: dict[str, list[str]] = {}
        tags: dict[str, list[str]] = {}
        for album in await self.albums():
            for asset in await self.catalog.album_assets(album.id):
                albums.setdefault(asset.id, []).append(album.name)
        for person_id, name in self.person_names(await self.people()).items():
            for asset in await self.catalog.person_assets(person_id):
                people.setdefault(asset.id, []).append(name)
        index = await self.tag_index()
        for tag_id, value in index.values.items():
            for asset in await self.catalog.tag_assets(tag_id):
                tags.setdefault(asset.id, []).append(value)
        result: dict[str, Membership] = {}
        for asset_id in albums.keys() | people.keys() | tags.keys():
            result[asset_id] = Membership(
                albums=tuple(sorted(albums.get(asset_id, ()))),
                people=tuple(sorted(people.get(asset_id, ()))),
                tags=_most_specific(tags.get(asset_id, ())),
            )
        return result

    # -- metadata of nodes

    def remember_manifest(
        self, key: Key, snapshot: tuple[Listing, Mapping[str, Membership], int]
    ) -> None:
        self.manifest_sizes[key] = snapshot
        self.manifest_sizes.move_to_end(key)
        while len(self.manifest_sizes) > MAX_MANIFEST_SNAPSHOTS:
            self.manifest_sizes.popitem(last=False)

    def known_size(self, asset: Asset) -> int | None:
        """The size of the file known without a request (Immich's, or one learned before)."""
        return self.catalog.known_file_size(asset)

    def manifest(self, directory: Directory, name: str) -> ManifestFile | None:
        """The manifest found by ``name`` in ``directory`` (None if it has none)."""
        if not self.options.manifest or name != MANIFEST_NAME:
            return None
        if isinstance(directory, AssetDirectory | TagDirectory | MonthDirectory | DayDirectory):
            return ManifestFile(self, directory)
        return None

    def virtual_node(self, key: Key) -> ManifestFile | None:
        """The virtual file behind ``key`` (an inode's key), if it is one of ours."""
        if isinstance(key, tuple) and len(key) == 2 and key[0] == "manifest":
            directory = self.tree.directory(key[1])
            if directory is not None:
                return self.manifest(directory, MANIFEST_NAME)
        return None

    async def xattrs(self, node: Directory | FileNode | ManifestFile) -> dict[str, bytes]:
        """Every extended attribute of ``node`` (loads the membership index for assets)."""
        if isinstance(node, AssetFile):
            membership = (await self.membership()).get(node.asset.id, metadata.NO_MEMBERSHIP)
            return metadata.xattrs(node.asset, membership)
        return self.tree.xattrs(node)

    async def getxattr(self, node: Directory | FileNode | ManifestFile, name: str) -> bytes | None:
        """One extended attribute (None when absent)."""
        if isinstance(node, AssetFile) and name.removeprefix(metadata.PREFIX) not in (
            "people",
            "tags",
            "albums",
        ):
            # no membership needed: answer without loading the collections
            return metadata.xattrs(node.asset).get(name)
        return (await self.xattrs(node)).get(name)

    # -- what an asset change touches (for the refresh task)

    def keys_for(self, asset: Asset) -> set[Key]:
        """Directories whose contents depend on ``asset`` in its present state
        (the catalog's :meth:`~immichfs.catalog.catalog.Catalog.query_keys_for` names
        the answers they are built from).

        Albums, people and tags are not known from the asset alone: they are
        found by scanning cached listings (and by the album list's ``updatedAt``).
        """
        keys: set[Key] = set()
        if asset.is_trashed:
            keys.add(TRASH_KEY)
            return keys
        if asset.visibility == "archive":
            keys.add(ARCHIVE_KEY)
            return keys
        if asset.visibility != "timeline":
            return keys
        if asset.type == "IMAGE":
            keys.add(PHOTOS_KEY)
        elif asset.type == "VIDEO":
            keys.add(VIDEOS_KEY)
        keys.update(THUMBNAIL_KEYS)
        if asset.is_favorite:
            keys.add(FAVORITES_KEY)
        day = local_day(asset)
        keys.update(
            {
                BY_DATE_KEY,
                ("date", day.year),
                ("date", day.year, day.month),
                ("date", day.year, day.month, day.day),
            }
        )
        return keys


def _most_specific(values: Iterable[str]) -> tuple[str, ...]:
    """Tag paths without those that are an ancestor of another (search includes descendants)."""
    unique = sorted(set(values))
    return tuple(v for v in unique if not any(o.startswith(v + "/") for o in unique))


class ViewsExtension:
    """The views' virtual files (``.manifest.jsonl``) and extended attributes, as the
    tree's :class:`~immichfs.vfs.tree.TreeExtension`.

    ``refresh``, when given, runs a refresh at once: reading the root's
    ``user.immichfs.refresh`` attribute calls it and answers its summary as JSON.
    """

    def __init__(self, views: Views, refresh: RefreshHook | None = None) -> None:
        self.views = views
        self.refresh = refresh
        self._last_refresh: tuple[float, bytes] | None = None

    def node(self, key: Key) -> VirtualFile | None:
        return self.views.virtual_node(key)

    def lookup(self, directory: Directory, name: str) -> VirtualFile | None:
        return self.views.manifest(directory, name)

    async def xattrs(self, node: Node) -> Mapping[str, bytes]:
        return await self.views.xattrs(node)  # type: ignore[arg-type]

    async def getxattr(self, node: Node, name: str) -> bytes | None:
        if name == REFRESH_XATTR and isinstance(node, Directory) and node.key == ROOT_KEY:
            if self.refresh is None:
                return None
            last = self._last_refresh
            if last is not None and trio.current_time() - last[0] < REFRESH_COALESCE:
                # getfattr asks twice (size, then value): one refresh serves both
                return last[1]
            summary = await self.refresh()
            value = json.dumps(dict(summary), sort_keys=True).encode("utf-8")
            self._last_refresh = (trio.current_time(), value)
            return value
        return await self.views.getxattr(node, name)  # type: ignore[arg-type]


def install_views(tree: Tree, options: ViewOptions | None = None) -> Views:
    """Add ``/albums``, ``/people``, ``/tags``, ``/by-date``, ``/favorites`` and ``/archive``.

    ``/trash`` is the tree's own (``show_trash``). The views' virtual files and
    extended attributes are added by the caller (:class:`ViewsExtension`), which
    may hand them the refresh task.
    """
    views = Views(tree, options or ViewOptions())
    catalog = tree.catalog
    tree.add_view("albums", lambda key: AlbumsDirectory(views, key))
    tree.add_view("people", lambda key: PeopleDirectory(views, key))
    tree.add_view("tags", lambda key: TagsDirectory(views, key))
    tree.add_view("by-date", lambda key: ByDateDirectory(views, key))
    tree.add_view("favorites", lambda key: AssetDirectory(tree, key, ROOT_KEY, catalog.favorites))
    tree.add_view("archive", lambda key: AssetDirectory(tree, key, ROOT_KEY, catalog.archive))
    for kind in ("album", "person", "tag", "date"):
        tree.add_resolver(kind, views.resolve)
    log.debug("views installed: %s", options)
    return views


__all__ = [
    "MANIFEST_NAME",
    "REFRESH_XATTR",
    "ManifestFile",
    "ViewOptions",
    "Views",
    "ViewsExtension",
    "install_views",
]
