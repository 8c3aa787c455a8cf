"""``immich://``: the immichfs tree as an fsspec filesystem.

The same tree as the mount (:func:`immichfs.compose.build_tree`): the same
paths, names, sizes, times and views, so ``immich://photos/IMG_0001.JPG`` is
the mount's ``photos/IMG_0001.JPG``. Paths have no leading slash; the root is
``""``. The tree runs on a trio loop in a thread of its own
(:mod:`immichfs.fsspec.loop`), shared by every instance with the same settings
in a process.

Settings come from the options table like the mount's: keyword arguments (any
option by name: ``url=``, ``api_key_file=``, ``listing_ttl=`` ...; ``config=``
names a TOML file), then the environment (``IMMICH_URL``, ``IMMICH_API_KEY``,
...), then the config file. An instance pickles as the arguments it was given
(fsspec's ``storage_options``), never as resolved settings: a key read from the
environment or a file is read again on the Dask worker, not shipped.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import trio
from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

from immichfs import options as config
from immichfs.catalog.reader import AssetReader
from immichfs.compose import open_tree
from immichfs.errors import (
    AuthenticationError,
    ConfigError,
    ImmichfsError,
    NotFound,
    PermissionDenied,
)
from immichfs.fsspec.loop import TrioThread, session
from immichfs.logs import register_secret
from immichfs.vfs.tree import (
    ROOT_KEY,
    AssetFile,
    Attributes,
    Directory,
    Key,
    Node,
    OpenFile,
    ThumbnailFile,
    Tree,
)

log = logging.getLogger(__name__)

R = TypeVar("R")

#: fsspec's own storage options (listings cache): accepted and ignored, the tree caches
_FSSPEC_OPTIONS = ("use_listings_cache", "listings_expiry_time", "max_paths")
#: attribute lookups of a listing in flight at once (entries whose size is not known yet)
_ATTRIBUTE_CONCURRENCY = 16


def _read_only(path: str) -> OSError:
    return OSError(errno.EROFS, "immich:// is read-only", path)


@contextmanager
def _as_os_errors(path: str) -> Iterator[None]:
    """immichfs errors as the OSError subclasses fsspec callers expect (cause kept)."""
    try:
        yield
    except NotFound as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc), path) from exc
    except (AuthenticationError, PermissionDenied) as exc:
        raise PermissionError(errno.EACCES, str(exc), path) from exc
    except ConfigError:
        raise
    except ImmichfsError as exc:
        raise OSError(errno.EIO, str(exc), path) from exc


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


#: a name missing from a cached listing is looked for in a reloaded one at most this often
#: per directory (seconds)
RELOOK_INTERVAL = 1.0
_relooked: weakref.WeakKeyDictionary[Tree, dict[Key, float]] = weakref.WeakKeyDictionary()


async def _resolve(tree: Tree, path: str) -> Node:
    """The node at ``path`` (no leading slash), looked up name by name as the kernel does."""
    node: Node = await tree.node(ROOT_KEY)
    for part in _parts(path):
        if not isinstance(node, Directory):
            raise NotFound(f"{path}: {part!r} is inside a file")
        directory = node
        try:
            node = await tree.lookup(directory.key, part)
        except NotFound:
            node = await _lookup_again(tree, directory, part)
    return node


async def _lookup_again(tree: Tree, directory: Directory, name: str) -> Node:
    """Look ``name`` up in a reloaded listing of ``directory``.

    A path is often listed in one process and opened in another (a Dask driver
    and its workers): the worker's listing may be older than the upload the
    driver saw. So a miss in a cached listing reloads it, at most once per
    :data:`RELOOK_INTERVAL` per directory (a miss meanwhile looks at the listing
    being reloaded), rather than failing until the listing TTL runs out.
    """
    if directory.cached_listing() is None:
        raise NotFound(f"no entry {name!r}")  # just loaded: nothing fresher to ask
    now = trio.current_time()
    times = _relooked.setdefault(tree, {})
    if now - times.get(directory.key, -math.inf) >= RELOOK_INTERVAL:
        times[directory.key] = now
        # the listing is built from the catalog's answers: both are asked again (other
        # listings stay cached; they ask the catalog again only when they expire)
        tree.cache.queries.clear()
        tree.cache.listings.pop(directory.key)
    return await tree.lookup(directory.key, name)


def _entry(tree: Tree, path: str, node: Node, attributes: Attributes) -> dict[str, Any]:
    """fsspec's info dict for ``node``: name, size, type, times, and Immich's identity."""
    entry: dict[str, Any] = {
        "name": path,
        "size": attributes.size,
        "type": "directory" if attributes.is_dir else "file",
        "mtime": attributes.mtime.timestamp(),
        "created": attributes.ctime.timestamp(),
    }
    if isinstance(node, AssetFile | ThumbnailFile):
        asset = node.asset
        entry["asset_id"] = asset.id
        entry["asset_type"] = asset.type
        if isinstance(node, AssetFile):
            if tree.catalog.serves_edited(asset):
                # the bytes are the edit's; Immich's checksum is the original's SHA-1
                entry["edited"] = True
                entry["original_checksum"] = asset.checksum
            else:
                entry["checksum"] = asset.checksum
            if asset.original_mime_type:
                entry["mimetype"] = asset.original_mime_type
        else:
            entry["thumbnail_size"] = node.size
    return entry


async def _info(tree: Tree, path: str) -> dict[str, Any]:
    node = await _resolve(tree, path)
    return _entry(tree, path, node, await tree.attributes(node))


async def _ls(tree: Tree, path: str, detail: bool) -> list[dict[str, Any]]:
    node = await _resolve(tree, path)
    if not isinstance(node, Directory):
        return [_entry(tree, path, node, await tree.attributes(node))]
    listing = await tree.listdir(node.key)
    prefix = f"{path}/" if path else ""
    if not detail:
        return [{"name": prefix + name} for name, _ in listing.entries]
    attributes = [tree.cached_attributes(child) for _, child in listing.entries]
    unknown = [i for i, known in enumerate(attributes) if not known.size_known]
    if unknown:
        # what stat on the mount would learn (a HEAD, a thumbnail's size), a few at a time
        limiter = trio.CapacityLimiter(_ATTRIBUTE_CONCURRENCY)

        async def exact(index: int) -> None:
            async with limiter:
                attributes[index] = await tree.attributes(listing.entries[index][1])

        async with trio.open_nursery() as nursery:
            for index in unknown:
                nursery.start_soon(exact, index)
    return [
        _entry(tree, prefix + name, child, attrs)
        for (name, child), attrs in zip(listing.entries, attributes, strict=True)
    ]


async def _open(tree: Tree, path: str) -> tuple[dict[str, Any], OpenFile]:
    node = await _resolve(tree, path)
    if isinstance(node, Directory):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    entry = _entry(tree, path, node, await tree.attributes(node))
    return entry, await tree.open(node)


async def _cat(tree: Tree, path: str, start: int | None, end: int | None) -> bytes:
    node = await _resolve(tree, path)
    if isinstance(node, Directory):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    size = (await tree.attributes(node)).size
    first = 0 if start is None else (max(0, size + start) if start < 0 else start)
    last = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    if first >= last:
        return b""
    handle = await tree.open(node)
    try:
        if isinstance(handle, AssetReader):
            # one ranged GET of exactly these bytes, no read-ahead beyond them
            return await handle.read(first, last - first, exact=True)
        return await handle.read(first, last - first)
    finally:
        await handle.aclose()


async def _read(tree: Tree, handle: OpenFile, offset: int, size: int) -> bytes:
    return await handle.read(offset, size)


async def _close(tree: Tree, handle: OpenFile) -> None:
    await handle.aclose()


async def _xattrs(tree: Tree, path: str) -> dict[str, bytes]:
    node = await _resolve(tree, path)
    values: dict[str, bytes] = {}
    for name in await tree.listxattr(node):
        value = await tree.getxattr(node, name)
        if value is not None:
            values[name] = value
    return values


async def _forget_listings(tree: Tree) -> None:
    # listings, the catalog's asset lists and collection lists (albums, people, tags,
    # buckets); single assets keep their TTL
    tree.cache.listings.clear()
    tree.cache.queries.clear()
    tree.cache.misc.clear()


class ImmichFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """An Immich library as a read-only fsspec filesystem (protocol ``immich``).

    ``fsspec.filesystem("immich")`` reads ``IMMICH_URL`` and ``IMMICH_API_KEY``
    (or ``IMMICH_API_KEY_FILE``); keyword arguments override any option of the
    options table (``url=``, ``api_key_file=``, ``config=`` for a TOML file ...).
    """

    protocol = "immich"
    root_marker = ""

    def __init__(
        self,
        url: str | None = None,
        api_key_file: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        if getattr(self, "_cached", False):
            return
        super().__init__()
        for name in _FSSPEC_OPTIONS:
            options.pop(name, None)
        overrides = {"url": url, "api_key_file": api_key_file, **options}
        settings = config_settings(overrides, config)
        if not settings.url:
            raise ConfigError(
                "immich:// needs the server: set IMMICH_URL or pass url= "
                "(e.g. http://immich.local:2283)"
            )
        if not settings.api_key:
            raise ConfigError(
                "immich:// needs an API key: set IMMICH_API_KEY or IMMICH_API_KEY_FILE, "
                "or pass api_key_file="
            )
        register_secret(settings.api_key)
        self.settings = settings
        self.url = settings.url

    def __repr__(self) -> str:
        return f"<ImmichFileSystem {self.url}>"

    __str__ = __repr__

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``immich://photos/a.jpg``, ``/photos/a.jpg``, ``photos/a.jpg/``: ``photos/a.jpg``."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        stripped: str = super()._strip_protocol(path)
        return stripped.strip("/")

    # -- the loop

    def _session(self) -> TrioThread[Tree]:
        settings = self.settings
        return session(settings, lambda: open_tree(settings), "immichfs-fsspec")

    def _call(self, path: str, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        with _as_os_errors(path):
            return self._session().run(fn, *args)

    # -- reading

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        entries = self._call(path, _ls, path, detail)
        return entries if detail else [entry["name"] for entry in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._call(path, _info, path)

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """The file's bytes ``[start, end)``: one ranged GET of exactly those bytes."""
        path = self._strip_protocol(path)
        return self._call(path, _cat, path, start, end)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ImmichFile:
        if mode != "rb":
            raise _read_only(path)
        return ImmichFile(self, path, block_size=block_size, cache_options=cache_options, **kwargs)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], UTC)

    def created(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["created"], UTC)

    def ukey(self, path: str) -> str:
        """An asset's checksum (its bytes' identity); other nodes as fsspec does."""
        info = self.info(path)
        checksum = info.get("checksum")
        return str(checksum) if checksum else str(super().ukey(path))

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes the mount shows (``user.immich.id``, ``.albums`` ...)."""
        path = self._strip_protocol(path)
        return self._call(path, _xattrs, path)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget every listing (whatever ``path``): the next ``ls`` asks the server."""
        self._call(path or "", _forget_listings)

    # -- handles of ImmichFile: each stays on the loop it was opened on

    def _open_handle(self, path: str) -> tuple[TrioThread[Tree], dict[str, Any], OpenFile]:
        loop = self._session()
        with _as_os_errors(path):
            details, handle = loop.run(_open, path)
        return loop, details, handle

    @staticmethod
    def _read_handle(
        loop: TrioThread[Tree], path: str, handle: OpenFile, offset: int, size: int
    ) -> bytes:
        with _as_os_errors(path):
            return loop.run(_read, handle, offset, size)

    @staticmethod
    def _close_handle(loop: TrioThread[Tree], handle: OpenFile) -> None:
        if not loop.closed:  # a closed loop closed its readers with it
            loop.run(_close, handle)

    # -- writing: never

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        raise _read_only(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        raise _read_only(path)

    def rmdir(self, path: str) -> None:
        raise _read_only(path)

    def rm_file(self, path: str) -> None:
        raise _read_only(path)

    def _rm(self, path: str) -> None:
        raise _read_only(path)

    def rm(
        self, path: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any
    ) -> None:
        raise _read_only(str(path))

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        raise _read_only(path2)

    def mv(self, path1: str, path2: str, **kwargs: Any) -> None:
        raise _read_only(str(path1))

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        raise _read_only(rpath)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        raise _read_only(path)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        raise _read_only(path)


def config_settings(
    overrides: Mapping[str, Any], config_path: str | os.PathLike[str] | None = None
) -> config.Settings:
    """Settings as the mount resolves them, with ``overrides`` (arguments) first."""
    return config.load_settings(
        env=os.environ,
        config_path=Path(config_path) if config_path is not None else None,
        overrides=overrides,
    )


class ImmichFile(AbstractBufferedFile):  # type: ignore[misc]  # fsspec is untyped
    """A seekable read-only file: fsspec's block cache over an open tree handle.

    Behind the cache, an original's handle is the tree's
    :class:`~immichfs.catalog.reader.AssetReader`, which reads ahead of a
    sequential reader in the background (as on the mount).
    """

    DEFAULT_BLOCK_SIZE = 1024 * 1024

    def __init__(
        self,
        fs: ImmichFileSystem,
        path: str,
        block_size: int | None = None,
        cache_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        path = fs._strip_protocol(path)
        self._loop, details, handle = fs._open_handle(path)
        self._handle: OpenFile | None = handle
        self._details = details
        try:
            super().__init__(
                fs,
                path,
                mode="rb",
                block_size=block_size,
                cache_options=dict(cache_options or {}),
                size=details["size"],
                **kwargs,
            )
        except BaseException:
            fs._close_handle(self._loop, handle)
            raise

    def _fetch_range(self, start: int, end: int) -> bytes:
        if self._handle is None:
            raise ValueError("I/O operation on closed file.")
        return ImmichFileSystem._read_handle(
            self._loop, self.path, self._handle, start, end - start
        )

    def close(self) -> None:
        if getattr(self, "closed", True):
            return
        try:
            super().close()
        finally:
            handle, self._handle = self._handle, None
            if handle is not None:
                try:
                    ImmichFileSystem._close_handle(self._loop, handle)
                except Exception:  # at exit the loop may be gone: nothing is left open then
                    log.debug("closing %s failed", self.path, exc_info=True)
