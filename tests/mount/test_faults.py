"""Fault injection over real mounts: every fault gives the right bytes or the right errno.

Each test mounts the fake server (``python -m immichfs mount --foreground`` in a
subprocess, small ``IMMICHFS_TIMEOUT`` and ``IMMICHFS_RETRY_BUDGET``), turns on
one of the server's fault switches and checks, for that fault:

- the bytes read are the asset's (SHA-1 compared) or the call fails with the
  documented errno — never wrong bytes, never a short read mid-file;
- it took no longer than the timeout plus the retry budget (plus slack);
- the mount is alive afterwards: it still lists and reads other files.

Every test uses assets no other step has read, so the kernel's page cache
never answers in the server's place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from mountutil import MountProcess, poll

from immichfs_fake import FakeImmich, FakeLibrary

pytestmark = pytest.mark.fuse

TIMEOUT = 1.0
BUDGET = 3.0
#: process start, kernel round trips and a loaded 2-core machine
SLACK = 4.0
BOUND = TIMEOUT + BUDGET + SLACK
MIB = 1 << 20


@dataclass
class Mount:
    path: Path
    process: MountProcess
    server: FakeImmich
    library: FakeLibrary
    _paths: dict[str, Path] = field(default_factory=dict)

    def locate(self, asset_id: str) -> Path:
        """The file of an asset under /photos or /videos (listed once, by xattr)."""
        if not self._paths:
            for view in ("photos", "videos"):
                for name in os.listdir(self.path / view):
                    file = self.path / view / name
                    self._paths[os.getxattr(file, "user.immich.id").decode()] = file
        return self._paths[asset_id]

    def unused(self, kind: str = "IMAGE", *, smallest: int = 50_000) -> str:
        """An asset of the timeline no step has read yet."""
        for asset in sorted(self.library.assets.values(), key=lambda a: a.id):
            if (
                asset.type == kind
                and asset.visibility == "timeline"
                and not asset.is_trashed
                and asset.owner_id == self.library.me.id
                and asset.size >= smallest
                and asset.id not in USED
            ):
                USED.add(asset.id)
                return asset.id
        raise AssertionError(f"no unused {kind} asset of at least {smallest} bytes left")

    def original(self, asset_id: str) -> str:
        return f"/api/assets/{asset_id}/original"

    def assert_alive(self) -> None:
        """The process runs, the mount lists and serves a file it has not read before."""
        assert self.process.process.poll() is None, self.process.output()
        assert {"photos", "videos", "search"} <= set(os.listdir(self.path))
        asset_id = self.unused()
        data = self.locate(asset_id).read_bytes()
        assert hashlib.sha1(data).hexdigest() == self.library.sha1(asset_id)

    def errors_logged(self) -> list[str]:
        return [line for line in self.process.output().splitlines() if " ERROR " in line]


USED: set[str] = set()


@pytest.fixture
def mount(mutable_immich: FakeImmich, tmp_path: Path) -> Iterator[Mount]:
    USED.clear()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {
        "IMMICH_URL": mutable_immich.url,
        "IMMICH_API_KEY": mutable_immich.api_key,
        "IMMICHFS_TIMEOUT": str(TIMEOUT),
        "IMMICHFS_RETRY_BUDGET": str(BUDGET),
        # faults of the network path: bytes kept on disk would answer in the server's place
        "IMMICHFS_CACHE_SIZE_MB": "0",
        "IMMICHFS_LISTING_TTL": "1",
        "IMMICHFS_ASSET_TTL": "1",
        "IMMICHFS_KERNEL_TTL": "0.5",
    }
    process = MountProcess(mountpoint, env, log_path=tmp_path / "mount.log")
    try:
        process.wait_mounted()
        yield Mount(mountpoint, process, mutable_immich, mutable_immich.library)
    finally:
        mutable_immich.faults.clear()
        process.cleanup()


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        return f.read(size)


def failing_errno(action: Callable[[], Any]) -> tuple[int | None, float]:
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        action()
    return info.value.errno, time.monotonic() - started


# -- transient faults: retried, resumed, right bytes -------------------------------------


def test_connection_cut_mid_body_resumes_with_the_right_bytes(mount: Mount) -> None:
    video = mount.unused("VIDEO", smallest=8 * MIB)
    path = mount.locate(video)
    mount.server.faults.cut_after(300_000, times=3, path=mount.original(video))
    mount.server.reset_log()
    data, took = timed(lambda: read_all(path))
    assert hashlib.sha1(data).hexdigest() == mount.library.sha1(video)
    assert took < BOUND
    ranges = [r.range for r in mount.server.requests.select("GET", mount.original(video))]
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in ranges if r)
    # the cut windows were resumed where they broke, not started over from 0
    assert len(ranges) > 3 and len(starts) == len(set(starts))
    mount.assert_alive()


def test_truncated_bodies_are_resumed(mount: Mount) -> None:
    photo = mount.unused()
    mount.server.faults.truncate(times=2, path=mount.original(photo))
    data, took = timed(lambda: read_all(mount.locate(photo)))
    assert hashlib.sha1(data).hexdigest() == mount.library.sha1(photo)
    assert took < BOUND
    mount.assert_alive()


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried(mount: Mount, status: int) -> None:
    photo = mount.unused()
    path = mount.locate(photo)
    mount.server.faults.fail(status, times=3, path=mount.original(photo))
    data, took = timed(lambda: read_all(path))
    assert hashlib.sha1(data).hexdigest() == mount.library.sha1(photo)
    assert took < BOUND
    # listings too: an uncached search directory behind the same failures
    mount.server.faults.fail(status, times=2, path="/api/search/metadata")
    names, took = timed(lambda: os.listdir(mount.path / "search" / "IMG"))
    assert names and took < BOUND
    mount.assert_alive()


def test_rate_limit_waits_for_retry_after(mount: Mount) -> None:
    photo = mount.unused()
    path = mount.locate(photo)
    mount.server.faults.fail(429, times=1, retry_after=1, path=mount.original(photo))
    data, took = timed(lambda: read_all(path))
    assert hashlib.sha1(data).hexdigest() == mount.library.sha1(photo)
    assert 0.9 <= took < BOUND  # it waited as asked, and no longer than the bound
    statuses = [r.status for r in mount.server.requests.select("GET", mount.original(photo))]
    assert statuses[0] == 429 and 206 in statuses
    mount.assert_alive()


def test_a_body_stalled_past_the_timeout_is_resumed(mount: Mount) -> None:
    video = mount.unused("VIDEO", smallest=8 * MIB)
    path = mount.locate(video)
    # 64 KiB, then silence far longer than the timeout (twice): a read timeout mid-body
    mount.server.faults.stall(65536, 30.0, times=2, path=mount.original(video))
    data, took = timed(lambda: read_at(path, 0, 2 * MIB))
    assert data == mount.library.content(video)[: 2 * MIB]
    assert took < BOUND
    mount.assert_alive()


# -- faults that outlast the budget: EIO in bounded time, then recovery ---------------------


def test_a_server_slower_than_the_timeout_gives_eio_in_bounded_time(mount: Mount) -> None:
    photo = mount.unused()
    path = mount.locate(photo)
    mount.server.faults.delay(TIMEOUT + BUDGET + 2, path=mount.original(photo))
    code, took = failing_errno(lambda: read_at(path, 0, 4096))
    assert code == errno.EIO
    assert took < BOUND
    mount.server.faults.clear()
    mount.assert_alive()
    # the same file reads right once the server answers in time again
    data = read_all(path)
    assert hashlib.sha1(data).hexdigest() == mount.library.sha1(photo)


def test_a_dripping_server_never_blocks_past_the_bound(mount: Mount) -> None:
    """Bytes keep coming, too slowly: no single call may wait longer than the bound."""
    photo = mount.unused(smallest=200_000)
    path = mount.locate(photo)
    content = mount.library.content(photo)
    mount.server.faults.slow_body(10_000, path=mount.original(photo))  # 128 KiB: 13 s
    started = time.monotonic()
    try:
        data = read_at(path, 0, 128 * 1024)
    except OSError as exc:
        assert exc.errno == errno.EIO
    else:
        assert data == content[: 128 * 1024]
    assert time.monotonic() - started < BOUND
    mount.server.faults.clear()
    assert read_at(path, 0, 128 * 1024) == content[: 128 * 1024]
    mount.assert_alive()


def test_a_dead_server_fails_fast_and_recovers_without_remount(mount: Mount) -> None:
    photo = mount.unused()
    path = mount.locate(photo)
    mount.server.faults.refuse_connections()
    code, took = failing_errno(lambda: os.listdir(mount.path / "search" / "Kinkaku"))
    assert code == errno.EIO and took < BOUND
    code, took = failing_errno(lambda: read_at(path, 0, 4096))
    assert code == errno.EIO and took < BOUND
    assert mount.process.process.poll() is None
    mount.server.faults.resume_connections()
    # no remount: the same listing and the same file work now
    assert os.listdir(mount.path / "search" / "Kinkaku")
    data = read_all(path)
    assert hashlib.sha1(data).hexdigest() == mount.library.sha1(photo)
    mount.assert_alive()


def test_retries_exhausted_give_eio_never_partial_bytes(mount: Mount) -> None:
    video = mount.unused("VIDEO", smallest=8 * MIB)
    path = mount.locate(video)
    content = mount.library.content(video)
    with open(path, "rb", buffering=0) as f:
        assert f.read(1000) == content[:1000]
        # from here on every request of this file fails
        mount.server.faults.fail(503, times=None, path=mount.original(video))
        f.seek(6 * MIB)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            f.read(MIB)
        assert info.value.errno == errno.EIO
        assert time.monotonic() - started < BOUND
        mount.server.faults.clear()
        f.seek(6 * MIB)
        assert f.read(MIB) == content[6 * MIB : 7 * MIB]
    mount.assert_alive()


# -- the library changes under an open file ------------------------------------------------


def test_asset_deleted_while_open(mount: Mount) -> None:
    video = mount.unused("VIDEO", smallest=8 * MIB)
    path = mount.locate(video)
    content = mount.library.content(video)
    with open(path, "rb", buffering=0) as f:
        assert f.read(1000) == content[:1000]
        mount.library.delete(video)
        f.seek(7 * MIB)
        with pytest.raises(OSError) as info:
            f.read(4096)
    # documented: Immich answers 400 "Not found or no asset.download access"
    assert info.value.errno == errno.ENOENT
    # and the listings drop it once their TTL has passed
    poll(lambda: os.listdir(path.parent), until=lambda names: path.name not in names)
    mount.assert_alive()


def test_asset_trashed_while_open(mount: Mount) -> None:
    photo = mount.unused()
    path = mount.locate(photo)
    content = mount.library.content(photo)
    with open(path, "rb", buffering=0) as f:
        assert f.read(100) == content[:100]
        mount.library.trash(photo)
        # Immich still serves a trashed asset's bytes: the right bytes, or a clean errno
        f.seek(len(content) - 1000)
        try:
            assert f.read(1000) == content[-1000:]
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.ESTALE, errno.EIO)
    poll(lambda: os.listdir(path.parent), until=lambda names: path.name not in names)
    mount.assert_alive()


def test_content_changed_while_open_never_mixes_versions(mount: Mount) -> None:
    video = mount.unused("VIDEO", smallest=8 * MIB)
    path = mount.locate(video)
    old = mount.library.content(video)
    with open(path, "rb", buffering=0) as f:
        first = f.read(MIB)
        assert first == old[:MIB]
        mount.library.change_content(video)
        new = mount.library.content(video)
        assert new != old
        f.seek(len(old) - MIB)
        # documented: the handle is stale once the server's version differs (the
        # weak ETag pinned at the first read changed); never a piece of the new one
        with pytest.raises(OSError) as info:
            f.read(MIB)
        assert info.value.errno == errno.ESTALE

    # a new open sees the new version, whole
    def read_whole() -> bytes | None:
        try:
            data = read_all(path)
        except OSError as exc:
            assert exc.errno == errno.ESTALE
            return None
        assert data in (old, new), "mixed versions"
        return data

    poll(read_whole, until=lambda data: data == new)
    mount.assert_alive()


# -- the key ------------------------------------------------------------------------------


def test_revoked_key_gives_eacces_and_one_error_line(mount: Mount) -> None:
    photos = [mount.unused() for _ in range(3)]
    paths = [mount.locate(p) for p in photos]
    handles = [open(p, "rb", buffering=0) for p in paths]  # noqa: SIM115 (closed below)
    try:
        before = len(mount.errors_logged())
        mount.server.faults.revoke_key()
        for _ in range(2):
            for handle in handles:
                handle.seek(0)
                code, took = failing_errno(partial(handle.read, 4096))
                assert code == errno.EACCES
                assert took < BOUND  # 401 is final: not retried
        # logged before the first failed read returned; once, not per read
        logged = poll(lambda: mount.errors_logged()[before:], until=bool)
        assert len(logged) == 1, logged
        assert "API key" in logged[0] or "access" in logged[0]
        # a new key works again without remount
        mount.server.faults.restore_key()
        handles[0].seek(0)
        assert handles[0].read(100) == mount.library.content(photos[0])[:100]
    finally:
        for handle in handles:
            handle.close()
    mount.assert_alive()


def test_key_without_download_permission_lists_but_does_not_read(
    mutable_library: FakeLibrary, tmp_path: Path
) -> None:
    permissions = ["asset.read", "asset.view", "album.read", "person.read", "tag.read"]
    with FakeImmich(mutable_library, permissions=permissions) as server:
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        env = {"IMMICH_URL": server.url, "IMMICH_API_KEY": server.api_key}
        process = MountProcess(mountpoint, env, log_path=tmp_path / "mount.log")
        try:
            process.wait_mounted()
            names = os.listdir(mountpoint / "photos")
            assert names
            target = mountpoint / "photos" / names[0]
            assert os.stat(target).st_size > 0
            for _ in range(3):
                code, took = failing_errno(lambda: read_at(target, 0, 100))
                assert code == errno.EACCES and took < BOUND
            # thumbnails need only asset.view: they still read
            thumbs = os.listdir(mountpoint / "thumbs" / "preview")
            assert (mountpoint / "thumbs" / "preview" / thumbs[0]).read_bytes()[:2] == b"\xff\xd8"
            log = process.output()
            denied = [line for line in log.splitlines() if " ERROR " in line]
            assert len(denied) == 1 and "asset.download" in denied[0], log
            assert process.unmount() == (0, 0)
        finally:
            process.cleanup()


# -- a server that ignores Range -------------------------------------------------------------


def test_a_200_for_a_range_is_never_served_as_the_range(mount: Mount) -> None:
    video = mount.unused("VIDEO", smallest=8 * MIB)
    path = mount.locate(video)
    content = mount.library.content(video)
    mount.server.faults.ignore_range(path=mount.original(video))
    for offset in (5 * MIB, 12345, 0):
        # refused (ProtocolError, not retried): EIO at once, never the file's first bytes
        code, took = failing_errno(partial(read_at, path, offset, 4096))
        assert code == errno.EIO and took < BOUND
    mount.server.faults.clear()
    assert read_at(path, 5 * MIB, 4096) == content[5 * MIB : 5 * MIB + 4096]
    mount.assert_alive()
