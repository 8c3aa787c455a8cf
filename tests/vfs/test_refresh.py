"""The refresh task against the fake server: uploads, favourites, trash, deletion, albums.

The listing TTL is long here (300 s), so a change can only show up because the
refresh task found it and dropped the right listings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from memory_source import Clock

from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog
from immichfs.catalog.reader import ReaderPool
from immichfs.client.connector import ImmichConnector
from immichfs.vfs.refresh import RefreshTask
from immichfs.vfs.tree import AssetFile, Key, Tree, TreeSettings
from immichfs.vfs.views import (
    FAVORITES_KEY,
    PEOPLE_KEY,
    PHOTOS_KEY,
    Views,
    ViewsExtension,
    install_views,
)
from immichfs_fake import FakeImmich, FakeLibrary
from immichfs_fake.library import FakeAsset


@pytest.fixture
async def setup(
    mutable_immich: FakeImmich,
) -> AsyncIterator[tuple[Tree, Views, RefreshTask, list[set[Key]]]]:
    async with ImmichConnector(mutable_immich.url, mutable_immich.api_key) as client:
        cache = MetadataCache(CacheSettings(listing_ttl=300, asset_ttl=300))
        tree = Tree(
            Catalog(client, cache),
            ReaderPool(client.stream_full_resolution_file),
            TreeSettings(show_trash=True),
        )
        views = install_views(tree)
        seen: list[set[Key]] = []

        async def on_change(keys: set[Key]) -> None:
            seen.append(keys)

        task = RefreshTask(tree, views, interval=0.2, on_change=on_change)
        await task.refresh()  # the first cycle learns the albums
        yield tree, views, task, seen


async def ids(tree: Tree, key: Any) -> set[str]:
    listing = await tree.listdir(key)
    return {node.asset.id for _, node in listing.entries if isinstance(node, AssetFile)}


def month_key(asset: FakeAsset) -> tuple[str, int, int]:
    local = asset.local_date_time
    return ("date", local.year, local.month)


def a_timeline_photo(lib: FakeLibrary) -> FakeAsset:
    return next(
        a
        for a in lib.sorted_assets()
        if a.type == "IMAGE"
        and a.visibility == "timeline"
        and not a.is_trashed
        and a.owner_id == lib.me.id
        and not a.is_favorite
    )


async def test_upload_appears_after_one_cycle(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, _, task, seen = setup
    before = await ids(tree, PHOTOS_KEY)
    new = mutable_library.add_asset("fresh upload.jpg")
    assert new.id not in await ids(tree, PHOTOS_KEY)  # cached: not yet
    result = await task.refresh()
    assert result.changed == 1
    assert await ids(tree, PHOTOS_KEY) == before | {new.id}
    assert new.id in await ids(tree, month_key(new))
    year = str(new.local_date_time.year)
    assert year in {name for name, _ in (await tree.listdir(("dir", "by-date"))).entries}
    assert PHOTOS_KEY in seen[-1] and ("asset", new.id) in seen[-1]
    # the overlap returns the same asset again: it is not reported twice
    again = await task.refresh()
    assert again.changed == 0 and again.keys == set()


async def test_favorite_and_unfavorite(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, _, task, _ = setup
    photo = a_timeline_photo(mutable_library)
    assert photo.id not in await ids(tree, FAVORITES_KEY)
    mutable_library.set_favorite(photo.id, True)
    await task.refresh()
    assert photo.id in await ids(tree, FAVORITES_KEY)
    node = await tree.node(("asset", photo.id))
    assert isinstance(node, AssetFile) and node.asset.is_favorite
    mutable_library.set_favorite(photo.id, False)
    await task.refresh()
    assert photo.id not in await ids(tree, FAVORITES_KEY)


async def test_trash_and_restore(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, _, task, _ = setup
    album = mutable_library.album_named("Holidays 2019")
    photo = mutable_library.assets[album.asset_ids[0]]
    assert photo.id in await ids(tree, ("album", album.id))
    assert photo.id in await ids(tree, month_key(photo))
    mutable_library.trash(photo.id)
    await task.refresh()
    assert photo.id not in await ids(tree, ("album", album.id))
    assert photo.id not in await ids(tree, month_key(photo))
    assert photo.id in await ids(tree, ("dir", "trash"))
    mutable_library.restore(photo.id)
    await task.refresh()
    assert photo.id in await ids(tree, month_key(photo))
    assert photo.id not in await ids(tree, ("dir", "trash"))


async def test_permanent_deletion_needs_the_full_pass(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, _, task, _ = setup
    photo = a_timeline_photo(mutable_library)
    assert photo.id in await ids(tree, PHOTOS_KEY)
    mutable_library.delete(photo.id)
    delta = await task.refresh()
    assert delta.removed == 0
    assert photo.id in await ids(tree, PHOTOS_KEY)  # invisible to updatedAfter
    full = await task.refresh(full=True)
    assert full.removed >= 1 and ("asset", photo.id) in full.keys
    assert photo.id not in await ids(tree, PHOTOS_KEY)
    assert photo.id not in await ids(tree, month_key(photo))


async def test_album_membership_change(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, _, task, _ = setup
    album = mutable_library.album_named("Empty album")
    assert await ids(tree, ("album", album.id)) == set()
    photo = a_timeline_photo(mutable_library)
    mutable_library.add_to_album(album.id, [photo.id])  # the asset's updatedAt is unchanged
    result = await task.refresh()
    assert result.albums == 1 and ("album", album.id) in result.keys
    assert await ids(tree, ("album", album.id)) == {photo.id}


async def test_idle_cycles_are_cheap(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_immich: FakeImmich
) -> None:
    tree, _, task, _ = setup
    await tree.listdir(PHOTOS_KEY)
    mutable_immich.reset_log()
    result = await task.refresh()
    assert result.keys == set()
    paths = [r.path for r in mutable_immich.requests.snapshot()]
    # two delta searches (timeline, archive), the album list (twice before v3) and
    # the asset counts
    assert paths.count("/api/search/metadata") == 2
    assert paths.count("/api/assets/statistics") == 1
    assert set(paths) <= {
        "/api/search/metadata",
        "/api/albums",
        "/api/server/version",
        "/api/assets/statistics",
    }
    assert len(paths) <= 6


async def test_run_loop_and_stop(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, _, task, seen = setup
    await tree.listdir(PHOTOS_KEY)
    async with trio.open_nursery() as nursery:
        await nursery.start(task.run)
        new = mutable_library.add_asset("while running.jpg")
        with trio.fail_after(10):
            while new.id not in await ids(tree, PHOTOS_KEY):
                await trio.sleep(0.05)
        cycles = task.cycles
        task.trigger()  # a cycle at once, not after the interval
        with trio.fail_after(5):
            while task.cycles == cycles:
                await trio.sleep(0.01)
        task.stop()
    assert any(("asset", new.id) in keys for keys in seen)


async def test_refresh_now_summary(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, views, task, _ = setup
    extension = ViewsExtension(views, refresh=task.refresh_now)
    await tree.listdir(PHOTOS_KEY)
    mutable_library.add_asset("forced.jpg")
    root = tree.directory(("dir", "/"))
    assert root is not None
    value = await extension.getxattr(root, "user.immichfs.refresh")
    assert value is not None
    import json

    summary = json.loads(value)
    assert summary["changed"] == 1 and summary["full"] is True
    assert summary["invalidated"] >= 2


async def test_manifest_content_matches_the_size_the_kernel_was_told(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, views, task, _ = setup
    photos = tree.directory(PHOTOS_KEY)
    assert photos is not None
    manifest = views.manifest(photos, ".manifest.jsonl")
    assert manifest is not None
    told = (await manifest.attributes()).size
    new = mutable_library.add_asset("after the stat.jpg")
    result = await task.refresh()
    assert ("manifest", PHOTOS_KEY) in result.keys  # the kernel forgets the old size
    # an open before the next stat serves what that stat described
    handle = await manifest.open()
    old = await handle.read(0, told + 4096)
    await handle.aclose()
    assert len(old) == told and new.id.encode() not in old
    # the next stat (the kernel's revalidation) moves both on
    now = (await manifest.attributes()).size
    handle = await manifest.open()
    fresh = await handle.read(0, now + 4096)
    await handle.aclose()
    assert len(fresh) == now > told and new.id.encode() in fresh


async def test_archive_and_album_rename(
    setup: tuple[Tree, Views, RefreshTask, list[set[Key]]], mutable_library: FakeLibrary
) -> None:
    tree, _, task, _ = setup
    photo = a_timeline_photo(mutable_library)
    assert photo.id in await ids(tree, PHOTOS_KEY)
    assert photo.id not in await ids(tree, ("dir", "archive"))
    mutable_library.set_visibility(photo.id, "archive")
    await task.refresh()
    assert photo.id not in await ids(tree, PHOTOS_KEY)
    assert photo.id not in await ids(tree, month_key(photo))
    assert photo.id in await ids(tree, ("dir", "archive"))

    album = mutable_library.album_named("Holidays 2019")
    names = {name for name, _ in (await tree.listdir(("dir", "albums"))).entries}
    assert "Holidays 2019" in names
    with mutable_library.lock:
        album.name = "Holidays 2019 (renamed)"
        album.updated_at = album.updated_at.replace(year=album.updated_at.year + 1)
    result = await task.refresh()
    assert ("dir", "albums") in result.keys
    names = {name for name, _ in (await tree.listdir(("dir", "albums"))).entries}
    assert "Holidays 2019 (renamed)" in names and "Holidays 2019" not in names


def test_refresh_command_on_something_else(tmp_path: Any) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "immichfs", "refresh", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"immichfs refresh: {tmp_path} is not an immichfs mount"
    assert result.stdout == ""


@pytest.fixture
async def renewing(
    mutable_immich: FakeImmich,
) -> AsyncIterator[tuple[Tree, RefreshTask, Clock]]:
    clock = Clock(1000.0)
    async with ImmichConnector(mutable_immich.url, mutable_immich.api_key) as client:
        tree, task = timed_tree(client, clock)
        await task.refresh()  # the first cycle learns the albums and the counts
        yield tree, task, clock


def timed_tree(
    client: ImmichConnector, clock: Clock, *, asset_ttl: float = 300, interval: float = 15
) -> tuple[Tree, RefreshTask]:
    """A tree whose caches run on ``clock`` (listings live 20 s), and its refresh task."""
    cache = MetadataCache(CacheSettings(listing_ttl=20, asset_ttl=asset_ttl), timer=clock)
    tree = Tree(
        Catalog(client, cache), ReaderPool(client.stream_full_resolution_file), TreeSettings()
    )
    return tree, RefreshTask(tree, install_views(tree), interval=interval)


async def test_quiet_cycles_keep_a_big_listing_and_a_deletion_still_shows(
    renewing: tuple[Tree, RefreshTask, Clock],
    mutable_immich: FakeImmich,
    mutable_library: FakeLibrary,
) -> None:
    tree, task, clock = renewing
    photos = await tree.listdir(PHOTOS_KEY)
    people = await tree.listdir(PEOPLE_KEY)
    for _ in range(4):  # a minute of quiet 15 s cycles: the listing stays, unasked
        clock.now += 15
        await task.refresh()
    mutable_immich.reset_log()
    assert await tree.listdir(PHOTOS_KEY) is photos
    assert mutable_immich.count("POST", "/api/search/metadata") == 0
    assert task.renewed >= 4
    # people are not kept current by the deltas: that listing expired as before
    assert await tree.listdir(PEOPLE_KEY) is not people
    # a permanent deletion (no delta shows it) lowers the counts: the listing is no
    # longer renewed and is loaded afresh within listing_ttl of its last renewal
    listed = await ids(tree, PHOTOS_KEY)
    victim = next(  # in no album: only the counts can tell it went
        a
        for a in mutable_library.sorted_assets()
        if a.id in listed and not mutable_library.album_ids_of(a.id)
    )
    mutable_library.delete(victim.id)
    clock.now += 15
    await task.refresh()
    assert await tree.listdir(PHOTOS_KEY) is photos  # still within its 20 s
    clock.now += 3  # a quiet cycle (a triggered one) before it expires: not renewed
    await task.refresh()
    clock.now += 3  # 21 s after its last renewal
    assert victim.id not in await ids(tree, PHOTOS_KEY)
    assert await tree.listdir(PHOTOS_KEY) is not photos
    # and the new listing is renewed by the next quiet cycles
    fresh = await tree.listdir(PHOTOS_KEY)
    for _ in range(3):
        clock.now += 15
        await task.refresh()
    assert await tree.listdir(PHOTOS_KEY) is fresh


async def test_without_asset_statistics_listings_simply_expire(
    renewing: tuple[Tree, RefreshTask, Clock], mutable_immich: FakeImmich
) -> None:
    tree, task, clock = renewing
    mutable_immich.faults.fail(403, times=None, path="/api/assets/statistics")
    await task.refresh()
    photos = await tree.listdir(PHOTOS_KEY)
    for _ in range(2):
        clock.now += 15
        await task.refresh()
    assert mutable_immich.count("GET", "/api/assets/statistics", status=403) == 3
    assert task.renewed == 0
    assert await tree.listdir(PHOTOS_KEY) is not photos


async def test_the_run_loop_counts_assets_before_anything_is_listed(
    mutable_immich: FakeImmich,
) -> None:
    clock = Clock(1000.0)
    async with ImmichConnector(mutable_immich.url, mutable_immich.api_key) as client:
        tree, task = timed_tree(client, clock, interval=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(task.run)
            assert mutable_immich.count("GET", "/api/assets/statistics") == 1
            photos = await tree.listdir(PHOTOS_KEY)
            clock.now += 15
            await task.refresh()  # the first cycle: quiet, compared with the start
            clock.now += 15
            assert await tree.listdir(PHOTOS_KEY) is photos
            task.stop()


async def test_a_renewed_listing_keeps_its_assets_cached(
    mutable_immich: FakeImmich,
) -> None:
    clock = Clock(1000.0)
    async with ImmichConnector(mutable_immich.url, mutable_immich.api_key) as client:
        tree, task = timed_tree(client, clock, asset_ttl=40)
        await task.refresh()
        listing = await tree.listdir(PHOTOS_KEY)
        asset_ids = [n.asset.id for _, n in listing.entries if isinstance(n, AssetFile)]
        for _ in range(8):  # two minutes: three times the assets' time to live
            clock.now += 15
            await task.refresh()
        mutable_immich.reset_log()
        # what opening a file by its inode does: no request per file
        for asset_id in asset_ids:
            await tree.node(("asset", asset_id))
        assert mutable_immich.count("GET", "/api/assets/") == 0
