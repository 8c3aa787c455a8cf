"""Where one server and user's catalog and cached bytes live on disk, and who holds them.

Layout under the cache root (``--cache-dir``)::

    <root>/<host>_<port>-<url hash>--<user id>/   one per server URL and Immich user (0700)
        identity.json     the URL, the user id and a salted hash of the key (0600)
        lock              held (flock) by the one mount using this directory
        catalog.sqlite    what is known about the library (immichfs.catalog.store)
        content.sqlite    block hashes of the cached bytes (immichfs.catalog.content)
        blobs/            the cached bytes, one sparse file per asset version

The key itself is never written. Its salted SHA-256 is kept so that a mount that
cannot reach the server (offline) can still tell which user's directory the key
belongs to: a random API key is far too long to be guessed back from its hash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from immichfs.errors import UserError

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
IDENTITY = "identity.json"
LOCK = "lock"


def open_database(path: Path, schema: str = "", version: int = 0) -> sqlite3.Connection:
    """A SQLite database of the cache directory, as both stores use theirs: private
    (0600), in WAL mode (readers never wait for the writer; a crash loses at most
    the last transactions, never consistency), autocommit unless a transaction is
    opened, usable from the worker threads the stores run in.

    ``schema`` is created if missing. A database written in another format
    ``version`` (``PRAGMA user_version``; another immichfs) is emptied first, with
    one warning: a cache is rebuilt, never misread nor migrated."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    os.chmod(path, FILE_MODE)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if schema:
        with db:
            (found,) = db.execute("PRAGMA user_version").fetchone()
            if found != version:
                tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                names = [name for (name,) in tables.fetchall()]
                if names:
                    log.warning("%s has format %s: starting a new one", path, found)
                for name in names:
                    db.execute(f'DROP TABLE "{name}"')
                db.execute(f"PRAGMA user_version = {int(version)}")
        db.executescript(schema)
    return db


def default_root(env: dict[str, str] | None = None, *, uid: int | None = None) -> Path:
    """``$XDG_CACHE_HOME/immichfs`` (``~/.cache/immichfs``), ``/var/cache/immichfs`` as root."""
    env = dict(os.environ) if env is None else env
    if (os.geteuid() if uid is None else uid) == 0:
        return Path("/var/cache/immichfs")
    base = env.get("XDG_CACHE_HOME") or ""
    if not base or not os.path.isabs(base):  # the XDG spec: relative values are ignored
        base = str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "immichfs"


def server_slug(url: str) -> str:
    """``host_port-<hash of the URL>``: readable in ``ls``, unique per URL."""
    parts = urlsplit(url)
    host = re.sub(r"[^A-Za-z0-9.-]", "_", parts.hostname or "server")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    digest = hashlib.sha256(url.rstrip("/").encode("utf-8")).hexdigest()[:10]
    return f"{host}_{port}-{digest}"


def _safe_id(user_id: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9-]{1,64}", user_id):
        return user_id
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700 (a shared cache would leak the library)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically (temp file + rename)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _key_hash(salt: str, api_key: str) -> str:
    return hmac.new(bytes.fromhex(salt), api_key.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class CacheDir:
    """One server and user's directory."""

    path: Path
    url: str
    user_id: str

    @property
    def catalog_path(self) -> Path:
        return self.path / "catalog.sqlite"

    @property
    def content_path(self) -> Path:
        return self.path / "content"


def user_dir(root: Path, url: str, user_id: str, api_key: str) -> CacheDir:
    """The directory of ``user_id`` on ``url`` (created, 0700), remembering the key's hash."""
    path = root / f"{server_slug(url)}--{_safe_id(user_id)}"
    ensure_private_dir(root)
    ensure_private_dir(path)
    identity_path = path / IDENTITY
    identity = _read_identity(identity_path)
    if identity is None or _key_hash(identity["salt"], api_key) != identity["key_hash"]:
        salt = secrets.token_hex(16)
        record = {
            "url": url,
            "user_id": user_id,
            "salt": salt,
            "key_hash": _key_hash(salt, api_key),
        }
        write_private(identity_path, json.dumps(record, indent=2).encode("utf-8"))
    return CacheDir(path, url, user_id)


def find_user_dir(root: Path, url: str, api_key: str) -> CacheDir | None:
    """The directory a mount with this key used before (for mounting offline), if any."""
    prefix = server_slug(url) + "--"
    try:
        candidates = sorted(p for p in root.iterdir() if p.name.startswith(prefix))
    except OSError:
        return None
    for path in candidates:
        identity = _read_identity(path / IDENTITY)
        if identity is not None and hmac.compare_digest(
            _key_hash(identity["salt"], api_key), identity["key_hash"]
        ):
            return CacheDir(path, url, str(identity["user_id"]))
    return None


def list_user_dirs(root: Path) -> list[CacheDir]:
    """Every server and user directory under ``root`` (for ``immichfs cache``)."""
    found = []
    try:
        paths = sorted(root.iterdir())
    except OSError:
        return []
    for path in paths:
        identity = _read_identity(path / IDENTITY)
        if identity is not None:
            found.append(CacheDir(path, str(identity["url"]), str(identity["user_id"])))
    return found


def _read_identity(path: Path) -> dict[str, str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("url", "user_id", "salt", "key_hash")
    ):
        return None
    return data


class DirectoryLock:
    """An exclusive ``flock`` on ``<dir>/lock``: one mount (or ``immichfs cache``) at a time.

    The kernel drops the lock when the process ends, ``kill -9`` included, so a
    crashed mount never leaves a stale lock behind.
    """

    def __init__(self, directory: Path, *, purpose: str = "mount") -> None:
        self.path = directory / LOCK
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise UserError naming who holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(
                f"the cache {self.path.parent} is in use by another immichfs process"
                f"{f' ({holder})' if holder else ''}; unmount it first or give this one "
                "another --cache-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.purpose}, pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
