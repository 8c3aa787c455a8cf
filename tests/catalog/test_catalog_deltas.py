"""A remount brings the saved catalog up to date with the refresh task's deltas.

Each "mount" here is the tree the FUSE mount builds (:func:`immichfs.compose.build_tree`
with the on-disk catalog of :class:`~immichfs.catalog.local.LocalCache`) and its
refresh task, over the fake server; between two mounts the library changes. The
listing TTL is long (300 s): what changes can only come from the refresh task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from immichfs.catalog.catalog import timeline_key
from immichfs.catalog.local import LocalCache
from immichfs.catalog.store import NamedAssets, Reachability
from immichfs.client.connector import ImmichConnector
from immichfs.compose import build_tree
from immichfs.options import Settings
from immichfs.vfs.refresh import STATE, RefreshTask
from immichfs.vfs.tree import AssetFile, Tree, name_assets
from immichfs.vfs.views import FAVORITES_KEY, PHOTOS_KEY
from immichfs_fake import FakeImmich, FakeLibrary
from immichfs_fake.library import FakeAsset

PHOTOS = timeline_key("IMAGE")


@asynccontextmanager
async def mounted(
    immich: FakeImmich, root: Path
) -> AsyncIterator[tuple[Tree, RefreshTask, LocalCache]]:
    async with ImmichConnector(immich.url, immich.api_key) as connector:
        local = LocalCache.open(
            root, immich.url, immich.api_key, "me", size_mb=0, reachability=Reachability()
        )
        assert local is not None
        try:
            tree, views = build_tree(
                connector, Settings(listing_ttl=300, asset_ttl=300), local=local
            )
            yield tree, RefreshTask(tree, views, interval=3600), local
            await local.memory.flush()  # as an unmount does
        finally:
            local.close()


async def ids(tree: Tree, key: Any) -> set[str]:
    listing = await tree.listdir(key)
    return {node.asset.id for _, node in listing.entries if isinstance(node, AssetFile)}


async def names(tree: Tree, key: Any) -> dict[str, str]:
    """asset id -> its file name in the directory ``key``."""
    listing = await tree.listdir(key)
    return {node.asset.id: name for name, node in listing.entries if isinstance(node, AssetFile)}


def truth(library: FakeLibrary) -> set[str]:
    """The ids ``/photos`` should list now."""
    return {
        a.id
        for a in library.sorted_assets()
        if a.type == "IMAGE"
        and a.visibility == "timeline"
        and not a.is_trashed
        and a.owner_id == library.me.id
    }


def photos(library: FakeLibrary, count: int) -> list[FakeAsset]:
    return [
        library.assets[i]
        for i in sorted(truth(library))
        if not library.assets[i].is_favorite
        and not any(i in album.asset_ids for album in library.albums.values())
    ][:count]


async def saved(local: LocalCache, key: Any) -> set[str] | None:
    found = await trio.to_thread.run_sync(local.store.saved_listing, key)
    return {a.id for a in found[0]} if found is not None else None


async def wait_saved(local: LocalCache, key: Any) -> None:
    with trio.fail_after(10):
        while await saved(local, key) is None:
            await trio.sleep(0.01)


async def test_a_remount_catches_up_with_changes_made_while_unmounted(
    mutable_immich: FakeImmich, mutable_library: FakeLibrary, tmp_path: Path
) -> None:
    library = mutable_library
    deleted, trashed, liked = photos(library, 3)
    async with mounted(mutable_immich, tmp_path) as (tree, _, local):
        before = await ids(tree, PHOTOS_KEY)
        assert before == truth(library)
        favorites = await ids(tree, FAVORITES_KEY)
        await wait_saved(local, PHOTOS)
        await wait_saved(local, ("favorites",))

    library.delete(deleted.id)  # permanently: no delta shows it
    library.trash(trashed.id)
    library.set_favorite(liked.id, True)
    added = library.add_asset("added while unmounted.jpg")

    async with mounted(mutable_immich, tmp_path) as (tree, task, local):
        memory = local.memory
        assert task.catch_up is not None and not memory.caught_up
        # served at once, as saved: the catch-up has not run yet
        assert await ids(tree, PHOTOS_KEY) == before
        assert memory.served_saved == 1
        async with trio.open_nursery() as nursery:
            await nursery.start(task.run)
            with trio.fail_after(30):  # the catch-up starts a moment after the mount
                while not memory.caught_up:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        result = task.last_result
        assert result is not None and result.full
        assert result.removed == 1 and deleted.id in result.removed_ids
        assert {trashed.id, liked.id, added.id} <= result.delta.keys()
        assert await ids(tree, PHOTOS_KEY) == truth(library)
        assert await ids(tree, FAVORITES_KEY) == favorites | {liked.id}
        # the catalog on disk went the same way: nothing it holds is out of date
        assert await saved(local, PHOTOS) in (None, truth(library))
        assert await saved(local, ("favorites",)) in (None, favorites | {liked.id})
        assert local.store.saved_asset(deleted.id) is None
        await wait_saved(local, PHOTOS)

    async with mounted(mutable_immich, tmp_path) as (tree, task, local):
        assert await ids(tree, PHOTOS_KEY) == truth(library)
        assert local.memory.served_saved >= 1
        # the overlap brings the newest changes back: they were applied already
        assert (await task.refresh(full=True)).keys == set()
        assert local.memory.caught_up


async def test_an_album_changed_while_unmounted_is_not_served_as_saved(
    mutable_immich: FakeImmich, mutable_library: FakeLibrary, tmp_path: Path
) -> None:
    library = mutable_library
    album = library.album_named("Holidays 2019")
    key = ("album", album.id)
    async with mounted(mutable_immich, tmp_path) as (tree, task, local):
        await task.refresh()  # the album signatures, kept with the catalog
        before = await ids(tree, ("album", album.id))
        await wait_saved(local, key)

    newcomer = photos(library, 1)[0]
    library.add_to_album(album.id, [newcomer.id])  # no asset's updatedAt changes

    async with mounted(mutable_immich, tmp_path) as (tree, task, local):
        assert await ids(tree, ("album", album.id)) == before  # as saved, for a moment
        result = await task.refresh(full=True)  # the catch-up
        assert key in result.keys
        assert await saved(local, key) is None
        assert await ids(tree, ("album", album.id)) == before | {newcomer.id}


async def test_a_catalog_without_delta_state_is_not_served(
    mutable_immich: FakeImmich, tmp_path: Path
) -> None:
    async with mounted(mutable_immich, tmp_path) as (tree, _, local):
        await ids(tree, PHOTOS_KEY)
        await wait_saved(local, PHOTOS)
        local.store.set_state(STATE, "not what a refresh task saves")

    async with mounted(mutable_immich, tmp_path) as (tree, task, local):
        # nothing says how current the saved listings are: they are dropped, not served
        assert local.store.empty and task.catch_up is None and local.memory.caught_up
        await ids(tree, PHOTOS_KEY)
        assert local.memory.served_saved == 0
        assert isinstance(local.memory.saved_state(STATE)["watermark"], str)


async def test_a_remount_names_files_as_a_fresh_listing_would(
    mutable_immich: FakeImmich, mutable_library: FakeLibrary, tmp_path: Path
) -> None:
    library = mutable_library
    added = {library.add_asset("same.jpg").id for _ in range(2)}
    async with mounted(mutable_immich, tmp_path) as (tree, _, local):
        listed = await names(tree, PHOTOS_KEY)
        (first,) = [i for i in added if listed[i] == "same.jpg"]  # the other: a suffix
        (second,) = added - {first}
        await wait_saved(local, PHOTOS)

    library.delete(first)  # permanently, while unmounted: the other may take its name
    async with mounted(mutable_immich, tmp_path) as (tree, task, local):
        served = await tree.catalog.timeline("IMAGE")
        assert isinstance(served, NamedAssets)  # with the names saved: none computed
        assert await names(tree, PHOTOS_KEY) == listed == name_assets(list(served))
        asked = len(mutable_immich.requests)
        for asset in served:  # known one by one too: no request for any
            assert await tree.catalog.asset(asset.id) is asset
        assert len(mutable_immich.requests) == asked
        await task.refresh(full=True)  # the catch-up finds the deletion
        renamed = await names(tree, PHOTOS_KEY)
        assert first not in renamed and renamed[second] == "same.jpg"
        await wait_saved(local, PHOTOS)

    async with mounted(mutable_immich, tmp_path) as (tree, _, local):
        served = await tree.catalog.timeline("IMAGE")
        assert local.memory.served_saved == 1 and isinstance(served, NamedAssets)
        assert await names(tree, PHOTOS_KEY) == renamed == name_assets(list(served))
