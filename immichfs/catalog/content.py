"""The content cache: bytes of originals and thumbnails kept on local disk, verified.

Bytes live in plain sparse files under ``<dir>/blobs``, one per asset *version*
(asset id + checksum: a changed asset is a different file, so its old bytes are
never found for it). ``<dir>/content.sqlite`` (WAL) holds, per file, the check value
(XXH3-128, see :func:`_digest`) of every block of ``block_size`` bytes that was
written, and per entry its size, ETag, last read time and whether the whole file
matched Immich's checksum.

*Verified.* A block is served only if the bytes read back from disk have the
check value taken when they were written; anything else (a flipped bit, a truncated
file, a block recorded but never written before a crash) is dropped and fetched
again. When every block of an original is there, the whole file's SHA-1 is
compared with the asset's ``checksum`` by a background thread, once the cache has
been idle for a moment (:class:`_Verifier`: hashing costs about 1 ms of CPU per
MiB, which the read that fetched the bytes must not pay); a mismatch drops the
entry and stops caching that version (external-library assets, whose checksum
hashes the path, are never kept whole for that reason; see docs/SEMANTICS.md,
"Persistent cache and offline reads"). Until then its blocks are served as any
range is: by their own check values.

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

import errno
import hashlib
import itertools
import logging
import mmap
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
import xxhash

from immichfs.catalog.cachedir import FILE_MODE, ensure_private_dir, open_database
from immichfs.catalog.reader import AssetReader, RangeBody, RangeSource, ReaderPool
from immichfs.client.originals import ByteRange
from immichfs.errors import Offline, TransientError
from immichfs.model import checksum_hex

log = logging.getLogger(__name__)

MiB = 1024 * 1024
BLOCK_SIZE = MiB
#: what O_DIRECT writes must be a multiple of (and aligned to): one page covers every device
_DIRECT_UNIT = 4096
#: threads writing fetched blocks: an O_DIRECT write waits for the device, so several
#: keep it busy (blocks are independent: their order does not matter)
_WRITER_THREADS = 4
#: block records committed at once (a commit per block cost a tenth of a millisecond per
#: MiB); the writers commit too when they have nothing to do. A crash loses at most these
#: records: their bytes are fetched again, never served unverified
_BLOCKS_PER_COMMIT = 32
#: seconds without reads or writes before the whole-file check runs (see _Verifier)
_VERIFY_WHEN_IDLE = 2.0
#: bytes the disk is asked to read ahead of a cached file's reader
_DISK_AHEAD = 8 * MiB
#: files the disk reads ahead of a pass that repeats the last one (CachedSource._read_ahead)
_FILES_AHEAD = 2
#: block buffers kept for reuse by the files read from disk
_SPARE_BUFFERS = 8
#: most partly fetched blocks kept in memory until neighbouring ranges complete them
#: (read-ahead windows are not block-aligned)
_MAX_PARTIAL = 32

#: the on-disk format; a cache of another one is emptied (2: xxh3-128 block digests)
_FORMAT = 2
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
    """A block's check value: XXH3-128. It is there to catch damage on disk (flipped
    bits, torn or truncated writes: a wrong block passes one time in 2^128) at ~40 GB/s,
    so checking costs next to nothing beside the read; someone able to rewrite the
    block could rewrite the database beside it just as well, so a cryptographic hash
    would add cost, not safety. What ties the bytes to Immich is the whole file's
    SHA-1 against the asset's checksum."""
    return xxhash.xxh3_128_digest(block)


class _BlobWriter:
    """Writes blocks of one file. Whole, aligned blocks go to the disk directly
    (``O_DIRECT``: no copy into the page cache and no writeback later, a quarter of a
    millisecond of CPU per MiB less beside the read that fetched them); what the
    device cannot take so (a file's unaligned tail, an unaligned buffer, a filesystem
    without ``O_DIRECT``) goes through the page cache."""

    #: a filesystem refused O_DIRECT once: not tried again
    direct_refused = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._direct: int | None = None
        self._buffered: int | None = None

    def write(self, chunk: memoryview, at: int) -> None:
        if len(chunk) % _DIRECT_UNIT == 0 and not _BlobWriter.direct_refused:
            try:
                if self._direct is None:
                    self._direct = os.open(
                        self.path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, FILE_MODE
                    )
                os.pwrite(self._direct, chunk, at)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                if self._direct is None:
                    _BlobWriter.direct_refused = True
        if self._buffered is None:
            self._buffered = os.open(self.path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        os.pwrite(self._buffered, chunk, at)

    def disk_bytes(self) -> int:
        """What the file takes on disk now, as the filesystem counts it."""
        fd = self._direct if self._direct is not None else self._buffered
        return os.fstat(fd).st_blocks * 512 if fd is not None else 0

    def close(self) -> None:
        for fd in (self._direct, self._buffered):
            if fd is not None:
                os.close(fd)
        self._direct = self._buffered = None


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
    #: what the file takes on disk as far as is known: the larger of ``data`` and ``disk``
    held: int = 0
    data: int = 0  # bytes of the recorded blocks, in whole filesystem blocks
    #: the most the filesystem said the file takes (its own metadata included: a sparse
    #: file written out of order needs extent blocks besides its data)
    disk: int = 0

    def account(self) -> int:
        """Bring ``held`` up to date; returns by how much it changed."""
        held = max(self.data, self.disk)
        change, self.held = held - self.held, held
        return change

    @property
    def awaits_check(self) -> bool:
        """Complete, with a checksum to match, not matched yet."""
        return self.whole_sha1 is not None and not self.verified


@dataclass
class ContentStatistics:
    hits: int = 0  # reads served from disk
    misses: int = 0  # reads that needed the server
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
        verify_when_idle: float | None = _VERIFY_WHEN_IDLE,
    ) -> None:
        """``verify_when_idle``: seconds of quiet before complete files are checked
        against their checksums (None: not checked here, e.g. by ``immichfs cache``)."""
        self.directory = directory
        self.blobs = directory / "blobs"
        self.limit = max(0, int(limit))
        self.block_size = block_size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._refused: set[str] = set()
        #: when the cache last read or wrote bytes (monotonic): the verifier waits for quiet
        self.last_busy = time.monotonic()
        #: (key, block index) -> pieces (offset in the block -> bytes) of a partly fetched block
        self._partial: OrderedDict[tuple[str, int], dict[int, bytes]] = OrderedDict()
        self._held = 0  # bytes of recorded blocks
        self._reserved = 0  # bytes being written (counted against the limit already)
        self._writer: _Writer | None = None
        #: records of written blocks not committed yet (see _BLOCKS_PER_COMMIT)
        self._unsaved_entries: dict[str, tuple[Any, ...]] = {}
        self._unsaved_blocks: list[tuple[str, int, bytes]] = []
        self.verifier = _Verifier(self, verify_when_idle)
        self.stats = ContentStatistics(limit=self.limit)
        ensure_private_dir(directory)
        ensure_private_dir(self.blobs)
        self._db = open_database(directory / "content.sqlite", _SCHEMA, _FORMAT)
        self._load()
        self._evict(self.limit)  # a smaller --cache-size-mb than last time
        by_time = sorted(self._entries, key=lambda k: self._entries[k].last_read)
        #: each file's successor in the order the files were last read (see read_after)
        self._followed_by: dict[str, str] = dict(itertools.pairwise(by_time))
        for key, entry in self._entries.items():
            if entry.awaits_check and len(entry.blocks) == self._nblocks(entry.size):
                self.verifier.want(key)  # completed by an earlier mount, not checked yet

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
            on_disk[name] = path.stat()
        gone = []
        for key, entry in self._entries.items():
            found = on_disk.get(key)
            if found is None:
                gone.append(key)
                continue
            for idx in [i for i in entry.blocks if self._block_end(entry, i) > found.st_size]:
                del entry.blocks[idx]  # truncated: those blocks cannot be there
                self._forget_block(key, idx)
            entry.data = sum(self._on_disk(self._block_len(entry, i)) for i in entry.blocks)
            entry.disk = found.st_blocks * 512
            self._held += entry.account()
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
    # These run on the trio thread for every read, so they take no lock: the writer
    # holds it across database commits (a WAL checkpoint can take milliseconds), and
    # one dict lookup at a time is atomic. An answer made stale meanwhile is safe:
    # every block is verified when it is read.

    def covered(self, key: str, start: int, size: int) -> int:
        """How many bytes from ``start`` the recorded blocks cover (not yet verified)."""
        entry = self._entries.get(key)
        if entry is None or entry.size != size or start >= size:
            return 0
        blocks = entry.blocks
        pos = start
        while pos < size and (pos // self.block_size) in blocks:
            pos = self._block_end(entry, pos // self.block_size)
        return pos - start

    def blocks_of(self, key: str, size: int) -> frozenset[int]:
        """The indices of the recorded blocks of the ``size``-byte file ``key``."""
        entry = self._entries.get(key)
        if entry is None or entry.size != size:
            return frozenset()
        # one C call holding the GIL: the writer cannot change the dict meanwhile
        return frozenset(entry.blocks)

    def etag(self, key: str) -> str | None:
        entry = self._entries.get(key)
        return entry.etag if entry is not None else None

    def read_after(self, key: str) -> str | None:
        """The file read right after ``key`` when these files were last read (before
        this start): a pass over a library that repeats the last one opens it next."""
        return self._followed_by.get(key)

    def prefetch(self, key: str) -> None:
        """Ask the disk for ``key``'s bytes now (worker thread): they are in memory by
        the time the file is opened."""
        try:
            fd = os.open(self.blobs / key, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def has_whole(self, key: str) -> bool:
        """Every block of ``key`` is recorded and the file matched its checksum."""
        entry = self._entries.get(key)
        return entry is not None and entry.verified

    # -- reading -----------------------------------------------------------------------

    def read_into(
        self, key: str, start: int, view: memoryview, size: int, *, fd: int | None = None
    ) -> int:
        """Fill ``view`` from disk with the bytes at ``start`` of the ``size``-byte file,
        as far as verified blocks reach; returns how many bytes were filled (a prefix).
        A block that fails verification is dropped (the caller fetches it again).
        ``fd``: the file, already open (else it is opened for this read)."""
        if fd is None:
            try:
                own = os.open(self.blobs / key, os.O_RDONLY)
            except FileNotFoundError:
                self.drop(key)
                return 0
            try:
                return self.read_into(key, start, view, size, fd=own)
            finally:
                os.close(own)
        self.last_busy = time.monotonic()
        want = len(view)
        filled = 0
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
            whole = offset == 0 and take == block_len
            if whole:
                target = view[filled : filled + take]  # straight into the caller's buffer
                got = os.preadv(fd, [target], block_start)
                data: bytes | memoryview = target
            else:
                data = os.pread(fd, block_len, block_start)
                got = len(data)
            if not self._verified(key, idx, data, got == block_len, expected):
                break
            if not whole:
                view[filled : filled + take] = data[offset : offset + take]
            filled += take
        with self._lock:
            entry = self._entries.get(key)
            if filled and entry is not None:
                entry.last_read = self._clock()
            self.stats.bytes_served += filled
        return filled

    def _verified(
        self, key: str, idx: int, data: bytes | memoryview, whole: bool, expected: bytes
    ) -> bool:
        """Block ``idx`` as read back (``whole``: all of it came) has its check value;
        if not, it is dropped (to be fetched again)."""
        if whole and _digest(data) == expected:
            return True
        log.warning("cached block %d of %s failed verification: dropped", idx, key)
        with self._lock:
            self.stats.dropped_blocks += 1
        self._drop_block(key, idx)
        return False

    def read_block_cached(self, key: str, idx: int, size: int, fd: int, view: memoryview) -> bool:
        """Fill ``view`` with block ``idx`` if the page cache holds all of it and it
        verifies, without waiting for the disk or for the lock (the trio thread calls it:
        a thread hop costs more than the copy); False: ask :meth:`read_into` in a worker
        thread, which also drops a block that fails."""
        self.last_busy = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry.size != size:
            return False
        expected = entry.blocks.get(idx)
        if expected is None:
            return False
        try:
            got = os.preadv(fd, [view], idx * self.block_size, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not in memory (or no RWF_NOWAIT here)
            return False
        if got != len(view) or _digest(view) != expected:
            return False
        entry.last_read = self._clock()
        self.stats.bytes_served += got  # a statistic: a lost update would not matter
        return True

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
        self.last_busy = time.monotonic()
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
            # room first, then bytes: the files never take more than the limit (one
            # filesystem block more for the file's own metadata where the write leaves a
            # hole: see _Entry.disk)
            need = sum(self._on_disk(b - a) for _, a, b in todo)
            if todo and todo[0][0] and todo[0][0] - 1 not in have:
                need += _DIRECT_UNIT
            if need and self._held + self._reserved + need > self.limit:
                self._evict(self.limit - need, keep=key, keep_whole=True)
            while todo and self._held + self._reserved + need > self.limit:
                _, a, b = todo.pop()  # what does not fit is not kept
                need -= self._on_disk(b - a)
            if not todo:
                need = 0
            self._reserved += need
        written: list[tuple[int, bytes, int]] = []
        blob = _BlobWriter(self.blobs / key)
        disk = 0
        try:
            for idx, a, b in todo:
                chunk = view[a - start : b - start]
                blob.write(chunk, a)
                written.append((idx, _digest(chunk), b - a))
            disk = blob.disk_bytes()
        finally:
            blob.close()
            # the room reserved becomes bytes held in one step: no other writer finds
            # it free in between
            self._record(key, size, etag, checksum, written, disk, reserved=need)

    def _record(
        self,
        key: str,
        size: int,
        etag: str | None,
        checksum: str | None,
        written: list[tuple[int, bytes, int]],
        disk: int = 0,
        *,
        reserved: int = 0,
    ) -> None:
        """Commit the hashes of blocks whose bytes are written (bytes first: see above);
        ``disk``: what the file took on disk after they were written; ``reserved``: the
        room they had been given."""
        now = self._clock()
        whole = checksum_hex(checksum) if checksum else None
        with self._lock:
            self._reserved -= reserved
            if not written:
                return
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
            entry.data += added
            entry.disk = max(entry.disk, disk)
            self._held += entry.account()
            self.stats.bytes_written += added
            self.stats.bytes_on_disk = self._held
            complete = len(entry.blocks) == self._nblocks(size) and entry.awaits_check
            self._unsaved_entries[key] = (
                key,
                key.split(".")[0],
                size,
                etag,
                entry.whole_sha1,
                int(entry.verified),
                entry.last_read,
            )
            self._unsaved_blocks.extend(rows)
            if len(self._unsaved_blocks) >= _BLOCKS_PER_COMMIT:
                self._save_records()
        if complete:
            self.verifier.want(key)

    def _save_records(self) -> None:
        """Commit the records not committed yet. Lock held by the caller; every other
        change of the index comes after them (see _BLOCKS_PER_COMMIT)."""
        if self._unsaved_entries:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO entries (key, asset_id, size, etag, whole_sha1, "
                    "verified, last_read) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    self._unsaved_entries.values(),
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?)", self._unsaved_blocks
                )
            self._unsaved_entries.clear()
            self._unsaved_blocks.clear()

    def save_records(self) -> None:
        """Commit the records not committed yet (the writer, when it has nothing to do)."""
        with self._lock:
            self._save_records()

    def check_whole(self, key: str, pause: Callable[[], bool] = lambda: True) -> None:
        """All blocks of ``key`` are here: read back, each block must match its check
        value (else it is dropped, to be fetched again) and the file the asset's
        checksum (else the version is refused). ``pause()`` is called between blocks
        and returns False to give up (the check is then left for later)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.awaits_check:
                return
            expected, size = entry.whole_sha1, entry.size
            blocks = dict(entry.blocks)
        if len(blocks) != self._nblocks(size):
            return
        digest = hashlib.sha1()
        buf = bytearray(self.block_size)
        try:
            fd = os.open(self.blobs / key, os.O_RDONLY)
        except FileNotFoundError:
            self.drop(key)
            return
        try:
            for idx in range(self._nblocks(size)):
                if not pause():
                    return
                at = idx * self.block_size
                view = memoryview(buf)[: min(size, at + self.block_size) - at]
                got = os.preadv(fd, [view], at)
                if not self._verified(key, idx, view, got == len(view), blocks[idx]):
                    return  # fetched again when read; checked when complete again
                digest.update(view)
        finally:
            os.close(fd)
        matched = digest.hexdigest() == expected
        with self._lock:
            if self._entries.get(key) is not entry or len(entry.blocks) != len(blocks):
                return  # dropped (or begun again) meanwhile
            if matched:
                entry.verified = True
                self._save_records()
                with self._db:
                    self._db.execute("UPDATE entries SET verified = 1 WHERE key = ?", (key,))
                return
            self._drop_locked(key)
            self._refused.add(key)
            self._save_records()
            with self._db:
                self._db.execute("INSERT OR IGNORE INTO refused VALUES (?)", (key,))
        log.info(
            "cached original %s does not match its checksum: not kept "
            "(an external-library asset, or the server sent other bytes)",
            key,
        )

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
            # its bytes stay on disk (written over when fetched again): still held
            entry.data -= self._on_disk(self._block_len(entry, idx))
            self._held += entry.account()
            self.stats.bytes_on_disk = self._held
            entry.verified = False
            self._forget_block(key, idx)

    def _forget_block(self, key: str, idx: int) -> None:
        self._save_records()
        with self._db:
            self._db.execute("DELETE FROM blocks WHERE key = ? AND idx = ?", (key, idx))
            self._db.execute("UPDATE entries SET verified = 0 WHERE key = ?", (key,))

    def _drop_locked(self, key: str) -> None:
        # rows first, then the file: a crash in between leaves a file without entry,
        # which the next start removes
        entry = self._entries.pop(key, None)
        for pending in [k for k in self._partial if k[0] == key]:
            del self._partial[pending]
        self._save_records()
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
            self._save_records()
            with self._db:
                self._db.execute("DELETE FROM refused")

    def flush(self) -> None:
        """Save the records and the read times (kept in memory between writes)."""
        with self._lock:
            self._save_records()
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE entries SET last_read = ? WHERE key = ?",
                [(e.last_read, k) for k, e in self._entries.items()],
            )

    def close(self) -> None:
        """Write what the writer holds, save the read times, close the index (files
        not checked yet are checked by the next mount)."""
        self.verifier.close()
        if self._writer is not None:
            self._writer.close()
        self.flush()
        self._db.close()

    @property
    def writer(self) -> _Writer:
        """The thread that writes fetched bytes (started on first use)."""
        if self._writer is None:
            self._writer = _Writer(self)
        return self._writer

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return dict(self.stats.__dict__)


# -- the byte path -------------------------------------------------------------------------

#: asset id -> the checksum its bytes must have now; None when unknown
VersionOf = Callable[[str], Awaitable[str | None]]


class _Writer:
    """Writes fetched bytes into the cache from a few worker threads
    (``_WRITER_THREADS``): the reads that fetched them wait neither for the disk nor
    for the block hashing.

    Bytes wait in at most ``limit`` bytes of block-sized buffers, reused (fresh
    memory for every piece costs page faults worth a second copy); a fetch that
    finds none free waits for one (a fetch that failed drops its bytes instead)."""

    def __init__(self, cache: ContentCache, limit: int = 32 * MiB) -> None:
        self.cache = cache
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []
        self._unmade = max(1, limit // cache.block_size)  # buffers not allocated yet
        self._busy = 0
        self._waiting: list[tuple[trio.lowlevel.TrioToken, trio.Event]] = []
        self._drained = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _buffer(self) -> mmap.mmap | None:
        """A free buffer, if any (page-aligned memory: written with O_DIRECT). Lock held
        by the caller."""
        if self._free:
            buf = self._free.pop()
        elif self._unmade:
            self._unmade -= 1
            buf = mmap.mmap(-1, self.cache.block_size)
        else:
            return None
        self._busy += 1
        return buf

    def _pieces(self, start: int, data: memoryview) -> Iterator[tuple[int, memoryview]]:
        """``data`` cut at block boundaries: whole blocks stay whole."""
        bs = self.cache.block_size
        pos, end = start, start + len(data)
        while pos < end:
            cut = min(end, (pos // bs + 1) * bs)
            yield pos, data[pos - start : cut - start]
            pos = cut

    async def put(self, key: str, start: int, data: memoryview, size: int, **kw: Any) -> None:
        """Queue a copy of ``data`` (the caller's buffer is reused) for writing."""
        for at, piece in self._pieces(start, data):
            while True:
                with self._lock:
                    buf = self._buffer()
                    if buf is not None:
                        break
                    event = trio.Event()
                    self._waiting.append((trio.lowlevel.current_trio_token(), event))
                await event.wait()
            self._submit(key, at, piece, buf, size, kw)

    def put_nowait(self, key: str, start: int, data: memoryview, size: int, **kw: Any) -> None:
        """Queue a copy of ``data`` as far as buffers are free now; the rest is dropped."""
        for at, piece in self._pieces(start, data):
            with self._lock:
                buf = self._buffer()
            if buf is None:
                return
            self._submit(key, at, piece, buf, size, kw)

    def _submit(
        self, key: str, at: int, piece: memoryview, buf: mmap.mmap, size: int, kw: Any
    ) -> None:
        if self._closed:  # the cache is closing: nothing more is kept
            with self._lock:
                self._free.append(buf)
                self._busy -= 1
            return
        n = len(piece)
        buf[:n] = piece
        self._jobs.put((key, at, buf, n, size, kw))
        if not self._threads:
            for _ in range(_WRITER_THREADS):
                thread = threading.Thread(
                    target=self._run, name="immichfs-content-writer", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        # no lower priority: a read waits for this thread once the buffers are full
        while (job := self._jobs.get()) is not None:
            key, start, buf, n, size, kw = job
            try:
                self.cache.write(key, start, memoryview(buf)[:n], size, **kw)
            except Exception as exc:  # a full or failing disk: the bytes are not kept
                log.warning("content cache: cannot keep %s: %s", key, exc)
            finally:
                with self._lock:
                    self._free.append(buf)
                    self._busy -= 1
                    waiting, self._waiting = self._waiting, []
                    self._drained.notify_all()
                for token, event in waiting:
                    with suppress(trio.RunFinishedError):
                        token.run_sync_soon(event.set)
            if self._jobs.empty():  # nothing more to write: the index is brought up to date
                try:
                    self.cache.save_records()
                except Exception as exc:
                    log.warning("content cache: cannot save its index: %s", exc)

    def drain(self) -> None:
        """Block until everything queued is written (tests, unmount)."""
        with self._lock:
            self._drained.wait_for(lambda: self._busy == 0)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._closed = True
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()


class _Verifier:
    """Checks complete originals against their checksums (:meth:`ContentCache.check_whole`)
    in one thread of the lowest priority, and only once the cache has read and written
    nothing for ``when_idle`` seconds: a first pass over a library then runs at the
    speed of the network, and the hashing (about 1 ms of CPU per MiB) follows when the
    reading stops. A read coming back pauses a check between two blocks."""

    def __init__(self, cache: ContentCache, when_idle: float | None) -> None:
        self.cache = cache
        self.when_idle = when_idle
        self._pending: dict[str, None] = {}  # keys in the order they completed
        self._checking = False
        self.waits = 0  # times a check waited for quiet
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def want(self, key: str) -> None:
        with self._cond:
            if self._closed or self.when_idle is None:
                return
            self._pending[key] = None
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="immichfs-content-verifier", daemon=True
                )
                self._thread.start()

    def _quiet(self) -> bool:
        """Wait until the cache has been idle for ``when_idle`` s; False once closing."""
        assert self.when_idle is not None
        with self._cond:
            while not self._closed:
                left = self.cache.last_busy + self.when_idle - time.monotonic()
                if left <= 0:
                    return True
                self.waits += 1
                self._cond.wait(left)
            return False

    def _run(self) -> None:
        with suppress(OSError, AttributeError):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._checking = False
                    self._cond.notify_all()
                    self._cond.wait()
                if self._closed:
                    return
                key = next(iter(self._pending))
                del self._pending[key]
                self._checking = True
            try:
                self.cache.check_whole(key, self._quiet)
            except Exception as exc:  # a failing disk: checked again by the next mount
                log.warning("content cache: cannot check %s: %s", key, exc)

    def drain(self) -> None:
        """Block until every pending file is checked (tests)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or not (self._pending or self._checking))

    def close(self) -> None:
        """Stop; what is not checked yet stays unchecked (the next mount checks it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()


@dataclass
class _TeeBody:
    """A body whose bytes are also handed to the cache's writer as they are read."""

    body: RangeBody
    writer: _Writer
    want: ByteRange
    key: str
    checksum: str
    position: int = field(init=False)

    def __post_init__(self) -> None:
        self.position = self.want.start

    @property
    def etag(self) -> str | None:
        return self.body.etag

    async def read_into(
        self, view: memoryview, progress: Callable[[int], None] | None = None
    ) -> None:
        filled = 0

        def note(n: int) -> None:
            nonlocal filled
            filled = n
            if progress is not None:
                progress(n)

        at, self.position = self.position, self.position + len(view)
        total = self.want.total
        assert total is not None
        keep = {"etag": self.body.etag or self.want.etag, "checksum": self.checksum}
        try:
            await self.body.read_into(view, note)
        except BaseException:
            if filled:  # what arrived is kept even if the rest failed (a resumed range goes on)
                self.writer.put_nowait(self.key, at, view[:filled], total, **keep)
            raise
        # the reader may be closed meanwhile (the last bytes were read): kept all the same
        with trio.CancelScope(shield=True):
            await self.writer.put(self.key, at, view, total, **keep)


class CachedSource:
    """A ``RangeSource`` that keeps what it fetches from ``inner`` in a
    :class:`ContentCache`, and opens files that read from the cache first
    (:meth:`open_file`).

    ``version_of(asset_id)`` names the checksum the asset has now (from the
    catalog); an asset whose checksum is unknown passes straight through. While
    ``online()`` is false, bytes that are not cached are tried once and fail with
    :class:`~immichfs.errors.Offline` instead of waiting out the retry budget.
    """

    def __init__(
        self,
        inner: RangeSource,
        cache: ContentCache,
        version_of: VersionOf,
        *,
        online: Callable[[], bool] = lambda: True,
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.version_of = version_of
        self.online = online
        self._spare: list[bytearray] = []  # see CachedFile
        self._last_opened: str | None = None
        self._in_order = False  # the last file opened came after the one before, as last time

    async def _checksum(self, asset_id: str) -> str | None:
        """The checksum whose bytes are kept for ``asset_id`` (None: not kept)."""
        return await self.version_of(asset_id) if self.cache.limit > 0 else None

    @asynccontextmanager
    async def open_range(self, want: ByteRange) -> AsyncIterator[RangeBody]:
        # an edit's rendition is not the bytes the asset's checksum names: not kept
        checksum = None
        if not want.edited and want.total is not None:
            checksum = await self._checksum(want.asset_id)
        try:
            async with self.inner.open_range(want) as body:
                if checksum is None:
                    yield body
                else:
                    key = content_key(want.asset_id, checksum)
                    yield _TeeBody(body, self.cache.writer, want, key, checksum)
        except TransientError as exc:
            # offline, the one try that failed becomes Offline (had the server been
            # back, it would have worked)
            if self.online():
                raise
            raise Offline(
                f"asset {want.asset_id}: the server is unreachable and these bytes are not cached"
            ) from exc

    async def open_file(self, asset_id: str, size: int, readers: ReaderPool) -> OpenOriginal:
        """A handle on an original: its cached blocks from disk, the rest through
        ``readers`` (the read-ahead reader over this source, created when needed)."""
        checksum = await self._checksum(asset_id)
        if checksum is None:
            return readers.open(asset_id, size)
        key = content_key(asset_id, checksum)
        self._read_ahead(key, readers)
        handle = CachedFile(self.cache, asset_id, key, size, readers, spare=self._spare)
        handle.start()
        return handle

    def _read_ahead(self, key: str, readers: ReaderPool) -> None:
        """Files opened in the order they were read last time (a second pass of a
        training job, a repeated ``cp -r``): the disk reads the next ones while this one
        is served, as it reads ahead within a file. Nothing is asked for after a file
        opened out of that order."""
        cache = self.cache
        last, self._last_opened = self._last_opened, key
        streak, self._in_order = self._in_order, last is not None and cache.read_after(last) == key
        if not self._in_order:
            return
        ahead = cache.read_after(key)
        for n in range(1, _FILES_AHEAD + 1):
            if ahead is None:
                break
            if n == _FILES_AHEAD or not streak:  # the nearer ones were asked for already
                readers.spawn(partial(trio.to_thread.run_sync, cache.prefetch, ahead))
            ahead = cache.read_after(ahead)


class _Block:
    """One block being read from disk for a :class:`CachedFile`."""

    __slots__ = ("data", "done", "readers")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytearray | None = None  # None once done: not verified, or not there
        self.readers = 0  # reads waiting for it (its buffer is not reused meanwhile)


class CachedFile:
    """An open original: reads that verified blocks on disk cover are served from the
    cache, any other read (or one whose block fails verification) from the network
    reader, whose fetches the cache keeps.

    Blocks are read and verified in worker threads; while reads go forward, the next
    ``AHEAD`` blocks are read before they are asked for, so a sequential reader
    finds them in memory (the thread hop and the disk stay off its path). At most
    ``AHEAD + 2`` blocks are held per handle."""

    AHEAD = 2

    def __init__(
        self,
        cache: ContentCache,
        asset_id: str,
        key: str,
        size: int,
        readers: ReaderPool,
        *,
        spare: list[bytearray] | None = None,
    ) -> None:
        """``spare``: block buffers to reuse, shared by the files of one source (only
        ever touched on the trio thread)."""
        self.cache = cache
        self.asset_id = asset_id
        self.key = key
        self.size = size
        self._readers = readers
        self._spare = spare if spare is not None else []
        # the blocks on disk when opened: served from there; the rest comes through the
        # reader, whole (blocks its fetches write meanwhile are in its windows already)
        self._on_disk = cache.blocks_of(key, size)
        self._reader: AssetReader | None = None
        self._fd: int | None = None
        if self._on_disk:
            try:  # here, not in a worker: a block the page cache holds is read at once
                self._fd = os.open(cache.blobs / key, os.O_RDONLY)
            except FileNotFoundError:
                self._on_disk = frozenset()
        self._blocks: dict[int, _Block] = {}
        self._next = -1  # the offset a sequential read would start at
        self._reading = 0  # worker threads using the descriptor
        self._closed = False

    def __repr__(self) -> str:
        return f"<CachedFile {self.key} size={self.size}>"

    def start(self) -> None:
        """Begin reading the first blocks, as a read from the start would (most opens
        are followed by one): the disk is busy while the kernel sends that read."""
        bs = self.cache.block_size
        if 0 in self._on_disk:
            for idx in range(min(self.AHEAD, (self.size - 1) // bs) + 1):
                if idx in self._on_disk:
                    self._start(idx)
            self._next = 0

    @property
    def reader(self) -> AssetReader:
        if self._reader is None:
            self._reader = self._readers.open(self.asset_id, self.size)
            # the cached bytes' version: a file changed since is StaleAsset, not a mix
            self._reader.etag = self._reader.etag or self.cache.etag(self.key)
        return self._reader

    async def read(self, offset: int, size: int) -> bytes:
        data = await self.read_buffer(offset, size)
        return data if isinstance(data, bytes) else bytes(data)

    async def read_buffer(self, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        stats = self.cache.stats
        bs = self.cache.block_size
        if all(idx in self._on_disk for idx in range(offset // bs, (end - 1) // bs + 1)):
            data = await self._from_disk(offset, end)
            if data is not None:
                stats.hits += 1
                return data
        stats.misses += 1
        self._next = -1
        return await self.reader.read_buffer(offset, size)

    async def _from_disk(self, offset: int, end: int) -> bytes | memoryview | None:
        """Bytes ``offset..end`` from verified blocks, or None."""
        bs = self.cache.block_size
        first, last = offset // bs, (end - 1) // bs
        # no checkpoint until every block is asked for
        sequential = offset in (0, self._next)  # a file's start: it will likely go on
        self._next = end
        ahead = self.AHEAD if sequential else 0
        for idx in range(first, min(last + ahead, (self.size - 1) // bs) + 1):
            if idx not in self._blocks and idx in self._on_disk:
                self._start(idx)
        wanted = [(idx, self._blocks[idx]) for idx in range(first, last + 1)]
        for idx in [i for i in self._blocks if i < first - 1 or i > last + ahead]:
            self._recycle(self._blocks.pop(idx))  # behind the reader (one kept: reads
            # need not be aligned)
        for _, block in wanted:
            block.readers += 1
        try:
            for _, block in wanted:
                await block.done.wait()
        finally:
            for _, block in wanted:
                block.readers -= 1
        # no checkpoint from here on: the buffers sliced are not reused before the
        # reply is sent (pyfuse3 copies it out before anything else runs)
        pieces = []
        for idx, block in wanted:
            if block.data is None:  # failed verification (dropped) or gone: the server's
                self._blocks.pop(idx, None)
                self._on_disk = self._on_disk - {idx}
                return None
            at = idx * bs
            pieces.append(memoryview(block.data)[max(offset, at) - at : min(end, at + bs) - at])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _recycle(self, block: _Block) -> None:
        """Give a block's buffer back for the next block read (a fresh megabyte costs
        page faults and zeroing worth more than the copy into it)."""
        if block.done.is_set() and block.data is not None and not block.readers:
            spare = self._spare
            if len(spare) < _SPARE_BUFFERS and len(block.data) == self.cache.block_size:
                spare.append(block.data)
            block.data = None

    def _buffer(self, idx: int) -> bytearray:
        length = self._block_len(idx)
        if length == self.cache.block_size and self._spare:
            return self._spare.pop()
        return bytearray(length)

    def _start(self, idx: int) -> None:
        """Read block ``idx``: right here if the page cache holds it (a thread hop costs
        more than the copy), else in a worker thread."""
        block = self._blocks[idx] = _Block()
        buf = self._buffer(idx)
        fd = self._fd
        if fd is not None and self.cache.read_block_cached(
            self.key, idx, self.size, fd, memoryview(buf)
        ):
            block.data = buf
            block.done.set()
            return
        self._reading += 1

        async def run() -> None:
            try:
                block.data = await trio.to_thread.run_sync(self._read_block, idx, buf)
            finally:
                self._reading -= 1
                block.done.set()
                if self._closed and self._reading == 0:
                    self._close_fd()

        self._readers.spawn(run)

    def _read_block(self, idx: int, buf: bytearray) -> bytearray | None:
        """Block ``idx`` into ``buf``, verified (worker thread)."""
        fd = self._fd
        if fd is None:
            return None
        bs = self.cache.block_size
        # the disk reads the blocks after this one while this one is checked (the
        # kernel's own read-ahead of one file is 128 KiB: too shallow a queue)
        os.posix_fadvise(fd, idx * bs, _DISK_AHEAD, os.POSIX_FADV_WILLNEED)
        got = self.cache.read_into(self.key, idx * bs, memoryview(buf), self.size, fd=fd)
        return buf if got == len(buf) else None

    def _block_len(self, idx: int) -> int:
        bs = self.cache.block_size
        return min(self.size, (idx + 1) * bs) - idx * bs

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def aclose(self) -> None:
        self._closed = True
        for block in self._blocks.values():
            self._recycle(block)
        self._blocks.clear()
        if self._reading == 0:  # else the last block read in flight closes it
            self._close_fd()
        if self._reader is not None:
            await self._reader.aclose()


#: what :meth:`CachedSource.open_file` hands out
OpenOriginal = CachedFile | AssetReader
