"""The virtual directory tree: what paths exist and what they contain.

Pure of FUSE: this module speaks of nodes, names and :class:`Attributes`; the
adapter in ``fs`` turns them into inodes and ``EntryAttributes``. The tree is

    /photos/                 image assets of the timeline (not archived, not trashed)
    /videos/                 video assets likewise
    /thumbs/preview/         each asset of /photos and /videos as its preview image
    /thumbs/thumbnail/       ... as its small thumbnail
    /search/<query>/         assets matching <query> (created by looking the name up)
    /trash/                  trashed assets (only with ``show_trash``)

With ``sidecars`` every directory of assets also lists ``NAME.xmp`` beside each
asset ``NAME`` that has an XMP sidecar in Immich (:class:`SidecarFile`).

Every directory is a :class:`Directory` with a stable key; a new view (albums,
people, by-date, ...) is one more ``Directory`` subclass registered with
:meth:`Tree.add_view` and, if its directories are created on demand, a key
resolver (:meth:`Tree.add_resolver`) — the adapter needs no change.

Every asset is the node :class:`AssetFile` keyed ``("asset", id)`` wherever it
appears, so it has one inode in all views. Everything about the library comes
from the :class:`~immichfs.catalog.catalog.Catalog` (no HTTP here); a listing
is built from a catalog answer, kept in the catalog's listing cache and rebuilt
whenever the catalog answers anew, so it is never older than the answer.
"""

from __future__ import annotations

import logging
import mimetypes
import operator
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol, Union, runtime_checkable

from immichfs.catalog.cache import MetadataCache
from immichfs.catalog.catalog import Catalog, cyclic_gc_paused
from immichfs.catalog.content import CachedSource
from immichfs.catalog.reader import ReaderPool
from immichfs.catalog.store import NamedAssets
from immichfs.errors import ImmichError, NotFound, PermissionDenied, UnsupportedVersion
from immichfs.model import Asset
from immichfs.vfs.names import NameRequest, assign_names, clean, split_extension

log = logging.getLogger(__name__)

Key = Hashable
ROOT_KEY: Key = ("dir", "/")

THUMBNAIL_SIZES = ("preview", "thumbnail")
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/png": ".png",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/gif": ".gif",
    "image/jxl": ".jxl",
}


def extension_for(content_type: str) -> str:
    """File extension (with dot) for a thumbnail's Content-Type."""
    base = content_type.split(";")[0].strip().lower()
    return _EXTENSIONS.get(base) or mimetypes.guess_extension(base) or ".bin"


class OpenFile(Protocol):
    """An open file's bytes (``AssetReader`` is one)."""

    async def read(self, offset: int, size: int) -> bytes: ...

    async def aclose(self) -> None: ...


class BytesFile:
    """A small file held in memory for one open handle (thumbnails)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + max(size, 0)] if offset >= 0 else b""

    async def aclose(self) -> None:
        self.data = b""


# -- nodes ---------------------------------------------------------------------


@dataclass(frozen=True)
class AssetFile:
    """An asset's original bytes."""

    asset: Asset

    @property
    def key(self) -> Key:
        return ("asset", self.asset.id)


@dataclass(frozen=True)
class ThumbnailFile:
    """A rendition of an asset (``size`` is Immich's thumbnail size name)."""

    asset: Asset
    size: str

    @property
    def key(self) -> Key:
        return ("thumbnail", self.size, self.asset.id)


@dataclass(frozen=True)
class SidecarFile:
    """An asset's XMP sidecar (Immich's asset files API), its exact bytes."""

    asset: Asset
    file_id: str

    @property
    def key(self) -> Key:
        return ("sidecar", self.asset.id)


#: what a sidecar's name adds to its asset's
SIDECAR_SUFFIX = ".xmp"

FileNode = AssetFile | ThumbnailFile | SidecarFile


class VirtualFile(Protocol):
    """A file a view makes up (a manifest, a report): it knows its own attributes and
    bytes. It is found by name through an extension's ``lookup`` and by key through
    its ``node``; it is never a listing entry."""

    @property
    def key(self) -> Key: ...

    async def attributes(self) -> Attributes: ...

    async def open(self) -> OpenFile: ...


Node = Union["Directory", AssetFile, ThumbnailFile, SidecarFile, VirtualFile]


class TreeExtension(Protocol):
    """Hooks a set of views adds to the tree (:meth:`Tree.add_extension`).

    ``node`` and ``lookup`` return None for what is not theirs; the first
    extension to answer wins. ``lookup`` may also answer a hidden directory
    (``/.immichfs``), which ``Tree.directory`` must then find by its key (a
    resolver). ``xattrs``/``getxattr`` replace the tree's own
    extended attributes for every node (the last extension added that has them
    decides); ``getxattr`` answers None for an absent attribute.
    """

    def node(self, key: Key) -> VirtualFile | None: ...

    def lookup(self, directory: Directory, name: str) -> Directory | VirtualFile | None: ...


@runtime_checkable
class XattrProvider(Protocol):
    async def xattrs(self, node: Node) -> Mapping[str, bytes]: ...

    async def getxattr(self, node: Node, name: str) -> bytes | None: ...


#: what entries are sorted by: their names (unique in a listing)
_entry_name = operator.itemgetter(0)


@dataclass(frozen=True)
class Listing:
    """A directory's entries, sorted by name, with a name index."""

    entries: tuple[tuple[str, Directory | FileNode], ...]
    newest: datetime | None = None
    #: the catalog answer it was built from (None: none)
    assets: Sequence[Asset] | None = field(default=None, repr=False, compare=False)
    index: dict[str, Directory | FileNode] = field(init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        items: Mapping[str, Directory | FileNode],
        newest: datetime | None = None,
        assets: Sequence[Asset] | None = None,
    ) -> Listing:
        return cls(tuple(sorted(items.items(), key=_entry_name)), newest, assets)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", dict(self.entries))

    def get(self, name: str) -> Directory | FileNode | None:
        return self.index.get(name)

    def __len__(self) -> int:
        return len(self.entries)


class Attributes(NamedTuple):
    """What ``stat`` shows, without inode numbers or owners.

    A named tuple, not a frozen dataclass: readdir builds one per entry, and a
    frozen dataclass's ``__init__`` cost four times as much.
    """

    is_dir: bool
    size: int
    mtime: datetime
    ctime: datetime
    nlink: int = 1
    #: False when the size is not known yet (the adapter then lets the kernel
    #: ask again at once instead of caching 0)
    size_known: bool = True


def asset_order(asset: Asset) -> datetime:
    """Who keeps the bare name among duplicates: the first uploaded (then by id:
    :func:`~immichfs.vfs.names.assign_names` ranks by order, then by the ident,
    which is the asset's id; no tuple is built per asset of a listing).

    Upload time (``createdAt``) is used when the server sends it (v1.140+), so a
    new upload never renames an existing file; older servers fall back to the
    capture time.
    """
    return asset.created_at or asset.file_created_at


def name_assets(assets: Sequence[Asset], reserved: Sequence[str] = ()) -> dict[str, str]:
    """asset id → unique file name within one directory."""
    return assign_names(
        (NameRequest(a.id, a.original_file_name, asset_order(a)) for a in assets), reserved
    )


def names_in_order(assets: Sequence[Asset]) -> list[str]:
    """The names a directory of only ``assets`` gives them, in their order (what the
    catalog saves with a listing: :class:`~immichfs.catalog.store.NamedAssets`)."""
    names = name_assets(assets)
    return [names[a.id] for a in assets]


def saved_names(assets: Sequence[Asset]) -> Sequence[str] | None:
    """The names saved with ``assets``, if it is a saved listing that has them."""
    return assets.names if isinstance(assets, NamedAssets) else None


# -- directories ----------------------------------------------------------------


class Directory(ABC):
    """A directory of the tree. Subclasses say what it lists."""

    def __init__(self, tree: Tree, key: Key, parent: Key) -> None:
        self.tree = tree
        self.key = key
        self.parent = parent

    @abstractmethod
    async def listing(self) -> Listing:
        """The entries now (from the cache when fresh)."""

    async def lookup(self, name: str) -> Directory | FileNode | None:
        return (await self.listing()).get(name)

    def cached_listing(self) -> Listing | None:
        """The listing if cached; never loads (``stat`` of a directory must be cheap)."""
        return None

    def subdirectories(self) -> int:
        """How many subdirectories are known (for ``st_nlink``), without loading."""
        return 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r}>"


class StaticDirectory(Directory):
    """A directory with a fixed set of subdirectories (the root, /thumbs)."""

    def __init__(self, tree: Tree, key: Key, parent: Key) -> None:
        super().__init__(tree, key, parent)
        self.children: dict[str, Directory] = {}

    async def listing(self) -> Listing:
        return Listing.build(dict(self.children))

    def cached_listing(self) -> Listing | None:
        return Listing.build(dict(self.children))

    def subdirectories(self) -> int:
        return len(self.children)


AssetLoader = Callable[[], Awaitable[Sequence[Asset]]]


def asset_listing(
    assets: Sequence[Asset],
    directories: Mapping[str, Directory] | None = None,
    *,
    answer: Sequence[Asset] | None = None,
) -> Listing:
    """A listing of ``assets`` (each once) beside ``directories``; ``answer`` is the
    catalog answer they were taken from (default: ``assets`` themselves)."""
    directories = directories or {}
    answer = assets if answer is None else answer
    with cyclic_gc_paused():
        newest = max((a.file_modified_at for a in assets), default=None)
        # saved names are those of the assets alone: good when nothing else is listed
        saved = saved_names(assets) if not directories else None
        if saved is not None:
            entries = sorted(zip(saved, map(AssetFile, assets), strict=True), key=_entry_name)
            listing = Listing(tuple(entries), newest, answer)
            if len(listing.index) == len(assets):  # each name once (unless damaged)
                return listing
        items: dict[str, Directory | FileNode] = dict(directories)
        names = name_assets(assets, reserved=list(directories))
        for asset in assets:
            items[names[asset.id]] = AssetFile(asset)
        return Listing.build(items, newest, answer)


async def derived_listing(
    directory: Directory, assets: Sequence[Asset], build: Callable[[], Listing]
) -> Listing:
    """``directory``'s cached listing if it was built from ``assets`` (the catalog's
    current answer), else ``build()``, cached."""
    listings = directory.tree.cache.listings

    async def load() -> Listing:
        return build()

    listing: Listing = await listings.get(directory.key, load)
    if listing.assets is not assets:  # built from an older answer
        listings.pop(directory.key)
        listing = await listings.get(directory.key, load)
    return listing


class AssetDirectory(Directory):
    """A flat directory of the assets a catalog query answers (timeline type, search, ...)."""

    def __init__(self, tree: Tree, key: Key, parent: Key, load: AssetLoader) -> None:
        super().__init__(tree, key, parent)
        self._load_assets = load
        #: the listing last returned (every lookup comes here: one cache lookup, not two)
        self._last: Listing | None = None

    async def listing(self) -> Listing:
        assets = await self._load_assets()
        last = self._last
        if last is not None and last.assets is assets:
            return last
        self._last = last = await derived_listing(self, assets, lambda: asset_listing(assets))
        return last

    def cached_listing(self) -> Listing | None:
        listing: Listing | None = self.tree.cache.listings.peek(self.key)
        return listing


class ThumbnailDirectory(Directory):
    """Renditions of the assets of ``sources``, named ``<stem>.<served format>``.

    The format of a size is the server's setting, the same for every asset, so it
    is learned from the Content-Type of one thumbnail and cached; it names every
    entry. The listing is derived from the sources' listings (and rebuilt only
    when one of them was reloaded), so it is exactly as fresh as they are.
    """

    def __init__(
        self, tree: Tree, key: Key, parent: Key, size: str, sources: Sequence[AssetDirectory]
    ) -> None:
        super().__init__(tree, key, parent)
        self.size = size
        self.sources = tuple(sources)
        #: (source listings, content type) the current listing was built from
        self._built: tuple[tuple[Listing, ...], str, Listing] | None = None

    async def listing(self) -> Listing:
        listings = tuple([await source.listing() for source in self.sources])
        built = self._built
        if (
            built is not None
            and built[1] == self.tree.catalog.known_thumbnail_type(self.size)
            and all(a is b for a, b in zip(built[0], listings, strict=True))
        ):
            return built[2]  # every lookup comes here: no work per entry
        assets: dict[str, Asset] = {}
        for listing in listings:
            for _, node in listing.entries:
                if isinstance(node, AssetFile):
                    assets.setdefault(node.asset.id, node.asset)
        content_type = await self.tree.catalog.thumbnail_type(self.size, list(assets.values()))
        extension = extension_for(content_type)
        requests = []
        for asset in assets.values():
            stem, _ = split_extension(clean(asset.original_file_name, asset.id))
            requests.append(NameRequest(asset.id, stem + extension, asset_order(asset)))
        names = assign_names(requests)
        newest = max((a.file_modified_at for a in assets.values()), default=None)
        result = Listing.build(
            {names[i]: ThumbnailFile(a, self.size) for i, a in assets.items()}, newest
        )
        self._built = (listings, content_type, result)
        return result

    def cached_listing(self) -> Listing | None:
        return self._built[2] if self._built is not None else None


class SearchDirectory(Directory):
    """``/search``: looking up a name runs that search and makes it a directory.

    Names starting with ``.`` are not searches: tools probe for ``.git``,
    ``.Trash`` or ``.hidden`` in every directory they visit. The most recent
    ``max_queries`` queries are listed.
    """

    def __init__(self, tree: Tree, key: Key, parent: Key, max_queries: int = 256) -> None:
        super().__init__(tree, key, parent)
        self.max_queries = max_queries
        self._queries: OrderedDict[str, AssetDirectory] = OrderedDict()

    def query_directory(self, query: str, *, remember: bool = True) -> AssetDirectory:
        directory = self._queries.get(query)
        if directory is None:
            directory = AssetDirectory(
                self.tree, ("search", query), self.key, lambda: self.tree.catalog.search(query)
            )
        if remember:
            self._queries[query] = directory
            self._queries.move_to_end(query)
            while len(self._queries) > self.max_queries:
                self._queries.popitem(last=False)
        return directory

    async def lookup(self, name: str) -> Directory | FileNode | None:
        if not name or name.startswith("."):
            return None
        directory = self.query_directory(name)
        await directory.listing()  # the search runs now (then cached for the listing TTL)
        return directory

    async def listing(self) -> Listing:
        return Listing.build(dict(self._queries))

    def cached_listing(self) -> Listing | None:
        return Listing.build(dict(self._queries))

    def subdirectories(self) -> int:
        return len(self._queries)


# -- the tree --------------------------------------------------------------------


@dataclass(frozen=True)
class TreeSettings:
    #: searches listed in ``/search`` (each lookup of a name there runs one)
    max_search_queries: int = 256
    show_trash: bool = False
    #: list each asset's XMP sidecar beside it (``NAME.xmp``; Immich 3.2+)
    sidecars: bool = False


class Tree:
    """The whole view of one Immich library, plus how to read its files."""

    def __init__(
        self,
        catalog: Catalog,
        readers: ReaderPool,
        settings: TreeSettings | None = None,
        *,
        content: CachedSource | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.catalog = catalog
        catalog.namer = names_in_order  # saved with the listings: see asset_listing
        self.readers = readers
        #: the content cache's side of the byte path (None: every read goes to the server)
        self.content = content
        self.settings = settings or TreeSettings()
        self.mounted_at = now()
        self._directories: dict[Key, Directory] = {}
        self._resolvers: dict[str, Callable[[Key], Directory | None]] = {}
        self._extensions: list[TreeExtension] = []
        self._xattr_provider: XattrProvider | None = None
        self._sidecars_denied = False
        self.root = StaticDirectory(self, ROOT_KEY, ROOT_KEY)
        self._register(self.root)

        photos = self.add_view(
            "photos",
            lambda key: AssetDirectory(self, key, ROOT_KEY, lambda: catalog.timeline("IMAGE")),
        )
        videos = self.add_view(
            "videos",
            lambda key: AssetDirectory(self, key, ROOT_KEY, lambda: catalog.timeline("VIDEO")),
        )
        assert isinstance(photos, AssetDirectory) and isinstance(videos, AssetDirectory)
        thumbs = self.add_view("thumbs", lambda key: StaticDirectory(self, key, ROOT_KEY))
        assert isinstance(thumbs, StaticDirectory)
        for size in THUMBNAIL_SIZES:
            child = ThumbnailDirectory(
                self, ("dir", "thumbs", size), thumbs.key, size, [photos, videos]
            )
            thumbs.children[size] = child
            self._register(child)
        if self.settings.show_trash:
            self.add_view("trash", lambda key: AssetDirectory(self, key, ROOT_KEY, catalog.trash))
        search = self.add_view(
            "search",
            lambda key: SearchDirectory(self, key, ROOT_KEY, self.settings.max_search_queries),
        )
        assert isinstance(search, SearchDirectory)
        self.add_resolver(
            "search",
            lambda key: (
                search.query_directory(str(key[1]), remember=False)
                if isinstance(key, tuple) and len(key) == 2
                else None
            ),
        )

    @property
    def cache(self) -> MetadataCache:
        """The catalog's caches (listings are kept there too)."""
        return self.catalog.cache

    # -- structure

    def add_view(self, name: str, make: Callable[[Key], Directory]) -> Directory:
        """Add a top-level directory ``/name`` made by ``make(key)``."""
        directory = make(("dir", name))
        self.root.children[name] = directory
        self._register(directory)
        return directory

    def add_resolver(self, kind: str, resolve: Callable[[Key], Directory | None]) -> None:
        """Directories keyed ``(kind, ...)`` that are created on demand are found via this."""
        self._resolvers[kind] = resolve

    def add_extension(self, extension: TreeExtension) -> None:
        """Virtual files (and, if it has ``xattrs``/``getxattr``, extended attributes)."""
        self._extensions.append(extension)
        if isinstance(extension, XattrProvider):
            self._xattr_provider = extension

    def _register(self, directory: Directory) -> None:
        self._directories[directory.key] = directory

    def directory(self, key: Key) -> Directory | None:
        found = self._directories.get(key)
        if found is None and isinstance(key, tuple) and key and isinstance(key[0], str):
            resolver = self._resolvers.get(key[0])
            if resolver is not None:
                found = resolver(key)
        return found

    async def node(self, key: Key) -> Node:
        """The node behind ``key`` (an inode's key); NotFound if it is gone."""
        directory = self.directory(key)
        if directory is not None:
            return directory
        if isinstance(key, tuple) and len(key) >= 2:
            if key[0] == "asset":
                return AssetFile(await self.catalog.asset(str(key[1])))
            if key[0] == "thumbnail" and len(key) == 3:
                return ThumbnailFile(await self.catalog.asset(str(key[2])), str(key[1]))
            if key[0] == "sidecar" and self.settings.sidecars:
                asset = await self.catalog.asset(str(key[1]))
                file_id = await self.catalog.sidecar(asset)
                if file_id is not None:
                    return SidecarFile(asset, file_id)
        for extension in self._extensions:
            virtual = extension.node(key)
            if virtual is not None:
                return virtual
        raise NotFound(f"no node {key!r}")

    async def lookup(self, directory_key: Key, name: str) -> Node:
        directory = self.directory(directory_key)
        if directory is None:
            raise NotFound(f"no directory {directory_key!r}")
        node: Node | None = await directory.lookup(name)
        if (
            node is None
            and self.settings.sidecars
            and not self._sidecars_denied
            and name.endswith(SIDECAR_SUFFIX)
        ):
            node = await self._sidecar_of(directory, name.removesuffix(SIDECAR_SUFFIX))
        for extension in self._extensions:
            if node is not None:
                break
            node = extension.lookup(directory, name)
        if node is None:
            raise NotFound(f"no entry {name!r}")
        return node

    async def listdir(self, directory_key: Key) -> Listing:
        directory = self.directory(directory_key)
        if directory is None:
            raise NotFound(f"no directory {directory_key!r}")
        listing = await directory.listing()
        if self.settings.sidecars and listing.assets and not self._sidecars_denied:
            try:
                return await self._with_sidecars(directory, listing)
            except (PermissionDenied, UnsupportedVersion) as exc:
                # UnsupportedVersion: a tree built before the server's version was known
                self._no_sidecars(exc)
            except ImmichError as exc:
                # the files are listed all the same; the next listing asks again
                log.warning("sidecars of %s not listed this time: %s", directory.key, exc)
        return listing

    # -- sidecars

    async def _sidecar_of(self, directory: Directory, name: str) -> SidecarFile | None:
        """The sidecar of the asset file ``name`` in ``directory``, if it has one."""
        node = await directory.lookup(name)
        if not isinstance(node, AssetFile):
            return None
        try:
            file_id = await self.catalog.sidecar(node.asset)
        except (PermissionDenied, UnsupportedVersion) as exc:
            self._no_sidecars(exc)
            return None
        return None if file_id is None else SidecarFile(node.asset, file_id)

    def _no_sidecars(self, exc: PermissionDenied | UnsupportedVersion) -> None:
        """Sidecars are off from now on (the files are still listed), said once."""
        self._sidecars_denied = True
        if isinstance(exc, PermissionDenied):
            log.warning(
                "--sidecars: no NAME.xmp files are listed: the API key lacks %s (%s)",
                exc.permission or "assetFile.read",
                exc,
            )
        else:
            log.warning("--sidecars: no NAME.xmp files are listed: %s", exc)

    async def _with_sidecars(self, directory: Directory, listing: Listing) -> Listing:
        """``listing`` plus ``NAME.xmp`` for each asset with a sidecar, kept as long as
        ``listing`` is the directory's (each asset's sidecar is asked about once per
        version of the asset, however often the directory is listed)."""
        listings = self.cache.listings
        key = ("sidecars", directory.key)

        async def load() -> Listing:
            files = [(name, node) for name, node in listing.entries if type(node) is AssetFile]
            if not files:
                return listing  # renditions (thumbs/) have no sidecars beside them
            sidecars = await self.catalog.sidecars([node.asset for _, node in files])
            items: dict[str, Directory | FileNode] = dict(listing.entries)
            for name, node in files:
                file_id = sidecars.get(node.asset.id)
                if file_id is not None:
                    items.setdefault(name + SIDECAR_SUFFIX, SidecarFile(node.asset, file_id))
            return Listing.build(items, listing.newest, listing.assets)

        augmented: Listing = await listings.get(key, load)
        if augmented.assets is not listing.assets:  # built from an older answer
            listings.pop(key)
            augmented = await listings.get(key, load)
        return augmented

    # -- attributes

    def cached_attributes(self, node: Directory | FileNode) -> Attributes:
        """Attributes from what is known, with no request (for readdir)."""
        if type(node) is AssetFile:
            # nearly every readdir entry: checked first (an ABC isinstance costs more)
            known = node.asset
            if known.size is not None and known.is_edited is not True:
                return Attributes(False, known.size, known.file_modified_at, known.file_created_at)
        if isinstance(node, Directory):
            listing = node.cached_listing()
            newest = listing.newest if listing is not None and listing.newest else None
            when = newest or self.mounted_at
            return Attributes(True, 0, when, when, 2 + node.subdirectories())
        asset = node.asset
        size: int | None
        if isinstance(node, AssetFile):
            size = self.catalog.known_file_size(asset)
        elif isinstance(node, SidecarFile):
            size = self.catalog.known_sidecar_size(asset, node.file_id)
        else:
            info = self.catalog.known_thumbnail_info(asset.id, node.size)
            size = info[0] if info is not None else None
        return Attributes(
            False,
            size or 0,
            asset.file_modified_at,
            asset.file_created_at,
            1,
            size_known=size is not None,
        )

    async def attributes(self, node: Node) -> Attributes:
        """Exact attributes; may fetch a thumbnail or HEAD an original to learn a size."""
        if isinstance(node, AssetFile):
            if self.catalog.known_file_size(node.asset) is None:
                await self.catalog.file_size(node.asset)
        elif isinstance(node, ThumbnailFile):
            await self.catalog.thumbnail_info(node.asset.id, node.size)
        elif isinstance(node, SidecarFile):
            await self.catalog.sidecar_content(node.asset, node.file_id)
        elif not isinstance(node, Directory):
            return await node.attributes()
        return self.cached_attributes(node)

    async def listxattr(self, node: Node) -> list[str]:
        """Names of a node's extended attributes (an extension's, if one provides them)."""
        if self._xattr_provider is not None:
            return list(await self._xattr_provider.xattrs(node))
        return list(self.xattrs(node))

    async def getxattr(self, node: Node, name: str) -> bytes | None:
        """One extended attribute of a node, None when it has none of that name."""
        if self._xattr_provider is not None:
            return await self._xattr_provider.getxattr(node, name)
        return self.xattrs(node).get(name)

    def xattrs(self, node: Node) -> dict[str, bytes]:
        """The tree's own extended attributes (``user.immich.*``) of a node."""
        if not isinstance(node, AssetFile | ThumbnailFile):
            return {}  # a sidecar speaks for itself
        asset = node.asset
        values = {"user.immich.id": asset.id, "user.immich.type": asset.type}
        if isinstance(node, AssetFile):
            if asset.checksum:
                values["user.immich.checksum"] = asset.checksum
            if asset.is_edited is not None:
                values["user.immich.edited"] = "1" if asset.is_edited else "0"
        else:
            values["user.immich.thumbnail_size"] = node.size
        return {name: value.encode("utf-8") for name, value in values.items()}

    # -- bytes

    async def open(self, node: FileNode | VirtualFile) -> OpenFile:
        """An open handle on a file's bytes."""
        if isinstance(node, AssetFile):
            size = await self.catalog.file_size(node.asset)
            asset_id = node.asset.id
            if self.catalog.serves_edited(node.asset):
                return self.readers.open(asset_id, size, edited=True)
            if self.content is not None:
                return await self.content.open_file(asset_id, size, self.readers)
            return self.readers.open(asset_id, size)
        if isinstance(node, SidecarFile):
            return BytesFile(await self.catalog.sidecar_content(node.asset, node.file_id))
        if not isinstance(node, ThumbnailFile):
            return await node.open()
        thumbnail = await self.catalog.thumbnail(node.asset.id, node.size)
        return BytesFile(thumbnail.data)
