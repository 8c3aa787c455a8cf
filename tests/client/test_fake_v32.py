"""The fake as Immich 3.2: search v2 (filter tree, orderBy, cursors), asset files, edits.

Over real HTTP on loopback; expected values are computed from the library.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from immichfs_fake import FakeImmich, FakeLibrary
from immichfs_fake.library import FakeAsset

V32 = "3.2.0"
DEFAULT_VISIBLE = ("timeline", "archive", "hidden")


def client(srv: FakeImmich) -> httpx.Client:
    return httpx.Client(base_url=srv.url + "/api", headers={"x-api-key": srv.api_key})


@pytest.fixture
def api32(fake_library: FakeLibrary) -> Iterator[httpx.Client]:
    with FakeImmich(fake_library, version=V32) as srv, client(srv) as api:
        yield api


@pytest.fixture
def mutable32(mutable_library: FakeLibrary) -> Iterator[FakeImmich]:
    with FakeImmich(mutable_library, version=V32) as srv:
        yield srv


def mine(lib: FakeLibrary) -> list[FakeAsset]:
    return [a for a in lib.assets.values() if a.owner_id == lib.me.id and a.visibility != "locked"]


def listed(lib: FakeLibrary) -> list[FakeAsset]:
    """What a search without conditions lists on 3.x."""
    return [a for a in mine(lib) if a.visibility in DEFAULT_VISIBLE and not a.is_trashed]


def by_taken_desc(assets: list[FakeAsset]) -> list[str]:
    return [a.id for a in sorted(assets, key=lambda a: (a.file_created_at, a.id), reverse=True)]


def search(api: httpx.Client, body: dict[str, Any], expect: int = 200) -> dict[str, Any]:
    r = api.post("/search/metadata", json=body)
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


def ids_of(api: httpx.Client, body: dict[str, Any]) -> list[str]:
    """Every asset of a search, paged by cursor."""
    out: list[str] = []
    cursor = None
    for _ in range(500):  # a cursor that never ends fails, not hangs
        page = search(api, {**body, "size": 7, **({"cursor": cursor} if cursor else {})})
        out += [item["id"] for item in page["assets"]["items"]]
        cursor = page["assets"]["nextCursor"]
        if cursor is None:
            return out
    raise AssertionError("paging did not end")


# -- cursors -------------------------------------------------------------------------


def test_cursor_paging_lists_everything_once_in_order(
    api32: httpx.Client, fake_library: FakeLibrary
) -> None:
    first = search(api32, {"size": 7})["assets"]
    assert first["nextPage"] == "2" and isinstance(first["nextCursor"], str)
    second = search(api32, {"size": 7, "cursor": first["nextCursor"]})["assets"]
    assert second["nextPage"] is None  # page numbers mean nothing after a cursor
    assert ids_of(api32, {}) == by_taken_desc(listed(fake_library))


def test_order_by_other_fields(mutable32: FakeImmich, mutable_library: FakeLibrary) -> None:
    visible = listed(mutable_library)
    for n, asset in enumerate(visible[::9]):
        mutable_library.set_rating(asset.id, 1 + n % 5)

    def ranked(key: Any, reverse: bool) -> list[str]:
        return [a.id for a in sorted(visible, key=key, reverse=reverse)]

    with client(mutable32) as api:
        # ratings: nulls last ascending, first descending (PostgreSQL); ties by id
        rating = ranked(lambda a: (a.rating is None, a.rating or 0, a.id), False)
        assert ids_of(api, {"orderBy": {"field": "rating", "direction": "asc"}}) == rating
        assert ids_of(api, {"orderBy": {"field": "rating"}}) == rating[::-1]
        size_desc = ranked(lambda a: (a.size, a.id), True)
        assert ids_of(api, {"orderBy": {"field": "fileSizeInBytes"}}) == size_desc
        local_asc = ranked(lambda a: (a.local_date_time, a.id), False)
        local = {"orderBy": {"field": "localDateTime", "direction": "asc"}}
        assert ids_of(api, local) == local_asc
        # the deprecated flat order still works
        assert ids_of(api, {"order": "asc"}) == by_taken_desc(visible)[::-1]


def test_paging_stays_exact_while_the_library_changes(
    mutable32: FakeImmich, mutable_library: FakeLibrary
) -> None:
    lib = mutable_library
    before = by_taken_desc(listed(lib))
    seen: list[str] = []
    added: list[str] = []
    gone: set[str] = set()
    with client(mutable32) as api:
        cursor = None
        step = 0
        while step < 100:
            body: dict[str, Any] = {"size": 10, **({"cursor": cursor} if cursor else {})}
            page = search(api, body)["assets"]
            seen += [item["id"] for item in page["items"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
            step += 1
            unseen = [i for i in before if i not in seen and i not in gone]
            if step == 1:
                # newest first: an upload taken now sorts before the cursor, one taken
                # long ago after it; neither may shift the pages
                added.append(lib.add_asset("new now.jpg").id)
                old = lib.get(unseen[-1])
                assert old is not None
                added.append(
                    lib.add_asset("new old.jpg", taken=old.file_created_at - timedelta(days=1)).id
                )
                lib.delete(seen[0])  # already listed
                lib.delete(unseen[0])  # not yet listed
                lib.trash(unseen[1])
                gone |= {seen[0], unseen[0], unseen[1]}
            elif step == 3:
                lib.delete(unseen[2])
                gone.add(unseen[2])
    assert len(seen) == len(set(seen)), "an asset came twice"
    survivors = [i for i in before if i not in gone]
    listed_survivors = [i for i in seen if i in set(survivors)]
    assert listed_survivors == survivors, "an asset present all along was skipped"
    assert added[1] in seen  # sorted after the cursor when it appeared
    assert added[0] not in seen  # sorted before it
    assert not (set(seen) - set(before) - set(added)), "unknown assets"
    assert gone & set(seen) == {seen[0]}


def test_bad_cursors_are_refused(api32: httpx.Client) -> None:
    cursor = search(api32, {"size": 2})["assets"]["nextCursor"]
    for body in (
        {"cursor": "not-a-cursor"},
        {"cursor": ""},
        {"cursor": cursor, "page": 2},
        {"cursor": cursor, "orderBy": {"field": "rating"}},  # another ordering
        {"orderBy": {"field": "name"}},
    ):
        error = search(api32, body, expect=400)
        assert error["message"] == "Validation failed"


# -- the filter tree -------------------------------------------------------------------


def test_filter_tree_semantics(api32: httpx.Client, fake_library: FakeLibrary) -> None:
    lib = fake_library
    visible = listed(lib)
    everything = mine(lib)

    def expect(assets: list[FakeAsset]) -> list[str]:
        return by_taken_desc(assets)

    pngs = [a for a in visible if a.original_file_name.lower().endswith(".png")]
    assert pngs
    assert ids_of(api32, {"filter": {"originalFileName": {"endsWith": ".PNG"}}}) == expect(pngs)
    assert ids_of(api32, {"filter": {"originalFileName": {"like": "screenshot%.png"}}}) == expect(
        [a for a in pngs if a.original_file_name.startswith("Screenshot")]
    )
    # trashed assets only where trashedAt is constrained, branch by branch
    trashed = [a for a in everything if a.is_trashed]
    assert trashed
    tree = {"or": [{"trashedAt": {"ne": None}}, {"isFavorite": {"eq": True}}]}
    favourites = [a for a in visible if a.is_favorite]
    assert ids_of(api32, {"filter": tree}) == expect(
        [*trashed, *[a for a in favourites if not a.is_trashed]]
    )
    assert ids_of(api32, {"filter": {"isFavorite": {"eq": True}}}) == expect(favourites)
    assert ids_of(api32, {"withDeleted": True, "filter": {"isFavorite": {"eq": True}}}) == expect(
        [a for a in everything if a.is_favorite and a.visibility in DEFAULT_VISIBLE]
    )
    # null semantics: ne never matches a null city
    paris = [a for a in visible if a.city is not None and a.city != "Paris"]
    assert ids_of(api32, {"filter": {"city": {"ne": "Paris"}}}) == expect(paris)
    assert ids_of(api32, {"filter": {"city": {"eq": None}}}) == expect(
        [a for a in visible if a.city is None]
    )
    # tags match their descendants; albums by any
    travel = next(t for t in lib.tags.values() if t.value == "Travel")
    tagged = [a for a in visible if any(lib.tags[t].value.startswith("Travel") for t in a.tag_ids)]
    assert tagged
    assert ids_of(api32, {"filter": {"tagIds": {"any": [travel.id]}}}) == expect(tagged)
    shared = lib.album_named("Shared with me")
    in_album = [lib.assets[i] for i in shared.asset_ids]
    assert any(a.owner_id != lib.me.id for a in in_album)
    assert ids_of(api32, {"filter": {"albumIds": {"any": [shared.id]}}}) == expect(
        [a for a in in_album if a.visibility in DEFAULT_VISIBLE and not a.is_trashed]
    )
    # sizes and types; flat fields AND with the tree
    big = [a for a in visible if a.size > 100_000 and a.type == "IMAGE"]
    body = {"type": "IMAGE", "filter": {"fileSizeInBytes": {"gt": 100_000}}}
    assert ids_of(api32, body) == expect(big)
    # unknown operators are dropped (operator objects are not strict in the spec)
    assert ids_of(api32, {"filter": {"city": {"near": "Paris"}}}) == expect(visible)


def test_filter_tree_validation(api32: httpx.Client, fake_library: FakeLibrary) -> None:
    error = search(api32, {"filter": {"cameraMake": {"eq": "Canon"}}}, expect=400)
    assert error["errors"][0]["path"] == ["filter"]
    error = search(api32, {"filter": {"or": [{"or": [{}]}]}}, expect=400)
    assert error["errors"][0]["path"] == ["filter", "or", 0]
    error = search(api32, {"filter": {"takenAt": {"gte": "yesterday"}}}, expect=400)
    assert error["errors"][0]["path"] == ["filter", "takenAt", "gte"]
    search(api32, {"filter": {"or": []}}, expect=400)
    search(api32, {"filter": {"isFavorite": {}}}, expect=400)  # eq is required
    search(api32, {"filter": {"albumIds": {"any": []}}}, expect=400)
    r = api32.post("/search/metadata", json={"filter": {"visibility": {"eq": "locked"}}})
    assert r.status_code == 401
    unknown = "00000000-0000-4000-8000-000000000000"
    r = api32.post("/search/metadata", json={"filter": {"albumIds": {"none": [unknown]}}})
    assert r.status_code == 400 and r.json()["message"] == "Not found or no album.read access"


def test_statistics_and_smart_search_take_the_filter(fake_library: FakeLibrary) -> None:
    with FakeImmich(fake_library, version=V32, smart_search=True) as srv, client(srv) as api:
        videos = [a for a in listed(fake_library) if a.type == "VIDEO"]
        r = api.post("/search/statistics", json={"filter": {"type": {"eq": "VIDEO"}}})
        assert r.json() == {"total": len(videos)}
        r = api.post("/search/smart", json={"query": "video", "filter": {"type": {"eq": "VIDEO"}}})
        assets = r.json()["assets"]
        assert {i["id"] for i in assets["items"]} == {a.id for a in videos}
        assert assets["nextCursor"] is None


def test_older_versions_ignore_the_v2_fields(fake_library: FakeLibrary) -> None:
    with FakeImmich(fake_library, version="3.1.0") as srv, client(srv) as api:
        body = {"filter": {"type": {"eq": "VIDEO"}}, "cursor": "x", "size": 1000}
        assets = search(api, body)["assets"]
        assert "nextCursor" not in assets
        assert [i["id"] for i in assets["items"]] == by_taken_desc(listed(fake_library))
        assert (
            api.get("/asset-files", params={"assetId": assets["items"][0]["id"]}).status_code == 404
        )
        assert api.get("/config").status_code == 404


# -- asset files, edits, sidecars ------------------------------------------------------


def test_asset_files_permissions(fake_library: FakeLibrary) -> None:
    asset = next(a for a in fake_library.sorted_assets() if a.has_sidecar and not a.is_trashed)

    def status(permissions: list[str]) -> tuple[int, int]:
        with (
            FakeImmich(fake_library, version=V32) as full,
            client(full) as api,
        ):
            file_id = api.get("/asset-files", params={"assetId": asset.id}).json()[0]["id"]
        with (
            FakeImmich(fake_library, version=V32, permissions=permissions) as srv,
            client(srv) as api,
        ):
            listing = api.get("/asset-files", params={"assetId": asset.id})
            download = api.get(f"/asset-files/{file_id}/download")
            if listing.status_code == 403:
                assert listing.json()["message"] == "Missing required permission: assetFile.read"
            return listing.status_code, download.status_code

    assert status(["asset.read"]) == (403, 403)
    assert status(["assetFile.read"]) == (200, 403)
    assert status(["assetFile.read", "assetFile.download"]) == (200, 200)
    assert status(["all"]) == (200, 200)


def test_sidecars_and_edited_renditions_download_exactly(
    api32: httpx.Client, fake_library: FakeLibrary
) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    assert asset.is_edited and asset.has_sidecar
    files = api32.get("/asset-files", params={"assetId": asset.id}).json()
    kinds = sorted((f["type"], f["isEdited"]) for f in files)
    assert kinds == [
        ("fullsize", True),
        ("preview", False),
        ("preview", True),
        ("sidecar", False),
        ("thumbnail", False),
        ("thumbnail", True),
    ]
    assert all("size" not in f and "assetId" not in f for f in files)
    sidecar = next(f for f in files if f["type"] == "sidecar")
    r = api32.get(f"/asset-files/{sidecar['id']}/download")
    assert r.content == fake_library.sidecar_content(asset.id)
    assert r.content.startswith(b"<?xpacket") and asset.id.encode() in r.content
    assert api32.get(f"/asset-files/{sidecar['id']}").json() == sidecar
    fullsize = next(f for f in files if f["type"] == "fullsize")
    r = api32.get(f"/asset-files/{fullsize['id']}/download")
    assert r.content == fake_library.edited_content(asset.id)
    only = api32.get("/asset-files", params={"assetId": asset.id, "isEdited": "false"}).json()
    assert {f["type"] for f in only} == {"preview", "thumbnail", "sidecar"}
    assert api32.get("/asset-files", params={"assetId": "nope"}).status_code == 400
    assert api32.get("/asset-files").status_code == 400


@pytest.mark.parametrize("version", ["2.7.5", "3.1.0", V32])
def test_edited_true_serves_the_edit(version: str, fake_library: FakeLibrary) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    edited = fake_library.edited_content(asset.id)
    original = fake_library.content(asset.id)
    assert len(edited) == asset.edited_size != asset.size
    assert edited != original
    with FakeImmich(fake_library, version=version) as srv, client(srv) as api:
        assert api.get(f"/assets/{asset.id}").json()["isEdited"] is True
        url = f"/assets/{asset.id}/original"
        r = api.get(url, params={"edited": "true"})
        assert r.content == edited
        assert r.headers["content-type"] == "image/jpeg"
        assert r.headers["content-disposition"].endswith("Kinkaku-ji.jpeg")
        assert api.get(url).content == original
        assert api.get(url, params={"edited": "false"}).content == original
        head = api.head(url, params={"edited": "true"})
        assert int(head.headers["content-length"]) == asset.edited_size
        first = api.get(url, params={"edited": "true"}, headers={"range": "bytes=0-0"})
        assert first.status_code == 206
        assert first.headers["content-range"] == f"bytes 0-0/{asset.edited_size}"
        thumb = f"/assets/{asset.id}/thumbnail"
        assert api.get(thumb, params={"edited": "true"}).content != api.get(thumb).content


def test_before_edits_existed_edited_is_ignored(fake_library: FakeLibrary) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    with FakeImmich(fake_library, version="2.4.0") as srv, client(srv) as api:
        assert "isEdited" not in api.get(f"/assets/{asset.id}").json()
        r = api.get(f"/assets/{asset.id}/original", params={"edited": "true"})
        assert r.content == fake_library.content(asset.id)


def test_library_helpers_change_what_is_served(
    mutable32: FakeImmich, mutable_library: FakeLibrary
) -> None:
    lib = mutable_library
    photo = next(a for a in listed(lib) if a.type == "IMAGE" and not a.is_edited)
    with client(mutable32) as api:
        before = api.get(f"/assets/{photo.id}").json()
        assert before["isEdited"] is False
        since = datetime.now(UTC).isoformat()
        lib.edit(photo.id, size=50_000)
        assert photo.edited_size is not None and abs(photo.edited_size - 50_000) < 4096
        after = api.get(f"/assets/{photo.id}").json()
        assert after["isEdited"] is True and after["updatedAt"] > before["updatedAt"]
        first = api.get(f"/assets/{photo.id}/original", params={"edited": "true"}).content
        assert hashlib.sha1(first).hexdigest() == lib.edited_sha1(photo.id)
        lib.edit(photo.id)  # a second edit: new bytes
        second = api.get(f"/assets/{photo.id}/original", params={"edited": "true"}).content
        assert second != first and len(second) == photo.edited_size
        updated = api.post(
            "/search/metadata", json={"filter": {"updatedAt": {"gt": since}}}
        ).json()["assets"]["items"]
        assert [i["id"] for i in updated] == [photo.id]
        lib.remove_edit(photo.id)
        assert api.get(f"/assets/{photo.id}/original", params={"edited": "true"}).content == (
            lib.content(photo.id)
        )
        lib.set_sidecar(photo.id)
        files = api.get("/asset-files", params={"assetId": photo.id, "type": "sidecar"}).json()
        old = api.get(f"/asset-files/{files[0]['id']}/download").content
        lib.set_sidecar(photo.id)
        new = api.get(f"/asset-files/{files[0]['id']}/download").content
        assert old != new and new == lib.sidecar_content(photo.id)
        lib.remove_sidecar(photo.id)
        assert api.get(f"/asset-files/{files[0]['id']}").status_code == 400
        video = next(a for a in listed(lib) if a.type == "VIDEO")
        with pytest.raises(ValueError, match="only photos"):
            lib.edit(video.id)


def test_config_and_deprecated_server_config(fake_library: FakeLibrary) -> None:
    with (
        FakeImmich(fake_library, version=V32, permissions=["asset.read"]) as srv,
        client(srv) as api,
    ):
        assert api.get("/config").status_code == 403
        assert api.get("/public/config").status_code == 200
        assert api.get("/server/config").json()["trashDays"] == 30
        assert api.get("/server/features").status_code == 200
    with FakeImmich(fake_library, version=V32) as srv, client(srv) as api:
        config = api.get("/config").json()
        assert config["trash"] == {"enabled": True, "days": 30}
        assert api.get("/users/me").json()["clusterGroupId"]


def _table(lib: FakeLibrary) -> list[tuple[dict[str, Any], Any]]:
    """(filter, the same condition in Python) over the default listing."""
    in_albums = {i for album in lib.albums.values() for i in album.asset_ids}
    alice = next(p.id for p in lib.people.values() if p.name == "Alice")
    some = sorted(lib.assets.values(), key=lambda a: a.id)[3]
    checksum = lib.checksum(some.id)
    return [
        ({"personIds": {"none": [alice]}}, lambda a: alice not in a.person_ids),
        ({"personIds": {"all": [alice]}}, lambda a: alice in a.person_ids),
        ({"hasAlbums": {"eq": False}}, lambda a: a.id not in in_albums),
        ({"hasPeople": {"eq": True}}, lambda a: bool(a.person_ids)),
        ({"hasTags": {"eq": False}}, lambda a: not a.tag_ids),
        ({"id": {"ne": some.id}}, lambda a: a.id != some.id),
        ({"checksum": {"in": [checksum]}}, lambda a: a.id == some.id),
        ({"type": {"notIn": ["IMAGE"]}}, lambda a: a.type != "IMAGE"),
        ({"visibility": {"ne": "timeline"}}, lambda a: a.visibility in ("archive", "hidden")),
        ({"isMotion": {"eq": True}}, lambda a: a.live_photo_video_id is not None),
        (
            {"originalFileName": {"like": "IMG\\_000_.JPG"}},  # \_ is a literal _
            lambda a: re.fullmatch(r"img_000.\.jpg", a.original_file_name.lower()) is not None,
        ),
        ({"originalFileName": {"like": "IMG\\%"}}, lambda a: False),
        (
            {"originalFileName": {"like": "img_000_.jpg"}},
            lambda a: (
                len(a.original_file_name) == 12
                and a.original_file_name.upper().startswith("IMG")
                and a.original_file_name[4:7] == "000"
                and a.original_file_name.upper().endswith(".JPG")
            ),
        ),
        (
            {"originalFileName": {"notLike": "%.jpg"}},
            lambda a: not a.original_file_name.lower().endswith(".jpg"),
        ),
        (
            {"originalFileName": {"startsWith": "screenshot"}},
            lambda a: a.original_file_name.startswith("Screenshot"),
        ),
        (
            {"description": {"eq": "Christmas dinner"}},
            lambda a: a.description == "Christmas dinner",
        ),
        ({"make": {"in": ["Canon", "Apple"]}}, lambda a: a.make in ("Canon", "Apple")),
        ({"lensModel": {"ne": None}}, lambda a: a.lens_model is not None),
        ({"rating": {"ne": None}}, lambda a: a.rating is not None),
        (
            {"fileSizeInBytes": {"gte": 50_000, "lt": 200_000}},
            lambda a: 50_000 <= a.size < 200_000,
        ),
        (
            {"createdAt": {"lt": "2020-01-01T00:00:00.000Z"}},
            lambda a: a.created_at < datetime(2020, 1, 1, tzinfo=UTC),
        ),
        ({"isEncoded": {"eq": True}}, lambda a: False),
        ({"ocr": {"matches": "receipt"}}, lambda a: False),
        ({"libraryId": {"eq": None}}, lambda a: True),
    ]


def test_every_operator(api32: httpx.Client, fake_library: FakeLibrary) -> None:
    visible = listed(fake_library)
    nonempty = 0
    for tree, condition in _table(fake_library):
        want = by_taken_desc([a for a in visible if condition(a)])
        assert ids_of(api32, {"filter": tree}) == want, tree
        nonempty += bool(want) and len(want) < len(visible)
    assert nonempty >= 15  # most rows tell matching from non-matching assets
