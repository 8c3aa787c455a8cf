"""The catalog on disk: what a mount learned about the library, kept for the next one.

One SQLite database (WAL) per server and user (``catalog.sqlite`` in the cache
directory, see :mod:`immichfs.catalog.cachedir`):

- ``listings``: the directories whose assets were saved (the timeline, an album,
  a person, a tag, favourites, archive, a month), keyed by the directory's key,
  with the time they were saved and, when known, the file names of their assets
  (a JSON array, by position: see :class:`NamedAssets`);
- ``listed``: their assets in order, one row each: the asset as one JSON array,
  its exif (a JSON object, in a column of its own: decoded only when read), and
  its id (indexed: the listings that hold an asset are found without reading
  them). A listing is read back as one text (``group_concat`` in SQLite) and one
  ``json.loads``, its exifs as another text split at a separator: 100,000 assets
  in a few tenths of a second, where the assets in columns took two seconds more;
- ``thumbnails``: the length and Content-Type of each thumbnail seen;
- ``answers``: the collection lists (albums, people, tags, date buckets) as the
  server sent them (JSON), for offline mounts;
- ``state``: small values (where the refresh task's deltas resume, the
  thumbnails' type).

Writes happen in one transaction each, so a ``kill -9`` leaves either the old or
the new listing, never half of one; a listing that cannot be read back (a
damaged file) counts as never saved. Methods are synchronous and thread-safe;
callers on the trio loop run them in a worker thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import trio

from immichfs.catalog.cachedir import open_database
from immichfs.catalog.content import ContentCache, content_key
from immichfs.errors import Offline, TransientError
from immichfs.model import Asset, ExifText, asset_of_fields

log = logging.getLogger(__name__)

#: 3: a row of JSON per listed asset, its exif in a column of its own, and the file
#: names of a listing (2 had the exif in the row and no names, 1 kept assets in
#: columns; such catalogs start afresh)
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS listings (
    key TEXT PRIMARY KEY,
    saved_at REAL NOT NULL,
    names TEXT
);
CREATE TABLE IF NOT EXISTS listed (
    key TEXT NOT NULL,
    position INTEGER NOT NULL,
    id TEXT NOT NULL,
    asset TEXT NOT NULL,
    exif TEXT NOT NULL,
    PRIMARY KEY (key, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS listed_by_id ON listed (id);
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
#: how many assets the catalog holds (also read by ``immichfs cache stats``)
COUNT_ASSETS = "SELECT count(DISTINCT id) FROM listed"


def key_text(key: Hashable) -> str | None:
    """A directory key as stored (JSON of its parts); None for keys that are not plain."""
    parts = key if isinstance(key, tuple) else (key,)
    if not all(isinstance(p, str | int | bool) for p in parts):
        return None
    return json.dumps(list(parts), separators=(",", ":"))


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


#: between the exifs of a listing read back (never in a JSON text: controls are escaped)
_EXIF_SEPARATOR = "\x1e"


def _exif_text(exif: Mapping[str, Any]) -> str:
    """The ``exif`` column of an asset."""
    if isinstance(exif, ExifText):
        return exif.text  # read back and never decoded: saved again as it was
    return json.dumps(dict(exif), default=str, separators=(",", ":"))


def _row(asset: Asset) -> str:
    """``asset`` as one JSON array, its fields in :class:`Asset`'s order (dates in ISO
    8601: ``fromisoformat`` reads them back faster than ``fromtimestamp``), but the
    exif (null in its place: it has a column of its own, :func:`_exif_text`)."""
    return json.dumps(
        [
            asset.id,
            asset.type,
            asset.original_file_name,
            asset.checksum,
            asset.size,
            asset.file_created_at.isoformat(),
            asset.file_modified_at.isoformat(),
            _iso(asset.local_datetime),
            _iso(asset.updated_at),
            _iso(asset.created_at),
            asset.is_favorite,
            asset.is_archived,
            asset.is_trashed,
            asset.visibility,
            asset.original_mime_type,
            asset.width,
            asset.height,
            asset.duration_ms,
            asset.live_photo_video_id,
            asset.owner_id,
            None,
            asset.people,
            asset.tags,
            asset.is_edited,
        ],
        default=str,
        separators=(",", ":"),
    )


def _assets(rows: list[list[Any]], exifs: list[str]) -> list[Asset]:
    """The assets of decoded :func:`_row` arrays and their exifs (turned into
    :class:`Asset`'s arguments in place: the cheapest way found to build 100,000)."""
    if len(exifs) != len(rows):
        raise ValueError(f"{len(exifs)} exifs for {len(rows)} assets")
    iso = datetime.fromisoformat
    build = asset_of_fields
    exif = ExifText
    found = []
    for r, text in zip(rows, exifs, strict=True):
        r[5] = iso(r[5])
        r[6] = iso(r[6])
        if r[7] is not None:
            r[7] = iso(r[7])
        if r[8] is not None:
            r[8] = iso(r[8])
        if r[9] is not None:
            r[9] = iso(r[9])
        r[20] = exif(text)
        r[21] = tuple(r[21])
        r[22] = tuple(r[22])
        found.append(build(r))
    return found


class NamedAssets(tuple[Asset, ...]):
    """A saved listing's assets with the file names a directory of them alone gave
    them (``names``, by position), as saved with them: a remount need not name
    100,000 assets again. Saved in one transaction with the assets, and dropped
    whenever one of them leaves the listing, they are exactly what naming these
    assets gives."""

    names: Sequence[str]

    def __new__(cls, assets: Iterable[Asset], names: Sequence[str]) -> NamedAssets:
        named = super().__new__(cls, assets)
        named.names = names
        return named


class SavedListing(NamedTuple):
    """A listing as :meth:`CatalogStore.saved_listing` reads it back."""

    assets: list[Asset]
    saved_at: float  # epoch seconds
    #: the file names saved with it (None: not known)
    names: list[str] | None


def _names(text: str | None, count: int) -> list[str] | None:
    """Saved names, if they are ``count`` texts (anything else: not known)."""
    if text is None:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        return None
    if not isinstance(names, list) or len(names) != count:
        return None
    return names if all(type(n) is str for n in names) else None


def _key(text: str) -> Hashable:
    """A stored directory key as the catalog's (the inverse of :func:`key_text`)."""
    return tuple(json.loads(text))


def _decoded(text: str, exifs: str) -> list[Asset] | None:
    """The assets of a stored JSON array of rows and their exifs (separated by
    ``_EXIF_SEPARATOR``); None when they cannot be read (damaged)."""
    try:
        rows = json.loads(text)
        return _assets(rows, exifs.split(_EXIF_SEPARATOR) if rows else [])
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        log.warning("a saved listing cannot be read (%s): loading it from the server", exc)
        return None


class CatalogStore:
    """The on-disk catalog of one server and user."""

    def __init__(self, path: Path, *, clock: Any = time.time, url_hint: str = "immichfs") -> None:
        self.path = path
        self.url_hint = url_hint
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_database(path, _SCHEMA, SCHEMA_VERSION)

    @property
    def empty(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM listings LIMIT 1").fetchone() is None

    # -- listings

    def save_listing(
        self,
        key: Hashable,
        assets: Iterable[Asset],
        *,
        names: Sequence[str] | None = None,
        still: Callable[[], bool] | None = None,
    ) -> None:
        """Remember ``key``'s assets (replacing what was saved for it), and the file
        ``names`` given to them (by position); with ``still``, only if it answers
        true once the catalog is locked (the listing was not outdated while it was
        being saved)."""
        text = key_text(key)
        if text is None:
            return
        with self._lock, self._db:
            if still is not None and not still():
                return
            self._db.execute("DELETE FROM listed WHERE key = ?", (text,))
            # encoded as they are written: no second copy of a large listing in memory
            self._db.executemany(
                "INSERT INTO listed VALUES (?, ?, ?, ?, ?)",
                ((text, i, a.id, _row(a), _exif_text(a.exif)) for i, a in enumerate(assets)),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO listings VALUES (?, ?, ?)",
                (text, self._clock(), json.dumps(names) if names is not None else None),
            )

    def saved_listing(self, key: Hashable) -> SavedListing | None:
        """``key``'s assets as last saved, when, and their names; None if never saved."""
        text = key_text(key)
        if text is None:
            return None
        with self._lock:
            # one pass over the listing's rows, in the primary key's order: by position
            row = self._db.execute(
                "SELECT saved_at, names, group_concat(asset, ','), "
                "group_concat(exif, char(30)) "
                "FROM listings LEFT JOIN listed USING (key) WHERE key = ?",
                (text,),
            ).fetchone()
        if row is None or row[0] is None:
            return None
        assets = _decoded(f"[{row[2] or ''}]", row[3] or "")
        if assets is None:
            return None
        return SavedListing(assets, float(row[0]), _names(row[1], len(assets)))

    def saved_asset(self, asset_id: str) -> Asset | None:
        """The asset as last saved in any listing."""
        with self._lock:
            row = self._db.execute(
                "SELECT asset, exif FROM listed JOIN listings USING (key) WHERE id = ? "
                "ORDER BY saved_at DESC LIMIT 1",
                (asset_id,),
            ).fetchone()
        found = _decoded(f"[{row[0]}]", row[1]) if row is not None else None
        return found[0] if found else None

    def checksum(self, asset_id: str) -> str | None:
        asset = self.saved_asset(asset_id)
        return asset.checksum if asset is not None and asset.checksum else None

    def listings_holding(self, assets: Iterable[Asset]) -> set[Hashable]:
        """The keys of the saved listings that hold another copy of any of ``assets``
        (an older version: those holding this very one are as current)."""
        found: set[str] = set()
        with self._lock:
            for asset in assets:
                found.update(
                    key
                    for (key,) in self._db.execute(
                        "SELECT DISTINCT key FROM listed "
                        "WHERE id = ? AND (asset != ? OR exif != ?)",
                        (asset.id, _row(asset), _exif_text(asset.exif)),
                    )
                )
        return {_key(key) for key in found}

    def held_ids(self, exclude: Callable[[Hashable], bool] = lambda key: False) -> set[str]:
        """The ids of every asset the saved listings hold (but those of ``exclude``'s)."""
        with self._lock:
            keys = [key for (key,) in self._db.execute("SELECT key FROM listings")]
            held: set[str] = set()
            for key in keys:
                if not exclude(_key(key)):
                    held.update(
                        i
                        for (i,) in self._db.execute("SELECT id FROM listed WHERE key = ?", (key,))
                    )
        return held

    def forget_listings(self, keys: Iterable[Hashable]) -> int:
        """Drop the saved listings of ``keys`` (they changed); returns how many there were."""
        texts = [(t,) for t in map(key_text, keys) if t is not None]
        with self._lock, self._db:
            self._db.executemany("DELETE FROM listed WHERE key = ?", texts)
            before = self._db.total_changes
            self._db.executemany("DELETE FROM listings WHERE key = ?", texts)
            return self._db.total_changes - before

    def forget_assets(self, asset_ids: Iterable[str]) -> None:
        """Assets known to be gone (permanently deleted): out of every listing (whose
        names are forgotten: without one, another may keep the bare name)."""
        ids = [(i,) for i in set(asset_ids)]
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE listings SET names = NULL "
                "WHERE key IN (SELECT key FROM listed WHERE id = ?) AND names IS NOT NULL",
                ids,
            )
            self._db.executemany("DELETE FROM listed WHERE id = ?", ids)

    def forget_all_listings(self) -> None:
        """Drop every saved listing (the catalog cannot say what changed since them)."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM listed")
            self._db.execute("DELETE FROM listings")

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
            count = self._db.execute(COUNT_ASSETS).fetchone()[0]
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
#: the file names a directory of only these assets gives them, in their order
Namer = Callable[[Sequence[Asset]], Sequence[str]]
#: directory kinds never saved: a search is a question, not part of the library
_NOT_SAVED = ("search",)


class CatalogMemory:
    """Listings served from the on-disk catalog, kept as true as the server's.

    - The first load, in a mount, of a directory whose listing the refresh task
      keeps current (``current(key)``: the timeline, favourites, archive, months,
      albums) returns the saved assets at once when the catalog holds them. The
      refresh task's first cycle brings the catalog up to date in the background
      (:mod:`immichfs.vfs.refresh`: the changes since its last cycle, permanent
      deletions included); until it has (:meth:`caught_up`), the assets served
      from disk are *unconfirmed*: :meth:`confirmed` asks the server for one of
      them alone, so cached bytes of an asset whose checksum changed while
      unmounted are never served for it. The other saved listings (a person's, a
      tag's, the trash: the refresh task only lets them expire) are served only
      when the server does not answer.
    - Every listing loaded from the server is saved (in a worker thread), unless
      the refresh task found a change (:meth:`forget`) while it was loading.
    - When the server is unreachable (``reachability`` says so, or a load fails
      with a transient error after its retries) the saved listing is served,
      however old; without one, :class:`~immichfs.errors.Offline` is raised.
    """

    def __init__(
        self,
        store: CatalogStore,
        reachability: Reachability,
        *,
        current: Callable[[Hashable], bool] = lambda key: False,
    ) -> None:
        self.store = store
        self.reachability = reachability
        self.current = current
        #: how many assets the catalog held when opened (0: nothing to catch up on)
        self.saved_assets = 0 if store.empty else store.statistics()["assets"]
        self.caught_up = self.saved_assets == 0
        #: bumped by every :meth:`forget`: saves and disk reads begun before are void
        self._epoch = 0
        #: a :meth:`forget` failed: the saved listings may be out of date
        self.outdated = False
        #: saves running, and an event set when one ends (see :meth:`flush`)
        self._saving = 0
        self._saved_one = trio.Event()
        self._seen: set[Hashable] = set()
        #: collection lists as last saved (saved again only when they change)
        self._answers: dict[Hashable, list[dict[str, Any]]] = {}
        #: size -> asset id -> (checksum, length, content type) of thumbnails seen
        self._thumbnails: dict[str, dict[str, tuple[str, int, str]]] = {}
        #: ids of assets served from disk before the catalog was caught up
        self._unconfirmed: set[str] = set()
        #: called (once) when a file is opened before the catch-up: it should not wait
        self.hurry: Callable[[], None] | None = None
        self._warned = False
        self.served_saved = 0
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
        namer: Namer | None = None,
    ) -> Sequence[Asset]:
        """``key``'s assets: saved, or from ``loader``, as described above;
        ``remember`` is given the assets whenever they come from disk. ``namer``
        gives the file names a listing is saved with (served back as
        :class:`NamedAssets`)."""
        if not self._kept(key):
            return await loader()
        online = self.reachability()
        if not online or (key not in self._seen and self.current(key) and not self.outdated):
            self._seen.add(key)
            saved = await self._saved(key)
            if saved is not None:
                self.served_saved += 1
                if online and not self.caught_up:
                    self._unconfirmed.update(a.id for a in saved)
                if remember is not None:
                    remember(saved)
                return saved
            if not online:
                raise Offline(
                    f"{self.store.url_hint}: offline, and this directory was never listed"
                )
        epoch = self._epoch
        try:
            assets = await loader()
        except TransientError as exc:
            # after the connector's retries: the server is away; until the mount sees it
            # back, saved listings are served at once and uncached bytes fail fast
            self.reachability.set(False, str(exc))
            saved = await self._saved(key)
            if saved is None:
                raise
            if not self._warned:
                self._warned = True
                log.warning("the server does not answer (%s): serving the saved catalog", exc)
            self.served_saved += 1
            if remember is not None:
                remember(saved)
            return saved
        self._saving += 1  # counted from now: a flush right after this waits for it
        trio.lowlevel.spawn_system_task(self._save, key, assets, epoch, namer)
        return assets

    async def _saved(self, key: Hashable) -> Sequence[Asset] | None:
        """The saved listing of ``key``, unless a :meth:`forget` came while it was read."""
        epoch = self._epoch
        saved = await trio.to_thread.run_sync(self.store.saved_listing, key)
        if saved is None or epoch != self._epoch:
            return None
        return NamedAssets(saved.assets, saved.names) if saved.names is not None else saved.assets

    async def _save(
        self, key: Hashable, assets: Sequence[Asset], epoch: int, namer: Namer | None
    ) -> None:
        def save() -> None:
            names = namer(assets) if namer is not None else None  # before the catalog is locked
            self.store.save_listing(key, assets, names=names, still=lambda: epoch == self._epoch)

        try:
            await trio.to_thread.run_sync(save)
        except Exception as exc:  # a full disk must not end the mount
            log.warning("cannot save the catalog: %s", exc)
        finally:
            self._saving -= 1
            self._saved_one.set()
            self._saved_one = trio.Event()

    async def flush(self) -> None:
        """Wait for the listings being saved (before the catalog is closed)."""
        while self._saving:
            await self._saved_one.wait()

    async def forget(
        self, keys: Iterable[Hashable], *, changed: Iterable[Asset] = (), gone: Iterable[str] = ()
    ) -> None:
        """What the refresh task found out of date: the saved listings of ``keys`` and
        those holding another version of a ``changed`` asset are dropped (loaded from
        the server when next listed); ``gone`` assets (permanently deleted) leave every
        listing. Listings being loaded or saved meanwhile are not saved."""
        self._epoch += 1
        keys, changed, gone = set(keys), list(changed), set(gone)
        store = self.store

        def work() -> None:
            store.forget_listings(keys | store.listings_holding(changed))
            store.forget_assets(gone)

        try:
            await trio.to_thread.run_sync(work)
        except BaseException:
            # the saved listings may hold what changed: none is served again (online),
            # and where the deltas stand is no longer saved, so the next mount's
            # catch-up finds these changes again
            self.outdated = True
            raise

    async def held_ids(self, exclude: Callable[[Hashable], bool]) -> set[str]:
        """The ids of the assets the saved listings hold (but those of ``exclude``'s)."""
        return await trio.to_thread.run_sync(self.store.held_ids, exclude)

    def saved_state(self, name: str) -> Any:
        """What :meth:`save_state` kept (JSON), or None."""
        text = self.store.state(name)
        try:
            return json.loads(text) if text is not None else None
        except ValueError:
            return None

    def save_state_now(self, name: str, value: Any) -> None:
        """Keep ``value`` (JSON) under ``name``, at once (before the mount serves)."""
        self.store.set_state(name, json.dumps(value, separators=(",", ":")))

    async def save_state(self, name: str, value: Any) -> None:
        """:meth:`save_state_now` in a worker thread (a save may hold the catalog)."""
        await trio.to_thread.run_sync(self.save_state_now, name, value)

    def mark_caught_up(self) -> None:
        """The refresh task has brought the catalog up to date: nothing is unconfirmed."""
        self.caught_up = True
        self._unconfirmed.clear()

    async def confirmed(self, asset_id: str, fetch: Callable[[], Awaitable[Asset]]) -> Asset | None:
        """Make sure ``asset_id``'s metadata is the server's, not only the catalog's
        (only right after a remount, until the catalog is caught up; offline there is
        nothing to check): the asset is asked for alone (one small request) and
        returned. None when nothing needed checking."""
        if self.caught_up or not self.reachability() or asset_id not in self._unconfirmed:
            return None
        # files are being read: the catch-up (which ends the one-by-one checks) is due now
        hurry, self.hurry = self.hurry, None
        if hurry is not None:
            hurry()
        asset = await fetch()  # NotFound: deleted while unmounted, as it should fail
        self._unconfirmed.discard(asset_id)
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
