"""The views (albums, people, tags, by-date, favorites, archive) over the real connector.

A real :class:`~immichfs.vfs.tree.Tree` with the views installed talks HTTP to the
fake server; what each directory lists is compared with the fake library itself
(an independent oracle) and with what the API reports (album ``assetCount``,
timeline bucket counts). No FUSE here: see test_views_mount.py for that.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog, month_window
from immichfs.catalog.reader import ReaderPool
from immichfs.client.connector import ImmichConnector
from immichfs.model import Album, Person
from immichfs.vfs.names import is_valid
from immichfs.vfs.tree import ROOT_KEY, AssetFile, Directory, Tree, TreeSettings
from immichfs.vfs.views import (
    ALBUMS_KEY,
    ARCHIVE_KEY,
    BY_DATE_KEY,
    FAVORITES_KEY,
    PEOPLE_KEY,
    TAGS_KEY,
    ViewOptions,
    Views,
    install_views,
)
from immichfs_fake import FakeImmich, FakeLibrary
from immichfs_fake.library import FakeAsset

VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]


class RecordingSource:
    """Delegates to the connector and records the filters of every search."""

    def __init__(self, connector: ImmichConnector) -> None:
        self._connector = connector
        self.searches: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connector, name)

    def iter_search_metadata(
        self, filters: Mapping[str, Any], *, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        self.searches.append(dict(filters))
        return self._connector.iter_search_metadata(filters, page_size=page_size)


def build(source: Any, options: ViewOptions | None = None, **tree: Any) -> tuple[Tree, Views]:
    cache = MetadataCache(CacheSettings(listing_ttl=300, asset_ttl=300))
    readers = ReaderPool(source.stream_full_resolution_file)
    built = Tree(Catalog(source, cache), readers, TreeSettings(**tree))
    return built, install_views(built, options)


@pytest.fixture
async def source(connector: ImmichConnector) -> RecordingSource:
    return RecordingSource(connector)


async def subdirs(tree: Tree, key: Any) -> dict[str, Directory]:
    listing = await tree.listdir(key)
    return {name: node for name, node in listing.entries if isinstance(node, Directory)}


async def asset_ids(tree: Tree, key: Any) -> dict[str, str]:
    """asset id → file name in the directory ``key``."""
    listing = await tree.listdir(key)
    return {node.asset.id: name for name, node in listing.entries if isinstance(node, AssetFile)}


def mine(lib: FakeLibrary, asset: FakeAsset) -> bool:
    return asset.owner_id == lib.me.id


def timeline(lib: FakeLibrary) -> list[FakeAsset]:
    return [
        a
        for a in lib.assets.values()
        if mine(lib, a) and a.visibility == "timeline" and not a.is_trashed
    ]


# -- structure -------------------------------------------------------------------------


async def test_views_are_top_level_directories(source: RecordingSource) -> None:
    tree, views = build(source)
    names = set((await subdirs(tree, ROOT_KEY)).keys())
    assert {"albums", "people", "tags", "by-date", "favorites", "archive"} <= names
    assert "trash" not in names  # the tree's own, only with show_trash
    assert views.tree is tree

    with_trash, _ = build(source, show_trash=True)
    assert "trash" in await subdirs(with_trash, ROOT_KEY)


# -- albums ----------------------------------------------------------------------------


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_albums_match_the_api(
    source: RecordingSource, connector: ImmichConnector, fake_library: FakeLibrary
) -> None:
    tree, _ = build(source)
    albums = await connector.get_albums()
    directories = await subdirs(tree, ALBUMS_KEY)
    # every album the key sees, shared-with-me included, each under its own name
    assert len(directories) == len(albums) == len(fake_library.albums)
    assert all(is_valid(name) for name in directories)
    by_id = {d.key[1]: name for name, d in directories.items()}  # type: ignore[index]
    api_counts = {a["id"]: a["assetCount"] for a in albums}
    for album_id, name in by_id.items():
        listed = await asset_ids(tree, ("album", album_id))
        assert len(listed) == api_counts[album_id], name
        fake = fake_library.albums[album_id]
        expected = {
            i
            for i in fake.asset_ids
            if not fake_library.assets[i].is_trashed
            and fake_library.assets[i].visibility in ("timeline", "archive")
        }
        assert set(listed) == expected, name
    # contents come from search by album id, never from the album's embedded assets
    assert all(s.get("albumIds") for s in source.searches)


async def test_album_names_distinct_and_stable(
    source: RecordingSource, fake_library: FakeLibrary
) -> None:
    first, _ = build(source)
    second, _ = build(source)
    one = {d.key: n for n, d in (await subdirs(first, ALBUMS_KEY)).items()}
    two = {d.key: n for n, d in (await subdirs(second, ALBUMS_KEY)).items()}
    assert one == two  # same names on every build (and so every mount)
    names = set(one.values())
    assert "Best of\u2215Favourites" in names  # "/" can never split a path
    assert "Shared with me" in names
    family = sorted(n for n in names if n.startswith("Family"))
    assert len(family) == 2 and family[0] == "Family"
    # the older album keeps the bare name, the other gets its id prefix
    albums = sorted(
        (a for a in fake_library.albums.values() if a.name == "Family"),
        key=lambda a: (a.created_at, a.id),
    )
    assert one[("album", albums[0].id)] == "Family"
    assert one[("album", albums[1].id)] == f"Family~{albums[1].id[:8]}"


async def test_album_change_seen_after_its_listing_is_dropped(
    mutable_immich: FakeImmich, mutable_library: FakeLibrary
) -> None:
    async with ImmichConnector(mutable_immich.url, mutable_immich.api_key) as client:
        tree, _ = build(client)
        album = mutable_library.album_named("Empty album")
        assert await asset_ids(tree, ("album", album.id)) == {}
        photo = timeline(mutable_library)[0]
        mutable_library.add_to_album(album.id, [photo.id])
        tree.cache.queries.pop(("album", album.id))  # the catalog's answer (the refresh drops it)
        assert set(await asset_ids(tree, ("album", album.id))) == {photo.id}


# -- people ----------------------------------------------------------------------------


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_people(source: RecordingSource, fake_library: FakeLibrary) -> None:
    tree, _ = build(source)
    directories = await subdirs(tree, PEOPLE_KEY)
    unnamed = next(p for p in fake_library.people.values() if not p.name)
    hidden = next(p for p in fake_library.people.values() if p.is_hidden)
    assert set(directories) == {
        "Alice",
        "Bob",
        unicodedata.normalize("NFC", "Chloé"),
        f"unnamed-{unnamed.id[:8]}",
    }
    assert hidden.name not in directories
    for name, directory in directories.items():
        person_id = directory.key[1]  # type: ignore[index]
        expected = {a.id for a in timeline(fake_library) if person_id in a.person_ids}
        assert set(await asset_ids(tree, directory.key)) == expected, name
        assert expected, f"{name} should have photos in the sample library"


async def test_unnamed_people_can_be_hidden(source: RecordingSource) -> None:
    tree, _ = build(source, ViewOptions(show_unnamed_people=False))
    names = set(await subdirs(tree, PEOPLE_KEY))
    assert names and not any(n.startswith("unnamed-") for n in names)


# -- tags -------------------------------------------------------------------------------


def tagged(lib: FakeLibrary, value: str) -> set[str]:
    """Timeline assets carrying the tag ``value`` or a descendant (Immich's tagIds rule)."""
    result = set()
    for asset in timeline(lib):
        values = [lib.tags[t].value for t in asset.tag_ids]
        if any(v == value or v.startswith(value + "/") for v in values):
            result.add(asset.id)
    return result


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_tags_are_nested(source: RecordingSource, fake_library: FakeLibrary) -> None:
    tree, _ = build(source)
    top = await subdirs(tree, TAGS_KEY)
    assert set(top) == {"Travel", "Family", "Screenshots"}
    travel = await subdirs(tree, top["Travel"].key)
    assert set(travel) == {"Japan", "France"}
    japan = await subdirs(tree, travel["Japan"].key)
    assert set(japan) == {"Kyoto"}
    assert await subdirs(tree, japan["Kyoto"].key) == {}
    # walk every tag directory: its assets are the API's for that tag
    by_value = {t.value: t for t in fake_library.tags.values()}
    stack = [("", TAGS_KEY)]
    seen = set()
    while stack:
        path, key = stack.pop()
        for name, directory in (await subdirs(tree, key)).items():
            value = f"{path}/{name}".lstrip("/")
            seen.add(value)
            assert directory.key == ("tag", by_value[value].id)
            assert directory.parent == key  # ".." leads back up
            assert set(await asset_ids(tree, directory.key)) == tagged(fake_library, value)
            stack.append((value, directory.key))
    assert seen == set(by_value)
    assert tagged(fake_library, "Travel/Japan/Kyoto")  # not vacuous


# -- by date ---------------------------------------------------------------------------


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_by_date_groups_by_local_capture_date(
    source: RecordingSource, connector: ImmichConnector, fake_library: FakeLibrary
) -> None:
    tree, _ = build(source)
    expected = Counter(a.local_date_time.strftime("%Y/%m") for a in timeline(fake_library))
    buckets = {
        b["timeBucket"][:7].replace("-", "/"): b["count"]
        for b in await connector.get_timeline_buckets()
    }
    assert buckets == dict(expected)  # the oracle agrees with the API
    years = await subdirs(tree, BY_DATE_KEY)
    assert set(years) == {k[:4] for k in expected}
    got: dict[str, set[str]] = {}
    for year, year_dir in years.items():
        for month, month_dir in (await subdirs(tree, year_dir.key)).items():
            got[f"{year}/{month}"] = set(await asset_ids(tree, month_dir.key))
    assert {k: len(v) for k, v in got.items()} == dict(expected)
    for asset in timeline(fake_library):
        assert asset.id in got[asset.local_date_time.strftime("%Y/%m")]
    # each month is one search window around it, never the whole library
    month_searches = [s for s in source.searches if "takenAfter" in s]
    assert len(month_searches) == len(expected)
    assert all(s.get("takenBefore") for s in month_searches)
    assert len(source.searches) == len(month_searches)


async def test_by_date_days(source: RecordingSource, fake_library: FakeLibrary) -> None:
    tree, _ = build(source, ViewOptions(by_date_days=True))
    expected = Counter(a.local_date_time.strftime("%Y/%m/%d") for a in timeline(fake_library))
    got: Counter[str] = Counter()
    for year, year_dir in (await subdirs(tree, BY_DATE_KEY)).items():
        for month, month_dir in (await subdirs(tree, year_dir.key)).items():
            assert await asset_ids(tree, month_dir.key) == {}  # months hold days only
            for day, day_dir in (await subdirs(tree, month_dir.key)).items():
                got[f"{year}/{month}/{day}"] = len(await asset_ids(tree, day_dir.key))
    assert got == expected


def test_month_window_is_a_day_wider() -> None:
    assert month_window(2024, 12) == ("2024-11-30T00:00:00.000Z", "2025-01-02T00:00:00.000Z")
    assert month_window(2024, 3) == ("2024-02-29T00:00:00.000Z", "2024-04-02T00:00:00.000Z")


async def test_month_at_a_timezone_edge() -> None:
    """An asset taken on the 1st at 05:00 local in UTC+9 is in the previous UTC month."""
    from datetime import UTC, datetime

    lib = FakeLibrary.generate(seed=3, photos=0, videos=0, extra=False)
    asset = lib.add_asset("edge.jpg", taken=datetime(2024, 2, 29, 20, 0, tzinfo=UTC))
    asset.local_offset_minutes = 9 * 60  # local: 2024-03-01 05:00
    other = lib.add_asset("utc.jpg", taken=datetime(2024, 2, 29, 12, 0, tzinfo=UTC))
    other.local_offset_minutes = 0
    with FakeImmich(lib) as server:
        async with ImmichConnector(server.url, server.api_key) as client:
            tree, _ = build(client)
            assert set(await subdirs(tree, ("date", 2024))) == {"02", "03"}
            assert set(await asset_ids(tree, ("date", 2024, 3))) == {asset.id}
            assert set(await asset_ids(tree, ("date", 2024, 2))) == {other.id}
    lib.close()


# -- favorites, archive, trash ---------------------------------------------------------


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_favorites_and_archive(source: RecordingSource, fake_library: FakeLibrary) -> None:
    tree, _ = build(source, show_trash=True)
    favorites = {a.id for a in timeline(fake_library) if a.is_favorite}
    archived = {
        a.id
        for a in fake_library.assets.values()
        if mine(fake_library, a) and a.visibility == "archive" and not a.is_trashed
    }
    trashed = {
        a.id
        for a in fake_library.assets.values()
        if mine(fake_library, a) and a.visibility == "timeline" and a.is_trashed
    }
    assert favorites and archived and trashed
    assert set(await asset_ids(tree, FAVORITES_KEY)) == favorites
    assert set(await asset_ids(tree, ARCHIVE_KEY)) == archived
    assert set(await asset_ids(tree, ("dir", "trash"))) == trashed
    # archived assets are in no timeline view
    photos = set(await asset_ids(tree, ("dir", "photos")))
    assert not archived & photos


async def test_one_node_per_asset_across_views(
    source: RecordingSource, fake_library: FakeLibrary
) -> None:
    tree, _ = build(source)
    kyoto = fake_library.find("Kinkaku-ji.jpg")
    day = kyoto.local_date_time
    keys = []
    for key in [("dir", "photos"), ("date", day.year, day.month)]:
        listing = await tree.listdir(key)
        node = listing.get("Kinkaku-ji.jpg")
        assert isinstance(node, AssetFile)
        keys.append(node.key)
    for album in fake_library.albums.values():
        if kyoto.id in album.asset_ids:
            listing = await tree.listdir(("album", album.id))
            node = listing.get("Kinkaku-ji.jpg")
            assert isinstance(node, AssetFile)
            keys.append(node.key)
    assert len(keys) >= 3 and set(keys) == {("asset", kyoto.id)}


async def test_directories_resolve_from_their_keys(
    source: RecordingSource, fake_library: FakeLibrary
) -> None:
    """An inode's key finds its directory again (after the listing cache forgot it)."""
    tree, _ = build(source)
    album = fake_library.album_named("Holidays 2019")
    person = next(p for p in fake_library.people.values() if p.name == "Alice")
    kyoto = next(t for t in fake_library.tags.values() if t.value == "Travel/Japan/Kyoto")
    for key in [("album", album.id), ("person", person.id), ("tag", kyoto.id), ("date", 2019)]:
        directory = tree.directory(key)
        assert directory is not None and directory.key == key
    assert tree.directory(("date", 2019, 13)) is None
    assert tree.directory(("date", 2019, 2, 30)) is None
    listing = await tree.listdir(("album", album.id))
    assert len(listing) == len(album.asset_ids)


# -- pure rules -------------------------------------------------------------------------


def test_tag_index_nests_by_path() -> None:
    from immichfs.model import Tag
    from immichfs.vfs.views import TagIndex

    tags = [
        {"id": "t1", "name": "Travel", "value": "Travel"},
        {"id": "t2", "name": "Japan", "value": "Travel/Japan", "parentId": "t1"},
        {"id": "t3", "name": "Kyoto", "value": "Travel/Japan/Kyoto", "parentId": "t2"},
        # an intermediate level Immich does not list: hung on the nearest ancestor
        {"id": "t4", "name": "Lyon", "value": "Travel/France/Lyon"},
        {"id": "t5", "name": "", "value": ""},  # nothing to name it by: left out
    ]
    index = TagIndex.build(t for t in map(Tag.from_json, tags) if t is not None)
    assert index.child_names(None) == {"t1": "Travel"}
    assert index.child_names("t1") == {"t2": "Japan", "t4": "France/Lyon".replace("/", "\u2215")}
    assert index.child_names("t2") == {"t3": "Kyoto"}
    assert index.parents == {"t1": None, "t2": "t1", "t3": "t2", "t4": "t1"}


async def test_person_names(source: RecordingSource) -> None:
    _, views = build(source)
    people: list[dict[str, Any]] = [
        {"id": "b" * 36, "name": "Sam"},
        {"id": "a" * 36, "name": "Sam"},  # the lower id keeps the plain name
        {"id": "c" * 36, "name": "A/B"},
        {"id": "d" * 36, "name": ""},
        {"id": "e" * 36, "name": "Shy", "isHidden": True},
    ]
    assert views.person_names(p for p in map(Person.from_json, people) if p) == {
        "a" * 36: "Sam",
        "b" * 36: "Sam~bbbbbbbb",
        "c" * 36: "A\u2215B",
        "d" * 36: "unnamed-dddddddd",
    }


def test_album_names_ignore_listing_order() -> None:
    albums = [
        {"id": "2", "albumName": "Trip", "createdAt": "2020-01-01T00:00:00.000Z"},
        {"id": "1", "albumName": "Trip", "createdAt": "2021-01-01T00:00:00.000Z"},
    ]
    values = [a for a in map(Album.from_json, albums) if a is not None]
    first = Views.album_names(values)
    assert first == Views.album_names(list(reversed(values)))
    assert first == {"2": "Trip", "1": "Trip~1"}  # the older album keeps the name
