"""The persistent cache over real mounts: remount, offline, corruption, size bound, crash.

Each test mounts the fake server (``python -m immichfs mount --foreground``) with
its own ``--cache-dir``, unmounts, changes something (the server refuses
connections, a cached file is damaged, an asset is deleted or replaced, the
process is killed with SIGKILL) and mounts again over the same cache directory.
Bytes are checked with SHA-1 against the library: never wrong bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mountutil import MountProcess, poll

from immichfs_fake import FakeImmich, FakeLibrary

pytestmark = pytest.mark.fuse

TIMEOUT = 1.0
BUDGET = 2.0
#: process start, kernel round trips and a loaded 2-core machine
SLACK = 4.0
BOUND = TIMEOUT + BUDGET + SLACK
MIB = 1 << 20


@dataclass
class Cached:
    """A mountpoint and cache directory that outlive one mount process."""

    server: FakeImmich
    library: FakeLibrary
    mountpoint: Path
    cache_dir: Path
    tmp: Path
    process: MountProcess | None = None
    mounts: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "IMMICH_URL": self.server.url,
            "IMMICH_API_KEY": self.server.api_key,
            "IMMICHFS_CACHE_DIR": str(self.cache_dir),
            "IMMICHFS_TIMEOUT": str(TIMEOUT),
            "IMMICHFS_RETRY_BUDGET": str(BUDGET),
            "IMMICHFS_KERNEL_TTL": "0.5",
        }
        env.update(extra)
        return env

    def mount(self, *args: str, **env: str) -> MountProcess:
        assert self.process is None
        self.mounts += 1
        log = self.tmp / f"mount{self.mounts}.log"
        self.process = MountProcess(self.mountpoint, self.env(**env), args, log_path=log)
        self.process.wait_mounted()
        return self.process

    def unmount(self) -> None:
        assert self.process is not None
        assert self.process.unmount() == (0, 0), self.process.output()
        self.process.cleanup()
        self.process = None

    def path_of(self, asset_id: str) -> Path:
        for view in ("photos", "videos"):
            for name in os.listdir(self.mountpoint / view):
                file = self.mountpoint / view / name
                if os.getxattr(file, "user.immich.id").decode() == asset_id:
                    return file
        raise AssertionError(f"{asset_id} is not listed")

    def status(self) -> dict[str, Any]:
        with open(self.mountpoint / ".immichfs" / "status", "rb") as f:
            data: dict[str, Any] = json.loads(f.read())
        return data

    def blobs(self) -> list[Path]:
        return sorted(self.cache_dir.glob("*/content/blobs/*"))

    def disk_bytes(self) -> int:
        """Bytes the cached files really take on disk (sparse files count what is written)."""
        total = 0
        for path in self.blobs():
            with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                total += os.stat(path).st_blocks * 512
        return total


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def assets_of(library: FakeLibrary, kind: str, count: int, *, smallest: int = 0) -> list[str]:
    found = [
        a.id
        for a in sorted(library.assets.values(), key=lambda a: a.id)
        if a.type == kind
        and a.visibility == "timeline"
        and not a.is_trashed
        and a.owner_id == library.me.id
        and a.size >= smallest
    ]
    assert len(found) >= count
    return found[:count]


@pytest.fixture
def cached(mutable_immich: FakeImmich, tmp_path: Path) -> Iterator[Cached]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    state = Cached(mutable_immich, mutable_immich.library, mountpoint, tmp_path / "cache", tmp_path)
    try:
        yield state
    finally:
        mutable_immich.faults.clear()
        if state.process is not None:
            state.process.cleanup()


def test_offline_remount_serves_listings_and_cached_bytes(cached: Cached) -> None:
    library = cached.library
    photos = assets_of(library, "IMAGE", 3)
    video = assets_of(library, "VIDEO", 1, smallest=3 * MIB)[0]
    uncached = assets_of(library, "IMAGE", 4)[3]
    cached.mount()
    album = sorted(os.listdir(cached.mountpoint / "albums"))[0]
    views = ("photos", "videos", "albums", f"albums/{album}", "people", "tags", "by-date")
    listing = {v: sorted(os.listdir(cached.mountpoint / v)) for v in views}
    for asset_id in [*photos, video]:
        assert sha1(read_all(cached.path_of(asset_id))) == library.sha1(asset_id)
    uncached_path = cached.path_of(uncached)
    cached.unmount()

    cached.server.faults.refuse_connections()
    process = cached.mount()
    warnings = [line for line in process.output().splitlines() if "mounting offline" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], process.output()
    assert {v: sorted(os.listdir(cached.mountpoint / v)) for v in listing} == listing
    for asset_id in [*photos, video]:
        assert sha1(read_all(cached.path_of(asset_id))) == library.sha1(asset_id)
    status = cached.status()
    assert status["connection"] == "offline"
    assert status["disk_cache"]["hits"] >= 4
    summary = subprocess.run(
        [sys.executable, "-m", "immichfs", "status", str(cached.mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = summary.stdout.splitlines()
    assert "connection  offline" in lines, summary.stdout + summary.stderr
    assert any(line.startswith("disk cache  ") and " hits, " in line for line in lines)

    # an uncached file: EIO, within the bound, and the mount lives on
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        read_all(uncached_path)
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < BOUND

    # the server comes back: the mount notices by itself and reads everything again
    cached.server.faults.resume_connections()
    poll(cached.status, until=lambda s: s["connection"] == "online", timeout=30)
    assert sha1(read_all(uncached_path)) == library.sha1(uncached)
    cached.unmount()


def test_no_catalog_and_no_server_fails_as_before(cached: Cached) -> None:
    cached.server.faults.refuse_connections()
    process = MountProcess(cached.mountpoint, cached.env(), log_path=cached.tmp / "m.log")
    try:
        code = process.process.wait(60)
        assert code != 0
        assert "cannot reach" in process.output()
        assert not os.path.ismount(cached.mountpoint)
    finally:
        process.cleanup()


def test_corrupted_cache_never_yields_wrong_bytes(cached: Cached) -> None:
    library = cached.library
    video = assets_of(library, "VIDEO", 1, smallest=3 * MIB)[0]
    photo = assets_of(library, "IMAGE", 1, smallest=100_000)[0]
    cached.mount()
    for asset_id in (video, photo):
        read_all(cached.path_of(asset_id))
    cached.unmount()
    blobs = {p.name.split(".")[0]: p for p in cached.blobs()}
    # a flipped byte in the second MiB of the video, a truncated photo
    with open(blobs[video], "r+b") as f:
        f.seek(MIB + 1234)
        byte = f.read(1)
        f.seek(MIB + 1234)
        f.write(bytes([byte[0] ^ 0x01]))
    os.truncate(blobs[photo], 1000)

    # offline: what cannot be verified is an error, never the damaged bytes
    cached.server.faults.refuse_connections()
    cached.mount()
    for asset_id in (video, photo):
        with pytest.raises(OSError) as info:
            read_all(cached.path_of(asset_id))
        assert info.value.errno == errno.EIO
    with open(cached.path_of(video), "rb") as f:
        assert f.read(MIB) == library.content(video)[:MIB]  # the intact first block
    # the flipped byte failed verification (the truncation was noticed at start)
    assert cached.status()["disk_cache"]["dropped_blocks"] >= 1
    cached.unmount()

    # online: the damaged parts are fetched again, and the cache is whole again
    cached.server.faults.resume_connections()
    cached.mount()
    for asset_id in (video, photo):
        assert sha1(read_all(cached.path_of(asset_id))) == library.sha1(asset_id)
    cached.unmount()
    cached.server.faults.refuse_connections()
    cached.mount()
    for asset_id in (video, photo):
        assert sha1(read_all(cached.path_of(asset_id))) == library.sha1(asset_id)
    cached.unmount()


def test_cache_size_holds_under_a_larger_workload(cached: Cached) -> None:
    library = cached.library
    limit_mb = 2
    cached.mount("--cache-size-mb", str(limit_mb))
    total = 0
    for view in ("videos", "photos"):
        for name in sorted(os.listdir(cached.mountpoint / view)):
            path = cached.mountpoint / view / name
            asset_id = os.getxattr(path, "user.immich.id").decode()
            assert sha1(read_all(path)) == library.sha1(asset_id)
            total += path.stat().st_size
            assert cached.disk_bytes() <= limit_mb * MIB
    assert total > 3 * limit_mb * MIB
    disk = cached.status()["disk_cache"]
    assert disk["bytes_on_disk"] <= limit_mb * MIB
    assert disk["evictions"] > 0
    cached.unmount()


def test_kill_9_during_cp_then_remount_is_consistent(cached: Cached) -> None:
    library = cached.library
    process = cached.mount()
    copy = cached.tmp / "copy"
    cp = subprocess.Popen(["cp", "-r", str(cached.mountpoint / "videos"), str(copy)])
    try:
        poll(cached.disk_bytes, until=lambda n: n > 2 * MIB, timeout=60, every=0.01)
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.wait(10)
    finally:
        cp.wait(60)
    process.cleanup()  # the dead mount is detached
    cached.process = None

    cached.mount()
    again = cached.tmp / "again"
    shutil.copytree(cached.mountpoint / "videos", again)
    for path in again.iterdir():
        asset_id = os.getxattr(cached.mountpoint / "videos" / path.name, "user.immich.id")
        assert sha1(path.read_bytes()) == library.sha1(asset_id.decode()), path.name
    cached.unmount()
    # and offline, everything copied is served from the cache, byte-exact
    cached.server.faults.refuse_connections()
    cached.mount()
    for path in again.iterdir():
        assert read_all(cached.mountpoint / "videos" / path.name) == path.read_bytes()
    cached.unmount()


def test_asset_deleted_while_unmounted_disappears(cached: Cached) -> None:
    library = cached.library
    victim, trashed = assets_of(library, "IMAGE", 2)
    cached.mount()
    name, trashed_name = cached.path_of(victim).name, cached.path_of(trashed).name
    # the listing is saved in the background: unmount once it is on disk
    poll(
        lambda: cached.status()["disk_cache"]["catalog"]["listings"],
        until=lambda listings: listings >= 1,
        timeout=30,
    )
    cached.unmount()
    library.delete(victim)  # permanently: no delta shows it
    library.trash(trashed)
    library.add_asset("added while unmounted.jpg")
    cached.mount()  # the listing TTL (20 s) is longer than the time allowed below
    os.listdir(cached.mountpoint / "photos")
    assert cached.status()["disk_cache"]["served_saved_listings"] >= 1  # from disk
    # the saved listing may show them for a moment; the refresh task's catch-up
    # brings the catalog up to date a moment after the mount (freshness: that
    # delay, one cycle, the kernel's TTL)
    names = poll(
        lambda: os.listdir(cached.mountpoint / "photos"),
        until=lambda names: name not in names and trashed_name not in names,
        timeout=10,
    )
    assert any(n.startswith("added while unmounted") for n in names)
    cached.unmount()
    # what the catch-up found stays found: the next remount's catalog is up to date
    cached.mount()
    names = os.listdir(cached.mountpoint / "photos")
    assert name not in names and trashed_name not in names
    cached.unmount()


def test_changed_checksum_never_serves_old_bytes(cached: Cached) -> None:
    library = cached.library
    photo = assets_of(library, "IMAGE", 1, smallest=100_000)[0]
    cached.mount()
    path = cached.path_of(photo)
    old = read_all(path)
    assert sha1(old) == library.sha1(photo)
    cached.unmount()
    library.change_content(photo)
    new_sha1 = library.sha1(photo)
    assert new_sha1 != sha1(old)
    cached.mount()
    # the first thing after the remount, while the saved listing (old checksum) is
    # what the mount knows and the server's is still on its way
    assert sha1(read_all(path)) == new_sha1
    cached.unmount()
    cached.mount()
    assert sha1(read_all(path)) == new_sha1
    cached.unmount()


def test_second_mount_of_the_same_cache_is_refused(cached: Cached) -> None:
    cached.mount()
    other = cached.tmp / "other"
    other.mkdir()
    second = MountProcess(other, cached.env(), log_path=cached.tmp / "second.log")
    try:
        code = second.process.wait(60)
        assert code != 0
        assert "in use by another immichfs process" in second.output()
        assert not os.path.ismount(other)
    finally:
        second.cleanup()
    cached.unmount()


def immichfs(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMMICH")}
    return subprocess.run(
        [sys.executable, "-m", "immichfs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cache_command_stats_prune_clear(cached: Cached) -> None:
    library = cached.library
    video = assets_of(library, "VIDEO", 1, smallest=3 * MIB)[0]
    cached.mount()
    read_all(cached.path_of(video))
    where = ["--cache-dir", str(cached.cache_dir)]
    # while mounted: stats works, wiping is refused with a clear line
    stats = immichfs("cache", "stats", "--json", *where)
    assert stats.returncode == 0, stats.stderr
    (entry,) = json.loads(stats.stdout)["servers"]
    assert entry["in_use"] and entry["url"] == cached.server.url
    assert entry["bytes_cached"] >= 3 * MIB and entry["assets"] > 0
    refused = immichfs("cache", "clear", *where)
    assert refused.returncode == 1
    assert "in use by another immichfs process" in refused.stderr
    cached.unmount()

    pruned = immichfs("cache", "prune", "--cache-size-mb", "1", *where)
    assert pruned.returncode == 0, pruned.stderr
    (entry,) = json.loads(immichfs("cache", "stats", "--json", *where).stdout)["servers"]
    assert entry["bytes_cached"] <= MIB and not entry["in_use"]
    cleared = immichfs("cache", "clear", *where)
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(immichfs("cache", "stats", "--json", *where).stdout)["servers"] == []
    assert list(cached.cache_dir.iterdir()) == []


def test_thumbnail_sizes_without_downloads_and_kept(cached: Cached) -> None:
    cached.mount()
    thumbs = cached.mountpoint / "thumbs" / "thumbnail"
    cached.server.requests.clear()
    sizes = {name: (thumbs / name).stat().st_size for name in os.listdir(thumbs)}
    assert sizes and all(size > 0 for size in sizes.values())
    answers = cached.server.requests.select(method="GET", path_prefix="/api/assets/")
    thumbnail_answers = [r for r in answers if r.path.endswith("/thumbnail")]
    assert thumbnail_answers, "the sizes came from somewhere"
    # every size learned with a one-byte range, not a download
    assert {(r.status, r.bytes_sent, r.range) for r in thumbnail_answers} == {(206, 1, "bytes=0-0")}
    first = sorted(sizes)[0]
    data = (thumbs / first).read_bytes()
    assert len(data) == sizes[first]
    cached.unmount()

    cached.server.faults.refuse_connections()
    cached.mount()
    assert {name: (thumbs / name).stat().st_size for name in os.listdir(thumbs)} == sizes
    assert (thumbs / first).read_bytes() == data  # kept, verified, served offline
    cached.unmount()
