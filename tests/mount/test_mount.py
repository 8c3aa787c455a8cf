"""End to end: really mount the fake server and use the files with ordinary tools.

One mount per emulated Immich version serves many checks (mounting costs more
than the checks). The filesystem runs as ``python -m immichfs mount
--foreground`` in a subprocess; the server counts requests and bytes, which is
how "no request" and "only a small range" are proven.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mountutil import MountProcess, clean_env, poll, stat_past_the_kernel_cache, unmount

pytestmark = pytest.mark.fuse

VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]
MIB = 1 << 20
#: the organised views (immichfs.vfs.views), beside this file's subject
VIEWS = {"albums", "people", "tags", "by-date", "favorites", "archive"}


def env_for(server: Any) -> dict[str, str]:
    return {"IMMICH_URL": server.url, "IMMICH_API_KEY": server.api_key}


@contextmanager
def mount_of(server: Any, tmp_path: Path, *args: str) -> Iterator[tuple[Path, MountProcess]]:
    """``immichfs mount`` of ``server`` at tmp_path/mnt with ``args``, mounted until exit."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = MountProcess(
        mountpoint, env_for(server), args=list(args), log_path=tmp_path / "mount.log"
    )
    try:
        process.wait_mounted()
        yield mountpoint, process
    finally:
        process.cleanup()


@pytest.fixture
def mounted(fake_immich: Any, tmp_path: Path) -> Iterator[tuple[Path, MountProcess]]:
    # no background refresh during the checks: they count the server's requests
    with mount_of(fake_immich, tmp_path, "--refresh-interval", "3600") as mount:
        yield mount


def timeline(library: Any, kind: str) -> list[Any]:
    return [
        a
        for a in library.assets.values()
        if a.type == kind
        and a.visibility == "timeline"
        and not a.is_trashed
        and a.owner_id == library.me.id
    ]


def asset_of(mountpoint: Path, path: Path) -> str:
    return os.getxattr(path, "user.immich.id").decode()


def run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in args], capture_output=True, timeout=60, check=True)


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
def test_tools_on_a_real_mount(
    fake_immich: Any, mounted: tuple[Path, MountProcess], tmp_path: Path
) -> None:
    mnt, process = mounted
    library = fake_immich.library
    photos, videos = mnt / "photos", mnt / "videos"

    # ls: the views, and as many files as the API lists
    root_names = set(os.listdir(mnt))
    assert root_names == {"photos", "search", "thumbs", "videos", *VIEWS}
    names = os.listdir(photos)
    assert len(names) == len(set(names)) == len(timeline(library, "IMAGE"))
    assert len(os.listdir(videos)) == len(timeline(library, "VIDEO"))
    assert "AC\u2215DC live at Wembley.jpg" in names
    assert all(len(n.encode()) <= 255 for n in names)

    # stat: exact size and dates, read-only modes, directory link counts
    for name in names[:20]:
        path = photos / name
        st = os.stat(path)
        asset = library.assets[asset_of(mnt, path)]
        assert st.st_size == asset.size
        assert st.st_mode & 0o777 == 0o444
        assert st.st_mtime == pytest.approx(asset.file_modified_at.timestamp(), abs=1e-3)
    root = os.stat(mnt)
    assert root.st_mode & 0o777 == 0o555 and root.st_nlink == 2 + len(root_names)

    # find: every file of the tree's asset views
    found = run("find", photos, videos, "-type", "f").stdout.decode().splitlines()
    assert len(found) == len(names) + len(os.listdir(videos))

    # cp -r of the photos, compared with the fake's bytes
    copy = tmp_path / "copy"
    run("cp", "-r", photos, copy)
    copied = sorted(os.listdir(copy))
    assert copied == sorted(names)
    for name in copied:
        asset_id = asset_of(mnt, photos / name)
        assert (copy / name).read_bytes() == library.content(asset_id), name

    # sha1sum equals the fake's and the asset's checksum (base64 SHA-1)
    video = max(os.listdir(videos), key=lambda n: os.stat(videos / n).st_size)
    big = videos / video
    big_id = asset_of(mnt, big)
    size = os.stat(big).st_size
    assert size == library.assets[big_id].size >= 8 * MIB
    # a far-offset read of the (not yet read) video transfers only a small range
    content = library.content(big_id)
    fake_immich.reset_log()
    middle = size // 2
    with open(big, "rb") as handle:
        handle.seek(middle)
        assert handle.read(100) == content[middle : middle + 100]
    sent = fake_immich.bytes_sent(f"/api/assets/{big_id}/original")
    # neither the file, nor the rest of it from there: a small range
    assert 0 < sent <= min(4 * MIB, size // 3), sent

    digest = run("sha1sum", big).stdout.split()[0].decode()
    assert digest == library.sha1(big_id)
    assert base64.b64encode(bytes.fromhex(digest)).decode() == library.checksum(big_id)

    # dd skip= far into the video, tail -c, Python seek+read
    block = 4096
    far = size // block - 3
    out = run("dd", f"if={big}", f"bs={block}", f"skip={far}", "count=2", "status=none").stdout
    assert out == content[far * block : far * block + 2 * block]
    assert run("tail", "-c", "1000", big).stdout == content[-1000:]
    with open(big, "rb") as handle:
        handle.seek(size - 5000)
        assert handle.read(10_000) == content[-5000:]
        handle.seek(12345)
        assert handle.read(777) == content[12345 : 12345 + 777]
        assert handle.read(0) == b""

    # PIL opens a photo
    from PIL import Image

    jpeg = next(n for n in names if n.endswith(".JPG"))
    with Image.open(photos / jpeg) as image:
        image.load()
        assert image.format == "JPEG" and image.size[0] > 0

    # writes: EROFS
    attempts: list[Callable[[], object]] = [
        lambda: os.open(photos / "new.jpg", os.O_WRONLY | os.O_CREAT),
        lambda: os.open(photos / jpeg, os.O_RDWR),
        lambda: os.mkdir(photos / "dir"),
        lambda: os.utime(photos / jpeg),
        lambda: os.unlink(photos / jpeg),
        lambda: os.rename(photos / jpeg, photos / "x.jpg"),
        lambda: os.setxattr(photos / jpeg, "user.x", b"1"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS
    assert subprocess.run(["touch", photos / "t"], capture_output=True).returncode != 0
    assert subprocess.run(["rm", "-f", photos / jpeg], capture_output=True).returncode != 0

    # unknown names: ENOENT
    for missing in (mnt / "no-such-view", photos / "nothing.jpg", mnt / "thumbs" / "huge"):
        with pytest.raises(FileNotFoundError):
            os.stat(missing)

    # thumbnails: named and typed after the format served, sizes right before and after reading
    for size_name, extension, magic in (
        ("preview", ".jpg", b"\xff\xd8\xff"),
        ("thumbnail", ".webp", b"RIFF"),
    ):
        directory = mnt / "thumbs" / size_name
        thumbs = sorted(os.listdir(directory))
        assert len(thumbs) == len(names) + len(os.listdir(videos))
        assert all(t.endswith(extension) for t in thumbs)
        for thumb in thumbs[:3]:
            before = os.stat(directory / thumb).st_size
            data = (directory / thumb).read_bytes()
            assert data.startswith(magic) and len(data) == before > 0
            assert os.stat(directory / thumb).st_size == before
        with Image.open(io.BytesIO((directory / thumbs[0]).read_bytes())) as image:
            assert image.format == ("JPEG" if size_name == "preview" else "WEBP")

    # search: a looked-up name is a search, and is listed afterwards
    results = os.listdir(mnt / "search" / "IMG_000")
    assert results and all("IMG_000" in r for r in results)
    assert "IMG_000" in os.listdir(mnt / "search")
    assert (
        os.stat(mnt / "search" / "IMG_000" / results[0]).st_ino
        == os.stat(photos / results[0]).st_ino
    )

    # stat of a just-listed file makes no request, even after the kernel's TTL
    listed = os.listdir(photos)
    fake_immich.reset_log()
    stat_past_the_kernel_cache(mnt, [photos / name for name in listed[:10]])
    assert fake_immich.count() == 0, fake_immich.requests

    # unmount: both exit 0, and nothing went wrong on the way
    assert process.unmount() == (0, 0), process.output()
    assert " ERROR " not in process.output() and "Traceback" not in process.output()


@pytest.fixture
def large_library(tmp_path: Path) -> Iterator[Any]:
    from immichfs_fake import FakeImmich, FakeLibrary

    library = FakeLibrary.generate(seed=1, photos=3, videos=1, large_video_bytes=50 * MIB)
    with FakeImmich(library) as server:
        yield server
    library.close()


def test_head_of_a_large_video_downloads_little(large_library: Any, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = MountProcess(mountpoint, env_for(large_library), log_path=tmp_path / "mount.log")
    try:
        process.wait_mounted()
        video = mountpoint / "videos" / "large-video.mp4"
        asset_id = os.getxattr(video, "user.immich.id").decode()
        large_library.reset_log()
        head = run("head", "-c", "1024", video).stdout
        assert head == large_library.library.content(asset_id)[:1024]
        sent = large_library.bytes_sent(f"/api/assets/{asset_id}/original")
        assert 0 < sent < 8 * MIB, sent
        assert process.unmount() == (0, 0)
    finally:
        process.cleanup()


@pytest.fixture
def photo_library(tmp_path: Path) -> Iterator[Any]:
    """Photos of 3 MiB: more than one first request, less than the largest one."""
    from immichfs_fake import FakeImmich, FakeLibrary

    library = FakeLibrary.generate(
        seed=3,
        photos=8,
        videos=0,
        large_video_bytes=None,
        extra=False,
        photo_bytes=(3 * MIB, 3 * MIB),
    )
    with FakeImmich(library) as server:
        yield server
    library.close()


def test_files_read_whole_cost_one_get_each(photo_library: Any, tmp_path: Path) -> None:
    with mount_of(photo_library, tmp_path, "--refresh-interval", "3600") as (mountpoint, process):
        photos = sorted((mountpoint / "photos").iterdir())
        assert len(photos) == 8
        library = photo_library.library

        def original(path: Path) -> str:
            asset_id = os.getxattr(path, "user.immich.id").decode()
            return f"/api/assets/{asset_id}/original"

        photo_library.reset_log()
        for path in photos[:6]:  # as cat, cp or a training loop reads them
            asset_id = os.getxattr(path, "user.immich.id").decode()
            assert run("cat", path).stdout == library.content(asset_id)
        # the first files start with a small request and read ahead in a second;
        # once four in a row were read whole, each file is one request
        gets = [photo_library.count("GET", original(path)) for path in photos[:6]]
        assert all(n >= 2 for n in gets[:4])
        assert gets[4:] == [1, 1]
        # a header reader: this one file comes whole, then headers are cheap again
        photo_library.reset_log()
        for path in photos[6:]:
            assert len(run("head", "-c", "1024", path).stdout) == 1024
        first, second = (photo_library.bytes_sent(original(path)) for path in photos[6:])
        assert first == 3 * MIB
        assert 0 < second < 2 * MIB
        assert process.unmount() == (0, 0)


def test_sigterm_unmounts_cleanly(fake_immich: Any, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = MountProcess(mountpoint, env_for(fake_immich), log_path=tmp_path / "mount.log")
    try:
        process.wait_mounted()
        assert os.listdir(mountpoint)
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(30) == 0, process.output()
        assert not os.path.ismount(mountpoint)
    finally:
        process.cleanup()


def mount_command(mountpoint: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "immichfs", "mount", str(mountpoint), *args]


def test_without_foreground_returns_once_mounted(fake_immich: Any, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        result = subprocess.run(
            mount_command(mountpoint),
            env=clean_env(**env_for(fake_immich)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        assert "photos" in os.listdir(mountpoint)
        assert unmount(mountpoint).returncode == 0
        assert not os.path.ismount(mountpoint)
    finally:
        if os.path.ismount(mountpoint):
            unmount(mountpoint, lazy=True)


@pytest.mark.parametrize("problem", ["wrong key", "dead url"])
def test_failures_before_mounting(fake_immich: Any, tmp_path: Path, problem: str) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    if problem == "wrong key":
        env = clean_env(IMMICH_URL=fake_immich.url, IMMICH_API_KEY="not-the-right-key-123456")
    else:
        env = clean_env(IMMICH_URL="http://127.0.0.1:9", IMMICH_API_KEY=fake_immich.api_key)
    try:
        for extra in ((), ("--foreground",)):
            result = subprocess.run(
                mount_command(mountpoint, *extra),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode != 0
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith("immichfs mount: ")
            assert ("rejected" in lines[0]) if problem == "wrong key" else ("reach" in lines[0])
            assert "not-the-right-key" not in result.stderr
            assert not os.path.ismount(mountpoint)
    finally:
        if os.path.ismount(mountpoint):
            unmount(mountpoint, lazy=True)


def test_changes_appear_after_the_listing_ttl(mutable_immich: Any, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    library = mutable_immich.library
    process = MountProcess(
        mountpoint,
        env_for(mutable_immich),
        args=["--listing-ttl", "1", "--kernel-ttl", "0.2"],
        log_path=tmp_path / "mount.log",
    )
    try:
        process.wait_mounted()
        photos = mountpoint / "photos"
        before = set(os.listdir(photos))
        assert "IMG_0002.JPG" in before
        victim = os.getxattr(photos / "IMG_0003.JPG", "user.immich.id").decode()
        # deleted in Immich while still listed here: reading fails with ENOENT
        gone = os.getxattr(photos / "IMG_0004.JPG", "user.immich.id").decode()
        library.delete(gone)
        with pytest.raises(FileNotFoundError):
            (photos / "IMG_0004.JPG").read_bytes()
        added = library.add_asset("IMG_0002.JPG", size=12_345)  # a later upload, same name
        library.trash(victim)
        new_name = f"IMG_0002~{added.id[:8]}.JPG"
        # the listing expires after 1 s; poll (with a generous bound) until it shows
        after = poll(
            lambda: set(os.listdir(photos)),
            until=lambda names: new_name in names and "IMG_0003.JPG" not in names,
        )
        assert after - before == {new_name}
        assert before - after == {"IMG_0003.JPG", "IMG_0004.JPG"}
        # the existing file kept its name and identity
        assert os.getxattr(photos / "IMG_0002.JPG", "user.immich.id") != added.id.encode()
        assert (photos / new_name).read_bytes() == library.content(added.id)
        assert process.unmount() == (0, 0)
    finally:
        process.cleanup()


def test_a_quiet_library_is_not_listed_again(mutable_immich: Any, tmp_path: Path) -> None:
    """Refresh cycles renew /photos; the permanent deletion still shows."""
    library = mutable_immich.library
    args = ("--listing-ttl", "2", "--refresh-interval", "0.5", "--kernel-ttl", "0.2")
    with mount_of(mutable_immich, tmp_path, *args) as (mountpoint, process):

        def status() -> Any:
            return json.loads((mountpoint / ".immichfs" / "status").read_bytes())

        def listing_loads() -> int:
            return int(status()["cache"]["listings"]["loads"])

        def cycles_while_unchanged() -> int:
            assert set(os.listdir(photos)) == names
            return int(status()["refresh"]["cycles"])

        photos = mountpoint / "photos"
        names = set(os.listdir(photos))
        loads = listing_loads()
        # eight refresh cycles, 0.5 s apart: twice the listing's time to live
        start = cycles_while_unchanged()
        poll(cycles_while_unchanged, until=lambda cycles: cycles >= start + 8)
        assert listing_loads() == loads
        victim = next(
            name
            for name in sorted(names)
            if not library.album_ids_of(os.getxattr(photos / name, "user.immich.id").decode())
        )
        library.delete(os.getxattr(photos / victim, "user.immich.id").decode())
        # gone after at most ttl + one cycle (2.5 s); polled with a bound far above that
        poll(lambda: os.listdir(photos), until=lambda names: victim not in names)
        assert process.unmount() == (0, 0)


def test_demo_mounts_the_sample_library(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        result = subprocess.run(
            mount_command(mountpoint, "--demo", "--uid", "1234", "--gid", "5678"),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert {"photos", "search", "thumbs", "videos"} <= set(os.listdir(mountpoint))
        video = os.stat(mountpoint / "videos" / "large-video.mp4")
        assert video.st_size == 300 * MIB
        assert (video.st_uid, video.st_gid) == (1234, 5678)
        assert len(os.listdir(mountpoint / "photos")) >= 90
        assert unmount(mountpoint).returncode == 0
    finally:
        if os.path.ismount(mountpoint):
            unmount(mountpoint, lazy=True)
