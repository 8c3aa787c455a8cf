"""The FUSE adapter: pyfuse3 ``Operations`` over the tree.

The only module that imports pyfuse3. Handlers are thin: decode the name, ask
the :class:`~immichfs.vfs.tree.Tree`, map the answer to ``EntryAttributes``. Every
handler runs inside :func:`_errno_guard`, the one place where errors become
errno values:

    NotFound                               ENOENT
    StaleAsset                             ESTALE
    AuthenticationError, PermissionDenied  EACCES (logged once at ERROR)
    any other ImmichfsError                EIO
    any other Exception                    EIO, with the traceback logged
    writes of any kind                     EROFS
    a name longer than 255 bytes           ENAMETOOLONG

pyfuse3 only catches ``FUSEError``: anything else would end the main loop and
leave a dead mount, hence the guard. ``BaseException`` (``trio.Cancelled``,
``KeyboardInterrupt``) is never caught.

Kernel caching: entry and attribute timeouts are ``kernel_ttl`` (short, never 0
— see the ``kernel_ttl`` option); an attribute whose size is not known yet gets
an attribute timeout of 0 so the kernel asks again (``getattr`` then learns it).
Files are opened with ``keep_cache`` while the asset's checksum is the one seen
at the previous open: the bytes of an uploaded asset are fixed by its checksum
(an edited rendition's by its edit's version: :meth:`Catalog.content_tag`).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3
import trio
from cachetools import LRUCache

from immichfs.catalog.catalog import cyclic_gc_paused
from immichfs.catalog.content import CachedFile
from immichfs.catalog.reader import AssetReader
from immichfs.errors import (
    AuthenticationError,
    ImmichfsError,
    NotFound,
    PermissionDenied,
    StaleAsset,
)
from immichfs.vfs.inodes import DirSnapshot, HandleTable, InodeTable
from immichfs.vfs.names import MAX_NAME_BYTES
from immichfs.vfs.tree import (
    ROOT_KEY,
    AssetFile,
    Attributes,
    Directory,
    FileNode,
    Key,
    Listing,
    Node,
    OpenFile,
    Tree,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: hint for readers (cp, Python's open) to read in large chunks; also FUSE's max read
BLOCK_SIZE = 1024 * 1024
#: open flags that would change the file (as on any read-only mount, O_APPEND and
#: O_CREAT of an existing file alone are no write)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC
_DIR_MODE = stat.S_IFDIR | 0o555
_FILE_MODE = stat.S_IFREG | 0o444
_EPOCH = datetime.fromtimestamp(0, UTC)
_NO_ATTRIBUTES = Attributes(False, 0, _EPOCH, _EPOCH)
ReaddirReply = Callable[[Any, bytes, pyfuse3.EntryAttributes, int], bool]


def _guarded(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run a handler inside ``Operations._errno_guard``."""

    name = method.__name__

    @functools.wraps(method)
    async def handler(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        assert isinstance(self, Operations)
        if log.isEnabledFor(logging.DEBUG):
            shown = ", ".join(repr(a)[:80] for a in args[1:] if isinstance(a, int | bytes))
            log.debug("%s(%s) started", name, shown)
        try:
            with self._errno_guard(name):
                return await method(*args, **kwargs)
        except pyfuse3.FUSEError as exc:
            self._count_error(exc)
            raise

    return handler


def _read_only() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


def _refusing(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """The handler ``name`` of a request that would write: EROFS, whatever it asks."""

    async def refuse(self: Operations, *args: Any) -> Any:
        raise _read_only()

    refuse.__name__ = refuse.__qualname__ = name
    return _guarded(refuse)


@dataclass(eq=False)
class _ReadyEntries:
    """readdir's replies for one listing's asset files, each built on first use.

    Building an entry (attributes, then a dozen fields set) is about two thirds
    of readdir's Python per entry; a listing and its nodes never change, so a
    warm ``ls -l`` of a large directory reuses them. They go when the listing is
    replaced (a reload) or the LRU drops them.
    """

    listing: Listing
    entries: list[pyfuse3.EntryAttributes | None]


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers for an immichfs tree.

    Attributes:
        tree: the views and data access (no FUSE inside)
        inodes: stable key ↔ inode mapping and kernel lookup counts
        files: open file handles → OpenFile (reader or bytes)
        dirs: open directory handles → DirSnapshot taken at opendir
        kernel_ttl: entry/attribute timeout handed to the kernel
        uid, gid: owner of every file
        readdir_reply: pyfuse3.readdir_reply, injectable for tests
        invalidate_inode: pyfuse3.invalidate_inode, replaceable for tests
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        *,
        kernel_ttl: float = 1.0,
        uid: int | None = None,
        gid: int | None = None,
        readdir_reply: ReaddirReply | None = None,
        ready_entries: int = 200_000,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.inodes = InodeTable(ROOT_KEY)
        self.files: HandleTable[tuple[int, OpenFile]] = HandleTable()
        self.dirs: HandleTable[DirSnapshot[Directory | FileNode]] = HandleTable()
        self.kernel_ttl = kernel_ttl
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.readdir_reply: ReaddirReply = readdir_reply or pyfuse3.readdir_reply
        #: pyfuse3.invalidate_inode, replaceable in tests (it needs a mounted session)
        self.invalidate_inode: Callable[[int, bool], None] = pyfuse3.invalidate_inode
        #: access errors already logged: (error class, permission)
        self._access_logged: set[tuple[str, str | None]] = set()
        self._checksums: dict[int, str] = {}
        #: errors answered, by errno name; and what caused those other than ENOENT
        self.errors: Counter[str] = Counter()
        self.error_causes: Counter[str] = Counter()
        #: inodes whose kernel caches were invalidated (after a refresh)
        self.invalidations = 0
        #: lookups and getattrs the kernel sent (its attribute cache missed)
        self.attribute_requests = 0
        #: readdir's finished entries per listed directory, bounded in entries
        self._ready: LRUCache[Key, _ReadyEntries] = LRUCache(
            maxsize=ready_entries, getsizeof=lambda ready: max(1, len(ready.entries))
        )
        #: set once the kernel's INIT is answered (see ``init``)
        self.initialised = trio.Event()

    def init(self) -> None:
        """Called by pyfuse3 while it answers the kernel's INIT. The answer is written
        before any task runs again, so a task waiting for ``initialised`` runs after
        it: the kernel sets the mount's read-ahead from that answer, and a larger
        read-ahead set before it would be undone."""
        self.initialised.set()

    def _count_error(self, exc: pyfuse3.FUSEError) -> None:
        code = exc.errno
        self.errors[errno.errorcode.get(code, str(code))] += 1
        # the guard raises "from None": the original is still the context
        cause = exc.__context__
        if cause is not None and code != errno.ENOENT:
            self.error_causes[type(cause).__name__] += 1

    @contextmanager
    def _errno_guard(self, what: str) -> Iterator[None]:
        """The one place where errors become errno values (see the module docstring)."""
        try:
            yield
        except pyfuse3.FUSEError:
            raise
        except NotFound as exc:
            log.debug("%s: not found (%s)", what, exc)
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except StaleAsset as exc:
            log.warning("%s: %s", what, exc)
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except (AuthenticationError, PermissionDenied) as exc:
            permission = exc.permission if isinstance(exc, PermissionDenied) else None
            marker = (type(exc).__name__, permission)
            if marker not in self._access_logged:
                # once per kind: a revoked key must not log a line per read
                self._access_logged.add(marker)
                log.error("%s: access denied: %s", what, exc)
            raise pyfuse3.FUSEError(errno.EACCES) from None
        except ImmichfsError as exc:
            log.error("%s: %s", what, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            # never BaseException: trio.Cancelled and KeyboardInterrupt must pass
            log.exception("%s: unexpected error", what)
            raise pyfuse3.FUSEError(errno.EIO) from None

    # -- helpers (no FUSE request of their own)

    def _entry(self, inode: int, attrs: Attributes) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.generation = 0
        entry.entry_timeout = self.kernel_ttl
        entry.st_uid = self.uid
        entry.st_gid = self.gid
        entry.st_rdev = 0
        entry.st_blksize = BLOCK_SIZE
        self._fill(entry, inode, attrs)
        return entry

    def _fill(self, entry: pyfuse3.EntryAttributes, inode: int, attrs: Attributes) -> None:
        """Set the fields of ``entry`` that differ between nodes (readdir reuses one)."""
        entry.st_ino = inode
        entry.attr_timeout = self.kernel_ttl if attrs.size_known else 0
        entry.st_mode = _DIR_MODE if attrs.is_dir else _FILE_MODE
        entry.st_nlink = attrs.nlink
        size = attrs.size
        entry.st_size = size
        entry.st_blocks = (size + 511) // 512
        mtime = int(attrs.mtime.timestamp() * 1e9)
        entry.st_mtime_ns = mtime
        entry.st_atime_ns = mtime
        ctime = mtime if attrs.ctime == attrs.mtime else int(attrs.ctime.timestamp() * 1e9)
        entry.st_ctime_ns = ctime
        entry.st_birthtime_ns = ctime

    async def _node(self, inode: int) -> Node:
        key = self.inodes.key(inode)
        if key is None:
            raise NotFound(f"unknown inode {inode}")
        return await self.tree.node(key)

    async def _directory(self, inode: int) -> Directory:
        node = await self._node(inode)
        if not isinstance(node, Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    @staticmethod
    def _decode(name: bytes) -> str:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            # every name immichfs makes is UTF-8; no other can exist here
            raise NotFound("name is not UTF-8") from None

    # -- names and attributes

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if len(name) > MAX_NAME_BYTES:
            # FUSE passes names up to 1024 bytes; none of ours is longer than 255
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        self.attribute_requests += 1
        directory = await self._directory(parent_inode)
        node: Node
        if name == b".":
            node = directory
        elif name == b"..":
            parent = self.tree.directory(directory.parent)
            if parent is None:
                raise NotFound("no parent")
            node = parent
        else:
            node = await self.tree.lookup(directory.key, self._decode(name))
        attrs = await self.tree.attributes(node)
        inode = self.inodes.inode(node.key)
        entry = self._entry(inode, attrs)
        self.inodes.remember(inode)
        return entry

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # must never raise: it answers no request
        try:
            for inode, count in inode_list:
                self.inodes.forget(inode, count)
        except Exception:
            log.exception("forget failed")

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.attribute_requests += 1
        node = await self._node(inode)
        return self._entry(inode, await self.tree.attributes(node))

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.EINVAL)

    # -- directories

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        directory = await self._directory(inode)
        listing = await self.tree.listdir(directory.key)
        parent = self.tree.directory(directory.parent) or directory
        entries = [(".", directory), ("..", parent), *listing.entries]
        return self.dirs.add(DirSnapshot(directory.key, entries, listing))

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        snapshot = self.dirs.get(fh)
        # a 1 MiB readdirplus buffer holds some 6,000 entries and `ls -l` of a
        # large directory waits for them: nothing per entry that can be done once
        reply = self.readdir_reply
        inode_of = self.inodes.inode
        attributes = self.tree.cached_attributes
        fill = self._fill
        entry = self._entry(0, _NO_ATTRIBUTES)  # one for all: readdir_reply copies it
        ready = self._ready_entries(snapshot)
        built = ready.entries if ready is not None else None
        accepted: list[int] = []
        # entries built here are kept with the listing: no collector walks over them
        # meanwhile (see cyclic_gc_paused)
        with cyclic_gc_paused():
            try:
                for next_id, name, node in snapshot.since(start_id):
                    index = next_id - 3  # in the listing: the snapshot starts with . and ..
                    answer = built[index] if built is not None and index >= 0 else None
                    if answer is None:
                        inode = inode_of(node.key)
                        attrs = attributes(node)
                        if (
                            built is not None
                            and index >= 0
                            and type(node) is AssetFile
                            and attrs.size_known
                        ):
                            answer = built[index] = self._entry(inode, attrs)
                        else:
                            fill(entry, inode, attrs)
                            answer = entry
                    if not reply(token, name.encode("utf-8"), answer, next_id):
                        break
                    # readdir is readdirplus in pyfuse3: an accepted entry is a lookup,
                    # except . and .. (the kernel does not link them)
                    if index >= 0:
                        accepted.append(answer.st_ino)
            finally:
                self.inodes.remember_each(accepted)

    def _ready_entries(self, snapshot: DirSnapshot[Directory | FileNode]) -> _ReadyEntries | None:
        """The finished replies of the snapshot's listing, kept while that listing is."""
        listing = snapshot.source
        if not isinstance(listing, Listing) or len(listing.entries) > self._ready.maxsize:
            return None
        ready = self._ready.get(snapshot.key)
        if ready is None or ready.listing is not listing:
            ready = _ReadyEntries(listing, [None] * len(listing.entries))
            self._ready[snapshot.key] = ready
        return ready

    @_guarded
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh)

    @_guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- files

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise _read_only()
        node = await self._node(inode)
        if isinstance(node, Directory):
            raise pyfuse3.FUSEError(errno.EISDIR)
        handle = await self.tree.open(node)
        keep_cache = False
        if isinstance(node, AssetFile) and node.asset.checksum:
            # the page cache may be kept while the content is the one seen before (an
            # edited rendition's tag is its edit's version, not the original's checksum)
            tag = self.tree.catalog.content_tag(node.asset)
            keep_cache = self._checksums.get(inode) == tag
            self._checksums[inode] = tag
        # a generated file (status) changes length: read past st_size, never cached
        direct_io = bool(getattr(handle, "direct_io", False))
        return pyfuse3.FileInfo(
            fh=self.files.add((inode, handle)), keep_cache=keep_cache, direct_io=direct_io
        )

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        _, handle = self.files.get(fh)
        if isinstance(handle, AssetReader | CachedFile):
            # a view of the read-ahead window or a block from disk, no copy: pyfuse3 takes
            # any buffer and copies it into the reply before anything else runs
            # (see read_buffer)
            return cast(bytes, await handle.read_buffer(off, size))
        return await handle.read(off, size)

    # no flush: pyfuse3's default answers ENOSYS, and the kernel then stops sending
    # FLUSH on every close(2) (nothing to flush on a read-only mount; one request
    # per file read less)

    @_guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    @_guarded
    async def release(self, fh: int) -> None:
        item = self.files.pop(fh)
        if item is not None:
            await item[1].aclose()

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = 512
        data.f_blocks = 0
        data.f_bfree = 0
        data.f_bavail = 0
        data.f_files = len(self.inodes)
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- extended attributes

    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # only user.* exists here. ENOTSUP, what the VFS answers for a namespace a
            # filesystem has no handler for, also tells `ls -l` (getfilecon_cache,
            # file_has_acl_cache) to stop asking for security.* and system.posix_acl_*
            # on this device: ENODATA cost two FUSE requests per listed file. Never
            # ENOSYS: the kernel would then refuse every getxattr, user.* included.
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        node = await self._node(inode)
        value = await self.tree.getxattr(node, name.decode("utf-8", "replace"))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        node = await self._node(inode)
        return [name.encode("utf-8") for name in await self.tree.listxattr(node)]

    # -- changes made behind the kernel's back

    async def invalidate(self, keys: Iterable[Key]) -> int:
        """Make the kernel drop what it cached of these nodes (attributes, page cache,
        directory contents), e.g. after a refresh found them changed in Immich.

        Only inodes the kernel holds are concerned. ``invalidate_inode`` may block
        (it waits for the kernel), so it runs in a thread; an inode the kernel has
        dropped meanwhile is no error. Returns how many inodes were invalidated.
        """
        done = 0
        for key in set(keys):
            inode = self.inodes.find(key)
            if inode is None or self.inodes.lookup_count(inode) == 0:
                continue
            try:
                await trio.to_thread.run_sync(self.invalidate_inode, inode, False)
            except OSError as exc:
                log.debug("invalidate inode %d (%r): %s", inode, key, exc)
            else:
                done += 1
        self.invalidations += done
        return done

    # -- for tests and statistics

    def open_handles(self) -> int:
        return len(self.files) + len(self.dirs)

    def statistics(self) -> dict[str, Any]:
        return {
            "inodes": len(self.inodes),
            "kernel_references": sum(self.inodes.outstanding().values()),
            "open_files": len(self.files),
            "open_dirs": len(self.dirs),
            "errors": dict(self.errors),
            "error_causes": dict(self.error_causes),
            "invalidations": self.invalidations,
            "attribute_requests": self.attribute_requests,
            "cache": self.tree.cache.statistics(),
            "reader": self.tree.readers.statistics(),
        }


#: the handlers of requests that would write. pyfuse3 calls each by its name; one
#: refusal (EROFS) serves them all, each keeping its name in logs and error counts.
WRITE_HANDLERS = (
    "setattr",
    "setxattr",
    "removexattr",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "write",
    "create",
)
for _name in WRITE_HANDLERS:
    setattr(Operations, _name, _refusing(_name))
