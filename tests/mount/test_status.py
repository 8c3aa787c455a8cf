"""``/.immichfs/status`` and ``immichfs status``.

The mount tests really mount the fake server (``python -m immichfs mount
--foreground`` in a subprocess) and read the status file with ordinary tools;
the operations tests call the FUSE handlers directly (as tests/test_ops.py
does); the rest are the pure formatting and the command's checks.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
from mountutil import MountProcess
from opsutil import CTX, Replies

from immichfs.cli.status import (
    format_errors,
    format_summary,
    human_bytes,
    human_duration,
    read_status,
)
from immichfs.errors import UserError
from immichfs.fuse.operations import Operations
from immichfs.vfs.inodes import ROOT_INODE
from immichfs.vfs.status import hit_rate

TOP_FIELDS = {
    "format",
    "immichfs_version",
    "pid",
    "mountpoint",
    "server",
    "started_at",
    "generated_at",
    "uptime_seconds",
    "settings",
    "cache",
    "api",
    "originals",
    "errors",
    "error_causes",
    "files",
    "readahead",
    "kernel",
    "refresh",
    "connection",
    "disk_cache",
}
CACHE_FIELDS = {"hits", "misses", "hit_rate", "entries", "size", "max_size", "loads"}


# -- pure formatting -----------------------------------------------------------------


def test_human_units() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(64 << 20) == "64.0 MiB"
    assert human_bytes(3 << 40) == "3.0 TiB"
    assert human_bytes(5 << 50) == "5120.0 TiB"
    assert human_duration(3723.9) == "1:02:03"
    assert human_duration(2 * 86400 + 5) == "2 days, 0:00:05"


def test_hit_rate() -> None:
    assert hit_rate(0, 0) is None
    assert hit_rate(3, 1) == 0.75
    assert hit_rate(1, 2) == 0.3333


def test_format_errors() -> None:
    assert format_errors({}, {}) == "none"
    assert format_errors({"ENOENT": 14, "EIO": 2, "EACCES": 2}, {"ServerError": 2}) == (
        "ENOENT 14, EACCES 2, EIO 2 (ServerError 2)"
    )


def test_summary_of_a_report() -> None:
    report = {
        "immichfs_version": "9.9.9",
        "pid": 42,
        "mountpoint": "/mnt/photos",
        "server": {"url": "https://photos.example", "version": "2.7.5"},
        "uptime_seconds": 3723.4,
        "settings": {"listing_ttl": 20.0, "asset_ttl": 60.0, "kernel_ttl": 1.0},
        "cache": {"listings": {"hits": 3, "misses": 1, "hit_rate": 0.75, "entries": 7}},
        "api": {"requests": 1, "failed": 0, "bytes_received": 2048},
        "originals": {"range_requests": 2, "bytes_fetched": 3 << 20, "retries": 1},
        "errors": {"EIO": 1},
        "error_causes": {"TruncatedBody": 1},
        "files": {"open_files": 1, "open_directories": 2},
        "readahead": {"bytes_in_use": 1 << 20, "budget_bytes": 64 << 20, "peak_bytes": 2 << 20},
        "kernel": {"invalidations": 3},
        "refresh": None,
    }
    text = format_summary(report)
    lines = text.splitlines()
    assert lines[0] == "immichfs 9.9.9 mounted at /mnt/photos (pid 42), up 1:02:03"
    assert "server      https://photos.example (Immich 2.7.5)" in lines
    assert "refresh     off" in lines
    assert "api         1 request, 0 failed, 2.0 KiB received" in lines
    assert "originals   2 ranged GETs, 3.0 MiB received (1 retry, 0 errors)" in lines
    assert "open        1 file, 2 directories" in lines
    assert "read-ahead  1.0 MiB in use of 64.0 MiB (peak 2.0 MiB)" in lines
    assert "kernel      3 invalidations" in lines
    assert "errors      EIO 1 (TruncatedBody 1)" in lines
    assert lines[-1].split() == ["listings", "75.0%", "3", "1", "7"]
    # a report from an older or newer version: missing fields do not break the summary
    assert format_summary({}).startswith("immichfs ? mounted at ?")


def _mountinfo(tmp_path: Path, mountpoint: Path, fstype: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"99 22 0:50 / {mountpoint} ro,nosuid,nodev shared:2 - {fstype} immichfs ro\n"
    )
    return path


def test_read_status_finds_the_mount_of_a_path(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    (mountpoint / ".immichfs").mkdir(parents=True)
    (mountpoint / "photos").mkdir()
    (mountpoint / ".immichfs" / "status").write_text('{"pid": 7}')
    mountinfo = _mountinfo(tmp_path, mountpoint, "fuse.immichfs")
    assert read_status(mountpoint, mountinfo) == {"pid": 7}
    assert read_status(mountpoint / "photos", mountinfo) == {"pid": 7}
    (mountpoint / ".immichfs" / "status").write_text("not json")
    with pytest.raises(UserError, match="is not a status report"):
        read_status(mountpoint, mountinfo)
    (mountpoint / ".immichfs" / "status").unlink()
    with pytest.raises(UserError, match=r"cannot read .*No such file"):
        read_status(mountpoint, mountinfo)
    other = _mountinfo(tmp_path, mountpoint, "fuse.sshfs")
    with pytest.raises(UserError, match=r"is not an immichfs mount \(it is fuse\.sshfs mounted"):
        read_status(mountpoint, other)


# -- the handlers, without the kernel -----------------------------------------------


async def read_all(operations: Operations, inode: int) -> tuple[pyfuse3.FileInfo, bytes]:
    info = await operations.open(inode, os.O_RDONLY, CTX)
    data = b""
    while chunk := await operations.read(info.fh, len(data), 4096):
        data += chunk
    await operations.release(info.fh)
    return info, data


@pytest.mark.expect_log(
    "opendir: access denied: the API key was rejected",
    level="ERROR",
    logger="immichfs.fuse.operations",
)
async def test_status_through_the_handlers(
    ops: tuple[Operations, Replies], fake_immich: Any
) -> None:
    operations, _ = ops
    directory = await operations.lookup(ROOT_INODE, b".immichfs", CTX)
    assert stat.S_ISDIR(directory.st_mode)
    entry = await operations.lookup(directory.st_ino, b"status", CTX)
    assert stat.S_ISREG(entry.st_mode) and entry.st_mode & 0o777 == 0o444
    assert entry.st_size > 0
    assert entry.attr_timeout == 0  # a new size at every stat
    info, data = await read_all(operations, entry.st_ino)
    assert info.direct_io  # read past st_size, never from the page cache
    report = json.loads(data)
    assert set(report) == TOP_FIELDS
    assert abs(len(data) - entry.st_size) < 32
    assert report["server"]["url"] == fake_immich.url
    # the status's own handle is released: no open file left
    assert operations.statistics()["open_files"] == 0

    # errors are counted by errno, with the cause of those other than ENOENT
    with pytest.raises(pyfuse3.FUSEError):
        await operations.lookup(ROOT_INODE, b"no-such-view", CTX)
    with pytest.raises(pyfuse3.FUSEError):
        await operations.mkdir(ROOT_INODE, b"new", 0o755, CTX)
    photos = await operations.lookup(ROOT_INODE, b"photos", CTX)
    fake_immich.faults.revoke_key()
    with pytest.raises(pyfuse3.FUSEError) as denied:
        await operations.opendir(photos.st_ino, CTX)
    assert denied.value.errno == errno.EACCES
    fake_immich.faults.restore_key()
    _, data = await read_all(operations, entry.st_ino)
    report = json.loads(data)
    assert report["errors"] == {"ENOENT": 1, "EROFS": 1, "EACCES": 1}
    assert report["error_causes"] == {"AuthenticationError": 1}
    assert report["api"]["failed"] >= 1
    assert fake_immich.api_key not in data.decode()

    # nothing else at the root answers to the name, and the root does not list it
    with pytest.raises(pyfuse3.FUSEError):
        await operations.lookup(directory.st_ino, b"other", CTX)


# -- a real mount ----------------------------------------------------------------------


@pytest.fixture
def mounted(fake_immich: Any, tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = MountProcess(
        mountpoint,
        {"IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key},
        args=["--refresh-interval", "3600"],
        log_path=tmp_path / "mount.log",
    )
    try:
        process.wait_mounted()
        yield mountpoint
    finally:
        process.cleanup()


def status(mountpoint: Path) -> dict[str, Any]:
    with open(mountpoint / ".immichfs" / "status") as file:
        report: dict[str, Any] = json.load(file)
    return report


def immichfs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "immichfs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.fuse
def test_status_file_is_hidden_but_readable(mounted: Path, fake_immich: Any) -> None:
    assert ".immichfs" not in os.listdir(mounted)
    walked = {name for _, dirs, _ in os.walk(mounted / "thumbs") for name in dirs}
    assert ".immichfs" not in walked
    assert os.listdir(mounted / ".immichfs") == []
    info = os.stat(mounted / ".immichfs" / "status")
    assert stat.S_ISREG(info.st_mode) and info.st_size > 0
    assert stat.S_ISDIR(os.stat(mounted / ".immichfs").st_mode)
    report = status(mounted)
    assert set(report) == TOP_FIELDS
    assert report["mountpoint"] == os.path.realpath(mounted)
    assert report["server"] == {"url": fake_immich.url, "version": "2.7.5"}
    assert set(report["cache"]) >= {"listings", "assets"}
    assert all(set(c) >= CACHE_FIELDS for c in report["cache"].values())
    assert report["settings"]["listing_ttl"] == 20.0
    assert report["readahead"]["budget_bytes"] == 64 << 20
    assert report["refresh"]["interval"] == 3600.0
    # cat reads it whole, the size stat shows is the length of a report
    text = subprocess.run(
        ["cat", str(mounted / ".immichfs" / "status")], capture_output=True, check=True
    ).stdout
    assert json.loads(text)["pid"] == report["pid"]
    assert abs(len(text) - os.stat(mounted / ".immichfs" / "status").st_size) < 32
    with pytest.raises(OSError) as refused:
        (mounted / ".immichfs" / "status").write_text("{}")
    assert refused.value.errno in (errno.EROFS, errno.EACCES)


@pytest.mark.fuse
def test_status_changes_after_reads(mounted: Path, fake_immich: Any) -> None:
    before = status(mounted)
    photos = sorted(os.listdir(mounted / "photos"))
    listed = status(mounted)
    assert listed["api"]["requests"] > before["api"]["requests"]
    assert listed["api"]["bytes_received"] > before["api"]["bytes_received"]
    assert listed["cache"]["listings"]["entries"] >= 1

    path = mounted / "photos" / photos[0]
    data = path.read_bytes()
    after = status(mounted)
    assert after["originals"]["range_requests"] > listed["originals"]["range_requests"]
    fetched = after["originals"]["bytes_fetched"] - listed["originals"]["bytes_fetched"]
    assert fetched >= len(data) > 0
    assert after["originals"]["http"]["bytes_received"] >= fetched
    assert after["readahead"]["peak_bytes"] > 0

    with open(mounted / "photos" / photos[1], "rb") as held:
        held.read(10)
        holding = status(mounted)
        assert holding["files"]["open_files"] == after["files"]["open_files"] + 1
    assert status(mounted)["files"]["open_files"] == after["files"]["open_files"]

    missing = mounted / "photos" / "no-such-photo.jpg"
    assert not missing.exists()
    assert status(mounted)["errors"].get("ENOENT", 0) > after["errors"].get("ENOENT", 0)
    assert status(mounted)["uptime_seconds"] >= before["uptime_seconds"]


@pytest.mark.fuse
def test_status_command(mounted: Path, fake_immich: Any, tmp_path: Path) -> None:
    (mounted / "photos").iterdir()
    result = immichfs("status", mounted)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("immichfs ")
    assert f"server      {fake_immich.url} (Immich 2.7.5)" in result.stdout
    assert "cache " in result.stdout and "hit rate" in result.stdout
    assert fake_immich.api_key not in result.stdout + result.stderr

    as_json = immichfs("status", "--json", mounted / "photos")  # any path inside works
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["mountpoint"] == os.path.realpath(mounted)
    assert fake_immich.api_key not in as_json.stdout
    raw = (mounted / ".immichfs" / "status").read_bytes()
    assert fake_immich.api_key.encode() not in raw

    elsewhere = immichfs("status", tmp_path)
    assert elsewhere.returncode != 0
    assert elsewhere.stdout == ""
    assert len(elsewhere.stderr.strip().splitlines()) == 1
    assert "is not an immichfs mount" in elsewhere.stderr


@pytest.mark.fuse
def test_an_open_status_keeps_its_snapshot(mounted: Path) -> None:
    """The handle serves the report made at open, whole, even when the report has
    since become shorter (read-ahead memory released): no read is cut at a newer size."""
    photo = mounted / "photos" / sorted(os.listdir(mounted / "photos"))[2]
    with open(photo, "rb") as held:
        held.read(10)
        report = open(mounted / ".immichfs" / "status", "rb")  # noqa: SIM115
    with report:
        now = status(mounted)
        assert now["readahead"]["bytes_in_use"] == 0
        snapshot = json.loads(report.read())
    # the photo was open at the report's open, not now
    assert (snapshot["files"]["open_readers"], now["files"]["open_readers"]) == (1, 0)
    assert snapshot["readahead"]["bytes_in_use"] > 0


@pytest.mark.fuse
def test_log_file_has_levels_and_module_names(fake_immich: Any, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log_file = tmp_path / "immichfs.log"
    process = MountProcess(
        mountpoint,
        {"IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key},
        args=["--refresh-interval", "3600", "--debug", "--log-file", str(log_file)],
        log_path=tmp_path / "stderr.log",
    )
    try:
        process.wait_mounted()
        photo = mountpoint / "photos" / sorted(os.listdir(mountpoint / "photos"))[0]
        assert photo.read_bytes() == fake_immich.library.content(
            os.getxattr(photo, "user.immich.id").decode()
        )
        assert process.unmount() == (0, 0)
    finally:
        process.cleanup()
    text = log_file.read_text()
    assert " INFO immichfs.fuse.mount.serve: mounted " in text
    assert " DEBUG immichfs.client.connector." in text  # every API request, at debug level
    assert " INFO immichfs.fuse.mount.serve: unmounted " in text
    assert fake_immich.api_key not in text
    # the log went to the file, not to stderr
    assert "immichfs.fuse.mount.serve" not in (tmp_path / "stderr.log").read_text()
