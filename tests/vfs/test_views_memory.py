"""The views over the shared in-memory source: no sockets, every request counted."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import trio
import trio.testing
from memory_source import MemorySource, make_asset

from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog
from immichfs.catalog.reader import ReaderPool
from immichfs.vfs.tree import ROOT_KEY, AssetFile, Tree
from immichfs.vfs.views import ViewsExtension, install_views

LIBRARY = [
    make_asset(1, "a.jpg", created="2021-03-04T10:00:00.000Z"),
    make_asset(2, "b.jpg", created="2021-03-05T10:00:00.000Z", favorite=True),
    make_asset(3, "c.jpg", visibility="archive"),
    make_asset(4, "d.jpg", trashed=True),
]
A1, A2, A3, A4 = (a["id"] for a in LIBRARY)


def build() -> tuple[Tree, MemorySource, ViewsExtension, list[int]]:
    source = MemorySource(
        list(LIBRARY), albums={"trip": [A1, A3, A4]}, people={"sam": [A1, A2]}, tags={"sea": [A2]}
    )
    cache = MetadataCache(CacheSettings(listing_ttl=300, asset_ttl=300))
    tree = Tree(Catalog(source, cache), ReaderPool(source.stream))
    refreshes: list[int] = []

    async def refresh() -> Mapping[str, Any]:
        refreshes.append(1)
        return {"changed": len(refreshes)}

    extension = ViewsExtension(install_views(tree), refresh=refresh)
    tree.add_extension(extension)
    return tree, source, extension, refreshes


async def ids(tree: Tree, key: Any) -> set[str]:
    listing = await tree.listdir(key)
    return {node.asset.id for _, node in listing.entries if isinstance(node, AssetFile)}


async def test_collections_list_their_assets_from_the_catalog() -> None:
    tree, source, _, _ = build()
    assert await ids(tree, ("album", "trip")) == {A1, A3}  # archived in, trashed out
    assert await ids(tree, ("person", "sam")) == {A1, A2}
    assert await ids(tree, ("tag", "sea")) == {A2}
    assert await ids(tree, ("dir", "favorites")) == {A2}
    assert await ids(tree, ("dir", "archive")) == {A3}
    assert await ids(tree, ("date", 2021, 3)) == {A1, A2}
    assert [name for name, _ in (await tree.listdir(("dir", "albums"))).entries] == ["TRIP"]
    calls = sum(source.calls.values())
    # listed again: every answer is cached
    assert await ids(tree, ("album", "trip")) == {A1, A3}
    assert await ids(tree, ("date", 2021, 3)) == {A1, A2}
    assert sum(source.calls.values()) == calls


async def test_membership_xattrs_come_from_the_collections_answers() -> None:
    tree, source, _, _ = build()
    node = await tree.node(("asset", A1))
    assert json.loads(await tree.getxattr(node, "user.immich.albums") or b"") == ["TRIP"]
    assert json.loads(await tree.getxattr(node, "user.immich.people") or b"") == ["SAM"]
    assert source.calls["asset_info"] == 1  # one asset, by inode; the rest by collection
    searches = len(source.filters)
    await tree.listdir(("album", "trip"))
    assert len(source.filters) == searches  # the membership index loaded the album already


async def test_the_refresh_attribute_runs_one_refresh_for_both_reads_of_getfattr(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree, _, extension, refreshes = build()
    root = tree.directory(ROOT_KEY)
    assert root is not None
    first = await extension.getxattr(root, "user.immichfs.refresh")
    assert json.loads(first or b"") == {"changed": 1}
    assert await extension.getxattr(root, "user.immichfs.refresh") == first
    assert refreshes == [1]
    await trio.sleep(2.5)  # on trio's autojump clock: no wall-clock wait
    await extension.getxattr(root, "user.immichfs.refresh")
    assert refreshes == [1, 1]
    without = ViewsExtension(extension.views)
    assert await without.getxattr(root, "user.immichfs.refresh") is None
