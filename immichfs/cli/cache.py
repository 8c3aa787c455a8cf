"""``immichfs cache {stats,prune,clear}``: look at and wipe what mounts keep on disk.

Each server and user has a directory under ``--cache-dir`` (see
:mod:`immichfs.catalog.cachedir`). ``stats`` reads them without changing
anything (also while mounted); ``prune`` and ``clear`` take the directory's lock,
so they refuse to touch a directory a mount is using.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from immichfs import options as config
from immichfs.catalog.cachedir import CacheDir, DirectoryLock, default_root, list_user_dirs
from immichfs.catalog.content import ContentCache
from immichfs.catalog.store import COUNT_ASSETS
from immichfs.cli.status import human_bytes
from immichfs.errors import UserError

MiB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("stats", "prune", "clear"), help="what to do")
    parser.add_argument(
        "--cache-dir",
        type=str,
        default=None,
        help="the cache directory (default: as for mount: $IMMICHFS_CACHE_DIR, the config "
        "file, $XDG_CACHE_HOME/immichfs, or /var/cache/immichfs as root)",
    )
    parser.add_argument(
        "--cache-size-mb",
        type=str,
        default=None,
        help="prune: keep at most this many MiB of bytes per server and user "
        "(default: the --cache-size-mb setting)",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    parser.add_argument("--json", action="store_true", help="stats as JSON")


def _settings(args: argparse.Namespace) -> config.Settings:
    return config.load_settings(
        {"cache_dir": args.cache_dir, "cache_size_mb": args.cache_size_mb, "config": args.config}
    )


def _disk_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _count(db: Path, query: str) -> int | None:
    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return int(connection.execute(query).fetchone()[0])
    except sqlite3.Error:
        return None


def _in_use(place: CacheDir) -> bool:
    try:
        with DirectoryLock(place.path, purpose="immichfs cache"):
            return False
    except UserError:
        return True


def stats(root: Path) -> list[dict[str, Any]]:
    """What each server and user directory under ``root`` holds."""
    found = []
    for place in list_user_dirs(root):
        content = place.content_path
        found.append(
            {
                "directory": str(place.path),
                "url": place.url,
                "user_id": place.user_id,
                "in_use": _in_use(place),
                "assets": _count(place.catalog_path, COUNT_ASSETS),
                "listings": _count(place.catalog_path, "SELECT count(*) FROM listings"),
                "thumbnails": _count(place.catalog_path, "SELECT count(*) FROM thumbnails"),
                "cached_files": _count(content / "content.sqlite", "SELECT count(*) FROM entries"),
                "bytes_cached": _disk_bytes(content / "blobs"),
                "bytes_on_disk": _disk_bytes(place.path),
            }
        )
    return found


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    root = settings.cache_dir or default_root()
    if args.action == "stats":
        report = stats(root)
        if args.json:
            print(json.dumps({"cache_dir": str(root), "servers": report}, indent=2))
            return 0
        if not report:
            print(f"{root}: nothing cached")
            return 0
        for entry in report:
            print(
                f"{entry['url']} (user {entry['user_id']})"
                f"{' [mounted]' if entry['in_use'] else ''}\n"
                f"  {entry['directory']}\n"
                f"  catalog: {entry['assets'] or 0} assets in {entry['listings'] or 0} listings, "
                f"{entry['thumbnails'] or 0} thumbnails\n"
                f"  bytes:   {entry['cached_files'] or 0} files, "
                f"{human_bytes(entry['bytes_cached'])} cached, "
                f"{human_bytes(entry['bytes_on_disk'])} on disk in all"
            )
        return 0
    places = list_user_dirs(root)
    for place in places:
        with DirectoryLock(place.path, purpose=f"immichfs cache {args.action}"):
            if args.action == "prune":
                # nothing evicted yet, nothing checked (a mount does that)
                cache = ContentCache(place.content_path, 1 << 62, verify_when_idle=None)
                freed = cache.prune(settings.cache_size_mb * MiB)
                cache.close()
                print(f"{place.url} (user {place.user_id}): {human_bytes(freed)} freed")
            else:
                for child in place.path.iterdir():
                    if child.name == "lock":
                        continue
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                print(f"{place.url} (user {place.user_id}): cleared")
        if args.action == "clear":
            shutil.rmtree(place.path, ignore_errors=True)
    if not places:
        print(f"{root}: nothing cached")
    return 0
