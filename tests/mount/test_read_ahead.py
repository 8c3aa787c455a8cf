"""The mount's kernel read-ahead is raised, and stays raised (real FUSE mount).

1 MiB read-ahead makes a sequential reader arrive as 1 MiB FUSE reads instead of
128 KiB ones: an eighth of the requests, about a third less CPU per byte in the
mount process. The kernel sets the read-ahead from the answer to its INIT, so a
value written before that answer is undone; this checks it is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mountutil import MountProcess, poll

from immichfs.fuse.kernel import read_ahead_path


def test_read_ahead_is_one_mib_after_mounting(fake_immich: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root may change a mount's read_ahead_kb")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {"IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key}
    process = MountProcess(mountpoint, env, log_path=tmp_path / "mount.log")
    try:
        process.wait_mounted()
        path = read_ahead_path(mountpoint)
        if path is None:
            pytest.skip("no sysfs entry for the mount's read-ahead")
        assert os.listdir(mountpoint)  # the mount serves
        poll(lambda: path.read_text().strip(), until=lambda kb: kb == "1024", timeout=10)
    finally:
        process.cleanup()
