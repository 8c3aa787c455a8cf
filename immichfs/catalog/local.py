"""One mount's local state: its cache directory (locked), catalog and content cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from immichfs.catalog.cachedir import CacheDir, DirectoryLock, find_user_dir, user_dir
from immichfs.catalog.content import ContentCache
from immichfs.catalog.store import CatalogMemory, CatalogStore, Reachability

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass
class LocalCache:
    """What a mount keeps on disk; :meth:`close` releases the directory."""

    place: CacheDir
    lock: DirectoryLock
    store: CatalogStore
    content: ContentCache
    memory: CatalogMemory
    reachability: Reachability

    @classmethod
    def open(
        cls,
        root: Path,
        url: str,
        api_key: str,
        user_id: str | None,
        *,
        size_mb: int,
        reachability: Reachability,
    ) -> LocalCache | None:
        """The cache of ``user_id`` on ``url`` (offline: ``user_id`` None, found by the key;
        None when there is none). UserError when another process holds it."""
        place = (
            user_dir(root, url, user_id, api_key)
            if user_id is not None
            else find_user_dir(root, url, api_key)
        )
        if place is None:
            return None
        lock = DirectoryLock(place.path)
        lock.acquire()
        try:
            store = CatalogStore(place.catalog_path, url_hint=url)
            content = ContentCache(place.content_path, size_mb * MiB)
        except BaseException:
            lock.release()
            raise
        memory = CatalogMemory(store, reachability)
        memory.content = content
        return cls(place, lock, store, content, memory, reachability)

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = dict(self.content.statistics())
        stats["directory"] = str(self.place.path)
        stats["catalog"] = self.store.statistics()
        stats["served_saved_listings"] = self.memory.served_saved
        return stats

    def close(self) -> None:
        try:
            self.content.close()
            self.store.close()
        finally:
            self.lock.release()


def has_catalog(root: Path, url: str, api_key: str) -> bool:
    """A mount of ``url`` with this key saved a catalog under ``root`` (offline mounts)."""
    place = find_user_dir(root, url, api_key)
    if place is None or not place.catalog_path.exists():
        return False
    store = CatalogStore(place.catalog_path, url_hint=url)
    try:
        return not store.empty
    finally:
        store.close()
