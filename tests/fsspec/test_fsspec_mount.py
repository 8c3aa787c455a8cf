"""The mount and ``immich://`` show the same tree: every view, name, size and time.

The mount runs as ``python -m immichfs mount --foreground`` in a subprocess
against the fake server; it is walked with ``os.walk`` and ``os.stat``, and the
same server is walked through fsspec in this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountutil import VIEWS, MountProcess

from immichfs.fsspec import ImmichFileSystem

pytestmark = pytest.mark.fuse

QUERY = "IMG_00"


@pytest.fixture
def mountpoint(fake_immich: Any, tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    process = MountProcess(
        mnt,
        {"IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key},
        log_path=tmp_path / "mount.log",
    )
    try:
        process.wait_mounted()
        yield mnt
        assert process.unmount() == (0, 0)
    finally:
        process.cleanup()


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


Tree = dict[str, tuple[str, int, int]]


def _walk_mount(root: Path) -> Tree:
    """path → (type, size, mtime in µs) of every file; directories as (type, 0, 0)."""
    seen: Tree = {}
    for directory, dirs, files in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        for name in dirs:
            seen[prefix + name] = ("directory", 0, 0)
        for name in files:
            st = os.stat(Path(directory, name))
            seen[prefix + name] = ("file", st.st_size, _us(st.st_mtime_ns / 1e9))
    return seen


def _walk_fsspec(fs: ImmichFileSystem) -> Tree:
    seen: Tree = {}
    for path, entry in fs.find("", withdirs=True, detail=True).items():
        if entry["type"] == "directory":
            seen[path] = ("directory", 0, 0)
        else:
            seen[path] = ("file", entry["size"], _us(entry["mtime"]))
    return seen


def test_every_view_is_the_same_on_the_mount_and_through_immich(
    mountpoint: Path, immich_fs: ImmichFileSystem
) -> None:
    # a search directory exists once looked up, on each side
    assert os.listdir(mountpoint / "search" / QUERY)
    assert immich_fs.ls(f"search/{QUERY}")

    on_mount = _walk_mount(mountpoint)
    through_fsspec = _walk_fsspec(immich_fs)
    assert {path.split("/")[0] for path in on_mount} == VIEWS
    assert sum(kind == "file" for kind, _, _ in on_mount.values()) > 500
    assert through_fsspec == on_mount

    # a directory holding assets dates from its newest one, on both sides
    compared = 0
    for path in sorted(p for p, (kind, _, _) in on_mount.items() if kind == "directory"):
        files = [
            t for p, (k, _, t) in on_mount.items() if k == "file" and p.rpartition("/")[0] == path
        ]
        if files:
            newest = max(files)
            assert _us((mountpoint / path).stat().st_mtime_ns / 1e9) == newest, path
            assert _us(immich_fs.info(path)["mtime"]) == newest, path
            compared += 1
    assert compared > 20
