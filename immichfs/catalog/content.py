"""The content cache: bytes of originals and thumbnails kept on local disk, verified.

Bytes live in plain sparse files under ``<dir>/blobs``, one per asset *version*
(asset id + checksum: a changed asset is a different file, so its old bytes are
never found for it). ``<dir>/content.sqlite`` (WAL) holds, per file, the CRC-32 of
every block of ``block_size`` bytes that was written (see :func:`_digest`), and per
entry its size,
ETag, last read time and whether the whole file matched Immich's checksum.

*Verified.* A block is served only if the bytes read back from disk have the
check value taken when they were written; anything else (a flipped bit, a truncated
file, a block recorded but never written before a crash) is dropped and fetched
again. When every block of an original is there, the whole file's SHA-1 (computed
while the blocks were written in order, else by reading the file back) is
compared with the asset's ``checksum``; a mismatch drops the entry and stops
caching that version (external-library assets, whose checksum hashes the path,
are never kept whole for that reason; see docs/SEMANTICS.md, "Persistent cache and offline reads").

*Crash safety.* Bytes are written before their hashes are committed, and every
read verifies, so a ``kill -9`` (or a power cut) at any moment leaves at worst
blocks that fail verification and are dropped. At start, files without an entry
and entries without a file are removed.

*Bounded.* Entries are evicted least recently read first once the bytes held
pass ``limit``. A read in progress keeps its open descriptor on an evicted file
and verifies what it reads, so eviction is safe while files are open.

*Thread-safe.* Disk work happens in worker threads (``trio.to_thread``); the
bookkeeping is guarded by one lock that is never held during file I/O or hashing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio

from immichfs.catalog.cachedir import FILE_MODE, ensure_private_dir, open_database
from immichfs.errors import Offline, TransientError
from immichfs.model import checksum_hex

log = logging.getLogger(__name__)

MiB = 1024 * 1024
BLOCK_SIZE = MiB
#: most partly fetched blocks kept in memory until neighbouring ranges complete them
#: (read-ahead windows are not block-aligned)
_MAX_PARTIAL = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    asset_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT,
    whole_sha1 TEXT,
    verified INTEGER NOT NULL DEFAULT 0,
    last_read REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (key, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refused (
    key TEXT PRIMARY KEY
);
"""


def _digest(block: bytes | memoryview) -> bytes:
    """A block's check value: CRC-32. It is there to catch damage on disk (flipped bits,
    torn or truncated writes: every burst up to 32 bits, anything else but one time in
    2^32); someone able to rewrite the block could rewrite the database beside it just
    as well, so a cryptographic hash would add cost, not safety. What ties the bytes
    to Immich is the whole file's SHA-1 against the asset's checksum."""
    return zlib.crc32(block).to_bytes(4, "big")


def content_key(asset_id: str, checksum: str, rendition: str = "original") -> str:
    """The file name of one version of an asset's bytes (``rendition``: original or a
    thumbnail size). Safe as a file name whatever the server sent."""
    if re.fullmatch(r"[A-Za-z0-9-]{1,64}", asset_id) is None:
        asset_id = hashlib.sha256(asset_id.encode("utf-8")).hexdigest()[:32]
    version = checksum_hex(checksum) or hashlib.sha1(checksum.encode("utf-8")).hexdigest()
    suffix = "" if rendition == "original" else "." + re.sub(r"[^a-z0-9]", "_", rendition)
    return f"{asset_id}.{version}{suffix}"


@dataclass
class _Entry:
    size: int
    etag: str | None
    whole_sha1: str | None  # hex SHA-1 the whole file must have (None: no whole check)
    verified: bool
    last_read: float
    blocks: dict[int, bytes] = field(default_factory=dict)
    held: int = 0  # bytes of the recorded blocks


@dataclass
class ContentStatistics:
    hits: int = 0  # reads served entirely from disk
    misses: int = 0  # reads that needed the server (in part or whole)
    bytes_served: int = 0
    bytes_written: int = 0
    evictions: int = 0
    dropped_blocks: int = 0  # blocks that failed verification
    bytes_on_disk: int = 0
    limit: int = 0
    entries: int = 0


class ContentCache:
    """Verified bytes on disk, bounded by ``limit`` bytes (0: keep nothing)."""

    def __init__(
        self,
        directory: Path,
        limit: int,
        *,
        block_size: int = BLOCK_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.blobs = directory / "blobs"
        self.limit = max(0, int(limit))
        self.block_size = block_size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._refused: set[str] = set()
        #: key -> (bytes hashed so far, SHA-1 of them) of files written in order
        self._running: dict[str, tuple[int, Any]] = {}
        #: (key, block index) -> pieces (offset in the block -> bytes) of a partly fetched block
        self._partial: OrderedDict[tuple[str, int], dict[int, bytes]] = OrderedDict()
        self._held = 0  # bytes of recorded blocks
        self._reserved = 0  # bytes being written (counted against the limit already)
        self.stats = ContentStatistics(limit=self.limit)
        ensure_private_dir(directory)
        ensure_private_dir(self.blobs)
        self._db = open_database(directory / "content.sqlite")
        self._db.executescript(_SCHEMA)
        self._load()
        self._evict(self.limit)  # a smaller --cache-size-mb than last time

    # -- start-up ----------------------------------------------------------------------

    def _load(self) -> None:
        """Read the index; drop what the files on disk cannot back (after a crash)."""
        db = self._db
        for key, size, etag, whole, verified, last_read in db.execute(
            "SELECT key, size, etag, whole_sha1, verified, last_read FROM entries"
        ):
            self._entries[key] = _Entry(size, etag, whole, bool(verified), last_read)
        for key, idx, digest in db.execute("SELECT key, idx, digest FROM blocks"):
            entry = self._entries.get(key)
            if entry is not None:
                entry.blocks[idx] = bytes(digest)
        self._refused = {key for (key,) in db.execute("SELECT key FROM refused")}
        on_disk = {}
        for name in os.listdir(self.blobs):
            path = self.blobs / name
            if name not in self._entries:
                path.unlink(missing_ok=True)  # bytes whose hashes were never committed
                continue
            on_disk[name] = path.stat().st_size
        gone = []
        for key, entry in self._entries.items():
            length = on_disk.get(key)
            if length is None:
                gone.append(key)
                continue
            for idx in [i for i in entry.blocks if self._block_end(entry, i) > length]:
                del entry.blocks[idx]  # truncated: those blocks cannot be there
                self._forget_block(key, idx)
            entry.held = sum(self._on_disk(self._block_len(entry, i)) for i in entry.blocks)
            self._held += entry.held
        for key in gone:
            self._drop_locked(key)
        self.stats.bytes_on_disk = self._held
        self.stats.entries = len(self._entries)

    # -- geometry ----------------------------------------------------------------------

    def _block_end(self, entry: _Entry, idx: int) -> int:
        return min(entry.size, (idx + 1) * self.block_size)

    def _block_len(self, entry: _Entry, idx: int) -> int:
        return self._block_end(entry, idx) - idx * self.block_size

    def _on_disk(self, length: int) -> int:
        """What ``length`` bytes of a file take on disk (whole filesystem blocks)."""
        unit = min(4096, self.block_size)
        return -(-length // unit) * unit

    def _nblocks(self, size: int) -> int:
        return -(-size // self.block_size)

    # -- queries (no disk I/O) ---------------------------------------------------------

    def covered(self, key: str, start: int, size: int) -> int:
        """How many bytes from ``start`` the recorded blocks cover (not yet verified)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.size != size or start >= size:
                return 0
            pos = start
            while pos < size and (pos // self.block_size) in entry.blocks:
                pos = self._block_end(entry, pos // self.block_size)
            return pos - start

    def etag(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.etag if entry is not None else None

    def has_whole(self, key: str) -> bool:
        """Every block of ``key`` is recorded and the file matched its checksum."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.verified

    # -- reading -----------------------------------------------------------------------

    def read_into(
        self,
        key: str,
        start: int,
        view: memoryview,
        size: int,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Fill ``view`` from disk with the bytes at ``start`` of the ``size``-byte file,
        as far as verified blocks reach; returns how many bytes were filled (a prefix),
        and tells ``progress`` after each block. A block that fails verification is
        dropped (the caller fetches it again)."""
        want = len(view)
        filled = 0
        try:
            fd = os.open(self.blobs / key, os.O_RDONLY)
        except FileNotFoundError:
            self.drop(key)
            return 0
        # the kernel reads ahead from disk while the first block is checked
        os.posix_fadvise(fd, start, want, os.POSIX_FADV_WILLNEED)
        try:
            while filled < want:
                pos = start + filled
                idx = pos // self.block_size
                with self._lock:
                    entry = self._entries.get(key)
                    expected = entry.blocks.get(idx) if entry is not None else None
                    if entry is None or expected is None or entry.size != size:
                        break
                    block_start = idx * self.block_size
                    block_len = self._block_len(entry, idx)
                offset = pos - block_start
                take = min(want - filled, block_len - offset)
                if offset == 0 and take == block_len:
                    target = view[filled : filled + take]  # straight into the caller's buffer
                    got = os.preadv(fd, [target], block_start)
                    data: bytes | memoryview = target
                else:
                    data = os.pread(fd, block_len, block_start)
                    got = len(data)
                if got != block_len or _digest(data) != expected:
                    log.warning("cached block %d of %s failed verification: dropped", idx, key)
                    with self._lock:
                        self.stats.dropped_blocks += 1
                    self._drop_block(key, idx)
                    break
                if not (offset == 0 and take == block_len):
                    view[filled : filled + take] = data[offset : offset + take]
                filled += take
                if progress is not None and filled < want:
                    progress(filled)
        finally:
            os.close(fd)
        if filled:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.last_read = self._clock()
                self.stats.bytes_served += filled
        return filled

    # -- writing -----------------------------------------------------------------------

    def write(
        self,
        key: str,
        start: int,
        data: memoryview | bytes,
        size: int,
        *,
        etag: str | None = None,
        checksum: str | None = None,
    ) -> None:
        """Record bytes ``[start, start+len(data))`` of the ``size``-byte file ``key``
        as fetched from the server: every whole block among them is written and hashed.
        ``checksum`` (Immich's base64 SHA-1) is what the complete file must hash to."""
        if self.limit <= 0 or not data:
            return
        with self._lock:
            if key in self._refused:
                return
            entry = self._entries.get(key)
            if entry is not None and (entry.size != size or entry.etag != etag):
                # another version under the same name (edited in place): start over
                self._drop_locked(key)
                entry = None
        view = memoryview(data)
        bs = self.block_size
        end = start + len(view)
        completed: list[tuple[int, bytearray]] = []
        with self._lock:
            # blocks this range covers only in part: their pieces wait in memory for
            # the neighbouring ranges (read-ahead windows are not block-aligned and
            # may finish in any order)
            if start % bs:
                piece_end = min(end, (start // bs + 1) * bs, size)
                self._add_piece(key, start, view[: piece_end - start], size, completed)
            if end % bs and end < size and (end // bs) * bs >= start:
                block_start = (end // bs) * bs
                self._add_piece(key, block_start, view[block_start - start :], size, completed)
        self._write_blocks(key, start, view, size, etag, checksum)
        for block_start, block in completed:
            self._write_blocks(key, block_start, memoryview(block), size, etag, checksum)

    def _add_piece(
        self,
        key: str,
        at: int,
        piece: memoryview,
        size: int,
        completed: list[tuple[int, bytearray]],
    ) -> None:
        """Keep ``piece`` (bytes at ``at``) of a partly fetched block; when the pieces
        cover the whole block, hand it to ``completed``. Lock held by the caller."""
        if not piece:
            return
        bs = self.block_size
        idx = at // bs
        block_start = idx * bs
        block_len = min(size, block_start + bs) - block_start
        pieces = self._partial.pop((key, idx), {})
        pieces[at - block_start] = bytes(piece)
        covered = 0
        for offset in sorted(pieces):
            if offset > covered:
                break
            covered = max(covered, offset + len(pieces[offset]))
        if covered >= block_len:
            block = bytearray(block_len)
            for offset, data in pieces.items():
                block[offset : offset + len(data)] = data[: block_len - offset]
            completed.append((block_start, block))
            return
        self._partial[(key, idx)] = pieces
        while len(self._partial) > _MAX_PARTIAL:
            self._partial.popitem(last=False)

    def _write_blocks(
        self,
        key: str,
        start: int,
        view: memoryview,
        size: int,
        etag: str | None,
        checksum: str | None,
    ) -> None:
        bs = self.block_size
        end = start + len(view)
        pos = -(-start // bs) * bs  # the first block that starts inside the range
        todo: list[tuple[int, int, int]] = []  # (index, start, end) of blocks to write
        with self._lock:
            entry = self._entries.get(key)
            have = set(entry.blocks) if entry is not None else set()
            while pos < end:
                block_end = min(size, pos + bs)
                if block_end > end:
                    break
                if pos // bs not in have:
                    todo.append((pos // bs, pos, block_end))
                pos = block_end
            # room first, then bytes: the files never take more than the limit
            need = sum(self._on_disk(b - a) for _, a, b in todo)
            if need and self._held + self._reserved + need > self.limit:
                self._evict(self.limit - need, keep=key, keep_whole=True)
            while todo and self._held + self._reserved + need > self.limit:
                _, a, b = todo.pop()  # what does not fit is not kept
                need -= self._on_disk(b - a)
            self._reserved += need
        written: list[tuple[int, bytes, int]] = []
        fd: int | None = None
        try:
            for idx, a, b in todo:
                chunk = view[a - start : b - start]
                if fd is None:
                    fd = os.open(self.blobs / key, os.O_WRONLY | os.O_CREAT, FILE_MODE)
                os.pwrite(fd, chunk, a)
                written.append((idx, _digest(chunk), b - a))
                self._hash_along(key, a, chunk)
        finally:
            if fd is not None:
                os.close(fd)
            with self._lock:
                self._reserved -= need
            if written:
                self._record(key, size, etag, checksum, written)

    def _record(
        self,
        key: str,
        size: int,
        etag: str | None,
        checksum: str | None,
        written: list[tuple[int, bytes, int]],
    ) -> None:
        """Commit the hashes of blocks whose bytes are written (bytes first: see above)."""
        now = self._clock()
        whole = checksum_hex(checksum) if checksum else None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry(size, etag, whole, False, now)
                self._entries[key] = entry
                self.stats.entries = len(self._entries)
            added = 0
            rows = []
            for idx, digest, length in written:
                if idx not in entry.blocks:
                    entry.blocks[idx] = digest
                    added += self._on_disk(length)
                    rows.append((key, idx, digest))
            entry.held += added
            self._held += added
            self.stats.bytes_written += added
            self.stats.bytes_on_disk = self._held
            complete = len(entry.blocks) == self._nblocks(size) and not entry.verified
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO entries (key, asset_id, size, etag, whole_sha1, "
                    "verified, last_read) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        key.split(".")[0],
                        size,
                        etag,
                        entry.whole_sha1,
                        int(entry.verified),
                        entry.last_read,
                    ),
                )
                self._db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?)", rows)
        if complete:
            self._check_whole(key)

    def _hash_along(self, key: str, at: int, chunk: memoryview) -> None:
        """Feed the whole-file SHA-1 of ``key`` while its blocks are written in order
        (a file read from start to end is then checked without being read again)."""
        with self._lock:
            running = self._running.pop(key, None)
        if running is None:
            if at != 0:
                return
            running = (0, hashlib.sha1())
        if running[0] != at:
            return  # out of order: the file is read back when complete
        running[1].update(chunk)
        with self._lock:
            self._running[key] = (at + len(chunk), running[1])
            while len(self._running) > _MAX_PARTIAL:
                self._running.pop(next(iter(self._running)))

    def _check_whole(self, key: str) -> None:
        """All blocks are here: the file must hash to the asset's checksum, or go."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.verified:
                return
            expected = entry.whole_sha1
            size = entry.size
            running = self._running.pop(key, None)
        if expected is None:
            return  # no content hash to compare with (a thumbnail): blocks only
        if running is not None and running[0] == size:
            digest = running[1]  # hashed while written
        else:
            digest = hashlib.sha1()
            try:
                with open(self.blobs / key, "rb") as handle:
                    remaining = size
                    while remaining > 0:
                        chunk = handle.read(min(remaining, 4 * MiB))
                        if not chunk:
                            break
                        digest.update(chunk)
                        remaining -= len(chunk)
            except OSError:
                self.drop(key)
                return
        if digest.hexdigest() != expected:
            log.info(
                "cached original %s does not match its checksum: not kept "
                "(an external-library asset, or the server sent other bytes)",
                key,
            )
            with self._lock:
                self._drop_locked(key)
                self._refused.add(key)
                with self._db:
                    self._db.execute("INSERT OR IGNORE INTO refused VALUES (?)", (key,))
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.verified = True
                with self._db:
                    self._db.execute("UPDATE entries SET verified = 1 WHERE key = ?", (key,))

    # -- small files (thumbnails) ------------------------------------------------------

    def get_small(self, key: str) -> bytes | None:
        """A whole small file, verified, or None."""
        with self._lock:
            entry = self._entries.get(key)
            size = entry.size if entry is not None else 0
        if entry is None or size > 64 * MiB:
            return None
        buf = bytearray(size)
        if self.read_into(key, 0, memoryview(buf), size) != size:
            return None
        return bytes(buf)

    def put_small(self, key: str, data: bytes, etag: str | None = None) -> None:
        self.write(key, 0, data, len(data), etag=etag)

    # -- dropping ----------------------------------------------------------------------

    def drop(self, key: str) -> None:
        with self._lock:
            self._drop_locked(key)

    def _drop_block(self, key: str, idx: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or idx not in entry.blocks:
                return
            del entry.blocks[idx]
            length = self._on_disk(self._block_len(entry, idx))
            entry.held -= length
            self._held -= length
            self.stats.bytes_on_disk = self._held
            entry.verified = False
            self._forget_block(key, idx)

    def _forget_block(self, key: str, idx: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM blocks WHERE key = ? AND idx = ?", (key, idx))
            self._db.execute("UPDATE entries SET verified = 0 WHERE key = ?", (key,))

    def _drop_locked(self, key: str) -> None:
        # rows first, then the file: a crash in between leaves a file without entry,
        # which the next start removes
        entry = self._entries.pop(key, None)
        for pending in [k for k in self._partial if k[0] == key]:
            del self._partial[pending]
        self._running.pop(key, None)
        with self._db:
            self._db.execute("DELETE FROM blocks WHERE key = ?", (key,))
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
        if entry is not None:
            self._held -= entry.held
        (self.blobs / key).unlink(missing_ok=True)
        self.stats.bytes_on_disk = self._held
        self.stats.entries = len(self._entries)

    def _evict(self, limit: int, keep: str | None = None, *, keep_whole: bool = False) -> None:
        """Drop least recently read entries until at most ``limit`` bytes are held
        (``keep`` last, or never with ``keep_whole``). Lock held by the caller."""
        if self._held + self._reserved <= limit:
            return
        for key in sorted(self._entries, key=lambda k: self._entries[k].last_read):
            if self._held + self._reserved <= limit:
                break
            if key == keep:
                continue
            self._drop_locked(key)
            self.stats.evictions += 1
        if self._held + self._reserved > limit and keep is not None and not keep_whole:
            self._drop_locked(keep)
            self.stats.evictions += 1

    def prune(self, limit: int | None = None) -> int:
        """Evict down to ``limit`` bytes (default: the cache's limit); returns bytes freed."""
        with self._lock:
            before = self._held
            self._evict(self.limit if limit is None else limit)
            return before - self._held

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop_locked(key)
            self._refused.clear()
            with self._db:
                self._db.execute("DELETE FROM refused")

    def flush(self) -> None:
        """Save the read times (kept in memory between writes)."""
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE entries SET last_read = ? WHERE key = ?",
                [(e.last_read, k) for k, e in self._entries.items()],
            )

    def close(self) -> None:
        self.flush()
        self._db.close()

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return dict(self.stats.__dict__)


# -- the byte path -------------------------------------------------------------------------

#: asset id -> the checksum its bytes must have now; None when unknown
VersionOf = Callable[[str], Awaitable[str | None]]
_Fetch = Callable[[str, int, int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


class CachedSource:
    """A ``RangeIntoFetcher`` that serves verified bytes from a :class:`ContentCache`
    and tees what it fetches from ``inner`` (a RangeIntoFetcher or RangeFetcher) into it.

    ``version_of(asset_id)`` names the checksum the asset has now (from the
    catalog); an asset whose checksum is unknown passes straight through. While
    ``online()`` is false, bytes that are not cached are tried once and fail with
    :class:`~immichfs.errors.Offline` instead of waiting out the retry budget.
    """

    def __init__(
        self,
        inner: Any,
        cache: ContentCache,
        version_of: VersionOf,
        *,
        online: Callable[[], bool] = lambda: True,
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.version_of = version_of
        self.online = online
        self._into = hasattr(inner, "fetch_into")

    async def fetch_into(
        self,
        asset_id: str,
        start: int,
        view: memoryview,
        *,
        total: int | None = None,
        etag: str | None = None,
        progress: Callable[[int], None] | None = None,
        edited: bool = False,
    ) -> str | None:
        if edited:  # an edit's rendition: not the bytes the asset's checksum names
            return await self._fetch(asset_id, start, view, total, etag, progress, edited=True)
        checksum = await self.version_of(asset_id) if self.cache.limit > 0 else None
        if checksum is None or total is None:
            return await self._fetch(asset_id, start, view, total, etag, progress)
        key = content_key(asset_id, checksum)
        cache = self.cache
        served = 0
        stored_etag = cache.etag(key)
        if cache.covered(key, start, total) and (etag is None or etag == stored_etag):
            # readers waiting for the first blocks get them while the next are read
            tell = None
            if progress is not None:
                report = progress

                def tell(n: int) -> None:
                    trio.from_thread.run_sync(report, n)

            served = await trio.to_thread.run_sync(cache.read_into, key, start, view, total, tell)
            if served and progress is not None:
                progress(served)
        if served == len(view):
            cache.stats.hits += 1
            return stored_etag
        cache.stats.misses += 1
        rest = view[served:]
        filled = 0

        def note(n: int) -> None:
            nonlocal filled
            filled = n
            if progress is not None:
                progress(served + n)

        got_etag: str | None = None
        try:
            got_etag = await self._fetch(asset_id, start + served, rest, total, etag, note)
        finally:
            if filled:
                # what arrived is kept even if the rest failed (a resumed window goes on)
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        lambda: cache.write(
                            key,
                            start + served,
                            rest[:filled],
                            total,
                            etag=got_etag or etag or stored_etag,
                            checksum=checksum,
                        )
                    )
        return got_etag

    async def _fetch(
        self,
        asset_id: str,
        start: int,
        view: memoryview,
        total: int | None,
        etag: str | None,
        progress: Callable[[int], None] | None,
        *,
        edited: bool = False,
    ) -> str | None:
        """Fill ``view`` from the server (the inner fetcher). Offline, the one try that
        failed becomes :class:`Offline` (had the server been back, it would have worked)."""
        flag = {"edited": True} if edited else {}
        try:
            if self._into:
                result: str | None = await self.inner.fetch_into(
                    asset_id, start, view, total=total, etag=etag, progress=progress, **flag
                )
                return result
            fetch = cast(_Fetch, self.inner)
            filled = 0
            async with fetch(asset_id, start, start + len(view) - 1, **flag) as chunks:
                async for chunk in chunks:
                    n = len(chunk)
                    view[filled : filled + n] = chunk
                    filled += n
                    if progress is not None:
                        progress(filled)
            return None
        except TransientError as exc:
            if self.online():
                raise
            raise Offline(
                f"asset {asset_id}: the server is unreachable and these bytes are not cached"
            ) from exc

    def statistics(self) -> dict[str, int]:
        inner = getattr(self.inner, "statistics", None)
        return dict(inner()) if callable(inner) else {}

    async def aclose(self) -> None:
        closer = getattr(self.inner, "aclose", None)
        if closer is not None:
            await closer()
        await trio.to_thread.run_sync(self.cache.flush)
