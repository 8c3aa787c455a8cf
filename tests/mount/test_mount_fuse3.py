"""``mount -t fuse.immichfs`` through fuse3's own ``mount.fuse3``, without our helper.

mount(8) finds no ``mount.fuse.immichfs`` and runs ``mount.fuse3``, which runs
``immichfs SOURCE MOUNTPOINT -o rw,dev,suid,...`` from the standard PATH (mount(8)
resets it, so the command must be in /usr/local/bin or the like), as for sshfs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mountutil import unmount

from immichfs.cli import mounthelper
from immichfs_fake import FakeImmich

SYSTEM_COMMAND = Path("/usr/local/bin/immichfs")
VENV_COMMAND = Path(sys.executable).parent / "immichfs"


def mounted(mountpoint: Path) -> list[str]:
    """The fstype of every mount on ``mountpoint``."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mountpoint):
            found.append(fields[fields.index("-") + 1])
    return found


def daemons(mountpoint: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "immichfs" in " ".join(cmdline) and str(mountpoint) in cmdline:
            found.append(process)
    return found


@pytest.fixture
def immichfs_on_the_system_path() -> Iterator[Path]:
    """``/usr/local/bin/immichfs`` as a system-wide install has it (a link to ours)."""
    if os.geteuid() != 0:
        pytest.skip("mount -t fuse.immichfs and /usr/local/bin need root")
    if not VENV_COMMAND.exists():
        pytest.skip("package not installed (pip install -e .)")
    if not Path("/sbin/mount.fuse3").exists():
        pytest.skip("fuse3's mount.fuse3 is not installed")
    helper = mounthelper.HELPER_DIR / mounthelper.HELPER_NAME
    if helper.exists() or helper.is_symlink():
        pytest.skip(f"{helper} is installed: mount(8) would run it instead of mount.fuse3")
    if SYSTEM_COMMAND.exists() or SYSTEM_COMMAND.is_symlink():
        pytest.skip(f"{SYSTEM_COMMAND} exists already; not replacing it")
    SYSTEM_COMMAND.symlink_to(VENV_COMMAND)
    try:
        yield SYSTEM_COMMAND
    finally:
        SYSTEM_COMMAND.unlink(missing_ok=True)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if mounted(path):  # a failed test must not leave a mount behind
        unmount(path, lazy=True)
    for process in daemons(path):
        process.terminate()


def test_mount_t_fuse_immichfs_through_mount_fuse3(
    immichfs_on_the_system_path: Path,
    fake_immich: FakeImmich,
    mountpoint: Path,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(fake_immich.api_key + "\n")
    key_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMMICH")}
    env["HOME"] = "/nonexistent"
    if "IMMICHFS_CACHE_DIR" in os.environ:  # the test session's (conftest), never /var/cache
        env["IMMICHFS_CACHE_DIR"] = os.environ["IMMICHFS_CACHE_DIR"]
    result = subprocess.run(
        [
            *("mount", "-t", "fuse.immichfs", fake_immich.url, str(mountpoint)),
            # generic options as an fstab line has them; mount.fuse3 adds dev,suid
            *("-o", f"rw,exec,atime,_netdev,nofail,listing_ttl=3,api_key_file={key_file}"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    served = daemons(mountpoint)
    try:
        # mount(8) returned: mounted once, answering, by one daemon without the key in argv
        assert mounted(mountpoint) == ["fuse.immichfs"]
        assert os.listdir(mountpoint / "photos")
        assert len(served) == 1
        assert fake_immich.api_key not in " ".join(served[0].cmdline())
    finally:
        umount = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    assert umount.returncode == 0, umount.stderr
    assert mounted(mountpoint) == []
    _, alive = psutil.wait_procs(served, timeout=30)
    assert not alive
