"""Inode numbers, lookup counts and directory snapshots.

Every node of the tree has a stable *key* (a tuple such as ``("asset", id)``).
:class:`InodeTable` gives each key one inode number the first time it is seen
and keeps it for the life of the mount, so one asset has one inode in every
view (the kernel's page cache is then shared) and numbers are never reused
(``generation`` can stay 0).

Lookup counts follow pyfuse3's rules: every successful ``lookup`` and every
``readdir`` entry the kernel accepted adds one, ``forget`` subtracts what the
kernel says. Counts are kept so tests can check that nothing leaks; the key
mapping stays even at zero (it is what keeps numbers stable).

:class:`DirSnapshot` freezes a directory's entries at ``opendir``; readdir
offsets (``next_id``) are positions in it, so a listing that changes between
two readdir calls neither skips nor repeats entries.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

#: FUSE's fixed inode number of the root directory
ROOT_INODE = 1

Key = Hashable
T = TypeVar("T")


class InodeTable:
    """Stable key ↔ inode mapping plus kernel lookup counts."""

    def __init__(self, root_key: Key) -> None:
        self._by_key: dict[Key, int] = {root_key: ROOT_INODE}
        self._by_inode: dict[int, Key] = {ROOT_INODE: root_key}
        self._next = ROOT_INODE + 1
        self._lookups: dict[int, int] = {}

    def inode(self, key: Key) -> int:
        """The inode of ``key``, allocated on first use and never reused."""
        inode = self._by_key.get(key)
        if inode is None:
            inode = self._next
            self._next += 1
            self._by_key[key] = inode
            self._by_inode[inode] = key
        return inode

    def find(self, key: Key) -> int | None:
        """The inode of ``key`` if it has one (never allocates)."""
        return self._by_key.get(key)

    def key(self, inode: int) -> Key | None:
        return self._by_inode.get(inode)

    def remember(self, inode: int, count: int = 1) -> None:
        """The kernel now holds ``count`` more references to ``inode``."""
        self._lookups[inode] = self._lookups.get(inode, 0) + count

    def remember_each(self, inodes: Iterable[int]) -> None:
        """One more reference to each of ``inodes`` (a readdir's accepted entries)."""
        lookups = self._lookups
        for inode in inodes:
            lookups[inode] = lookups.get(inode, 0) + 1

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` references. Never raises (``forget`` must not)."""
        held = self._lookups.get(inode, 0)
        if count > held:
            log.warning("kernel forgot inode %d %d times but held %d", inode, count, held)
        left = held - count
        if left > 0:
            self._lookups[inode] = left
        else:
            self._lookups.pop(inode, None)

    def lookup_count(self, inode: int) -> int:
        return self._lookups.get(inode, 0)

    def outstanding(self) -> dict[int, int]:
        """Inodes the kernel still references (the root is never forgotten)."""
        return {inode: n for inode, n in self._lookups.items() if inode != ROOT_INODE}

    def __len__(self) -> int:
        return len(self._by_key)


@dataclass(frozen=True)
class DirSnapshot(Generic[T]):
    """A directory's entries as they were at ``opendir``; ``next_id`` = index + 1."""

    key: Key
    entries: Sequence[tuple[str, T]]
    #: what the entries were taken from (the adapter keys per-listing caches on it)
    source: object = None

    def since(self, start_id: int) -> Iterator[tuple[int, str, T]]:
        """Entries after offset ``start_id`` as (next_id, name, node), lazily.

        Lazily because the kernel reads a big directory a page (some 20 entries)
        per call: copying the rest of the directory each time would be quadratic.
        """
        entries = self.entries
        for index in range(max(start_id, 0), len(entries)):
            name, node = entries[index]
            yield index + 1, name, node


class HandleTable(Generic[T]):
    """File handles (numbers handed to the kernel) → the objects behind them."""

    def __init__(self) -> None:
        self._items: dict[int, T] = {}
        self._next = 1

    def add(self, item: T) -> int:
        handle = self._next
        self._next += 1
        self._items[handle] = item
        return handle

    def get(self, handle: int) -> T:
        return self._items[handle]

    def pop(self, handle: int) -> T | None:
        return self._items.pop(handle, None)

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())
