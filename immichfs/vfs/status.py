"""``/.immichfs/status``: what a mount is doing, as a JSON file inside the mount.

A hidden directory ``/.immichfs`` at the root holds one file, ``status``. Like
``.manifest.jsonl`` it is no listing entry (``ls``, ``cp -r`` and ``find`` see
only the library) and is found by name only; ``/.immichfs`` itself lists nothing.
Being a plain file, it can be read from anywhere the mount is visible (another
container, over ``ssh``), which is how ``immichfs status MOUNTPOINT`` works.

The JSON is generated at each ``lookup``/``getattr`` (so ``stat`` shows the
length of the report of that moment) and again at each ``open``, whose handle
then serves that snapshot. The two lengths may differ by a few bytes (counters
move), so the file is opened with ``direct_io``: the kernel neither caches its
pages nor cuts a read at the ``st_size`` it was told, and every reader
(``cat``, Python's ``read()``) gets the whole snapshot and then EOF. Its
attributes are never cached by the kernel either (a new size at every ``stat``).

Nothing here imports pyfuse3: the filesystem adapter is read through
:class:`Filesystem` (its ``statistics()``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from immichfs import __version__
from immichfs.vfs.tree import (
    ROOT_KEY,
    Attributes,
    BytesFile,
    Directory,
    Key,
    Listing,
    Tree,
    VirtualFile,
)

if TYPE_CHECKING:
    from immichfs.vfs.refresh import RefreshTask

log = logging.getLogger(__name__)

STATUS_DIRECTORY = ".immichfs"
STATUS_FILE = "status"
#: the kind of key of this module's nodes (the tree resolver's name)
KIND = "immichfs"
DIRECTORY_KEY: Key = (KIND,)
FILE_KEY: Key = (KIND, STATUS_FILE)
#: bumped when a field changes meaning or disappears (new fields keep it)
FORMAT_VERSION = 1


class Filesystem(Protocol):
    """What the report reads of the FUSE adapter (:class:`immichfs.fuse.operations.Operations`)."""

    @property
    def tree(self) -> Tree: ...

    def statistics(self) -> dict[str, Any]: ...


class Server(Protocol):
    """What the report shows of the connection to Immich
    (:class:`~immichfs.client.connector.ImmichConnector` is one)."""

    @property
    def url(self) -> str: ...

    @property
    def server_version(self) -> tuple[int, int, int] | None: ...

    def statistics(self) -> Mapping[str, int]: ...


StatisticsSource = Callable[[], Mapping[str, int]]


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds") if when is not None else None


def hit_rate(hits: int, misses: int) -> float | None:
    """hits / lookups, rounded to 4 places; None before the first lookup."""
    total = hits + misses
    return round(hits / total, 4) if total else None


class MountStatus:
    """Gathers one mount's counters into the status report.

    ``settings`` are the values the report shows (never a secret: the mount
    chooses them); ``byte_path`` the fetcher of originals' counters.
    """

    def __init__(
        self,
        filesystem: Filesystem,
        connector: Server,
        settings: Mapping[str, Any],
        byte_path: StatisticsSource | None = None,
        *,
        mountpoint: str | None = None,
        refresh: RefreshTask | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.filesystem = filesystem
        self.connector = connector
        self.settings = dict(settings)
        self.byte_path = byte_path
        self.mountpoint = mountpoint
        self.refresh = refresh
        #: the on-disk cache (``statistics()``) and whether the server answers, if known
        self.local: Any = None
        self.reachability: Callable[[], bool] | None = None
        self._clock = clock
        self.now = now
        self._started = clock()
        self.started_at = now()

    def report(self) -> dict[str, Any]:
        """The status now, as plain JSON values."""
        stats = self.filesystem.statistics()
        reader: Mapping[str, Any] = stats.get("reader", {})
        version = self.connector.server_version
        originals: dict[str, Any] = {
            "range_requests": reader.get("range_requests", 0),
            "bytes_fetched": reader.get("bytes_fetched", 0),
            "retries": reader.get("retries", 0),
            "fetch_errors": reader.get("fetch_errors", 0),
            "sequential_reads": reader.get("sequential_reads", 0),
            "random_reads": reader.get("random_reads", 0),
            "whole_file_reads": reader.get("whole_file_windows", 0),
            "streams": reader.get("streams", 0),
            # what the reader learnt of the server (None until measured)
            "origin": {
                "latency_ms": reader.get("origin_latency_ms"),
                "stream_mib_s": reader.get("origin_mib_s"),
                "parallel_gain": reader.get("origin_parallel_gain"),
            },
        }
        if self.byte_path is not None:
            originals["http"] = dict(self.byte_path())
        return {
            "format": FORMAT_VERSION,
            "immichfs_version": __version__,
            "pid": os.getpid(),
            "mountpoint": self.mountpoint,
            "server": {
                "url": self.connector.url,
                "version": ".".join(map(str, version)) if version else None,
            },
            "started_at": _iso(self.started_at),
            "generated_at": _iso(self.now()),
            "uptime_seconds": round(self._clock() - self._started, 1),
            "settings": dict(self.settings),
            "cache": {
                name: self._cache_entry(asdict(cache))
                for name, cache in stats.get("cache", {}).items()
            },
            "api": dict(self.connector.statistics()),
            "originals": originals,
            "errors": dict(sorted(stats.get("errors", {}).items())),
            "error_causes": dict(sorted(stats.get("error_causes", {}).items())),
            "files": {
                "open_files": stats.get("open_files", 0),
                "open_directories": stats.get("open_dirs", 0),
                "open_readers": reader.get("open_readers", 0),
                "inodes": stats.get("inodes", 0),
            },
            "readahead": {
                "bytes_in_use": reader.get("readahead_bytes", 0),
                "peak_bytes": reader.get("readahead_peak", 0),
                "budget_bytes": reader.get("readahead_budget", 0),
            },
            "kernel": {
                "invalidations": stats.get("invalidations", 0),
                "attribute_requests": stats.get("attribute_requests", 0),
            },
            "refresh": self._refresh(),
            "connection": (
                "online" if self.reachability is None or self.reachability() else "offline"
            ),
            "disk_cache": self.local.statistics() if self.local is not None else None,
        }

    @staticmethod
    def _cache_entry(cache: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "hits": cache["hits"],
            "misses": cache["misses"],
            "hit_rate": hit_rate(cache["hits"], cache["misses"]),
            "entries": cache.get("entries", 0),
            "size": cache["size"],
            "max_size": cache["maxsize"],
            "loads": cache["loads"],
            "load_failures": cache["load_failures"],
        }

    def _refresh(self) -> dict[str, Any] | None:
        task = self.refresh
        if task is None:
            return None
        last = task.last_result
        return {
            "interval": task.interval,
            "cycles": task.cycles,
            "renewed_listings": getattr(task, "renewed", 0),
            "last_refresh_at": _iso(getattr(task, "last_refresh_at", None)),
            "last_result": last.summary() if last is not None else None,
        }

    def render(self) -> bytes:
        """The report as pretty-printed JSON (UTF-8, ending with a newline)."""
        return (json.dumps(self.report(), indent=2, default=str) + "\n").encode("utf-8")


# -- the tree's view of it -------------------------------------------------------------


class StatusDirectory(Directory):
    """``/.immichfs``: found by name, lists nothing (its file is found by name too)."""

    async def listing(self) -> Listing:
        return Listing.build({})

    def cached_listing(self) -> Listing | None:
        return Listing.build({})


class StatusHandle(BytesFile):
    """One open ``status``: the report made at ``open``, read without the page cache."""

    #: read by the FUSE adapter: open with FOPEN_DIRECT_IO (see the module doc)
    direct_io = True


class StatusFile:
    """``/.immichfs/status`` (a :class:`~immichfs.vfs.tree.VirtualFile`)."""

    def __init__(self, status: MountStatus) -> None:
        self.status = status

    @property
    def key(self) -> Key:
        return FILE_KEY

    async def attributes(self) -> Attributes:
        size = len(self.status.render())
        when = self.status.now()
        # size_known=False: the adapter then tells the kernel not to cache these
        return Attributes(False, size, when, self.status.started_at, 1, size_known=False)

    async def open(self) -> StatusHandle:
        return StatusHandle(self.status.render())


class StatusExtension:
    """The tree extension answering ``/.immichfs`` and ``/.immichfs/status``."""

    def __init__(self, tree: Tree, status: MountStatus) -> None:
        self.status = status
        self.directory = StatusDirectory(tree, DIRECTORY_KEY, ROOT_KEY)
        self.file = StatusFile(status)

    def resolve(self, key: Key) -> Directory | None:
        return self.directory if key == DIRECTORY_KEY else None

    def node(self, key: Key) -> VirtualFile | None:
        return self.file if key == FILE_KEY else None

    def lookup(self, directory: Directory, name: str) -> Directory | VirtualFile | None:
        if directory.key == ROOT_KEY and name == STATUS_DIRECTORY:
            return self.directory
        if directory.key == DIRECTORY_KEY and name == STATUS_FILE:
            return self.file
        return None


def install_status(tree: Tree, status: MountStatus) -> StatusExtension:
    """Add ``/.immichfs/status`` (reporting ``status``) to ``tree``."""
    extension = StatusExtension(tree, status)
    tree.add_resolver(KIND, extension.resolve)
    tree.add_extension(extension)
    return extension


__all__ = [
    "DIRECTORY_KEY",
    "FILE_KEY",
    "STATUS_DIRECTORY",
    "STATUS_FILE",
    "MountStatus",
    "StatusExtension",
    "install_status",
]
