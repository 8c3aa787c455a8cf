"""A FUSE mount whose filesystem process is gone, made without any filesystem code.

mount(2) with a /dev/fuse descriptor, then the descriptor is closed: exactly what
a crashed FUSE process leaves behind (every access fails with ENOTCONN).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MS_NOSUID, MS_NODEV, MNT_DETACH = 0x2, 0x4, 2


@contextmanager
def dead_fuse_mount(target: Path, fstype: str = "fuse.immichfs-test") -> Iterator[Path]:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse to make a FUSE mount")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    target.mkdir(exist_ok=True)
    fd = os.open("/dev/fuse", os.O_RDWR)
    data = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    flags = MS_NOSUID | MS_NODEV
    if libc.mount(b"immichfs-test", bytes(target), fstype.encode(), flags, data) != 0:
        os.close(fd)
        pytest.skip(f"mount(2) of a FUSE filesystem refused: {os.strerror(ctypes.get_errno())}")
    os.close(fd)  # the "filesystem process" dies
    try:
        yield target
    finally:
        libc.umount2(bytes(target), MNT_DETACH)
