"""The on-disk catalog: assets and listings survive a reopen exactly; saved listings
are served first and when the server is away; the cache directory rules."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from immichfs.catalog.cachedir import DirectoryLock, find_user_dir, user_dir
from immichfs.catalog.store import CatalogMemory, CatalogStore, NamedAssets, Reachability
from immichfs.errors import ConnectError, NotFound, Offline, UserError
from immichfs.model import Asset, ExifText

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def asset(n: int, **changes: object) -> Asset:
    fields: dict[str, object] = {
        "id": f"00000000-0000-4000-8000-{n:012d}",
        "type": "IMAGE",
        "original_file_name": f"IMG_{n}.jpg",
        "checksum": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        "size": 1000 + n,
        "file_created_at": T0 + timedelta(days=n),
        "file_modified_at": T0 + timedelta(days=n, hours=1),
        "local_datetime": datetime(2024, 5, 1, 14, 0) + timedelta(days=n),
        "updated_at": T0 + timedelta(days=n, seconds=5),
        "created_at": None,
        "is_favorite": n % 2 == 0,
        "exif": {"make": "Canon", "fNumber": 2.8},
        "people": ("Ann",),
        "tags": ("Travel/Japan",),
    }
    fields.update(changes)
    return Asset(**fields)  # type: ignore[arg-type]


PHOTOS: Hashable = ("dir", "photos")


def test_listing_survives_a_reopen_exactly(tmp_path: Path) -> None:
    assets = [asset(i) for i in range(5)] + [asset(9, size=None, local_datetime=None)]
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, assets)
    store.close()
    again = CatalogStore(tmp_path / "catalog.sqlite")
    saved = again.saved_listing(PHOTOS)
    assert saved is not None
    assert saved[0] == assets
    assert [a.exif for a in saved[0]] == [a.exif for a in assets]
    assert again.saved_asset(assets[2].id) == assets[2]
    assert again.saved_listing(("album", "nope")) is None
    assert stat.S_IMODE(os.stat(tmp_path / "catalog.sqlite").st_mode) == 0o600


def test_exif_read_back_is_decoded_when_read_and_equal_to_the_saved(tmp_path: Path) -> None:
    saved = [asset(1), asset(2, exif={}), asset(3, exif={"latitude": 35.7, "model": "X100V"})]
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, saved)
    found = store.saved_listing(PHOTOS)
    assert found is not None
    for back, original in zip(found[0], saved, strict=True):
        assert isinstance(back.exif, ExifText)
        assert dict(back.exif) == dict(original.exif) and back.exif == original.exif
        assert list(back.exif) == list(original.exif)  # the same order of fields
        assert back.exif.get("make") == original.exif.get("make")
    # saved again undecoded, the same text: a copy read back is not another version
    store.save_listing(("album", "a"), found[0])
    assert store.listings_holding(saved) == set()
    assert store.listings_holding([asset(3, exif={"model": "X100F"})]) == {
        PHOTOS,
        ("album", "a"),
    }


def test_exif_text_that_is_not_an_object_reads_as_empty() -> None:
    for text in ('{"make": "Canon"', "[1, 2]", "null", ""):
        assert dict(ExifText(text)) == {} and len(ExifText(text)) == 0
    assert ExifText('{"make": "Canon"}')["make"] == "Canon"
    with pytest.raises(KeyError):
        ExifText('{"make": "Canon"}')["model"]


def test_names_are_saved_with_a_listing_and_forgotten_when_an_asset_leaves_it(
    tmp_path: Path,
) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, [asset(1), asset(2)], names=["IMG_1.jpg", "IMG_2.jpg"])
    store.save_listing(("album", "x"), [asset(3)], names=["IMG_3.jpg"])
    store.save_listing(("album", "y"), [asset(2)])  # saved without names
    assert store.saved_listing(PHOTOS).names == ["IMG_1.jpg", "IMG_2.jpg"]  # type: ignore[union-attr]
    assert store.saved_listing(("album", "y")).names is None  # type: ignore[union-attr]
    store.forget_assets([asset(2).id])  # another asset may now keep a bare name
    saved = store.saved_listing(PHOTOS)
    assert saved is not None and saved.assets == [asset(1)] and saved.names is None
    assert store.saved_listing(("album", "x")).names == ["IMG_3.jpg"]  # type: ignore[union-attr]
    # names that do not fit the assets are not known (a damaged catalog)
    for text in ('["a.jpg", "b.jpg"]', "[1]", '{"a": 1}', '["cut'):
        with store._db:
            store._db.execute("UPDATE listings SET names = ?", (text,))
        assert store.saved_listing(("album", "x")).names is None  # type: ignore[union-attr]


async def test_memory_saves_names_and_serves_them_with_the_saved_assets(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    memory = CatalogMemory(store, Reachability(), current=lambda key: True)

    async def load() -> list[Asset]:
        return [asset(1), asset(2)]

    def namer(assets: Sequence[Asset]) -> list[str]:
        return [f"{a.original_file_name}.named" for a in assets]

    served = await memory.load(PHOTOS, load, namer=namer)
    assert not isinstance(served, NamedAssets)  # from the server: named by the tree
    await memory.flush()
    again = CatalogMemory(store, Reachability(), current=lambda key: True)
    saved = await again.load(PHOTOS, load)
    assert isinstance(saved, NamedAssets) and list(saved) == [asset(1), asset(2)]
    assert saved.names == ["IMG_1.jpg.named", "IMG_2.jpg.named"]
    store.forget_assets([asset(2).id])
    third = CatalogMemory(store, Reachability(), current=lambda key: True)
    assert not isinstance(await third.load(PHOTOS, load), NamedAssets)


def test_forget_assets_removes_them_from_every_listing(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, [asset(1), asset(2)])
    store.save_listing(("album", "x"), [asset(2)])
    store.forget_assets([asset(2).id])
    assert [a.id for a in store.saved_listing(PHOTOS)[0]] == [asset(1).id]  # type: ignore[index]
    assert store.saved_listing(("album", "x"))[0] == []  # type: ignore[index]


def test_thumbnail_sizes_are_per_asset_version(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_thumbnail("preview", asset(1), 1234, "image/jpeg")
    assert store.saved_thumbnail("preview", asset(1)) == (1234, "image/jpeg")
    assert store.saved_thumbnail("preview", asset(1, checksum="other")) is None
    assert store.thumbnail_type("preview") == "image/jpeg"


async def test_memory_serves_saved_listings_it_is_told_are_kept_current(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, [asset(1), asset(2)])
    store.save_listing(("person", "p"), [asset(1)])
    memory = CatalogMemory(store, Reachability(), current=lambda key: key == PHOTOS)
    assert not memory.caught_up and memory.saved_assets == 2
    calls = 0

    async def load() -> list[Asset]:
        nonlocal calls
        calls += 1
        return [asset(1)]  # asset 2 was deleted while unmounted

    remembered: list[Asset] = []
    first = await memory.load(PHOTOS, load, remember=remembered.extend)
    assert [a.id for a in first] == [asset(1).id, asset(2).id]  # at once, from disk
    assert remembered == list(first)
    assert calls == 0
    # a listing the refresh task only lets expire comes from the server
    assert await memory.load(("person", "p"), load) == [asset(1)]
    assert calls == 1
    # and once served, the next load of a listing (it expired) asks the server too
    assert await memory.load(PHOTOS, load) == [asset(1)]
    assert calls == 2


async def test_a_forget_outdates_saves_and_reads_in_flight(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    memory = CatalogMemory(store, Reachability(), current=lambda key: True)
    started, release = trio.Event(), trio.Event()

    async def slow() -> list[Asset]:
        started.set()
        await release.wait()
        return [asset(1)]  # as the server had it before the change

    async with trio.open_nursery() as nursery:
        nursery.start_soon(memory.load, PHOTOS, slow)
        await started.wait()
        await memory.forget([], changed=[asset(1, checksum="new")])  # asset 1 changed
        release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert store.saved_listing(PHOTOS) is None  # never saved: it may predate the change

    async def fresh() -> list[Asset]:
        return [asset(1, checksum="new")]

    await memory.load(("album", "a"), fresh)
    with trio.fail_after(5):
        while store.saved_listing(("album", "a")) is None:
            await trio.sleep(0.01)


async def test_memory_forgets_changed_listings_and_gone_assets(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, [asset(1), asset(2), asset(3)])
    store.save_listing(("album", "a"), [asset(3)])
    store.save_listing(("album", "b"), [asset(4)])
    store.save_listing(("favorites",), [asset(2)])
    memory = CatalogMemory(store, Reachability())
    assert await memory.held_ids(exclude=lambda key: key[:1] == ("album",)) == {  # type: ignore[index]
        asset(i).id for i in (1, 2, 3)
    }
    await memory.forget([], changed=[asset(2)])  # as saved: nothing to drop
    assert store.saved_listing(("favorites",)) is not None
    await memory.forget([("album", "b")], changed=[asset(2, size=1)], gone=[asset(3).id])
    assert store.saved_listing(PHOTOS) is None  # held an older asset 2
    assert store.saved_listing(("favorites",)) is None
    assert store.saved_listing(("album", "b")) is None  # named
    assert store.saved_listing(("album", "a"))[0] == []  # type: ignore[index]
    assert store.saved_asset(asset(3).id) is None


async def test_memory_offline_serves_saved_or_fails_fast(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, [asset(1)])
    reach = Reachability(online=False)
    memory = CatalogMemory(store, reach)

    async def load() -> list[Asset]:
        raise AssertionError("no request while offline")

    assert await memory.load(PHOTOS, load) == [asset(1)]
    assert await memory.load(PHOTOS, load) == [asset(1)]
    with pytest.raises(Offline):
        await memory.load(("album", "never-listed"), load)

    async def fetch_asset() -> Asset:
        raise AssertionError("no request while offline")

    assert await memory.asset(asset(1).id, fetch_asset) == asset(1)
    with pytest.raises(Offline):
        await memory.asset("unknown", fetch_asset)


@pytest.mark.expect_log("serving the saved catalog")
async def test_memory_falls_back_when_a_load_fails(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    reach = Reachability()
    memory = CatalogMemory(store, reach)

    async def good() -> list[Asset]:
        return [asset(1)]

    async def down() -> list[Asset]:
        raise ConnectError("refused")

    async def gone() -> list[Asset]:
        raise NotFound("album deleted")

    key = ("album", "a")
    assert await memory.load(key, good) == [asset(1)]  # first: nothing saved, loaded
    with trio.fail_after(5):
        while store.saved_listing(key) is None:
            await trio.sleep(0.01)
    assert await memory.load(key, down) == [asset(1)]  # unreachable: the saved one
    assert not reach.online  # and the mount knows it is offline now
    reach.set(True)
    with pytest.raises(NotFound):
        await memory.load(key, gone)  # an answer from the server is never papered over


async def test_searches_are_not_saved(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    memory = CatalogMemory(store, Reachability())

    async def load() -> list[Asset]:
        return [asset(1)]

    await memory.load(("search", "cat"), load)
    await trio.testing.wait_all_tasks_blocked()
    assert store.empty


# -- the cache directory --------------------------------------------------------------


def test_user_dir_is_private_and_found_by_key_only(tmp_path: Path) -> None:
    url = "http://immich.local:2283"
    place = user_dir(tmp_path, url, "user-1", "secret-key-AAAA")
    assert stat.S_IMODE(os.stat(place.path).st_mode) == 0o700
    identity = (place.path / "identity.json").read_text()
    assert "secret-key-AAAA" not in identity
    assert stat.S_IMODE(os.stat(place.path / "identity.json").st_mode) == 0o600
    assert find_user_dir(tmp_path, url, "secret-key-AAAA") == place
    assert find_user_dir(tmp_path, url, "another-key") is None
    assert find_user_dir(tmp_path, "http://other:2283", "secret-key-AAAA") is None
    other = user_dir(tmp_path, url, "user-2", "key-of-user-2")
    assert other.path != place.path


def test_second_lock_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with (
        DirectoryLock(tmp_path),
        pytest.raises(UserError, match="in use by another immichfs process"),
    ):
        DirectoryLock(tmp_path).acquire()
    with DirectoryLock(tmp_path):  # released: free again
        pass


async def test_collection_lists_are_kept_for_offline(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    reach = Reachability()
    memory = CatalogMemory(store, reach)
    albums: list[dict[str, object]] = [{"id": "a", "albumName": "Trip"}]

    async def fetch() -> list[dict[str, object]]:
        return albums

    async def down() -> list[dict[str, object]]:
        raise ConnectError("refused")

    assert await memory.answer(("people", False), fetch) == albums
    with trio.fail_after(5):
        while store.saved_answer(("people", False)) is None:
            await trio.sleep(0.01)
    again = CatalogMemory(CatalogStore(tmp_path / "catalog.sqlite"), reach)
    assert await again.answer(("people", False), down) == albums  # unreachable: as saved
    assert not reach.online
    with pytest.raises(Offline):
        await again.answer(("tags",), down)


async def test_an_unconfirmed_asset_is_asked_for_alone(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, [asset(1)])
    memory = CatalogMemory(store, Reachability(), current=lambda key: True)

    async def listing() -> list[Asset]:
        raise AssertionError("served from disk")

    async def one() -> Asset:
        return asset(1, checksum="new")

    hurried: list[int] = []
    memory.hurry = lambda: hurried.append(1)
    await memory.load(PHOTOS, listing)  # from disk, before the catalog is caught up
    assert not hurried  # listing alone does not bring the catch-up forward
    assert (await memory.confirmed(asset(1).id, one)).checksum == "new"  # type: ignore[union-attr]
    assert hurried == [1]  # a file opened: the catch-up is due now
    assert await memory.confirmed(asset(1).id, one) is None  # checked once
    memory._seen.clear()
    await memory.load(PHOTOS, listing)
    memory.mark_caught_up()  # the refresh task's catch-up is done: nothing to check
    assert await memory.confirmed(asset(1).id, one) is None


@pytest.mark.expect_log("a saved listing cannot be read")
@pytest.mark.expect_log("has format 1: starting a new one")
def test_a_damaged_or_older_catalog_is_never_misread(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    store = CatalogStore(path)
    store.save_listing(PHOTOS, [asset(1)])
    with store._db:
        store._db.execute("UPDATE listed SET asset = '[\"cut'")
    assert store.saved_listing(PHOTOS) is None  # counts as never saved
    for row in ("[1, 2]", "[" + "null," * 30 + "null]", "{}"):  # too few or many fields
        with store._db:
            store._db.execute("UPDATE listed SET asset = ?", (row,))
        assert store.saved_listing(PHOTOS) is None
    store.save_listing(PHOTOS, [asset(1), asset(2)])
    with store._db:  # one exif more than assets: none can be told apart
        store._db.execute("UPDATE listed SET exif = '{}' || char(30) || '{}' WHERE position = 0")
    assert store.saved_listing(PHOTOS) is None
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    again = CatalogStore(path)  # another version's: started afresh
    assert again.empty and again.saved_listing(PHOTOS) is None


async def test_after_a_failed_forget_saved_listings_are_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CatalogStore(tmp_path / "catalog.sqlite")
    store.save_listing(PHOTOS, [asset(1)])
    memory = CatalogMemory(store, Reachability(), current=lambda key: True)

    def full_disk(keys: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "forget_listings", full_disk)
    with pytest.raises(sqlite3.OperationalError):
        await memory.forget([PHOTOS])
    assert memory.outdated  # the refresh task then stops saving where its deltas stand

    async def load() -> list[Asset]:
        return [asset(2)]

    assert await memory.load(PHOTOS, load) == [asset(2)]  # the server's, not the saved one


@pytest.mark.expect_log("has format 2: starting a new one")
def test_a_catalog_of_the_format_before_exif_texts_is_emptied_once_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "catalog.sqlite"
    store = CatalogStore(path)
    store.save_listing(PHOTOS, [asset(1)])
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 2")  # rows with the exif as an object were format 2
    db.commit()
    db.close()
    again = CatalogStore(path)
    assert again.empty and again.saved_listing(PHOTOS) is None
    again.save_listing(PHOTOS, [asset(1)])
    again.close()
    third = CatalogStore(path)  # rebuilt in this format: read back, without a warning
    saved = third.saved_listing(PHOTOS)
    assert saved is not None and saved[0] == [asset(1)]
    warnings = [r.getMessage() for r in caplog.records if "has format" in r.getMessage()]
    assert warnings == [f"{path} has format 2: starting a new one"]
