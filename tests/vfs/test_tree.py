"""The tree over the in-memory source: names, caching, attributes, searches.

The source (``tests/memory_source.py``) stands in for the connector, so tree
logic is checked without sockets; the real connector against the fake server
is exercised in test_ops.py and test_mount.py.
"""

from __future__ import annotations

import gc
import unicodedata
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_source import Clock, MemorySource, make_asset

from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog, CatalogSettings
from immichfs.catalog.catalog import cyclic_gc_paused as _cyclic_gc_paused
from immichfs.catalog.reader import ReaderPool
from immichfs.catalog.store import NamedAssets
from immichfs.errors import NotFound, ServerError
from immichfs.model import Asset
from immichfs.vfs.names import is_valid
from immichfs.vfs.tree import (
    AssetFile,
    Attributes,
    BytesFile,
    Directory,
    SearchDirectory,
    ThumbnailFile,
    Tree,
    TreeSettings,
    asset_listing,
    extension_for,
    name_assets,
    names_in_order,
)


def build(
    assets: list[dict[str, Any]], *, smart: bool = False, limit: int = 250, trash: bool = False
) -> tuple[Tree, MemorySource, Clock]:
    source = MemorySource(list(assets), smart=smart)
    clock = Clock()
    cache = MetadataCache(CacheSettings(listing_ttl=10, asset_ttl=30), timer=clock)
    catalog = Catalog(source, cache, CatalogSettings(search_limit=limit))
    tree = Tree(catalog, ReaderPool(source.stream), TreeSettings(show_trash=trash))
    return tree, source, clock


LIBRARY = [
    make_asset(1, "IMG_0001.JPG", uploaded="2024-01-01T00:00:00Z"),
    make_asset(2, "IMG_0001.JPG", uploaded="2024-02-01T00:00:00Z"),
    make_asset(3, "clip.mp4", kind="VIDEO", size=5000),
    make_asset(4, "AC/DC.jpg"),
    make_asset(5, "gone.jpg", trashed=True),
    make_asset(6, "nosize.png", size=None),
]


async def names_of(tree: Tree, path: str) -> list[str]:
    key = ("dir", *path.split("/")) if "/" in path else ("dir", path)
    directory = tree.directory(key)
    assert directory is not None
    return [name for name, _ in (await directory.listing()).entries]


async def test_root_lists_the_views() -> None:
    tree, _, _ = build(LIBRARY)
    root = await tree.listdir(("dir", "/"))
    assert [name for name, _ in root.entries] == ["photos", "search", "thumbs", "videos"]
    assert tree.cached_attributes(tree.root).nlink == 2 + 4


async def test_trash_only_when_asked() -> None:
    tree, _, _ = build(LIBRARY)
    assert tree.directory(("dir", "trash")) is None
    tree, _, _ = build(LIBRARY, trash=True)
    assert await names_of(tree, "trash") == ["gone.jpg"]
    assert tree.root.children["trash"] is tree.directory(("dir", "trash"))


async def test_photos_and_videos_split_by_type_without_trash() -> None:
    tree, _, _ = build(LIBRARY)
    assert await names_of(tree, "photos") == [
        "AC\u2215DC.jpg",
        "IMG_0001.JPG",
        "IMG_0001~00000002.JPG",
        "nosize.png",
    ]
    assert await names_of(tree, "videos") == ["clip.mp4"]


async def test_listing_is_cached_until_the_ttl_then_reloaded() -> None:
    tree, source, clock = build(LIBRARY)
    await tree.listdir(("dir", "photos"))
    await tree.lookup(("dir", "photos"), "IMG_0001.JPG")
    assert source.calls["search_metadata"] == 1
    clock.now = 11
    source.assets.append(make_asset(7, "new.jpg"))
    assert "new.jpg" in await names_of(tree, "photos")
    assert source.calls["search_metadata"] == 2


async def test_attributes_of_a_listed_file_need_no_request() -> None:
    tree, source, _ = build(LIBRARY)
    await tree.listdir(("dir", "photos"))
    before = sum(source.calls.values())
    node = await tree.node(("asset", LIBRARY[0]["id"]))
    attrs = await tree.attributes(node)
    assert attrs.size == 1000 and attrs.size_known and not attrs.is_dir
    assert attrs.mtime.year == 2021 and attrs.ctime.year == 2020
    assert sum(source.calls.values()) == before


async def test_unknown_size_is_learned_with_head_not_a_download() -> None:
    tree, source, _ = build(LIBRARY)
    listing = await tree.listdir(("dir", "photos"))
    node = listing.get("nosize.png")
    assert isinstance(node, AssetFile)
    assert not tree.cached_attributes(node).size_known
    assert (await tree.attributes(node)).size == 777
    assert source.calls["head"] == 1 and source.calls["range"] == 0
    assert tree.cached_attributes(node).size_known


async def test_one_node_key_per_asset_across_views() -> None:
    tree, _, _ = build(LIBRARY)
    photo = await tree.lookup(("dir", "photos"), "AC\u2215DC.jpg")
    search = await tree.lookup(("dir", "search"), "DC")
    assert isinstance(search, Directory)
    found = await search.lookup("AC\u2215DC.jpg")
    assert found is not None and found.key == photo.key


async def test_unknown_names_are_not_found() -> None:
    tree, _, _ = build(LIBRARY)
    with pytest.raises(NotFound):
        await tree.lookup(("dir", "photos"), "nope.jpg")
    with pytest.raises(NotFound):
        await tree.lookup(("dir", "/"), "albums")
    with pytest.raises(NotFound):
        await tree.node(("asset", "00000099-0000-4000-8000-000000000000"))


async def test_thumbnails_use_the_served_format_and_learn_sizes() -> None:
    tree, source, _ = build(LIBRARY)
    source.thumbnail_type["preview"] = "image/webp"  # an admin changed the format
    names = await names_of(tree, "thumbs/preview")
    assert "clip.webp" in names and "IMG_0001.webp" in names
    assert all(name.endswith(".webp") for name in names)
    assert "gone.webp" not in names
    assert await names_of(tree, "thumbs/thumbnail") == sorted(
        ["AC\u2215DC.webp", "IMG_0001.webp", "IMG_0001~00000002.webp", "clip.webp", "nosize.webp"]
    )
    node = await tree.lookup(("dir", "thumbs", "preview"), "clip.webp")
    assert isinstance(node, ThumbnailFile)
    attrs = await tree.attributes(node)
    data = (b"preview" + node.asset.id.encode()) * 3
    assert attrs.size == len(data)
    calls = source.calls["thumbnail:preview"]
    handle = await tree.open(node)
    assert await handle.read(0, 10_000) == data
    assert source.calls["thumbnail:preview"] == calls  # bytes kept from the size probe


async def test_search_uses_metadata_without_smart_search_and_is_listed() -> None:
    tree, source, _ = build(LIBRARY)
    search = tree.directory(("dir", "search"))
    assert isinstance(search, SearchDirectory)
    directory = await tree.lookup(search.key, "img")
    assert isinstance(directory, Directory)
    names = [name for name, _ in (await directory.listing()).entries]
    assert names == ["IMG_0001.JPG", "IMG_0001~00000002.JPG"]
    assert source.calls["search_smart"] == 0
    assert await names_of(tree, "search") == ["img"]
    assert tree.cached_attributes(search).nlink == 3
    with pytest.raises(NotFound):
        await tree.lookup(search.key, ".git")
    # the directory of an inode's key is found again even after it left the list
    assert tree.directory(("search", "img")) is not None
    assert tree.directory(("search", "never-used")) is not None


async def test_smart_search_is_capped() -> None:
    tree, source, _ = build(LIBRARY, smart=True, limit=2)
    directory = await tree.lookup(("dir", "search"), "a dog on a beach")
    assert isinstance(directory, Directory)
    assert len((await directory.listing()).entries) == 2
    assert source.calls["search_smart"] == 1


async def test_concurrent_listings_make_one_request() -> None:
    tree, source, _ = build(LIBRARY)
    source.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(tree.listdir, ("dir", "photos"))
        await trio.testing.wait_all_tasks_blocked()
        source.gate.set()
    assert source.calls["search_metadata"] == 1


async def test_reading_an_original_returns_its_bytes() -> None:
    tree, source, _ = build(LIBRARY)
    node = await tree.lookup(("dir", "videos"), "clip.mp4")
    assert isinstance(node, AssetFile)
    handle = await tree.open(node)
    assert await handle.read(4990, 100) == source.content(node.asset.id)[4990:]
    assert await handle.read(5000, 100) == b""
    await handle.aclose()


def test_extensions() -> None:
    assert extension_for("image/jpeg") == ".jpg"
    assert extension_for("image/webp; charset=binary") == ".webp"
    assert extension_for("application/x-unknown-thing") == ".bin"


async def test_xattrs() -> None:
    tree, _, _ = build(LIBRARY)
    node = await tree.lookup(("dir", "videos"), "clip.mp4")
    values = tree.xattrs(node)
    assert values["user.immich.id"] == LIBRARY[2]["id"].encode()
    assert values["user.immich.type"] == b"VIDEO"
    assert values["user.immich.checksum"] == LIBRARY[2]["checksum"].encode()
    assert tree.xattrs(tree.root) == {}


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(st.text(max_size=300), max_size=15),
    query=st.text(min_size=1, max_size=80).filter(lambda q: "/" not in q and "\0" not in q),
)
async def test_hostile_names_and_queries_give_valid_unique_names(
    names: list[str], query: str
) -> None:
    assets = [make_asset(i + 1, name) for i, name in enumerate(names)]
    tree, _, _ = build(assets)
    for path in ("photos", "thumbs/preview"):
        listed = await names_of(tree, path)
        assert len(listed) == len(assets)
        assert all(is_valid(name) for name in listed)
        keys = [unicodedata.normalize("NFC", name) for name in listed]
        assert len(set(keys)) == len(keys)
    node = await tree.lookup(("dir", "search"), query) if not query.startswith(".") else None
    if node is not None:
        assert isinstance(node, Directory)
        found = [name for name, _ in (await node.listing()).entries]
        assert all(is_valid(name) for name in found)


class Note:
    """A virtual file, as a view would add one."""

    key = ("note", "photos")

    async def attributes(self) -> Attributes:
        when = datetime(2024, 1, 1, tzinfo=UTC)
        return Attributes(False, 5, when, when)

    async def open(self) -> BytesFile:
        return BytesFile(b"hello")


NOTE = Note()


class NoteExtension:
    def node(self, key: object) -> Note | None:
        return NOTE if key == NOTE.key else None

    def lookup(self, directory: Directory, name: str) -> Note | None:
        return NOTE if name == ".note" and directory.key == ("dir", "photos") else None

    async def xattrs(self, node: object) -> dict[str, bytes]:
        return {"user.test": b"1"}

    async def getxattr(self, node: object, name: str) -> bytes | None:
        return (await self.xattrs(node)).get(name)


async def test_extensions_add_virtual_files_and_xattrs() -> None:
    tree, _, _ = build(LIBRARY)
    assert await tree.getxattr(tree.root, "user.test") is None
    tree.add_extension(NoteExtension())
    assert await tree.lookup(("dir", "photos"), ".note") is NOTE
    assert ".note" not in await names_of(tree, "photos")
    with pytest.raises(NotFound):
        await tree.lookup(("dir", "videos"), ".note")
    assert await tree.node(NOTE.key) is NOTE
    assert (await tree.attributes(NOTE)).size == 5
    handle = await tree.open(NOTE)
    assert await handle.read(1, 3) == b"ell"
    # the extension now answers every node's extended attributes
    node = await tree.lookup(("dir", "photos"), "nosize.png")
    assert await tree.listxattr(node) == ["user.test"]
    assert await tree.getxattr(node, "user.test") == b"1"
    assert await tree.getxattr(node, "user.immich.id") is None


async def test_a_listing_of_many_pages_is_whole_and_errors_surface_as_themselves() -> None:
    # pages are parsed while the next is fetched: nothing lost, nothing out of order
    many = [make_asset(n, f"IMG_{n:05d}.JPG") for n in range(1, 2502)]
    tree, _, _ = build(many)
    names = await names_of(tree, "photos")
    assert names == [f"IMG_{n:05d}.JPG" for n in range(1, 2502)]

    class Failing(MemorySource):
        async def iter_search_metadata(
            self, filters: Mapping[str, Any], *, page_size: int = 1000
        ) -> AsyncIterator[dict[str, Any]]:
            for asset in self.assets[:1500]:
                yield asset
            raise ServerError("502 from the proxy", status=502)

    tree, _, _ = build(many)
    tree.catalog.source = Failing(many)
    with pytest.raises(ServerError):  # not an ExceptionGroup: the errno mapping needs it
        await tree.listdir(("dir", "photos"))


class _Tracked:
    """An object the cyclic collector tracks (as an Asset or a node is)."""


def test_a_listing_load_pauses_the_collector_and_leaves_its_objects_old() -> None:
    assert gc.isenabled()
    with _cyclic_gc_paused():
        with _cyclic_gc_paused():  # a second, concurrent load
            assert not gc.isenabled()
            made = [_Tracked() for _ in range(2000)]
        assert not gc.isenabled()  # resumes only when the last load ends
    assert gc.isenabled()
    ids = {id(o) for o in made}
    # straight to the oldest generation: no young collection walks them again
    young = {id(o) for gen in (0, 1) for o in gc.get_objects(generation=gen)}
    assert not ids & young
    assert ids <= {id(o) for o in gc.get_objects(generation=2)}
    assert gc.get_freeze_count() == 0  # nothing is left frozen (cycles still collectable)


def test_a_collector_disabled_by_someone_else_stays_disabled() -> None:
    gc.disable()
    try:
        with _cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_first_uploaded_then_the_smallest_id_keeps_a_shared_name() -> None:
    def one(n: int, uploaded: str) -> Asset:
        return Asset.from_json(make_asset(n, "a.jpg", uploaded=uploaded))

    early, late = "2020-01-01T00:00:00.000Z", "2021-01-01T00:00:00.000Z"
    assets = [one(3, late), one(2, early), one(1, late), one(4, early)]
    for order in (assets, assets[::-1]):
        names = name_assets(order)
        assert names[assets[1].id] == "a.jpg"  # uploaded first; of the two, smaller id
        assert sorted(names.values()) == [
            "a.jpg",
            "a~00000001.jpg",
            "a~00000003.jpg",
            "a~00000004.jpg",
        ]


def test_a_listing_with_saved_names_is_the_listing_naming_gives() -> None:
    assets = [Asset.from_json(make_asset(n, "a.jpg" if n % 2 else f"b{n}.jpg")) for n in range(9)]
    fresh = asset_listing(assets)
    saved = NamedAssets(assets, names_in_order(assets))
    from_saved = asset_listing(saved)
    assert from_saved.entries == fresh.entries and from_saved.newest == fresh.newest
    assert from_saved.assets is saved
    # names that repeat (a damaged catalog) are not used: the assets are named again
    damaged = asset_listing(NamedAssets(assets, ["same.jpg"] * len(assets)))
    assert damaged.entries == fresh.entries
    # beside other entries (a directory named as an asset), the assets are named again
    tree, _, _ = build([])
    beside = asset_listing(saved, {"a.jpg": tree.root})
    assert beside.get("a.jpg") is tree.root and len(beside) == len(assets) + 1
