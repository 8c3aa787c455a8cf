"""The catalog over the in-memory source: single flight, expiry, paging, search, trash."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing
from memory_source import Clock, MemorySource, make_asset

from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog, CatalogSettings
from immichfs.errors import NotFound, ServerError
from immichfs.model import Asset, Thumbnail

LIBRARY = [
    make_asset(1, "IMG_0001.JPG", description="Golden temple in Kyoto", city="Kyoto"),
    make_asset(2, "IMG_0002.JPG", description="Beach with palm trees", favorite=True),
    make_asset(3, "clip.mp4", kind="VIDEO", city="Lyon"),
    make_asset(4, "kyoto-station.jpg"),
    make_asset(5, "gone.jpg", trashed=True, description="Beach party"),
    make_asset(6, "old.jpg", visibility="archive", description="Beach in 2003"),
    make_asset(7, "beach.png", city="Nice"),
]


def build(
    assets: list[dict[str, Any]] = LIBRARY,
    *,
    smart: bool = False,
    limit: int = 250,
    page_size: int = 1000,
    source: MemorySource | None = None,
) -> tuple[Catalog, MemorySource, Clock]:
    source = source or MemorySource(list(assets), smart=smart)
    clock = Clock()
    cache = MetadataCache(CacheSettings(listing_ttl=10, asset_ttl=30), timer=clock)
    return Catalog(source, cache, CatalogSettings(limit, page_size)), source, clock


def ids(assets: tuple[Asset, ...]) -> list[int]:
    return [int(a.id[:8]) for a in assets]


# -- single flight -------------------------------------------------------------------------


async def test_fifty_concurrent_queries_make_one_request() -> None:
    catalog, source, _ = build()
    source.gate = trio.Event()
    answers: list[tuple[Asset, ...]] = []

    async def ask() -> None:
        answers.append(await catalog.timeline("IMAGE"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert source.calls["search_metadata"] == 1  # everyone waits on one request
        source.gate.set()
    assert source.calls["search_metadata"] == 1
    assert len(answers) == 50 and all(a is answers[0] for a in answers)
    assert ids(answers[0]) == [1, 2, 4, 7]


async def test_concurrent_asks_for_one_asset_make_one_request() -> None:
    catalog, source, _ = build()
    found: list[Asset] = []

    async def ask() -> None:
        found.append(await catalog.asset(LIBRARY[2]["id"]))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(ask)
    assert source.calls["asset_info"] == 1
    assert {a.original_file_name for a in found} == {"clip.mp4"}


async def test_a_failed_load_fails_every_waiter_once() -> None:
    class Broken(MemorySource):
        async def search_metadata(
            self, filters: Mapping[str, Any], *, page: int = 1, size: int = 1000
        ) -> tuple[list[dict[str, Any]], int | None]:
            self.calls["search_metadata"] += 1
            assert self.gate is not None
            await self.gate.wait()
            raise ServerError("502 from the proxy", status=502)

    catalog, source, _ = build(source=Broken(list(LIBRARY)))
    source.gate = trio.Event()
    failures: list[BaseException] = []

    async def ask() -> None:
        try:
            await catalog.favorites()
        except ServerError as exc:  # as itself, never an ExceptionGroup
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        source.gate.set()
    assert len(failures) == 50 and source.calls["search_metadata"] == 1


async def test_opening_and_stating_a_thumbnail_at_once_fetch_it_once() -> None:
    catalog, source, _ = build()
    source.gate = trio.Event()
    asset_id = LIBRARY[0]["id"]
    thumbnails: list[Thumbnail] = []
    infos: list[tuple[int, str]] = []

    async def open_it() -> None:
        thumbnails.append(await catalog.thumbnail(asset_id, "preview"))

    async def stat_it() -> None:
        infos.append(await catalog.thumbnail_info(asset_id, "preview"))

    async with trio.open_nursery() as nursery:
        for _ in range(25):
            nursery.start_soon(open_it)
            nursery.start_soon(stat_it)
        await trio.testing.wait_all_tasks_blocked()
        source.gate.set()
    assert source.calls["thumbnail:preview"] == 1
    data = (b"preview" + asset_id.encode()) * 3
    assert {t.data for t in thumbnails} == {data}
    assert set(infos) == {(len(data), "image/jpeg")}
    # both are kept: neither asks again
    assert catalog.known_thumbnail_info(asset_id, "preview") == (len(data), "image/jpeg")
    assert (await catalog.thumbnail(asset_id, "preview")).content_type == "image/jpeg"
    assert source.calls["thumbnail:preview"] == 1


# -- expiry --------------------------------------------------------------------------------


async def test_answers_expire_after_the_listing_ttl() -> None:
    catalog, source, clock = build()
    first = await catalog.timeline("IMAGE")
    clock.now = 9.9
    assert await catalog.timeline("IMAGE") is first
    source.assets.append(make_asset(8, "new.jpg"))
    clock.now = 10.1
    again = await catalog.timeline("IMAGE")
    assert again is not first and 8 in ids(again)
    assert source.calls["search_metadata"] == 2


async def test_listed_assets_are_known_one_by_one_until_the_asset_ttl() -> None:
    catalog, source, clock = build()
    await catalog.timeline("IMAGE")
    await catalog.asset(LIBRARY[0]["id"])
    assert source.calls["asset_info"] == 0  # the listing brought it
    clock.now = 31
    await catalog.asset(LIBRARY[0]["id"])
    assert source.calls["asset_info"] == 1


async def test_collections_and_buckets_are_model_values_cached_for_the_ttl() -> None:
    source = MemorySource(
        list(LIBRARY), albums={"trip": [LIBRARY[0]["id"], LIBRARY[5]["id"]]}, people={"sam": []}
    )
    catalog, _, clock = build(source=source)
    albums = await catalog.albums()
    assert [(a.id, a.name, a.asset_count) for a in albums] == [("trip", "TRIP", 2)]
    # an album lists its archived assets too, as Immich's album page does
    assert sorted(ids(await catalog.album_assets("trip"))) == [1, 6]
    assert [p.name for p in await catalog.people()] == ["SAM"]
    assert [(b.year, b.month, b.count) for b in await catalog.buckets()] == [(2020, 1, 5)]
    assert await catalog.albums() is albums
    assert await catalog.albums(fresh=True) is not albums
    clock.now = 11
    await catalog.buckets()
    assert source.calls["buckets"] == 2 and source.calls["albums"] == 2


# -- paging --------------------------------------------------------------------------------


async def test_pages_are_joined_and_an_asset_a_page_repeats_is_kept_once() -> None:
    many = [make_asset(n, f"IMG_{n:05d}.JPG") for n in range(1, 8)]

    class Shifting(MemorySource):
        """Offset paging while an asset is added at the front: page 2 repeats one."""

        async def search_metadata(
            self, filters: Mapping[str, Any], *, page: int = 1, size: int = 1000
        ) -> tuple[list[dict[str, Any]], int | None]:
            items, following = await super().search_metadata(filters, page=page, size=size)
            if page > 1:
                items = [self.assets[(page - 1) * size - 1], *items]
            return items, following

    catalog, source, _ = build(source=Shifting(many), page_size=3)
    assets = await catalog.timeline("IMAGE")
    assert ids(assets) == [1, 2, 3, 4, 5, 6, 7]
    assert source.calls["search_metadata"] == 3


async def test_trashed_assets_are_dropped_even_when_the_server_sends_them() -> None:
    class Sloppy(MemorySource):
        """Answers the timeline with its trashed assets (a server ignoring the filter)."""

        def matches(self, asset: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
            return bool(asset["type"] == filters.get("type", asset["type"]))

    catalog, _, _ = build(source=Sloppy(list(LIBRARY)))
    assert 5 not in ids(await catalog.timeline("IMAGE"))
    assert ids(await catalog.trash()) == [5]  # the trash keeps only those
    catalog, _, _ = build(source=Sloppy(list(LIBRARY), smart=True))
    assert 5 not in ids(await catalog.search("beach"))


# -- search --------------------------------------------------------------------------------


async def test_metadata_search_matches_names_descriptions_and_places() -> None:
    catalog, source, _ = build()
    # file names and descriptions contain the query, whatever its case; places equal it
    assert sorted(ids(await catalog.search("kyoto"))) == [1, 4]
    assert sorted(ids(await catalog.search("Kyoto"))) == [1, 4]
    assert sorted(ids(await catalog.search("Lyon"))) == [3]  # city, exactly
    assert ids(await catalog.search("lyon")) == []
    # archived and trashed assets are not searched
    assert sorted(ids(await catalog.search("beach"))) == [2, 7]
    assert sorted(ids(await catalog.search("IMG_000"))) == [1, 2]
    assert source.calls["search_smart"] == 0
    searched = {key for f in source.filters for key in f if key != "visibility"}
    assert searched == {"originalFileName", "description", "city", "country", "make", "model"}


async def test_metadata_search_is_capped_and_each_asset_found_once() -> None:
    many = [make_asset(n, f"beach-{n}.jpg", description="beach") for n in range(1, 30)]
    catalog, _, _ = build(many, limit=10)
    found = await catalog.search("beach")
    assert len(found) == 10 and len(set(ids(found))) == 10


async def test_smart_search_when_the_server_has_it() -> None:
    catalog, source, _ = build(smart=True, limit=2)
    assert len(await catalog.search("a dog on a beach")) == 2
    assert source.calls["search_smart"] == 1 and source.calls["search_metadata"] == 0
    await catalog.search("a dog on a beach")  # cached
    assert source.calls["search_smart"] == 1 and source.calls["features"] == 1


# -- files and freshness keys ---------------------------------------------------------------


async def test_original_size_from_immich_else_one_head() -> None:
    catalog, source, _ = build([make_asset(1, "a.jpg"), make_asset(2, "b.png", size=None)])
    sized, unsized = await catalog.timeline("IMAGE")
    assert await catalog.original_size(sized) == 1000 and source.calls["head"] == 0
    assert catalog.known_size(unsized) is None
    assert await catalog.original_size(unsized) == 777
    assert await catalog.original_size(unsized) == 777
    assert source.calls["head"] == 1 and catalog.known_size(unsized) == 777


async def test_thumbnail_type_probes_one_asset_and_falls_back_to_the_default() -> None:
    class Missing(MemorySource):
        async def get_thumbnail_response(
            self, asset_id: str, size: str = "preview", *, edited: bool = False
        ) -> tuple[bytes, str]:
            raise NotFound("not generated yet")

    catalog, source, _ = build()
    source.thumbnail_type["preview"] = "image/webp"
    assets = await catalog.timeline("IMAGE")
    assert await catalog.thumbnail_type("preview", assets) == "image/webp"
    assert catalog.known_thumbnail_type("preview") == "image/webp"
    catalog, _, _ = build(source=Missing(list(LIBRARY)))
    assert await catalog.thumbnail_type("thumbnail", assets) == "image/webp"


def test_query_keys_follow_the_assets_state() -> None:
    photo = Asset.from_json(make_asset(1, "a.jpg", favorite=True))
    assert Catalog.query_keys_for(photo) == {
        ("timeline", "IMAGE"),
        ("favorites",),
        ("month-assets", 2020, 1),
    }
    assert Catalog.query_keys_for(Asset.from_json(make_asset(2, "b.jpg", trashed=True))) == {
        ("trash",)
    }
    archived = Asset.from_json(make_asset(3, "c.jpg", visibility="archive"))
    assert Catalog.query_keys_for(archived) == {("archive",)}
    hidden = Asset.from_json(make_asset(4, "d.mov", visibility="hidden"))
    assert Catalog.query_keys_for(hidden) == set()


@pytest.mark.parametrize("month", [1, 2])
async def test_a_month_is_one_search_window_filtered_on_local_time(month: int) -> None:
    assets = [
        make_asset(1, "jan.jpg", created="2020-01-31T23:00:00.000Z"),
        make_asset(2, "feb.jpg", created="2020-02-01T01:00:00.000Z"),
    ]
    catalog, source, _ = build(assets)
    found = await catalog.month_assets(2020, month)
    assert ids(found) == [month]
    assert source.filters[-1]["takenAfter"] < f"2020-{month:02d}-01"


def test_an_edited_file_is_pinned_by_its_edit_not_the_original_checksum() -> None:
    data = make_asset(1, "a.jpg")
    original = Asset.from_json(data)
    edited = Asset.from_json({**data, "isEdited": True})
    edited_again = Asset.from_json(
        {**data, "isEdited": True, "updatedAt": "2022-01-01T00:00:00.000Z"}
    )
    plain = Catalog(MemorySource([data]))
    assert not plain.serves_edited(edited)
    assert plain.content_tag(edited) == edited.checksum
    catalog = Catalog(MemorySource([data]), settings=CatalogSettings(edited=True))
    assert catalog.serves_edited(edited) and not catalog.serves_edited(original)
    assert catalog.content_tag(original) == original.checksum
    assert edited.checksum not in (catalog.content_tag(edited), catalog.content_tag(edited_again))
    assert catalog.content_tag(edited) != catalog.content_tag(edited_again)
    # the edit's size is never the listing's (that is the original's)
    assert catalog.known_file_size(edited) is None
    assert catalog.known_file_size(original) == original.size
