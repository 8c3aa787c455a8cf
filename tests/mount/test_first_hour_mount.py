"""What a new user trips over in the first hour, on real mounts.

Mounting twice or over a non-empty directory, a key without some permissions,
the demo library's key and search, and the source ``mount`` shows. The
filesystem runs in another process (``immichfs mount``, detached or
``--foreground``); this process only looks at it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from mountutil import MountProcess, fuse_unavailable, unmount

from immichfs.cli.check import PERMISSION_NEEDS, PERMISSIONS
from immichfs_fake import FakeImmich, FakeLibrary

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMMICH", "NOTIFY_SOCKET"))}
    env["HOME"] = "/nonexistent"  # no ~/.config/immichfs/config.toml from the machine
    if "IMMICHFS_CACHE_DIR" in os.environ:  # the test session's (conftest), never ~/.cache
        env["IMMICHFS_CACHE_DIR"] = os.environ["IMMICHFS_CACHE_DIR"]
    env.update(extra)
    return env


def mounts_at(mountpoint: Path) -> list[tuple[str, str]]:
    """(fstype, source) of every mount stacked on ``mountpoint``, oldest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mountpoint):
            dash = fields.index("-")
            found.append((fields[dash + 1], fields[dash + 2]))
    return found


def daemons(mountpoint: Path) -> list[psutil.Process]:
    """immichfs processes started for ``mountpoint``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "immichfs" in cmdline and "mount" in cmdline and str(mountpoint) in cmdline:
            found.append(process)
    return found


def immichfs_mount(mountpoint: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``immichfs mount MOUNTPOINT`` as typed: detached, returns once mounted (or failed)."""
    return subprocess.run(
        [sys.executable, "-m", "immichfs", "mount", str(mountpoint), *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd="/",
    )


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    # whatever the test did: no mount (however many are stacked) and no daemon left
    for _ in range(8):
        if not mounts_at(path):
            break
        unmount(path, lazy=True)
    for process in daemons(path):
        process.terminate()
    psutil.wait_procs(daemons(path), timeout=10)


def server_env(server: FakeImmich) -> dict[str, str]:
    return {"IMMICH_URL": server.url, "IMMICH_API_KEY": server.api_key}


# -- 1. mounting twice, mounting over files


def test_mounting_on_a_live_immichfs_mount_is_refused(
    fake_immich: FakeImmich, mountpoint: Path
) -> None:
    first = MountProcess(mountpoint, server_env(fake_immich))
    try:
        first.wait_mounted()
        for extra in ([], ["--nonempty"]):
            second = immichfs_mount(mountpoint, *extra, **server_env(fake_immich))
            assert second.returncode == 1, second.stderr
            assert second.stderr == (
                f"immichfs mount: {mountpoint} is already an immichfs mount "
                f"(immichfs:{urlsplit(fake_immich.url).netloc}): unmount it first with "
                f"fusermount3 -u {mountpoint}\n"
            )
            assert len(mounts_at(mountpoint)) == 1
        # the one mount is the first one, and one unmount leaves nothing behind
        assert first.unmount() == (0, 0)
        assert mounts_at(mountpoint) == []
    finally:
        first.cleanup()


def test_mounting_over_files_is_refused_unless_nonempty(
    fake_immich: FakeImmich, mountpoint: Path
) -> None:
    (mountpoint / "notes.txt").write_text("mine\n")
    refused = immichfs_mount(mountpoint, **server_env(fake_immich))
    assert refused.returncode == 1
    assert refused.stderr == (
        f"immichfs mount: mount point {mountpoint} is not empty: its files would be hidden "
        "while mounted; use an empty directory, or --nonempty to cover it anyway\n"
    )
    assert mounts_at(mountpoint) == []
    assert fake_immich.count() == 0  # refused before asking the server anything

    covering = MountProcess(mountpoint, server_env(fake_immich), ["--nonempty"])
    try:
        covering.wait_mounted()
        assert "photos" in os.listdir(mountpoint)
        assert "notes.txt" not in os.listdir(mountpoint)
        assert covering.unmount() == (0, 0)
    finally:
        covering.cleanup()
    assert (mountpoint / "notes.txt").read_text() == "mine\n"


# -- 2. a key without some permissions


def test_key_with_only_asset_read_warns_per_missing_permission_and_mounts(
    fake_library: FakeLibrary, mountpoint: Path
) -> None:
    with FakeImmich(fake_library, permissions=["asset.read"]) as server:
        result = immichfs_mount(mountpoint, **server_env(server))
        try:
            assert result.returncode == 0, result.stderr
            lines = result.stderr.splitlines()
            # not those of later versions or of settings that are off (sidecars)
            missing = [p for p in PERMISSIONS if p != "asset.read" and p not in PERMISSION_NEEDS]
            assert len(lines) == len(missing), result.stderr
            for line, permission in zip(lines, missing, strict=True):
                assert line.startswith(
                    f"immichfs mount: warning: the API key lacks {permission}: "
                ), line
                assert line.endswith(
                    "add it to the API key in Immich (Account Settings → API Keys)"
                )
            assert "album.read: albums/" in result.stderr
            # exactly those views are degraded
            assert os.listdir(mountpoint / "photos")
            with pytest.raises(PermissionError):
                os.listdir(mountpoint / "albums")
            with pytest.raises(PermissionError):
                os.listdir(mountpoint / "people")
            with pytest.raises(PermissionError):
                os.listdir(mountpoint / "thumbs" / "preview")
        finally:
            served = daemons(mountpoint)
            assert unmount(mountpoint).returncode == 0
            psutil.wait_procs(served, timeout=30)
    assert server.api_key not in result.stderr


def test_full_key_mounts_without_a_warning(fake_immich: FakeImmich, mountpoint: Path) -> None:
    result = immichfs_mount(mountpoint, **server_env(fake_immich))
    served = daemons(mountpoint)
    try:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        # `mount` names the server: `immichfs:HOST:PORT`, not a path util-linux could resolve
        assert mounts_at(mountpoint) == [
            ("fuse.immichfs", f"immichfs:{urlsplit(fake_immich.url).netloc}")
        ]
        status = subprocess.run(
            [sys.executable, "-m", "immichfs", "status", "--json", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["server"]["url"] == fake_immich.url
    finally:
        assert unmount(mountpoint).returncode == 0
        psutil.wait_procs(served, timeout=30)


def test_key_without_asset_read_fails_the_mount(
    fake_library: FakeLibrary, mountpoint: Path
) -> None:
    granted = [p for p in PERMISSIONS if p != "asset.read"]
    with FakeImmich(fake_library, permissions=granted) as server:
        result = immichfs_mount(mountpoint, **server_env(server))
    assert result.returncode == 1
    assert result.stderr == (
        "immichfs mount: the API key lacks asset.read: without it nothing can be listed; "
        "add it to the API key in Immich (Account Settings → API Keys)\n"
    )
    assert mounts_at(mountpoint) == []


# -- 3. and 7.: the demo library


def documented_fake_key() -> str:
    """The key the docs show for `immichfs fake-server` (README or docs/)."""
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        found = re.search(r"IMMICH_API_KEY=(fake-immich-key-[0-9a-f]+)", page.read_text())
        if found:
            return found[1]
    raise AssertionError("the docs show no fake-server key")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``immichfs mount --demo --foreground``: (mount point, the demo server's URL)."""
    if fuse_unavailable() is not None:
        pytest.skip("cannot mount FUSE here")
    mountpoint = tmp_path_factory.mktemp("demo") / "mnt"
    mountpoint.mkdir()
    process = MountProcess(mountpoint, {"HOME": "/nonexistent"}, ["--demo"])
    try:
        process.wait_mounted(60)
        [(fstype, source)] = mounts_at(mountpoint)
        assert fstype == "fuse.immichfs"
        match = re.fullmatch(r"immichfs:(127\.0\.0\.1:\d+)", source)
        assert match, f"mount source {source!r} does not name the server"
        yield mountpoint, f"http://{match[1]}"
    finally:
        process.cleanup()


def test_demo_server_takes_the_key_the_docs_show(demo: tuple[Path, str]) -> None:
    _, url = demo
    answer = httpx.post(
        f"{url}/api/auth/validateToken", headers={"x-api-key": documented_fake_key()}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["authStatus"] is True


@pytest.fixture(scope="module")
def gateway(demo: tuple[Path, str]) -> Iterator[str]:
    """``immichfs serve --port 0`` in front of the demo server: its URL."""
    _, url = demo
    process = subprocess.Popen(
        [sys.executable, "-m", "immichfs", "serve", "--port", "0"],
        env=clean_env(IMMICH_URL=url, IMMICH_API_KEY=documented_fake_key()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the first line says where it listens
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"the gateway said {line!r}"
        yield match[1]
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def readme_search_example() -> tuple[str, str]:
    """(query, a file it finds) of the README's `ls /mnt/immich/search/Q  # ...: NAME`."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"ls /mnt/immich/search/(\S+) +# in the demo library: (\S+)", readme)
    assert found, "the README shows no search example with its result in the demo library"
    return found[1], found[2]


def search_ids(gateway: str, query: str) -> set[str]:
    """The ids of what the gateway's ``POST /api/immich/search`` finds for ``query``."""
    answer = httpx.post(f"{gateway}/api/immich/search", json={"query": query}, timeout=60)
    assert answer.status_code == 200, answer.text
    return {asset["id"] for asset in answer.json()}


def listed_ids(directory: Path) -> set[str]:
    return {
        os.getxattr(directory / name, "user.immich.id").decode() for name in os.listdir(directory)
    }


def test_readme_search_example_lists_what_it_shows_and_the_gateway_finds(
    demo: tuple[Path, str], gateway: str
) -> None:
    mountpoint, _ = demo
    query, shown = readme_search_example()
    directory = mountpoint / "search" / query
    assert shown in os.listdir(directory)
    assert listed_ids(directory) == search_ids(gateway, query)


@pytest.mark.parametrize("query", ["kyoto", "beach"])
def test_search_directory_lists_what_the_gateway_finds(
    demo: tuple[Path, str], gateway: str, query: str
) -> None:
    mountpoint, _ = demo
    wanted = search_ids(gateway, query)
    assert wanted, f"the gateway finds nothing for {query!r} in the demo library"
    assert listed_ids(mountpoint / "search" / query) == wanted
