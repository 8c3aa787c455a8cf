"""The connector's asset files API (Immich 3.2): list, info, download stream; against
the fake over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from immichfs.client.connector import ImmichConnector
from immichfs.errors import PermissionDenied, UnsupportedVersion
from immichfs_fake import FakeImmich, FakeLibrary


def content(lib: FakeLibrary, file: object) -> bytes:
    data = lib.file_content(file)  # type: ignore[arg-type]
    return data.read_bytes() if isinstance(data, Path) else data


async def test_list_info_and_download(fake_library: FakeLibrary) -> None:
    lib = fake_library
    asset = lib.find("Kinkaku-ji.jpg")
    want = {f.id: f for f in lib.asset_files(asset.id)}
    with FakeImmich(lib, version="3.2.0") as srv:
        async with ImmichConnector(srv.url, srv.api_key) as immich:
            files = await immich.get_asset_files(asset.id)
            sidecars = await immich.get_asset_files(asset.id, type="sidecar")
            edited = await immich.get_asset_files(asset.id, is_edited=True)
            info = await immich.get_asset_file_info(sidecars[0]["id"])
            streamed = b""
            async with immich.stream_asset_file(sidecars[0]["id"]) as chunks:
                async for chunk in chunks:
                    streamed += chunk
            preview = next(f for f in files if f["type"] == "preview" and not f["isEdited"])
            preview_bytes = await immich.get_asset_file(preview["id"])
            with pytest.raises(ValueError, match="type must be one of"):
                await immich.get_asset_files(asset.id, type="original")
    assert {f["id"] for f in files} == set(want)
    assert [f["type"] for f in sidecars] == ["sidecar"]
    assert edited and all(f["isEdited"] for f in edited)
    assert info == sidecars[0]
    assert streamed == lib.sidecar_content(asset.id)
    assert preview_bytes == content(lib, want[preview["id"]])


async def test_before_32_and_without_permission(fake_library: FakeLibrary) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    with FakeImmich(fake_library, version="3.1.0") as srv:
        async with ImmichConnector(srv.url, srv.api_key) as immich:
            with pytest.raises(UnsupportedVersion, match=r"needs Immich 3\.2"):
                await immich.get_asset_files(asset.id)
        assert not srv.requests.select("GET", "/api/asset-files")
    with FakeImmich(fake_library, version="3.2.0", permissions=["asset.read"]) as srv:
        async with ImmichConnector(srv.url, srv.api_key) as immich:
            with pytest.raises(PermissionDenied) as denied:
                await immich.get_asset_files(asset.id, type="sidecar")
    assert denied.value.permission == "assetFile.read"
