"""Immich 3.2 features in a real mount of the fake (3.2 mode): edited renditions
(``--edits``), XMP sidecars (``--sidecars``), and listings by cursor."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountutil import MountProcess, poll

from immichfs_fake import FakeImmich, FakeLibrary

V32 = "3.2.0"


@pytest.fixture
def immich32(fake_library: FakeLibrary) -> Iterator[FakeImmich]:
    with FakeImmich(fake_library, version=V32) as server:
        yield server


def mount(server: Any, tmp_path: Path, *args: str) -> MountProcess:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = MountProcess(
        mountpoint,
        {"IMMICH_URL": server.url, "IMMICH_API_KEY": server.api_key},
        args=["--refresh-interval", "3600", *args],
        log_path=tmp_path / "mount.log",
    )
    try:
        process.wait_mounted()
    except BaseException:
        process.cleanup()
        raise
    return process


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def edited_photos(lib: FakeLibrary) -> list[Any]:
    return sorted(
        (
            a
            for a in lib.assets.values()
            if a.is_edited
            and a.type == "IMAGE"
            and a.visibility == "timeline"
            and not a.is_trashed
            and a.owner_id == lib.me.id
        ),
        key=lambda a: a.id,
    )


def by_id(directory: Path) -> dict[str, Path]:
    found = {}
    for entry in os.scandir(directory):
        if entry.name.endswith(".xmp"):
            continue
        found[os.getxattr(entry.path, "user.immich.id").decode()] = Path(entry.path)
    return found


@pytest.mark.parametrize("edits", ["edited", "original"])
def test_edits_serve_the_chosen_rendition(
    immich32: FakeImmich, fake_library: FakeLibrary, tmp_path: Path, edits: str
) -> None:
    lib = fake_library
    edited = edited_photos(lib)
    assert len(edited) >= 2
    process = mount(immich32, tmp_path, "--edits", edits)
    try:
        files = by_id(process.mountpoint / "photos")
        for asset in edited[:3]:
            path = files[asset.id]
            want = lib.edited_content(asset.id) if edits == "edited" else lib.content(asset.id)
            assert len(want) != len(lib.content(asset.id)) or edits == "original"
            assert path.stat().st_size == len(want)
            assert file_sha1(path) == sha1(want)
            assert os.getxattr(path, "user.immich.edited") == b"1"
            # the checksum attribute is always the original's SHA-1
            checksum = base64.b64decode(os.getxattr(path, "user.immich.checksum")).hex()
            assert checksum == sha1(lib.content(asset.id))
        unedited = next(
            a
            for a in lib.assets.values()
            if a.id in files and not a.is_edited and a.type == "IMAGE"
        )
        assert os.getxattr(files[unedited.id], "user.immich.edited") == b"0"
        assert file_sha1(files[unedited.id]) == sha1(lib.content(unedited.id))
        status = json.loads((process.mountpoint / ".immichfs" / "status").read_bytes())
        assert status["settings"]["edits"] == edits
    finally:
        process.cleanup()
    heads = [r for r in immich32.requests.select("HEAD", "/api/assets/")]
    if edits == "original":
        # sizes come from the listing: no HEAD, and edited=true never asked
        assert not heads
        assert not [r for r in immich32.requests if "edited=true" in r.query]
    else:
        # at most one HEAD per edited file (its size), none for the others
        assert heads and all("edited=true" in r.query for r in heads)
        asked = [r.path.split("/")[3] for r in heads]
        assert len(asked) == len(set(asked)) and set(asked) <= {a.id for a in edited}


def with_sidecars(lib: FakeLibrary) -> list[Any]:
    return sorted(
        (
            a
            for a in lib.assets.values()
            if a.has_sidecar
            and a.visibility == "timeline"
            and not a.is_trashed
            and a.owner_id == lib.me.id
        ),
        key=lambda a: a.id,
    )


def test_sidecars_read_byte_exact(
    immich32: FakeImmich, fake_library: FakeLibrary, tmp_path: Path
) -> None:
    lib = fake_library
    wanted = with_sidecars(lib)
    assert len(wanted) >= 3
    process = mount(immich32, tmp_path, "--sidecars")
    try:
        root = process.mountpoint
        listed: dict[str, Path] = {}
        for kind in ("photos", "videos"):
            names = set(os.listdir(root / kind))
            for name in names:
                path = root / kind / name
                if not name.endswith(".xmp"):
                    assert (name + ".xmp" in names) == lib.assets[
                        os.getxattr(path, "user.immich.id").decode()
                    ].has_sidecar
                    continue
                asset_id = os.getxattr(root / kind / name.removesuffix(".xmp"), "user.immich.id")
                listed[asset_id.decode()] = path
        assert set(listed) == {a.id for a in wanted}
        for asset in wanted:
            path = listed[asset.id]
            data = lib.sidecar_content(asset.id)
            assert path.stat().st_size == len(data)
            assert path.read_bytes() == data
            assert oct(path.stat().st_mode & 0o777) == oct(0o444)
            with pytest.raises(OSError):
                path.open("ab")
        # a file without a sidecar has no NAME.xmp, even when looked up by name
        plain = next(
            p
            for p in (root / "photos").iterdir()
            if not p.name.endswith(".xmp") and not (root / "photos" / (p.name + ".xmp")).exists()
        )
        assert not Path(str(plain) + ".xmp").exists()
        asked = len(immich32.requests.select("GET", "/api/asset-files"))
        # listing again asks nothing more: each asset's answer is kept
        for kind in ("photos", "videos"):
            os.listdir(root / kind)
        assert len(immich32.requests.select("GET", "/api/asset-files")) == asked
    finally:
        process.cleanup()
    queries = [r for r in immich32.requests.select("GET", "/api/asset-files") if r.query]
    per_asset = [r.query for r in queries if "type=sidecar" in r.query]
    assert len(per_asset) == len(set(per_asset)), "an asset's sidecar was asked twice"


def test_sidecars_off_below_32(fake_library: FakeLibrary, tmp_path: Path) -> None:
    with FakeImmich(fake_library, version="3.1.0") as server:
        process = mount(server, tmp_path, "--sidecars")
        try:
            names = os.listdir(process.mountpoint / "photos")
            assert names and not [n for n in names if n.endswith(".xmp")]
        finally:
            process.cleanup()
        log = (tmp_path / "mount.log").read_text()
        assert "needs Immich 3.2" in log
        assert "assetFile" not in log  # permissions that server does not have
        assert not server.requests.select("GET", "/api/asset-files")


def test_sidecars_without_asset_file_permissions(fake_library: FakeLibrary, tmp_path: Path) -> None:
    permissions = ["asset.read", "asset.view", "asset.download", "asset.statistics"]
    with FakeImmich(fake_library, version=V32, permissions=permissions) as server:
        process = mount(server, tmp_path, "--sidecars")
        try:
            names = os.listdir(process.mountpoint / "photos")
            again = os.listdir(process.mountpoint / "photos")
        finally:
            process.cleanup()
        assert names and sorted(names) == sorted(again)
        assert not [n for n in names if n.endswith(".xmp")]
        log = (tmp_path / "mount.log").read_text()
        # at start: what each missing permission costs; then once when listing
        assert (
            "warning: the API key lacks assetFile.read: --sidecars lists no NAME.xmp files" in log
        )
        assert "warning: the API key lacks assetFile.download: --sidecars' NAME.xmp" in log
        assert log.count("--sidecars: no NAME.xmp") == 1


def test_a_new_edit_replaces_the_served_bytes(mutable_library: FakeLibrary, tmp_path: Path) -> None:
    lib = mutable_library
    asset = edited_photos(lib)[0]
    with FakeImmich(lib, version=V32) as server:
        process = mount(server, tmp_path, "--edits", "edited")
        try:
            path = by_id(process.mountpoint / "photos")[asset.id]
            assert file_sha1(path) == sha1(lib.edited_content(asset.id))
            old_size = path.stat().st_size
            lib.edit(asset.id, size=old_size + 1234)  # same checksum: the original is untouched
            os.getxattr(process.mountpoint, "user.immichfs.refresh")
            poll(lambda: path.stat().st_size, until=lambda size: size == old_size + 1234)
            # a new open reads the new edit, not the page cache of the old one
            assert file_sha1(path) == sha1(lib.edited_content(asset.id))
        finally:
            process.cleanup()
