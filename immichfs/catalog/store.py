"""The catalog on disk: what a mount learned about the library, kept for the next one.

One SQLite database (WAL) per server and user (``catalog.sqlite`` in the cache
directory, see :mod:`immichfs.catalog.cachedir`):

- ``assets``: every asset any saved listing holds, one row each, in columns
  (rebuilding 100,000 ``Asset`` objects from columns takes a fraction of a second;
  parsing JSON took several);
- ``listings``: a directory's asset ids in order (the timeline, an album, a
  person, a tag, favourites, archive), keyed by the directory's key, with the time
  it was saved: the memberships;
- ``thumbnails``: the length and Content-Type of each thumbnail seen;
- ``answers``: the collection lists (albums, people, tags, date buckets) as the
  server sent them (JSON), for offline mounts;
- ``state``: small values (the newest ``updatedAt`` seen, when the catalog was
  last brought up to date).

Writes happen in one transaction each, so a ``kill -9`` leaves either the old or
the new listing, never half of one. Methods are synchronous and thread-safe;
callers on the trio loop run them in a worker thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from immichfs.catalog.cachedir import open_database
from immichfs.catalog.content import ContentCache, content_key
from immichfs.errors import Offline, TransientError
from immichfs.model import Asset

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size INTEGER,
    file_created_at REAL NOT NULL,
    file_modified_at REAL NOT NULL,
    local_datetime TEXT,
    updated_at REAL,
    created_at REAL,
    is_favorite INTEGER NOT NULL,
    is_archived INTEGER NOT NULL,
    is_trashed INTEGER NOT NULL,
    visibility TEXT NOT NULL,
    mime TEXT,
    width INTEGER,
    height INTEGER,
    duration_ms INTEGER,
    live_photo_video_id TEXT,
    owner_id TEXT,
    extra TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listings (
    key TEXT PRIMARY KEY,
    saved_at REAL NOT NULL,
    ids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS thumbnails (
    size TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    checksum TEXT NOT NULL,
    length INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (size, asset_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    saved_at REAL NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_COLUMNS = (
    "id, type, name, checksum, size, file_created_at, file_modified_at, local_datetime, "
    "updated_at, created_at, is_favorite, is_archived, is_trashed, visibility, mime, width, "
    "height, duration_ms, live_photo_video_id, owner_id, extra"
)


def key_text(key: Hashable) -> str | None:
    """A directory key as stored (JSON of its parts); None for keys that are not plain."""
    parts = key if isinstance(key, tuple) else (key,)
    if not all(isinstance(p, str | int | bool) for p in parts):
        return None
    return json.dumps(list(parts), separators=(",", ":"))


def _ts(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _row(asset: Asset) -> tuple[Any, ...]:
    extra = None
    if asset.exif or asset.people or asset.tags:
        extra = json.dumps(
            {"exif": dict(asset.exif), "people": asset.people, "tags": asset.tags},
            default=str,
            separators=(",", ":"),
        )
    return (
        asset.id,
        asset.type,
        asset.original_file_name,
        asset.checksum,
        asset.size,
        asset.file_created_at.timestamp(),
        asset.file_modified_at.timestamp(),
        asset.local_datetime.isoformat() if asset.local_datetime is not None else None,
        _ts(asset.updated_at),
        _ts(asset.created_at),
        int(asset.is_favorite),
        int(asset.is_archived),
        int(asset.is_trashed),
        asset.visibility,
        asset.original_mime_type,
        asset.width,
        asset.height,
        asset.duration_ms,
        asset.live_photo_video_id,
        asset.owner_id,
        extra,
    )


def _asset(row: Sequence[Any]) -> Asset:
    from_ts = datetime.fromtimestamp
    extra = json.loads(row[20]) if row[20] else None
    return Asset(
        id=row[0],
        type=row[1],
        original_file_name=row[2],
        checksum=row[3],
        size=row[4],
        file_created_at=from_ts(row[5], UTC),
        file_modified_at=from_ts(row[6], UTC),
        local_datetime=datetime.fromisoformat(row[7]) if row[7] else None,
        updated_at=from_ts(row[8], UTC) if row[8] is not None else None,
        created_at=from_ts(row[9], UTC) if row[9] is not None else None,
        is_favorite=bool(row[10]),
        is_archived=bool(row[11]),
        is_trashed=bool(row[12]),
        visibility=row[13],
        original_mime_type=row[14],
        width=row[15],
        height=row[16],
        duration_ms=row[17],
        live_photo_video_id=row[18],
        owner_id=row[19],
        exif=extra["exif"] if extra else {},
        people=tuple(extra["people"]) if extra else (),
        tags=tuple(extra["tags"]) if extra else (),
    )


class CatalogStore:
    """The on-disk catalog of one server and user."""

    def __init__(self, path: Path, *, clock: Any = time.time, url_hint: str = "immichfs") -> None:
        self.path = path
        self.url_hint = url_hint
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_database(path)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            # written by another version of immichfs: start afresh rather than misread it
            log.warning("catalog %s has schema %s: starting a new one", path, version)
            with self._db:
                for table in ("assets", "listings", "thumbnails", "answers", "state"):
                    self._db.execute(f"DROP TABLE IF EXISTS {table}")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        #: asset id -> Asset, loaded on first need (a listing or an offline lookup)
        self._assets: dict[str, Asset] | None = None

    @property
    def empty(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM listings LIMIT 1").fetchone() is None

    # -- listings

    def save_listing(self, key: Hashable, assets: Iterable[Asset]) -> None:
        """Remember ``key``'s assets (replacing what was saved for it)."""
        text = key_text(key)
        if text is None:
            return
        assets = list(assets)
        rows = [_row(a) for a in assets]
        ids = "\n".join(a.id for a in assets)
        with self._lock, self._db:
            self._db.executemany(
                f"INSERT OR REPLACE INTO assets ({_COLUMNS}) VALUES ({', '.join('?' * 21)})",
                rows,
            )
            self._db.execute(
                "INSERT OR REPLACE INTO listings VALUES (?, ?, ?)", (text, self._clock(), ids)
            )
            newest = max((a.updated_at for a in assets if a.updated_at), default=None)
            if newest is not None:
                old = self._state("newest_updated_at")
                if old is None or float(old) < newest.timestamp():
                    self._set_state("newest_updated_at", str(newest.timestamp()))
            if self._assets is not None:
                for asset in assets:
                    self._assets[asset.id] = asset

    def saved_listing(self, key: Hashable) -> tuple[list[Asset], float] | None:
        """``key``'s assets as last saved, and when (epoch seconds); None if never saved."""
        text = key_text(key)
        if text is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT ids, saved_at FROM listings WHERE key = ?", (text,)
            ).fetchone()
            if row is None:
                return None
            assets = self._all_assets()
            found = [assets[i] for i in row[0].split("\n") if i and i in assets]
            return found, float(row[1])

    def saved_asset(self, asset_id: str) -> Asset | None:
        with self._lock:
            if self._assets is not None:
                return self._assets.get(asset_id)
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM assets WHERE id = ?", (asset_id,)
            ).fetchone()
            return _asset(row) if row is not None else None

    def checksum(self, asset_id: str) -> str | None:
        asset = self.saved_asset(asset_id)
        return asset.checksum if asset is not None and asset.checksum else None

    def forget_assets(self, asset_ids: Iterable[str]) -> None:
        """Assets known to be gone (permanently deleted): out of every listing."""
        gone = set(asset_ids)
        if not gone:
            return
        with self._lock, self._db:
            self._db.executemany("DELETE FROM assets WHERE id = ?", [(i,) for i in gone])
            for key, ids in self._db.execute("SELECT key, ids FROM listings").fetchall():
                kept = [i for i in ids.split("\n") if i not in gone]
                if len(kept) != ids.count("\n") + 1:
                    self._db.execute(
                        "UPDATE listings SET ids = ? WHERE key = ?", ("\n".join(kept), key)
                    )
            if self._assets is not None:
                for asset_id in gone:
                    self._assets.pop(asset_id, None)

    def prune_assets(self) -> int:
        """Drop assets no saved listing holds any more; returns how many."""
        with self._lock, self._db:
            held: set[str] = set()
            for (ids,) in self._db.execute("SELECT ids FROM listings"):
                held.update(ids.split("\n"))
            stale = [
                i for (i,) in self._db.execute("SELECT id FROM assets").fetchall() if i not in held
            ]
            self._db.executemany("DELETE FROM assets WHERE id = ?", [(i,) for i in stale])
            if self._assets is not None:
                for asset_id in stale:
                    self._assets.pop(asset_id, None)
            return len(stale)

    def _all_assets(self) -> dict[str, Asset]:
        # lock held by the caller
        if self._assets is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM assets").fetchall()
            self._assets = {row[0]: _asset(row) for row in rows}
        return self._assets

    # -- collection lists

    def save_answer(self, key: Hashable, data: Any) -> None:
        text = key_text(key)
        if text is None:
            return
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                (text, self._clock(), json.dumps(data, separators=(",", ":"))),
            )

    def saved_answer(self, key: Hashable) -> Any:
        """What :meth:`save_answer` kept for ``key``, or None."""
        text = key_text(key)
        if text is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT json FROM answers WHERE key = ?", (text,)).fetchone()
        return json.loads(row[0]) if row is not None else None

    # -- thumbnails

    def save_thumbnail(self, size: str, asset: Asset, length: int, content_type: str) -> None:
        """Remember a thumbnail's length and type (for this version of the asset)."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO thumbnails VALUES (?, ?, ?, ?, ?)",
                (size, asset.id, asset.checksum, length, content_type),
            )
            self._set_state(f"thumbnail-type:{size}", content_type)

    def saved_thumbnail(self, size: str, asset: Asset) -> tuple[int, str] | None:
        """(length, content type) of ``asset``'s ``size`` thumbnail, if seen for this version."""
        with self._lock:
            row = self._db.execute(
                "SELECT length, content_type FROM thumbnails "
                "WHERE size = ? AND asset_id = ? AND checksum = ?",
                (size, asset.id, asset.checksum),
            ).fetchone()
        return (int(row[0]), str(row[1])) if row is not None else None

    def thumbnails(self, size: str) -> dict[str, tuple[str, int, str]]:
        """asset id -> (checksum, length, content type) of every ``size`` thumbnail seen."""
        with self._lock:
            return {
                asset_id: (checksum, length, content_type)
                for asset_id, checksum, length, content_type in self._db.execute(
                    "SELECT asset_id, checksum, length, content_type FROM thumbnails "
                    "WHERE size = ?",
                    (size,),
                )
            }

    def thumbnail_type(self, size: str) -> str | None:
        """The Content-Type last seen for ``size`` thumbnails."""
        return self.state(f"thumbnail-type:{size}")

    # -- state

    def _state(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row is not None else None

    def _set_state(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, value))

    def state(self, name: str) -> str | None:
        with self._lock:
            return self._state(name)

    def set_state(self, name: str, value: str) -> None:
        with self._lock, self._db:
            self._set_state(name, value)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            count = self._db.execute("SELECT count(*) FROM assets").fetchone()[0]
            listings = self._db.execute("SELECT count(*) FROM listings").fetchone()[0]
            thumbs = self._db.execute("SELECT count(*) FROM thumbnails").fetchone()[0]
        size = sum(
            p.stat().st_size
            for p in (self.path, self.path.with_name(self.path.name + "-wal"))
            if p.exists()
        )
        return {"assets": count, "listings": listings, "thumbnails": thumbs, "bytes": size}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Reachability:
    """Whether the server answers, as last seen (``immichfs status`` shows it)."""

    def __init__(self, online: bool = True) -> None:
        self.online = online
        self.changed_at = time.time()
        self.reason = ""

    def set(self, online: bool, reason: str = "") -> None:
        if online != self.online:
            self.changed_at = time.time()
        self.online = online
        self.reason = reason

    def __call__(self) -> bool:
        return self.online


AssetsLoader = Callable[[], Awaitable[Sequence[Asset]]]
OnFresh = Callable[[Hashable, Sequence[Asset]], Awaitable[None]]
#: directory kinds never saved: a search is a question, not part of the library
_NOT_SAVED = ("search",)


class CatalogMemory:
    """Listings served from the on-disk catalog, then brought up to date.

    - The first load of a directory in a mount whose catalog holds it returns the
      saved assets at once and reloads them from the server in the background,
      starting a second later (plus a second per 25,000 assets, at most 10 s: the
      first ``ls`` goes first). When that is done, ``on_fresh(key, assets)`` is
      called (the caller forgets the listing it built, so the next ``ls`` shows
      the fresh one, which this hands out without a second request). Until then
      the saved assets are *unconfirmed*: :meth:`confirmed` asks the server for
      one of them alone (or waits for the reload), so cached bytes of an asset
      whose checksum changed while unmounted are never served for it.
    - Every listing loaded from the server is saved (in a worker thread).
    - When the server is unreachable (``reachability`` says so, or a load fails
      with a transient error after its retries) the saved listing is served,
      however old; without one, :class:`~immichfs.errors.Offline` is raised.
    """

    def __init__(
        self,
        store: CatalogStore,
        reachability: Reachability,
        *,
        on_fresh: OnFresh | None = None,
    ) -> None:
        self.store = store
        self.reachability = reachability
        self.on_fresh = on_fresh
        self._seen: set[Hashable] = set()
        self._fresh: dict[Hashable, Sequence[Asset]] = {}
        #: collection lists as last saved (saved again only when they change)
        self._answers: dict[Hashable, list[dict[str, Any]]] = {}
        #: size -> asset id -> (checksum, length, content type) of thumbnails seen
        self._thumbnails: dict[str, dict[str, tuple[str, int, str]]] = {}
        #: asset id -> the reloads of saved listings holding it, still running
        self._unconfirmed: dict[str, list[trio.Event]] = {}
        self._warned = False
        self.served_saved = 0
        self.reloads = 0
        #: the content cache, for thumbnails (None: no bytes kept)
        self.content: ContentCache | None = None

    def _kept(self, key: Hashable) -> bool:
        return not (isinstance(key, tuple) and key[:1] in (_NOT_SAVED,)) and (
            key_text(key) is not None
        )

    async def load(
        self,
        key: Hashable,
        loader: AssetsLoader,
        *,
        remember: Callable[[Sequence[Asset]], None] | None = None,
    ) -> Sequence[Asset]:
        """``key``'s assets: saved, fresh or from ``loader`` as described above;
        ``remember`` is given the assets whenever they come from disk."""
        if not self._kept(key):
            return await loader()
        fresh = self._fresh.pop(key, None)
        if fresh is not None:
            return fresh
        if key not in self._seen or not self.reachability():
            self._seen.add(key)
            saved = await trio.to_thread.run_sync(self.store.saved_listing, key)
            if saved is not None:
                self.served_saved += 1
                if remember is not None:
                    remember(saved[0])
                if self.reachability():
                    done = trio.Event()
                    ids = [a.id for a in saved[0]]
                    for asset_id in ids:
                        self._unconfirmed.setdefault(asset_id, []).append(done)
                    # started a moment later: the first `ls` after a remount is served
                    # before the reload competes with it for this process's one core
                    delay = min(10.0, 1.0 + len(ids) / 25_000)
                    trio.lowlevel.spawn_system_task(self._reload, key, loader, ids, done, delay)
                return saved[0]
            if not self.reachability():
                raise Offline(
                    f"{self.store.url_hint}: offline, and this directory was never listed"
                )
        try:
            assets = await loader()
        except TransientError as exc:
            # after the connector's retries: the server is away; until the mount sees it
            # back, saved listings are served at once and uncached bytes fail fast
            self.reachability.set(False, str(exc))
            saved = await trio.to_thread.run_sync(self.store.saved_listing, key)
            if saved is None:
                raise
            if not self._warned:
                self._warned = True
                log.warning("the server does not answer (%s): serving the saved catalog", exc)
            self.served_saved += 1
            if remember is not None:
                remember(saved[0])
            return saved[0]
        trio.lowlevel.spawn_system_task(self._save, key, assets)
        return assets

    async def _save(self, key: Hashable, assets: Sequence[Asset]) -> None:
        try:
            await trio.to_thread.run_sync(self.store.save_listing, key, assets)
        except Exception as exc:  # a full disk must not end the mount
            log.warning("cannot save the catalog: %s", exc)

    async def _reload(
        self,
        key: Hashable,
        loader: AssetsLoader,
        ids: list[str],
        done: trio.Event,
        delay: float = 0.0,
    ) -> None:
        try:
            try:
                await trio.sleep(delay)
                assets = await loader()
                await trio.to_thread.run_sync(self.store.save_listing, key, assets)
            except Exception as exc:
                # offline now (a transient error) or a real answer (the directory is
                # gone): either way the saved listing stays until it expires
                if isinstance(exc, TransientError):
                    self.reachability.set(False, str(exc))
                log.info("bringing %r up to date failed (the saved listing stays): %s", key, exc)
                self._seen.discard(key)  # the next load of it tries again
                return
            self.reloads += 1
            self._fresh[key] = assets
            if self.on_fresh is not None:
                try:
                    await self.on_fresh(key, assets)
                except Exception:
                    log.exception("dropping the saved listing of %r failed", key)
        finally:
            for asset_id in ids:
                waits = self._unconfirmed.get(asset_id)
                if waits is not None and done in waits:
                    waits.remove(done)
                    if not waits:
                        del self._unconfirmed[asset_id]
            done.set()

    async def confirmed(
        self, asset_id: str, fetch: Callable[[], Awaitable[Asset]] | None = None
    ) -> Asset | None:
        """Make sure ``asset_id``'s metadata is the server's, not only the catalog's
        (only right after a remount, while a saved listing holding it is being
        reloaded; offline there is nothing to check). With ``fetch``, the asset is
        asked for alone (one small request) and returned; without, this waits for
        the reload. None when nothing needed checking."""
        if not self.reachability() or asset_id not in self._unconfirmed:
            return None
        if fetch is None:
            while self.reachability() and asset_id in self._unconfirmed:
                await self._unconfirmed[asset_id][0].wait()
            return None
        asset = await fetch()  # NotFound: deleted while unmounted, as it should fail
        self._unconfirmed.pop(asset_id, None)
        return asset

    async def answer(
        self, key: Hashable, fetch: Callable[[], Awaitable[list[dict[str, Any]]]]
    ) -> list[dict[str, Any]]:
        """A collection list from the server (saved when it changed), else as saved."""
        if self.reachability():
            try:
                data = await fetch()
            except TransientError as exc:
                self.reachability.set(False, str(exc))
            else:
                if self._answers.get(key) != data:
                    self._answers[key] = data
                    trio.lowlevel.spawn_system_task(self._save_answer, key, data)
                return data
        saved = await trio.to_thread.run_sync(self.store.saved_answer, key)
        if not isinstance(saved, list):
            raise Offline(f"{self.store.url_hint}: offline, and {key!r} was never listed")
        return saved

    async def _save_answer(self, key: Hashable, data: list[dict[str, Any]]) -> None:
        try:
            await trio.to_thread.run_sync(self.store.save_answer, key, data)
        except Exception as exc:  # a full disk must not end the mount
            log.warning("cannot save the catalog: %s", exc)

    async def asset(self, asset_id: str, loader: Callable[[], Awaitable[Asset]]) -> Asset:
        """One asset from the server, else (unreachable) as saved."""
        if self.reachability():
            try:
                return await loader()
            except TransientError:
                pass
        saved = await trio.to_thread.run_sync(self.store.saved_asset, asset_id)
        if saved is None:
            raise Offline(
                f"asset {asset_id}: the server is unreachable and it is not in the catalog"
            )
        return saved

    async def thumbnail(
        self, asset: Asset, size: str, fetch: Callable[[], Awaitable[tuple[bytes, str]]]
    ) -> tuple[bytes, str]:
        """(bytes, content type) of a thumbnail: verified from disk, else fetched and kept."""
        content = self.content
        key = content_key(asset.id, asset.checksum, size) if asset.checksum else None
        if content is not None and key is not None:
            info = await trio.to_thread.run_sync(self.store.saved_thumbnail, size, asset)
            if info is not None:
                data = await trio.to_thread.run_sync(content.get_small, key)
                if data is not None and len(data) == info[0]:
                    content.stats.hits += 1
                    return data, info[1]
            content.stats.misses += 1
        if not self.reachability():
            raise Offline(f"asset {asset.id}: offline, and its {size} is not cached")
        data, content_type = await fetch()

        self._known_thumbnails(size)[asset.id] = (asset.checksum, len(data), content_type)

        def keep() -> None:
            self.store.save_thumbnail(size, asset, len(data), content_type)
            if content is not None and key is not None:
                content.put_small(key, data)

        await trio.to_thread.run_sync(keep)
        return data, content_type

    async def remember_thumbnail(
        self, asset: Asset, size: str, length: int, content_type: str
    ) -> None:
        """Keep a thumbnail's length and type (learned without its bytes)."""
        self._known_thumbnails(size)[asset.id] = (asset.checksum, length, content_type)
        await trio.to_thread.run_sync(self.store.save_thumbnail, size, asset, length, content_type)

    def _known_thumbnails(self, size: str) -> dict[str, tuple[str, int, str]]:
        known = self._thumbnails.get(size)
        if known is None:
            # once per size: ``ls -l`` of a thumbnail directory asks for every entry
            known = self._thumbnails[size] = self.store.thumbnails(size)
        return known

    def known_thumbnail_info(self, asset: Asset, size: str) -> tuple[int, str] | None:
        """(length, content type) of ``asset``'s thumbnail as saved, without a download."""
        found = self._known_thumbnails(size).get(asset.id)
        if found is None or found[0] != asset.checksum:
            return None
        return found[1], found[2]

    def thumbnail_type(self, size: str) -> str | None:
        """The Content-Type ``size`` thumbnails had when last seen."""
        return self.store.thumbnail_type(size)
