"""``immichfs warm PATH``: fill the caches of a mounted subtree before a batch job.

It works from outside the filesystem, as any program would: every directory under
PATH is listed and every entry stat'ed (and with ``--thumbnails`` the files under
``thumbs/`` read), from a small thread pool so that several requests are in
flight. Afterwards, while the listing TTL lasts, walking the subtree makes no
request to the server. Being plain file access, it also works from another
container that sees the mount.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from immichfs.errors import UserError
from immichfs.fuse.kernel import FSTYPE, mount_of

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20


@dataclass
class WarmResult:
    directories: int = 0
    files: int = 0
    thumbnail_bytes: int = 0
    errors: int = 0


def _list(directory: str) -> tuple[list[str], list[str], list[tuple[str, OSError]]]:
    """Subdirectories, files and failed entries of ``directory``; every entry is
    stat'ed as ``ls -l`` would, and one failing entry does not stop the others."""
    subdirs: list[str] = []
    files: list[str] = []
    failed: list[tuple[str, OSError]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                entry.stat(follow_symlinks=False)
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                failed.append((entry.path, exc))
                continue
            (subdirs if is_dir else files).append(entry.path)
    return subdirs, files, failed


def _read(path: str) -> int:
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(READ_CHUNK):
            size += len(chunk)
    return size


def _is_thumbnail(path: str, base: str) -> bool:
    # a file in a thumbs/ directory of the mount (base: the mount point)
    return "thumbs" in Path(os.path.relpath(path, base)).parts[:-1]


def warm(
    root: Path,
    *,
    thumbnails: bool = False,
    jobs: int = 8,
    progress: bool = True,
) -> WarmResult:
    """List and stat everything under ``root`` (reading thumbnails if asked)."""
    result = WarmResult()
    start = os.path.abspath(root)
    mount = mount_of(root)
    base = mount.mountpoint if mount else "/"
    bar = tqdm(
        desc=f"warming {root}",
        unit=" entries",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.2,
        dynamic_ncols=True,
    )
    pending: dict[Future[object], tuple[str, str]] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="warm") as pool:
        pending[pool.submit(_list, start)] = ("list", start)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                kind, path = pending.pop(future)
                try:
                    value = future.result()
                except OSError as exc:
                    result.errors += 1
                    log.warning("cannot %s %s: %s", kind, path, exc.strerror or exc)
                    continue
                if kind == "read":
                    assert isinstance(value, int)
                    result.thumbnail_bytes += value
                    continue
                assert isinstance(value, tuple)
                subdirs, files, failed = value
                for failed_path, error in failed:
                    result.errors += 1
                    log.warning("cannot stat %s: %s", failed_path, error.strerror or error)
                result.directories += 1
                result.files += len(files)
                bar.update(1 + len(files))
                for subdir in subdirs:
                    pending[pool.submit(_list, subdir)] = ("list", subdir)
                if thumbnails:
                    for file in files:
                        if _is_thumbnail(file, base):
                            pending[pool.submit(_read, file)] = ("read", file)
            bar.set_postfix(dirs=result.directories, files=result.files, refresh=False)
    bar.close()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a directory inside an immichfs mount")
    parser.add_argument(
        "--thumbnails",
        action="store_true",
        help="also read the thumbnail files under thumbs/ in PATH",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=8,
        help="directories listed at the same time (default: 8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from immichfs.logs import setup_logging

    setup_logging(logging.INFO)
    root: Path = args.path
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    mount = mount_of(root)
    if mount is not None and mount.fstype != FSTYPE:
        log.warning("%s is on a %s filesystem, not an immichfs mount", root, mount.fstype)
    began = time.monotonic()
    result = warm(root, thumbnails=args.thumbnails, jobs=args.jobs, progress=not args.no_progress)
    elapsed = time.monotonic() - began
    thumbs = (
        f", {result.thumbnail_bytes / 2**20:.1f} MiB of thumbnails read" if args.thumbnails else ""
    )
    print(
        f"warmed {root}: {result.directories} directories, {result.files} files{thumbs} "
        f"in {elapsed:.1f} s" + (f", {result.errors} errors (see log)" if result.errors else "")
    )
    return 1 if result.errors else 0
