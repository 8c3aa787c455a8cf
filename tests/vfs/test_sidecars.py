"""Sidecars in the tree (``TreeSettings.sidecars``) over the in-memory source: listed
beside their assets, asked once per asset version, and a failure never costs a listing."""

from __future__ import annotations

from typing import Any

import pytest
from memory_source import MemorySource, make_asset

from immichfs.catalog.cache import MetadataCache
from immichfs.catalog.catalog import Catalog
from immichfs.catalog.reader import ReaderPool
from immichfs.errors import NotFound, PermissionDenied, ServerError
from immichfs.model import Asset
from immichfs.vfs.tree import SidecarFile, Tree, TreeSettings

PHOTOS = ("dir", "photos")


class SidecarSource(MemorySource):
    """The memory source plus the asset files API for sidecars (asset number 1 and 3)."""

    def __init__(self, assets: list[dict[str, Any]]) -> None:
        super().__init__(assets)
        self.with_sidecar = {assets[0]["id"], assets[2]["id"]}
        self.failure: Exception | None = None

    async def get_asset_files(
        self, asset_id: str, type: str | None = None, is_edited: bool | None = None
    ) -> list[dict[str, Any]]:
        self.calls["asset_files"] += 1
        if self.failure is not None:
            raise self.failure
        if asset_id not in self.with_sidecar:
            return []
        return [{"id": "f" + asset_id[1:], "type": "sidecar", "isEdited": False}]

    async def get_asset_file(self, file_id: str, *, limit: int = 0) -> bytes:
        self.calls["asset_file"] += 1
        return f"<x:xmpmeta id='{file_id}'/>".encode()


def build() -> tuple[Tree, SidecarSource]:
    assets = [make_asset(n, f"IMG_{n}.JPG") for n in (1, 2, 3)]
    source = SidecarSource(assets)
    catalog = Catalog(source, MetadataCache())
    tree = Tree(catalog, ReaderPool(source.stream), TreeSettings(sidecars=True))
    return tree, source


async def test_sidecars_are_listed_beside_their_assets_and_read_exactly() -> None:
    tree, source = build()
    listing = await tree.listdir(PHOTOS)
    names = [name for name, _ in listing.entries]
    assert names == ["IMG_1.JPG", "IMG_1.JPG.xmp", "IMG_2.JPG", "IMG_3.JPG", "IMG_3.JPG.xmp"]
    assert source.calls["asset_files"] == 3
    again = await tree.listdir(PHOTOS)
    assert again is listing and source.calls["asset_files"] == 3  # one ask per asset
    node = await tree.lookup(PHOTOS, "IMG_1.JPG.xmp")
    assert isinstance(node, SidecarFile)
    attributes = await tree.attributes(node)
    handle = await tree.open(node)
    data = await handle.read(0, 1000)
    assert data == b"<x:xmpmeta id='f0000001-0000-4000-8000-000000000000'/>"
    assert attributes.size == len(data) and source.calls["asset_file"] == 1
    assert isinstance(await tree.node(node.key), SidecarFile)
    try:
        await tree.lookup(PHOTOS, "IMG_2.JPG.xmp")
    except NotFound:
        pass
    else:
        raise AssertionError("an asset without a sidecar has no NAME.xmp")


async def test_a_changed_asset_is_asked_again_alone() -> None:
    tree, source = build()
    await tree.listdir(PHOTOS)
    changed = Asset.from_json({**source.assets[1], "updatedAt": "2030-01-01T00:00:00.000Z"})
    found = await tree.catalog.sidecars([Asset.from_json(a) for a in source.assets] + [changed])
    assert set(found) == source.with_sidecar
    assert source.calls["asset_files"] == 4


@pytest.mark.expect_log(r"sidecars of \('dir', 'photos'\) not listed this time: down")
async def test_failures_leave_the_files_listed() -> None:
    tree, source = build()
    source.failure = ServerError("down")
    names = [name for name, _ in (await tree.listdir(PHOTOS)).entries]
    assert names == ["IMG_1.JPG", "IMG_2.JPG", "IMG_3.JPG"]
    source.failure = None  # the next listing asks again
    assert len((await tree.listdir(PHOTOS)).entries) == 5


@pytest.mark.expect_log(
    r"--sidecars: no NAME\.xmp files are listed: the API key lacks assetFile\.read"
)
async def test_a_key_without_the_permission_turns_sidecars_off_once() -> None:
    tree, source = build()
    source.failure = PermissionDenied("no", permission="assetFile.read")
    assert len((await tree.listdir(PHOTOS)).entries) == 3
    asked = source.calls["asset_files"]
    assert len((await tree.listdir(PHOTOS)).entries) == 3
    assert source.calls["asset_files"] == asked
