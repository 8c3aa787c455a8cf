"""The fake Immich server over real HTTP: the behaviour the notes record for real servers.

Everything here goes through a socket on loopback with httpx, as a client
would; expected values are computed from the library, never hard-coded.
"""

from __future__ import annotations

import array
import base64
import fcntl
import hashlib
import io
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from mountutil import poll
from PIL import Image

from immichfs_fake import FakeImmich, FakeLibrary
from immichfs_fake import media as fake_media
from immichfs_fake.library import FILE_THRESHOLD, FakeAsset

VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]
ALL = pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def api(fake_immich: FakeImmich) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=fake_immich.url + "/api", headers={"x-api-key": fake_immich.api_key}
    ) as client:
        yield client


@pytest.fixture
def mapi(mutable_immich: FakeImmich) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=mutable_immich.url + "/api", headers={"x-api-key": mutable_immich.api_key}
    ) as client:
        yield client


def v3(srv: FakeImmich) -> bool:
    return srv.version_info >= (3, 0, 0)


def mine(lib: FakeLibrary) -> list[FakeAsset]:
    return [a for a in lib.assets.values() if a.owner_id == lib.me.id]


def visible_by_default(lib: FakeLibrary, version: tuple[int, int, int]) -> list[FakeAsset]:
    allowed = ("timeline", "archive", "hidden") if version >= (3, 0, 0) else ("timeline",)
    return [a for a in mine(lib) if a.visibility in allowed and not a.is_trashed]


def desc(assets: list[FakeAsset]) -> list[str]:
    return [a.id for a in sorted(assets, key=lambda a: (a.file_created_at, a.id), reverse=True)]


def search_all(api: httpx.Client, body: dict[str, Any], size: int = 1000) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page: str | None = "1"
    while page is not None:
        r = api.post("/search/metadata", json={**body, "page": int(page), "size": size})
        assert r.status_code == 200, r.text
        result = r.json()["assets"]
        items += result["items"]
        page = result["nextPage"]
    return items


def assert_error(srv: FakeImmich, r: httpx.Response, status: int, message: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    if v3(srv):
        assert set(body) == {"message"}
        assert body["message"] == message
        assert r.headers["X-Correlation-ID"]
    else:
        assert set(body) == {"message", "error", "statusCode", "correlationId"}
        assert body["message"] == message
        assert body["statusCode"] == status
        assert body["correlationId"] == r.headers["x-immich-cid"]


def assert_validation(srv: FakeImmich, r: httpx.Response, field: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    if v3(srv):
        assert body["message"] == "Validation failed"
        assert any(issue["path"] == [field] for issue in body["errors"])
    else:
        assert isinstance(body["message"], list)
        assert any(m.startswith(field + " ") for m in body["message"]), body
        assert body["error"] == "Bad Request"


# -- server info and authentication ---------------------------------------------------


@ALL
def test_public_endpoints_and_version(fake_immich: FakeImmich) -> None:
    with httpx.Client(base_url=fake_immich.url + "/api") as anonymous:
        assert anonymous.get("/server/ping").json() == {"res": "pong"}
        version = anonymous.get("/server/version").json()
        features = anonymous.get("/server/features").json()
    major, minor, patch = fake_immich.version_info
    assert (version["major"], version["minor"], version["patch"]) == (major, minor, patch)
    assert ("prerelease" in version) == v3(fake_immich)
    assert features["smartSearch"] is False
    assert ("ocr" in features) == (fake_immich.version_info >= (2, 2, 0))
    assert ("realtimeTranscoding" in features) == v3(fake_immich)


@ALL
def test_authentication_errors(fake_immich: FakeImmich, api: httpx.Client) -> None:
    with httpx.Client(base_url=fake_immich.url + "/api") as anonymous:
        assert_error(fake_immich, anonymous.get("/users/me"), 401, "Authentication required")
        bad = anonymous.get("/users/me", headers={"x-api-key": "fake-immich-key-wrong"})
        assert_error(fake_immich, bad, 401, "Invalid API key")
        by_query = anonymous.get("/users/me", params={"apiKey": fake_immich.api_key})
        assert by_query.status_code == 200
        bearer = anonymous.get("/users/me", headers={"Authorization": "Bearer abc"})
        assert_error(fake_immich, bearer, 401, "Invalid user token")
    assert api.post("/auth/validateToken").json() == {"authStatus": True}
    me = api.get("/users/me").json()
    assert me["id"] == fake_immich.library.me.id
    assert fake_immich.api_key.startswith("fake-immich-key-")
    assert fake_immich.api_key not in repr(fake_immich)
    # the key never reaches the request log
    assert all(fake_immich.api_key not in r.query for r in fake_immich.requests)


@pytest.mark.parametrize(
    "fake_immich",
    [{"version": v, "permissions": ["asset.read", "asset.view"]} for v in VERSIONS],
    indirect=True,
)
def test_permissions(fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary) -> None:
    photo = fake_library.find("Kinkaku-ji.jpg")
    assert api.get(f"/assets/{photo.id}").status_code == 200
    albums = api.get("/albums")
    assert_error(fake_immich, albums, 403, "Missing required permission: album.read")
    original = api.get(f"/assets/{photo.id}/original")
    if fake_immich.version_info >= (1, 137, 0):
        assert_error(fake_immich, original, 403, "Missing required permission: asset.download")
    else:  # before v1.137 downloads did not check a permission
        assert original.status_code == 200
    me = api.get("/api-keys/me")
    if fake_immich.version_info >= (1, 139, 0):
        assert me.json()["permissions"] == ["asset.read", "asset.view"]
    else:  # routed to /api-keys/{id}
        assert_validation(fake_immich, me, "id")


@ALL
def test_unknown_and_inaccessible_ids_are_400(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    for path, permission in [
        ("", "asset.read"),
        ("/original", "asset.download"),
        ("/thumbnail", "asset.view"),
        ("/video/playback", "asset.view"),
    ]:
        assert_error(
            fake_immich,
            api.get(f"/assets/{MISSING}{path}"),
            400,
            f"Not found or no {permission} access",
        )
    locked = fake_library.find("private.jpg")
    assert api.get(f"/assets/{locked.id}").status_code == 400
    # the friend's photo is readable only because it sits in an album shared with us
    friend = fake_library.find("friend photo 1.jpg")
    assert api.get(f"/assets/{friend.id}").json()["ownerId"] == fake_library.other.id
    assert_error(
        fake_immich, api.get(f"/albums/{MISSING}"), 400, "Not found or no album.read access"
    )
    assert_validation(fake_immich, api.get("/assets/not-a-uuid"), "id")
    v1_uuid = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    r = api.get(f"/assets/{v1_uuid}")
    if v3(fake_immich):
        assert_validation(fake_immich, r, "id")
    else:
        assert_error(fake_immich, r, 400, "Not found or no asset.read access")
    unknown = api.get("/nothing/here")
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "Cannot GET /api/nothing/here"


# -- search ---------------------------------------------------------------------------


@ALL
def test_metadata_paging_across_boundaries(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    expected = desc(visible_by_default(fake_library, fake_immich.version_info))
    assert len(expected) > 50
    seen: list[str] = []
    page: str | None = "1"
    pages = 0
    while page is not None:
        r = api.post("/search/metadata", json={"page": int(page), "size": 7, "withExif": True})
        result = r.json()["assets"]
        assert result["total"] == result["count"] == len(result["items"])
        assert result["nextPage"] is None or result["nextPage"] == str(int(page) + 1)
        seen += [item["id"] for item in result["items"]]
        sizes = {i["id"]: i["exifInfo"]["fileSizeInByte"] for i in result["items"]}
        assert sizes == {i: fake_library.assets[i].size for i in sizes}
        page = result["nextPage"]
        pages += 1
    assert seen == expected  # every asset once, in (fileCreatedAt, id) desc order
    assert pages == -(-len(expected) // 7)
    ascending = search_all(api, {"order": "asc"}, size=10)
    assert [a["id"] for a in ascending] == expected[::-1]
    beyond = api.post("/search/metadata", json={"page": pages + 1, "size": 7}).json()["assets"]
    assert beyond["items"] == [] and beyond["nextPage"] is None


@ALL
def test_metadata_validation(fake_immich: FakeImmich, api: httpx.Client) -> None:
    assert api.post("/search/metadata", json={"size": 1000}).status_code == 200
    assert_validation(fake_immich, api.post("/search/metadata", json={"size": 1001}), "size")
    assert_validation(fake_immich, api.post("/search/metadata", json={"size": 0}), "size")
    assert_validation(fake_immich, api.post("/search/metadata", json={"page": 0}), "page")
    assert_validation(fake_immich, api.post("/search/metadata", json={"type": "PHOTO"}), "type")
    zero = api.post("/search/metadata", json={"rating": 0})
    if v3(fake_immich):
        assert_validation(fake_immich, zero, "rating")
    else:
        assert zero.status_code == 200


@ALL
def test_metadata_visibility_and_trash(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    default = {a["id"] for a in search_all(api, {})}
    archived = {a.id for a in mine(fake_library) if a.visibility == "archive" and not a.is_trashed}
    hidden = {a.id for a in mine(fake_library) if a.visibility == "hidden"}
    trashed = {a.id for a in mine(fake_library) if a.is_trashed and a.visibility == "timeline"}
    assert archived and hidden and trashed
    if v3(fake_immich):
        assert archived <= default and hidden <= default
    else:
        assert not (archived & default) and not (hidden & default)
    assert not (trashed & default)
    only_archive = {a["id"] for a in search_all(api, {"visibility": "archive"})}
    assert only_archive == archived
    with_deleted = {
        a["id"] for a in search_all(api, {"visibility": "timeline", "withDeleted": True})
    }
    assert trashed <= with_deleted
    trash = search_all(api, {"visibility": "timeline", "trashedAfter": "1970-01-01T00:00:00Z"})
    assert {a["id"] for a in trash} == trashed
    assert all(a["isTrashed"] for a in trash)
    locked = fake_library.find("private.jpg").id
    assert locked not in default | with_deleted


@ALL
def test_metadata_filters(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    lib = fake_library
    base = {"visibility": "timeline"}
    timeline = [a for a in mine(lib) if a.visibility == "timeline" and not a.is_trashed]

    def ids(body: dict[str, Any]) -> set[str]:
        return {a["id"] for a in search_all(api, {**base, **body})}

    assert ids({"type": "VIDEO"}) == {a.id for a in timeline if a.type == "VIDEO"}
    assert ids({"isFavorite": True}) == {a.id for a in timeline if a.is_favorite}
    noel = ids({"originalFileName": "ete a noel"})  # case- and accent-insensitive substring
    assert {
        lib.find(unicodedata.normalize(f, "Été à Noël 🎄.jpg")).id for f in ("NFC", "NFD")
    } == noel
    kyoto = next(t for t in lib.tags.values() if t.value == "Travel/Japan/Kyoto")
    travel = next(t for t in lib.tags.values() if t.value == "Travel")
    in_kyoto = ids({"tagIds": [kyoto.id]})
    assert lib.find("Kinkaku-ji.jpg").id in in_kyoto
    assert in_kyoto <= ids({"tagIds": [travel.id]})  # descendant tags count
    alice = next(p for p in lib.people.values() if p.name == "Alice")
    assert ids({"personIds": [alice.id]}) == {a.id for a in timeline if alice.id in a.person_ids}
    shared = lib.album_named("Shared with me")
    in_album = {a["id"] for a in search_all(api, {"albumIds": [shared.id]})}
    assert in_album == set(shared.asset_ids)  # other members' assets included
    photo = lib.find("Kinkaku-ji.jpg")
    checksum = lib.checksum(photo.id)
    assert ids({"checksum": checksum}) == {photo.id}
    assert ids({"checksum": base64.b64decode(checksum).hex()}) == {photo.id}
    assert ids({"id": photo.id}) == {photo.id}
    start = datetime(2019, 1, 1, tzinfo=UTC)
    end = datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC)
    window = ids({"takenAfter": start.isoformat(), "takenBefore": end.isoformat()})
    assert window == {a.id for a in timeline if start <= a.file_created_at <= end}
    exact = ids(
        {
            "takenAfter": photo.file_created_at.isoformat(),
            "takenBefore": photo.file_created_at.isoformat(),
        }
    )
    assert photo.id in exact  # both ends inclusive


@ALL
def test_search_and_asset_statistics(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    own = [a for a in mine(fake_library) if a.visibility in ("timeline", "archive")]
    live = [a for a in own if not a.is_trashed]
    stats = api.get("/assets/statistics").json()
    assert stats == {
        "images": sum(a.type == "IMAGE" for a in live),
        "videos": sum(a.type == "VIDEO" for a in live),
        "total": len(live),
    }
    assert api.get("/assets/statistics", params={"isTrashed": "true"}).json()["total"] == sum(
        a.is_trashed for a in own
    )
    total = api.post("/search/statistics", json={"type": "IMAGE", "visibility": "timeline"})
    assert total.json() == {
        "total": len(search_all(api, {"type": "IMAGE", "visibility": "timeline"}))
    }


@pytest.mark.parametrize(
    "fake_immich", [{"version": v, "smart_search": True} for v in VERSIONS], indirect=True
)
def test_smart_search_ranks_without_cut_off(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    r = api.post("/search/smart", json={"query": "golden temple kyoto", "size": 5})
    first = r.json()["assets"]["items"]
    assert first[0]["originalFileName"] == "Kinkaku-ji.jpg"
    everything: list[str] = []
    page: str | None = "1"
    while page is not None:
        result = api.post(
            "/search/smart", json={"query": "golden temple kyoto", "page": int(page), "size": 50}
        ).json()["assets"]
        everything += [i["id"] for i in result["items"]]
        page = result["nextPage"]
    assert len(everything) == len(set(everything))
    assert set(everything) == {
        a.id for a in visible_by_default(fake_library, fake_immich.version_info)
    }
    assert_validation(fake_immich, api.post("/search/smart", json={}), "query")


@ALL
def test_smart_search_disabled(fake_immich: FakeImmich, api: httpx.Client) -> None:
    r = api.post("/search/smart", json={"query": "cat"})
    assert_error(fake_immich, r, 400, "Smart search is not enabled")


# -- assets -----------------------------------------------------------------------------


@ALL
def test_asset_info_is_the_full_dto(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    photo = fake_library.find("Kinkaku-ji.jpg")
    info = api.get(f"/assets/{photo.id}").json()
    assert info["owner"]["id"] == fake_library.me.id
    assert [t["value"] for t in info["tags"]] == ["Travel/Japan/Kyoto"]
    assert [p["name"] for p in info["people"]] == ["Alice"]
    assert info["exifInfo"]["fileSizeInByte"] == photo.size
    assert info["exifInfo"]["city"] == "Kyoto"
    assert info["checksum"] == fake_library.checksum(photo.id)
    assert ("deviceAssetId" in info) == (not v3(fake_immich))
    video = next(a for a in mine(fake_library) if a.type == "VIDEO" and a.visibility == "timeline")
    durations = (api.get(f"/assets/{video.id}").json()["duration"], info["duration"])
    if v3(fake_immich):
        assert durations == (video.duration_ms, None)
    else:
        assert durations == ("0:00:02.000000", "0:00:00.00000")
    still = fake_library.find("IMG_5000.JPG")
    motion = api.get(f"/assets/{still.live_photo_video_id}").json()
    assert motion["visibility"] == "hidden" and motion["type"] == "VIDEO"


def test_originals_match_checksums_and_decode(api: httpx.Client, fake_library: FakeLibrary) -> None:
    kinds_seen = set()
    for asset in mine(fake_library):
        if asset.visibility == "locked" or asset.size > FILE_THRESHOLD:
            continue
        r = api.get(f"/assets/{asset.id}/original")
        assert r.status_code == 200
        assert len(r.content) == asset.size == int(r.headers["content-length"])
        digest = base64.b64encode(hashlib.sha1(r.content).digest()).decode()
        assert digest == fake_library.checksum(asset.id)
        assert r.headers["content-type"] == asset.mime_type
        if asset.type == "IMAGE" and asset.kind not in kinds_seen:
            kinds_seen.add(asset.kind)
            image = Image.open(io.BytesIO(r.content))
            image.load()
            taken = image.getexif().get_ifd(0x8769)[0x9003]
            assert taken == asset.local_date_time.strftime("%Y:%m:%d %H:%M:%S")
    assert kinds_seen == {"jpeg", "png", "webp"}


def test_large_original_is_sent_whole(
    api: httpx.Client, fake_immich: FakeImmich, fake_library: FakeLibrary
) -> None:
    big = fake_library.find("large-video.mp4")
    assert big.size > FILE_THRESHOLD
    digest = hashlib.sha1()
    with api.stream("GET", f"/assets/{big.id}/original") as r:
        for chunk in r.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == fake_library.sha1(big.id)
    assert fake_immich.bytes_sent(f"/api/assets/{big.id}/") == big.size


def queued(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not yet read."""
    count = array.array("i", [0])
    fcntl.ioctl(sock, termios.FIONREAD, count)
    return count[0]


def test_a_download_cut_short_by_the_client_logs_what_was_sent(
    fake_immich: FakeImmich, fake_library: FakeLibrary
) -> None:
    # A reader that stops early (head, a cancelled read-ahead) hangs up mid-body; the
    # log must still count the bytes that went out, not report nothing.
    big = fake_library.find("large-video.mp4")
    host, port = fake_immich.url.removeprefix("http://").split(":")
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect((host, int(port)))
        client.sendall(
            f"GET /api/assets/{big.id}/original HTTP/1.1\r\nHost: x\r\n"
            f"x-api-key: {fake_immich.api_key}\r\n\r\n".encode()
        )
        first = client.recv(1024)
        assert first.startswith(b"HTTP/1.1 200")
        # hang up only once the body is under way
        body = len(first.partition(b"\r\n\r\n")[2])
        poll(lambda: body + queued(client), until=lambda received: received > 0)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = fake_immich.requests[-1]
        if record.bytes_sent < big.size:
            break
        time.sleep(0.05)
    assert 0 < record.bytes_sent < big.size, record


@ALL
def test_ranges(fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary) -> None:
    for asset in (fake_library.find("Kinkaku-ji.jpg"), fake_library.find("large-video.mp4")):
        content = fake_library.content(asset.id)
        size = asset.size
        url = f"/assets/{asset.id}/original"
        r = api.get(url, headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 1000-1999/{size}"
        assert r.headers["content-length"] == "1000"
        assert r.headers["accept-ranges"] == "bytes"
        assert r.content == content[1000:2000]
        assert api.get(url, headers={"Range": "bytes=-100"}).content == content[-100:]
        tail = api.get(url, headers={"Range": f"bytes={size - 10}-"})
        assert (tail.status_code, tail.content) == (206, content[-10:])
        clamped = api.get(url, headers={"Range": f"bytes={size - 5}-{size + 100}"})
        assert clamped.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
        multi = api.get(url, headers={"Range": "bytes=0-9,20-29"})
        assert (multi.status_code, multi.content) == (200, content)
        for past in (f"bytes={size}-", "bytes=99999999999-", "bytes=5000-1000"):
            r = api.get(url, headers={"Range": past})
            assert r.status_code == (404 if v3(fake_immich) else 500), past
            assert r.headers["content-range"] == f"bytes */{size}"
        malformed = api.get(url, headers={"Range": "bytes=abc"})
        assert malformed.status_code == (200 if v3(fake_immich) else 500)


@ALL
def test_head_etag_and_headers(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    asset = fake_library.find("AC/DC live at Wembley.jpg")
    url = f"/assets/{asset.id}/original"
    head = api.head(url)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == asset.size
    etag = head.headers["etag"]
    mtime_ms = int(asset.file_modified_at.timestamp() * 1000)
    assert etag == f'W/"{asset.size:x}-{mtime_ms:x}"'
    assert head.headers["last-modified"] == asset.file_modified_at.strftime(
        "%a, %d %b %Y %H:%M:%S GMT"
    )
    assert (
        head.headers["content-disposition"]
        == "inline; filename*=UTF-8''AC%2FDC%20live%20at%20Wembley.jpg"
    )
    assert "no-transform" in head.headers["cache-control"]
    assert api.get(url, headers={"If-None-Match": etag}).status_code == 304
    stale = api.get(url, headers={"Range": "bytes=0-9", "If-Range": 'W/"0-0"'})
    assert stale.status_code == 200
    ranged_head = api.head(url, headers={"Range": "bytes=0-9"})
    assert ranged_head.status_code == 206 and ranged_head.headers["content-length"] == "10"
    noel = fake_library.find(unicodedata.normalize("NFC", "Été à Noël 🎄.jpg"))
    disposition = api.head(f"/assets/{noel.id}/original").headers["content-disposition"]
    assert (
        disposition
        == "inline; filename*=UTF-8''%C3%89t%C3%A9%20%C3%A0%20No%C3%ABl%20%F0%9F%8E%84.jpg"
    )


@ALL
def test_thumbnails(fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary) -> None:
    photo = fake_library.find("Kinkaku-ji.jpg")
    video = fake_library.find("large-video.mp4")
    bodies = set()
    for asset in (photo, video):
        for size, content_type, fmt in (
            ("thumbnail", "image/webp", "WEBP"),
            ("preview", "image/jpeg", "JPEG"),
        ):
            r = api.get(f"/assets/{asset.id}/thumbnail", params={"size": size})
            assert r.headers["content-type"] == content_type
            image = Image.open(io.BytesIO(r.content))
            image.load()
            assert image.format == fmt
            bodies.add(r.content)
    assert len(bodies) == 4  # unique per asset
    assert api.get(f"/assets/{photo.id}/thumbnail").headers["content-type"] == "image/webp"
    full = api.get(f"/assets/{photo.id}/thumbnail", params={"size": "fullsize"})
    assert full.status_code == 302 and full.headers["location"].startswith("original")
    keyed = api.get(
        f"/assets/{photo.id}/thumbnail",
        params={"size": "fullsize", "apiKey": fake_immich.api_key},
        headers={"x-api-key": ""},
    )
    assert keyed.status_code == 302 and "apiKey" not in keyed.headers["location"]
    followed = api.get(
        f"/assets/{photo.id}/thumbnail", params={"size": "fullsize"}, follow_redirects=True
    )
    assert followed.content == fake_library.content(photo.id)
    video_full = api.get(f"/assets/{video.id}/thumbnail", params={"size": "fullsize"})
    assert (
        video_full.headers["location"].startswith("thumbnail?")
        and "size=preview" in video_full.headers["location"]
    )
    original = api.get(f"/assets/{photo.id}/thumbnail", params={"size": "original"})
    if v3(fake_immich):
        assert original.status_code == 302 and original.headers["location"].startswith("original")
    else:
        assert_validation(fake_immich, original, "size")


@ALL
def test_video_playback(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    video = next(
        a
        for a in mine(fake_library)
        if a.type == "VIDEO" and a.extension == ".mp4" and a.size <= FILE_THRESHOLD
    )
    r = api.get(f"/assets/{video.id}/video/playback", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["content-type"] == "video/mp4"
    assert r.content == fake_library.content(video.id)[:100]
    assert r.content[4:8] == b"ftyp"
    photo = fake_library.find("Kinkaku-ji.jpg")
    assert api.get(f"/assets/{photo.id}/video/playback").status_code == 404


def test_media_is_decodable_and_exact() -> None:
    info = fake_media.MediaInfo(uid=b"u" * 20, taken_local="2021:02:03 04:05:06", offset="+09:00")
    for kind in ("jpeg", "png", "webp"):
        size = fake_media.adjust_size(kind, 200_001)
        data = fake_media.render(kind, info, size, salt=5)
        assert len(data) == size
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.getexif().get_ifd(0x8769)[0x9011] == "+09:00"
    mp4 = fake_media.render("mp4", info, fake_media.adjust_size("mp4", 50_000), salt=1)
    boxes, pos = [], 0
    while pos < len(mp4):  # top-level boxes tile the file exactly
        length, kind = struct.unpack(">I4s", mp4[pos : pos + 8])
        boxes.append(kind)
        pos += length
    assert pos == len(mp4) and boxes[0] == b"ftyp" and b"moov" in boxes and b"uuid" in boxes


# -- collections ---------------------------------------------------------------------


@ALL
def test_albums_per_version(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    lib = fake_library
    owned = {a.id for a in lib.albums.values() if a.owner_id == lib.me.id}
    shared_in = lib.album_named("Shared with me")
    names = [a["albumName"] for a in api.get("/albums").json()]
    assert names.count("Family") == 2 and "Best of/Favourites" in names
    if v3(fake_immich):
        default = {a["id"] for a in api.get("/albums").json()}
        assert default == owned | {shared_in.id}
        assert {a["id"] for a in api.get("/albums", params={"isOwned": "false"}).json()} == {
            shared_in.id
        }
        detail = api.get(f"/albums/{shared_in.id}").json()
        assert "assets" not in detail and "owner" not in detail
        assert detail["albumUsers"][0] == {"user": detail["albumUsers"][0]["user"], "role": "owner"}
        assert detail["albumUsers"][0]["user"]["id"] == lib.other.id
    else:
        assert {a["id"] for a in api.get("/albums").json()} == owned
        shared = {a["id"] for a in api.get("/albums", params={"shared": "true"}).json()}
        assert shared == {a.id for a in lib.albums.values() if a.members}
        detail = api.get(f"/albums/{shared_in.id}").json()
        assert {a["id"] for a in detail["assets"]} == set(shared_in.asset_ids)
        assert detail["ownerId"] == lib.other.id
        lean = api.get(f"/albums/{shared_in.id}", params={"withoutAssets": "true"}).json()
        assert lean["assets"] == []
    assert detail["assetCount"] == len(shared_in.asset_ids)


@ALL
def test_people_and_tags(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    first = api.get("/people", params={"size": 2}).json()
    assert len(first["people"]) == 2 and first["hasNextPage"] is True
    everyone = api.get("/people", params={"withHidden": "true"}).json()
    names = [p["name"] for p in everyone["people"]]
    assert "" in names  # the unnamed cluster (3+ faces)
    assert everyone["hidden"] == 1 and names[-1] == "Hidden Harry"
    visible = api.get("/people").json()
    assert "Hidden Harry" not in [p["name"] for p in visible["people"]]
    person = everyone["people"][0]
    thumb = api.get(f"/people/{person['id']}/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg"
    Image.open(io.BytesIO(thumb.content)).load()
    tags = {t["value"]: t for t in api.get("/tags").json()}
    assert tags["Travel/Japan/Kyoto"]["name"] == "Kyoto"
    assert tags["Travel/Japan/Kyoto"]["parentId"] == tags["Travel/Japan"]["id"]
    assert "parentId" not in tags["Travel"]


@ALL
def test_timeline(fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary) -> None:
    countable = [
        a
        for a in mine(fake_library)
        if a.visibility in ("timeline", "archive") and not a.is_trashed
    ]
    buckets = api.get("/timeline/buckets").json()
    assert sum(b["count"] for b in buckets) == len(countable)
    assert [b["timeBucket"] for b in buckets] == sorted(
        (b["timeBucket"] for b in buckets), reverse=True
    )
    bucket = buckets[0]
    columns = api.get("/timeline/bucket", params={"timeBucket": bucket["timeBucket"]}).json()
    assert len(columns["id"]) == bucket["count"] == len(columns["fileCreatedAt"])
    month = bucket["timeBucket"][:7]
    assert all(
        fake_library.assets[i].local_date_time.strftime("%Y-%m") == month for i in columns["id"]
    )
    assert ("createdAt" in columns) == v3(fake_immich)


# -- faults and the request log ----------------------------------------------------------


def test_fault_cut_and_truncate(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    url = f"/assets/{asset.id}/original"
    fake_immich.faults.cut_after(1000, path="/api/assets/")
    with pytest.raises(httpx.HTTPError):
        api.get(url)
    assert fake_immich.requests[-1].bytes_sent == 1000
    assert api.get(url).content == fake_library.content(asset.id)  # used up (times=1)
    fake_immich.faults.truncate(times=2, path=url.replace("/assets", "/api/assets"))
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            api.get(url)
    assert fake_immich.requests[-1].bytes_sent == asset.size // 2
    assert api.get(url).status_code == 200
    # a cut longer than the body cannot break it: it stays armed
    fake_immich.faults.cut_after(asset.size, path="/api/assets/")
    assert api.get(url).content == fake_library.content(asset.id)
    assert [rule.kind for rule in fake_immich.faults.active()] == ["cut"]
    fake_immich.faults.clear()
    # a path filter leaves other paths alone
    fake_immich.faults.cut_after(10, path="/api/people")
    assert api.get(url).status_code == 200
    fake_immich.faults.clear()
    assert api.get("/people").status_code == 200


def test_fault_status_retry_after_and_delay(fake_immich: FakeImmich, api: httpx.Client) -> None:
    fake_immich.faults.fail(503, times=2, retry_after=3)
    for _ in range(2):
        r = api.get("/server/ping")
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert api.get("/server/ping").status_code == 200
    fake_immich.faults.fail(429, path="/api/users")
    assert api.get("/server/ping").status_code == 200
    assert api.get("/users/me").status_code == 429
    fake_immich.faults.delay(0.3, times=1)
    started = time.monotonic()
    api.get("/server/ping")
    assert time.monotonic() - started >= 0.3


def test_fault_refuse_connections_and_revoke(fake_immich: FakeImmich, api: httpx.Client) -> None:
    fake_immich.faults.refuse_connections()
    with pytest.raises(httpx.ConnectError), httpx.Client() as fresh:
        fresh.get(fake_immich.url + "/api/server/ping")
    with pytest.raises(httpx.TransportError):  # kept-alive connections were dropped too
        api.get("/server/ping")
    fake_immich.faults.resume_connections()
    assert api.get("/server/ping").status_code == 200
    fake_immich.faults.revoke_key()
    assert_error(fake_immich, api.get("/users/me"), 401, "Invalid API key")
    fake_immich.faults.restore_key()
    assert api.get("/users/me").status_code == 200


def test_fault_slow_body_and_stall(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    url = f"/assets/{asset.id}/original"
    rate = asset.size * 4  # about a quarter of a second for the whole body
    fake_immich.faults.slow_body(rate, times=1, path="/api/assets/")
    started = time.monotonic()
    assert api.get(url).content == fake_library.content(asset.id)
    assert time.monotonic() - started >= 0.2
    fake_immich.faults.stall(1000, 1.0, path="/api/assets/")
    with pytest.raises(httpx.ReadTimeout):
        api.get(url, timeout=httpx.Timeout(5.0, read=0.3))
    assert api.get(url).content == fake_library.content(asset.id)


def test_fault_ignore_range(
    fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary
) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    fake_immich.faults.ignore_range(times=1)
    r = api.get(f"/assets/{asset.id}/original", headers={"Range": "bytes=0-9"})
    assert r.status_code == 200 and len(r.content) == asset.size
    r = api.get(f"/assets/{asset.id}/original", headers={"Range": "bytes=0-9"})
    assert r.status_code == 206


def test_request_log(fake_immich: FakeImmich, api: httpx.Client, fake_library: FakeLibrary) -> None:
    asset = fake_library.find("Kinkaku-ji.jpg")
    api.get("/server/ping")
    fake_immich.reset_log()
    assert fake_immich.count() == 0
    api.get(f"/assets/{asset.id}/original", headers={"Range": "bytes=10-19"})
    api.get(f"/assets/{asset.id}/original", params={"apiKey": fake_immich.api_key})
    api.post("/search/metadata", json={"size": 1})
    records = fake_immich.requests.snapshot()
    assert [(r.method, r.status) for r in records] == [("GET", 206), ("GET", 200), ("POST", 200)]
    assert records[0].range == "bytes=10-19" and records[0].bytes_sent == 10
    assert "apiKey=***" in records[1].query and fake_immich.api_key not in records[1].query
    assert fake_immich.count("GET", "/api/assets/") == 2
    assert fake_immich.count(path_prefix="/api/search") == 1
    assert fake_immich.bytes_sent("/api/assets/") == 10 + asset.size


# -- binding, determinism, scale, mutations, CLI --------------------------------------------


def test_only_loopback(fake_library: FakeLibrary) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "example.org", "::"):
        with pytest.raises(ValueError, match="loopback"):
            FakeImmich(fake_library, host=host)
    if socket.has_ipv6:
        try:
            server = FakeImmich(fake_library, host="::1").start()
        except OSError:
            pytest.skip("no IPv6 loopback here")
        with server, httpx.Client() as client:
            assert server.url.startswith("http://[::1]:")
            assert client.get(server.url + "/api/server/ping").json() == {"res": "pong"}


def test_generation_is_deterministic() -> None:
    a = FakeLibrary.generate(seed=7, photos=30, videos=2, large_video_bytes=None)
    b = FakeLibrary.generate(seed=7, photos=30, videos=2, large_video_bytes=None)
    c = FakeLibrary.generate(seed=8, photos=30, videos=2, large_video_bytes=None)

    def fingerprint(lib: FakeLibrary) -> list[tuple[str, str, int, str]]:
        return sorted(
            (x.id, x.original_file_name, x.size, lib.checksum(x.id)) for x in lib.assets.values()
        )

    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert [x.name for x in a.albums.values()] == [x.name for x in b.albums.values()]
    checksums = [lib_checksum for *_, lib_checksum in fingerprint(a)]
    assert len(set(checksums)) == len(checksums)  # every asset has its own bytes


def test_large_library_pages_without_files() -> None:
    lib = FakeLibrary.generate(seed=1, photos=100_000, videos=0, large_video_bytes=None)
    assert len(lib.assets) > 100_000
    with (
        FakeImmich(lib) as srv,
        httpx.Client(base_url=srv.url + "/api", headers={"x-api-key": srv.api_key}) as api,
    ):
        first = api.post("/search/metadata", json={"size": 1000}).json()["assets"]
        assert first["count"] == 1000 and first["nextPage"] == "2"
        far = api.post("/search/metadata", json={"size": 1000, "page": 90}).json()["assets"]
        assert far["count"] == 1000
        assert not {i["id"] for i in first["items"]} & {i["id"] for i in far["items"]}
        assert api.get("/assets/statistics").json()["total"] > 90_000
    assert lib._cache_dir is None  # nothing was written to disk


def test_mutations_show_up(
    mutable_immich: FakeImmich, mapi: httpx.Client, mutable_library: FakeLibrary
) -> None:
    lib = mutable_library
    before = datetime.now(UTC) - timedelta(seconds=1)
    added = lib.add_asset("brand new.jpg", taken=datetime(2030, 1, 1, tzinfo=UTC))
    top = mapi.post("/search/metadata", json={"size": 1}).json()["assets"]["items"][0]
    assert top["id"] == added.id
    changed = mapi.post("/search/metadata", json={"updatedAfter": before.isoformat()}).json()
    assert [i["id"] for i in changed["assets"]["items"]] == [added.id]

    lib.trash(added.id)
    assert mapi.get(f"/assets/{added.id}").json()["isTrashed"] is True
    default = {a["id"] for a in search_all(mapi, {})}
    assert added.id not in default
    lib.restore(added.id)
    lib.set_favorite(added.id, True)
    assert mapi.get(f"/assets/{added.id}").json()["isFavorite"] is True

    old = lib.checksum(added.id)
    old_updated = mapi.get(f"/assets/{added.id}").json()["updatedAt"]
    lib.change_content(added.id)
    info = mapi.get(f"/assets/{added.id}").json()
    assert info["checksum"] != old and info["updatedAt"] > old_updated
    body = mapi.get(f"/assets/{added.id}/original").content
    assert base64.b64encode(hashlib.sha1(body).digest()).decode() == info["checksum"]

    album = lib.album_named("Empty album")
    lib.add_to_album(album.id, [added.id])
    assert {a["id"] for a in search_all(mapi, {"albumIds": [album.id]})} == {added.id}
    lib.delete(added.id)
    assert mapi.get(f"/assets/{added.id}").status_code == 400
    assert added.id not in {a["id"] for a in search_all(mapi, {"withDeleted": True})}


def test_gzip_json(fake_immich: FakeImmich) -> None:
    with httpx.Client(
        base_url=fake_immich.url + "/api", headers={"x-api-key": fake_immich.api_key}
    ) as api:
        r = api.post("/search/metadata", json={"size": 50})
        assert r.headers["content-encoding"] == "gzip"
        assert r.json()["assets"]["count"] == 50


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    exe = Path(sys.executable).with_name("immichfs")  # the installed command
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "immichfs"]
    proc = subprocess.Popen(
        [
            *command,
            "fake-server",
            "--port",
            "0",
            "--photos",
            "20",
            "--videos",
            "1",
            "--large-video-mb",
            "0",
            "--version",
            "3.1.0",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        env = dict(line.split("=", 1) for line in ready.read_text().splitlines())
        assert env["IMMICH_API_KEY"].startswith("fake-immich-key-")
        with httpx.Client(
            base_url=env["IMMICH_URL"] + "/api", headers={"x-api-key": env["IMMICH_API_KEY"]}
        ) as api:
            assert api.get("/server/version").json()["major"] == 3
            assert api.get("/users/me").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out.splitlines()[0].startswith("IMMICH_URL=http://127.0.0.1:")
    assert not ready.exists()
