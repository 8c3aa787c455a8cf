"""immichfs.fuse.kernel: finding a mount's read_ahead_kb and raising it (fake /proc and /sys)."""

from __future__ import annotations

from pathlib import Path

from immichfs.fuse.kernel import mount_device, raise_read_ahead, read_ahead_path


def setup(tmp_path: Path, mountpoint: Path, current: int = 128) -> tuple[Path, Path]:
    escaped = str(mountpoint).replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:41 / {escaped} rw,nosuid shared:20 - fuse.other other rw\n"
        f"41 40 0:52 / {escaped} ro,nosuid shared:21 - fuse.immichfs immichfs ro\n"
    )
    sysfs = tmp_path / "bdi"
    for device in ("0:41", "0:52"):
        (sysfs / device).mkdir(parents=True)
        (sysfs / device / "read_ahead_kb").write_text(f"{current}\n")
    return mountinfo, sysfs


def test_finds_the_topmost_mount_with_escaped_path(tmp_path: Path) -> None:
    mountpoint = tmp_path / "my photos"
    mountpoint.mkdir()
    mountinfo, sysfs = setup(tmp_path, mountpoint)
    assert mount_device(mountpoint, mountinfo) == "0:52"
    assert read_ahead_path(mountpoint, mountinfo, sysfs) == sysfs / "0:52" / "read_ahead_kb"
    assert mount_device(tmp_path / "elsewhere", mountinfo) is None


def test_raises_read_ahead(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mountinfo, sysfs = setup(tmp_path, mountpoint)
    assert raise_read_ahead(mountpoint, 1024, mountinfo=mountinfo, sysfs=sysfs)
    assert (sysfs / "0:52" / "read_ahead_kb").read_text().strip() == "1024"
    assert (sysfs / "0:41" / "read_ahead_kb").read_text().strip() == "128"  # not the one below


def test_never_lowers_and_fails_quietly(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mountinfo, sysfs = setup(tmp_path, mountpoint, current=4096)
    assert raise_read_ahead(mountpoint, 1024, mountinfo=mountinfo, sysfs=sysfs)
    assert (sysfs / "0:52" / "read_ahead_kb").read_text().strip() == "4096"
    assert not raise_read_ahead(tmp_path / "nope", 1024, mountinfo=mountinfo, sysfs=sysfs)
    # a sysfs that refuses the write (not root, or a kernel without it): False, no exception
    target = sysfs / "0:52" / "read_ahead_kb"
    target.unlink()
    target.mkdir()  # reading or writing a directory fails like a refused write
    assert read_ahead_path(mountpoint, mountinfo, sysfs) == target
    assert not raise_read_ahead(mountpoint, 8192, mountinfo=mountinfo, sysfs=sysfs)
    assert not raise_read_ahead(mountpoint, 1024, mountinfo=tmp_path / "missing", sysfs=sysfs)
