"""The Immich connector over real HTTP against the fake Immich server.

Configuration, URL handling and the parsing of error bodies are tested as pure
logic first; everything the server owns (paging, statuses, ranges, faults) is
tested against ``immichfs_fake.FakeImmich`` on loopback. httpx.MockTransport
is used only where the fake must not be bent: a server answering garbage JSON,
ignoring a Range header, or redirecting to another origin.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import tracemalloc
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio
from netutil import free_port

from immichfs import errors
from immichfs.client.connector import ImmichConnector
from immichfs.client.http import (
    error_message,
    normalise_url,
    parse_content_range,
    parse_retry_after,
    status_error,
)
from immichfs.client.retry import RetryPolicy
from immichfs.model import Asset
from immichfs_fake import FakeImmich, FakeLibrary

KEY = "fake-test-" + "Q" * 30


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://immich.local:2283", "http://immich.local:2283"),
        ("http://immich.local:2283/", "http://immich.local:2283"),
        ("http://immich.local:2283///", "http://immich.local:2283"),
        ("http://immich.local:2283/api", "http://immich.local:2283"),
        ("http://immich.local:2283/api/", "http://immich.local:2283"),
        ("https://host/immich", "https://host/immich"),
        ("https://host/immich/api/", "https://host/immich"),
        ("HTTPS://host/immich/", "https://host/immich"),
        ("  http://10.0.0.2:2283 ", "http://10.0.0.2:2283"),
        ("http://immich.local:2283/\n", "http://immich.local:2283"),  # a pasted newline
        ("http://[::1]:2283", "http://[::1]:2283"),
    ],
)
def test_url_normalisation(given: str, expected: str) -> None:
    assert normalise_url(given, "IMMICH_URL") == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        (None, "IMMICH_URL is not set"),
        ("", "url argument is not set"),
        ("immich.local:2283", "no scheme"),
        ("ftp://immich.local", "scheme must be http or https"),
        ("http://immich local:2283", "spaces"),
        ("http://:2283", "no host"),
        ("http://immich.local:99999", "not a valid URL"),
        ("http://immich.local:2283/?x=1", "query"),
        ("http://immich.local/#top", "fragment"),
    ],
)
def test_bad_urls_name_the_variable(given: str | None, fragment: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        ImmichConnector(given, KEY) if given is not None else ImmichConnector(
            env={"IMMICH_API_KEY": KEY}
        )
    message = str(info.value)
    assert fragment in message
    assert ("IMMICH_URL" in message) or ("url argument" in message)


def test_url_with_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(errors.ConfigError) as info:
        ImmichConnector("http://admin:hunter2secret@immich.local", KEY)
    assert "hunter2secret" not in str(info.value)
    assert "user name or password" in str(info.value)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "is not set"),
        ("   ", "is not set"),
        ("abc def", "whitespace"),
        ("abcd\nefgh", "whitespace"),
        ("abcd\tefgh", "whitespace"),
        ("clé-secrète", "characters"),
        ("abc\x00def", "characters"),
    ],
)
def test_bad_keys_name_the_variable_and_never_echo(key: str, fragment: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        ImmichConnector(env={"IMMICH_URL": "http://127.0.0.1:1", "IMMICH_API_KEY": key})
    message = str(info.value)
    assert fragment in message
    if key.strip():
        assert key.strip() not in message
        assert "IMMICH_API_KEY" in message


def test_missing_key_names_both_variables() -> None:
    with pytest.raises(errors.ConfigError, match="IMMICH_API_KEY_FILE"):
        ImmichConnector(env={"IMMICH_URL": "http://127.0.0.1:1"})


def test_arguments_are_named_as_arguments() -> None:
    with pytest.raises(errors.ConfigError, match="url argument"):
        ImmichConnector("nonsense", KEY)
    with pytest.raises(errors.ConfigError, match="api_key argument"):
        ImmichConnector("http://127.0.0.1:1", "a b")


def test_environment_and_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    immich = ImmichConnector.from_env(
        env={"IMMICH_URL": "http://127.0.0.1:9/api/", "IMMICH_API_KEY_FILE": str(key_file)}
    )
    assert immich.url == "http://127.0.0.1:9"
    # a key given directly wins over the file
    other = ImmichConnector(
        env={
            "IMMICH_URL": "http://127.0.0.1:9",
            "IMMICH_API_KEY": "direct-key-1234",
            "IMMICH_API_KEY_FILE": str(tmp_path / "missing"),
        }
    )
    assert other.url == "http://127.0.0.1:9"
    with pytest.raises(errors.ConfigError, match="does not exist"):
        ImmichConnector(
            env={"IMMICH_URL": "http://127.0.0.1:9", "IMMICH_API_KEY_FILE": str(tmp_path / "x")}
        )


def test_other_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="timeout"):
        ImmichConnector("http://127.0.0.1:9", KEY, timeout=0)
    with pytest.raises(errors.ConfigError, match="max_connections"):
        ImmichConnector("http://127.0.0.1:9", KEY, max_connections=0)
    with pytest.raises(errors.ConfigError, match="CA certificate"):
        ImmichConnector("https://127.0.0.1:9", KEY, verify=str(tmp_path / "no-ca.pem"))
    ImmichConnector("https://127.0.0.1:9", KEY, verify=False)


def test_repr_and_str_hide_the_key() -> None:
    immich = ImmichConnector("http://127.0.0.1:9", KEY)
    assert KEY not in repr(immich)
    assert KEY not in str(immich)
    assert "127.0.0.1:9" in repr(immich)
    assert KEY not in repr(vars(immich).get("_client"))


# -- pure helpers -----------------------------------------------------------------


def test_error_bodies_of_both_shapes() -> None:
    v2 = {
        "message": ["id must be a UUID", "size must not be greater than 1000"],
        "error": "Bad Request",
        "statusCode": 400,
        "correlationId": "abc",
    }
    assert error_message(json.dumps(v2).encode()) == (
        "id must be a UUID; size must not be greater than 1000"
    )
    v3 = {
        "message": "Validation failed",
        "errors": [{"code": "too_big", "path": ["size"], "message": "Too big"}],
    }
    assert error_message(json.dumps(v3).encode()) == "Validation failed: size: Too big"
    assert error_message(b"<html>502 Bad Gateway</html>") == ""
    assert error_message(b"") == ""


def _error(
    status: int, body: Any, *, about_id: bool = False, headers: dict[str, str] | None = None
) -> Exception:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return status_error(
        status=status,
        reason="Reason",
        body=raw,
        headers=headers or {},
        what="GET /api/x",
        base_url="http://h:2283",
        about_id=about_id,
    )


def test_status_translation() -> None:
    auth = _error(401, {"message": "Invalid API key"})
    assert isinstance(auth, errors.AuthenticationError)
    assert str(auth) == (
        "the API key was rejected by http://h:2283 (401 Invalid API key) — check IMMICH_API_KEY"
    )
    denied = _error(403, {"message": "Missing required permission: asset.download"})
    assert isinstance(denied, errors.PermissionDenied)
    assert denied.permission == "asset.download"
    assert str(denied).startswith("the key lacks permission asset.download — ")
    missing = _error(400, {"message": "Not found or no asset.read access"})
    assert isinstance(missing, errors.NotFound) and missing.status == 400
    assert isinstance(_error(400, {"message": "Invalid UUID"}, about_id=True), errors.NotFound)
    bad = _error(400, {"message": ["size must not be greater than 1000"]})
    assert isinstance(bad, errors.BadRequest)
    assert "size must not be greater than 1000" in str(bad)
    assert isinstance(_error(404, {"message": "Not Found"}), errors.NotFound)
    limited = _error(429, b"", headers={"retry-after": "7"})
    assert isinstance(limited, errors.RateLimited) and limited.retry_after == 7
    server = _error(503, b"", headers={"retry-after": "2"})
    assert isinstance(server, errors.ServerError) and server.retry_after == 2
    assert isinstance(server, errors.TransientError)
    assert isinstance(_error(302, b"", headers={"location": "/login"}), errors.ProtocolError)


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90)
    assert parse_retry_after("12") == 12
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_content_range_parsing() -> None:
    assert parse_content_range("bytes 0-99/1000") == (0, 99, 1000)
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    assert parse_content_range("bytes 9-5/10") is None
    assert parse_content_range("bytes 0-10/10") is None
    assert parse_content_range("bytes */10") is None


# -- against a scripted transport (server misbehaviour the fake must not fake) ------


def _scripted(handler: Any) -> ImmichConnector:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/api/server/version"):
            return httpx.Response(200, json={"major": 2, "minor": 7, "patch": 5})
        result: httpx.Response = handler(request)
        return result

    return ImmichConnector(
        "http://immich.test:2283/immich", KEY, transport=httpx.MockTransport(route)
    )


async def test_malformed_json_is_a_protocol_error() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, text='{"images": 1, "videos"', headers={"content-type": "application/json"}
        )

    async with _scripted(handler) as immich:
        with pytest.raises(errors.ProtocolError, match="not valid JSON"):
            await immich.get_asset_statistics()
    # the reverse-proxy prefix is kept, the key only travels in its header
    assert seen[0].url.path == "/immich/api/assets/statistics"
    assert seen[0].headers["x-api-key"] == KEY
    assert KEY not in str(seen[0].url)


async def test_html_instead_of_json_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>login</html>", headers={"content-type": "text/html"})

    async with _scripted(handler) as immich:
        with pytest.raises(errors.ProtocolError, match=r"is http://immich\.test:2283/immich an"):
            await immich.get_tags()


async def test_oversized_json_is_refused_before_reading() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"[]", headers={"content-length": str(2**40)})

    async with _scripted(handler) as immich:
        with pytest.raises(errors.ProtocolError, match="too large"):
            await immich.get_tags()


async def test_wrong_shapes_are_protocol_errors() -> None:
    answers = {
        "/immich/api/assets/statistics": {"images": "many"},
        "/immich/api/search/metadata": {"assets": {"items": [], "nextPage": "x"}},
        "/immich/api/tags": {"not": "a list"},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    async with _scripted(handler) as immich:
        with pytest.raises(errors.ProtocolError):
            await immich.get_asset_statistics()
        with pytest.raises(errors.ProtocolError, match="nextPage"):
            await immich.search_metadata({})
        with pytest.raises(errors.ProtocolError):
            await immich.get_tags()


async def test_a_200_to_a_ranged_request_is_never_served_as_the_range() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["range"] == "bytes=10-19"
        return httpx.Response(200, content=bytes(100))

    async with _scripted(handler) as immich:
        with pytest.raises(errors.ProtocolError, match="ignored the range"):
            async with immich.stream_full_resolution_file("a1", 10, 19) as chunks:
                async for _ in chunks:
                    pytest.fail("no byte of a 200 may be served as a range")


async def test_a_206_for_another_range_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=bytes(10), headers={"content-range": "bytes 0-9/100"})

    async with _scripted(handler) as immich:
        with pytest.raises(errors.ProtocolError, match="not the range asked for"):
            async with immich.stream_full_resolution_file("a1", 10, 19) as chunks:
                async for _ in chunks:
                    pass


async def test_the_key_never_follows_a_redirect_to_another_origin() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "immich.test":
            return httpx.Response(302, headers={"location": "https://cdn.example/x.jpg"})
        return httpx.Response(200, content=b"jpeg", headers={"content-type": "image/jpeg"})

    async with _scripted(handler) as immich:
        data, content_type = await immich.get_thumbnail_response("a1", "fullsize")
    assert (data, content_type) == (b"jpeg", "image/jpeg")
    assert seen[0].headers["x-api-key"] == KEY
    assert seen[1].url.host == "cdn.example"
    assert "x-api-key" not in seen[1].headers


async def test_invalid_ids_never_reach_the_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        pytest.fail(f"unexpected request {request.url}")

    async with _scripted(handler) as immich:
        for bad in ("../server/about", "a/b", "", "x?y"):
            with pytest.raises(errors.NotFound):
                await immich.get_asset_info(bad)


async def test_argument_checks() -> None:
    async with _scripted(lambda r: httpx.Response(500)) as immich:
        with pytest.raises(ValueError, match="size"):
            await immich.get_assets(size=1001)
        with pytest.raises(ValueError, match="size"):
            await immich.get_assets(size=0)
        with pytest.raises(ValueError, match="page"):
            await immich.get_assets(page=-1)
        with pytest.raises(ValueError, match="format"):
            await immich.get_thumbnail("a1", format="PNG")
        with pytest.raises(ValueError, match="size must be one of"):
            await immich.get_thumbnail_response("a1", "huge")
        with pytest.raises(ValueError, match="type"):
            await immich.search_assets("x", type="AUDIO")
        with pytest.raises(ValueError, match="inclusive"):
            async with immich.stream_full_resolution_file("a1", 10, 5):
                pass


async def test_the_retry_loop_retries_only_transient_errors() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise errors.ServerError("boom", status=503)
        return "ok"

    assert await RetryPolicy(base_delay=0.001).call(flaky) == "ok"
    assert len(calls) == 3

    async def broken() -> str:
        calls.append(1)
        raise errors.AuthenticationError("no")

    calls.clear()
    with pytest.raises(errors.AuthenticationError):
        await RetryPolicy(base_delay=0.001).call(broken)
    assert len(calls) == 1


# -- against the fake Immich server, over real HTTP ---------------------------------

VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]


def connect_to(srv: FakeImmich, **kwargs: Any) -> ImmichConnector:
    # no retries: these tests look at how each failure is translated (retries: test_retry.py)
    kwargs.setdefault("retry_policy", None)
    return ImmichConnector(srv.url, srv.api_key, **kwargs)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [str(item["id"]) for item in items]


def timeline_ids(lib: FakeLibrary, *, visibility: str = "timeline", **match: Any) -> list[str]:
    """The key owner's assets Immich lists for ``visibility``, newest first."""
    chosen = [
        a
        for a in lib.sorted_assets()
        if a.owner_id == lib.me.id
        and a.visibility == visibility
        and not a.is_trashed
        and all(getattr(a, k) == v for k, v in match.items())
    ]
    return [a.id for a in reversed(chosen)]


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_connect_reads_the_version_once(fake_immich: FakeImmich) -> None:
    async with connect_to(fake_immich) as immich:
        assert immich.server_version is None
        version = await immich.connect()
        assert ".".join(map(str, version)) == fake_immich.version
        assert await immich.connect() == version
        assert immich.server_version == version
        await immich.get_asset_statistics()
        await immich.get_tags()
        raw = await immich.get_server_version()
        assert (raw["major"], raw["minor"], raw["patch"]) == version
        status = await immich.test_connection()
        assert status == {
            "url": fake_immich.url,
            "version": f"v{fake_immich.version}",
            "authenticated": True,
        }
        features = await immich.get_server_features()
        assert features["smartSearch"] is False
    # once by connect(), once by the explicit get_server_version()
    assert len(fake_immich.requests.select("GET", "/api/server/version")) == 2


async def test_pages_are_zero_based_slices_without_repeats(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    expected = timeline_ids(lib)
    assert len(expected) > 100  # bigger than the pages used below
    async with connect_to(fake_immich) as immich:
        pages = [ids(await immich.get_assets(size=3, page=p)) for p in range(3)]
        assert pages == [expected[0:3], expected[3:6], expected[6:9]]
        last = len(expected) // 7
        assert ids(await immich.get_assets(size=7, page=last)) == expected[last * 7 :]
        assert await immich.get_assets(size=7, page=last + 1) == []
        fake_immich.requests.clear()
        everything = [a async for a in immich.iter_search_metadata({}, page_size=7)]
    assert ids(everything) == expected
    assert len(fake_immich.requests.select("POST", "/api/search/metadata")) == -(
        -len(expected) // 7
    )
    # every item carries EXIF, where the size lives
    sizes = {a["id"]: a["exifInfo"]["fileSizeInByte"] for a in everything}
    assert sizes == {i: lib.assets[i].size for i in expected}


async def test_search_metadata_pages_and_visibility(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    async with connect_to(fake_immich) as immich:
        first, next_page = await immich.search_metadata({}, page=1, size=50)
        assert ids(first) == timeline_ids(lib)[:50]
        assert next_page == 2
        archive, next_page = await immich.search_metadata({"visibility": "archive"})
        assert ids(archive) == timeline_ids(lib, visibility="archive")
        assert next_page is None
        with pytest.raises(ValueError, match="page"):
            await immich.search_metadata({}, page=0)


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_listing_filters(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    async with connect_to(fake_immich) as immich:
        archived = await immich.get_assets(size=1000, is_archived=True)
        favourites = await immich.get_assets(size=1000, is_favorite=True)
        photos = await immich.get_photos(size=1000)
        videos = await immich.get_videos(size=1000)
    # v3's default visibility would add archived and hidden assets: we always send it
    assert ids(archived) == timeline_ids(lib, visibility="archive")
    assert ids(favourites) == timeline_ids(lib, is_favorite=True)
    assert ids(photos) == timeline_ids(lib, type="IMAGE")
    assert ids(videos) == timeline_ids(lib, type="VIDEO")
    assert all(a["type"] == "VIDEO" for a in videos) and videos


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_asset_info_and_statistics(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    kyoto = lib.find("Kinkaku-ji.jpg")
    async with connect_to(fake_immich) as immich:
        info = await immich.get_asset_info(kyoto.id)
        stats = await immich.get_asset_statistics()
    asset = Asset.from_json(info)
    assert asset.id == kyoto.id
    assert asset.original_file_name == "Kinkaku-ji.jpg"
    assert asset.size == kyoto.size
    assert info["exifInfo"]["city"] == "Kyoto"
    mine = [
        a
        for a in lib.assets.values()
        if a.owner_id == lib.me.id and a.visibility in ("timeline", "archive") and not a.is_trashed
    ]
    images = sum(a.type == "IMAGE" for a in mine)
    videos = sum(a.type == "VIDEO" for a in mine)
    assert (stats["images"], stats["videos"]) == (images, videos)
    assert stats["total"] == images + videos


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_thumbnails(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    photo = lib.find("Kinkaku-ji.jpg")
    async with connect_to(fake_immich) as immich:
        small, small_type = await immich.get_thumbnail_response(photo.id, "thumbnail")
        preview, preview_type = await immich.get_thumbnail_response(photo.id, "preview")
        assert await immich.get_thumbnail(photo.id) == preview  # JPEG → preview
        assert await immich.get_thumbnail(photo.id, format="WEBP") == small
        assert await immich.get_thumbnail(photo.id, "webp", size="preview") == preview
        fake_immich.requests.clear()
        full, full_type = await immich.get_thumbnail_response(photo.id, "fullsize")
    assert small_type == "image/webp" and small[:4] == b"RIFF" and small[8:12] == b"WEBP"
    assert preview_type == "image/jpeg" and preview[:3] == b"\xff\xd8\xff"
    # fullsize of a JPEG is a 302 (relative Location) to the original
    statuses = [r.status for r in fake_immich.requests]
    assert statuses[0] == 302 and statuses[-1] == 200
    assert full == lib.content(photo.id)
    assert full_type == "image/jpeg"


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_originals_whole_ranged_and_head(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    photo = lib.find("Kinkaku-ji.jpg")
    content = lib.content(photo.id)
    size = len(content)

    async def ranged(start: int | None, end: int | None) -> bytes:
        async with immich.stream_full_resolution_file(photo.id, start, end) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async with connect_to(fake_immich) as immich:
        assert await immich.get_full_resolution_file(photo.id) == content
        assert await immich.head_original(photo.id) == size
        assert await ranged(0, 0) == content[:1]
        assert await ranged(10, 19) == content[10:20]
        assert await ranged(size - 5, size - 1) == content[-5:]
        assert await ranged(size - 5, None) == content[-5:]
        assert await ranged(None, 99) == content[:100]
        # the server shortens a range that ends past EOF; that is still the right bytes
        assert await ranged(100, size + 1000) == content[100:]
    sent = [r.range for r in fake_immich.requests.select("GET", "/api/assets/") if r.range]
    assert "bytes=10-19" in sent and f"bytes={size - 5}-" in sent


async def test_search_assets_without_smart_search(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    kyoto = lib.find("Kinkaku-ji.jpg")
    async with connect_to(fake_immich) as immich:
        by_name = await immich.search_assets("kinkaku")
        by_description = await immich.search_assets("golden temple")
        by_city = await immich.search_assets("Kyoto")
        videos = await immich.search_assets("large-video", type="VIDEO")
        none = await immich.search_assets("large-video", type="IMAGE")
        capped = await immich.search_assets("IMG_", size=2)
    assert ids(by_name) == [kyoto.id]
    assert ids(by_description) == [kyoto.id]
    assert kyoto.id in ids(by_city)
    assert len(set(ids(by_city))) == len(by_city)  # merged without repeats
    assert [v["originalFileName"] for v in videos] == ["large-video.mp4"]
    assert none == []
    assert len(capped) == 2
    assert not fake_immich.requests.select("POST", "/api/search/smart")


async def test_search_assets_uses_smart_search_when_enabled(fake_library: FakeLibrary) -> None:
    with FakeImmich(fake_library, version="2.7.5", smart_search=True) as srv:
        async with connect_to(srv) as immich:
            found = await immich.search_assets("temple", size=5)
            many = await immich.search_smart("anything", size=1200)
            three = await immich.search_smart("anything", size=3)
        assert 0 < len(found) <= 5
        assert srv.requests.select("POST", "/api/search/smart")
        assert not srv.requests.select("POST", "/api/search/metadata")
        assert len(set(ids(many))) == len(many) <= 1200
        assert ids(three) == ids(many)[:3]  # ranked: the cap keeps the best


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_collections(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    major = int(fake_immich.version.split(".")[0])
    async with connect_to(fake_immich) as immich:
        fake_immich.requests.clear()
        albums = await immich.get_albums()
        album_requests = len(fake_immich.requests.select("GET", "/api/albums"))
        people = await immich.get_people()
        everyone = await immich.get_people(with_hidden=True)
        tags = await immich.get_tags()
        buckets = await immich.get_timeline_buckets()
        favourite_buckets = await immich.get_timeline_buckets(isFavorite=True)
    visible = {
        a.id
        for a in lib.albums.values()
        if a.owner_id == lib.me.id or any(user == lib.me.id for user, _ in a.members)
    }
    assert sorted(ids(albums)) == sorted(visible)  # owned and shared, each once
    assert album_requests == (1 if major >= 3 else 2)
    names = {p["name"] for p in people}
    assert "Alice" in names and "Hidden Harry" not in names
    assert "Hidden Harry" in {p["name"] for p in everyone}
    assert {t["value"] for t in tags} == {t.value for t in lib.tags.values()}
    assert sum(b["count"] for b in buckets) == len(timeline_ids(lib))
    assert sum(b["count"] for b in favourite_buckets) == len(timeline_ids(lib, is_favorite=True))
    assert all(len(b["timeBucket"]) >= 10 for b in buckets)


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_key_permissions(fake_immich: FakeImmich) -> None:
    async with connect_to(fake_immich) as immich:
        permissions = await immich.get_key_permissions()
    if fake_immich.version == "1.135.3":
        assert permissions is None
    else:
        assert permissions == ["all"]


async def test_restricted_key(fake_library: FakeLibrary) -> None:
    granted = ["asset.read", "asset.view"]
    photo = fake_library.find("Kinkaku-ji.jpg")
    with FakeImmich(fake_library, version="2.7.5", permissions=granted) as srv:
        async with connect_to(srv) as immich:
            assert sorted(await immich.get_key_permissions() or []) == granted
            await immich.get_asset_info(photo.id)
            await immich.get_thumbnail(photo.id)
            with pytest.raises(errors.PermissionDenied) as info:
                await immich.get_full_resolution_file(photo.id)
            assert info.value.permission == "asset.download"
            assert str(info.value).startswith("the key lacks permission asset.download — ")
            with pytest.raises(errors.PermissionDenied) as info:
                await immich.get_asset_statistics()
            assert info.value.permission == "asset.statistics"
            assert info.value.status == 403


async def test_wrong_and_revoked_key(fake_immich: FakeImmich) -> None:
    wrong = "fake-wrong-" + "W" * 30
    async with ImmichConnector(fake_immich.url, wrong) as immich:
        with pytest.raises(errors.AuthenticationError) as info:
            await immich.get_asset_statistics()
    assert str(info.value) == (
        f"the API key was rejected by {fake_immich.url} (401 Invalid API key)"
        " — check IMMICH_API_KEY"
    )
    assert info.value.status == 401
    assert wrong not in str(info.value)
    async with connect_to(fake_immich) as immich:
        await immich.validate_key()
        fake_immich.faults.revoke_key()
        with pytest.raises(errors.AuthenticationError):
            await immich.validate_key()


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_unknown_asset_is_not_found(fake_immich: FakeImmich) -> None:
    unknown = "5b3c6a0e-2f8e-4d8b-9c1a-7e6f5d4c3b2a"
    async with connect_to(fake_immich) as immich:
        with pytest.raises(errors.NotFound) as info:
            await immich.get_asset_info(unknown)
        assert info.value.status == 400  # Immich's answer for a missing id
        with pytest.raises(errors.NotFound):
            await immich.get_thumbnail(unknown)
        with pytest.raises(errors.NotFound):
            await immich.get_full_resolution_file(unknown)
        with pytest.raises(errors.NotFound):
            await immich.head_original(unknown)
        with pytest.raises(errors.NotFound):
            await immich.get_asset_info("not-a-uuid")


async def test_dead_url_and_refused_connections(fake_immich: FakeImmich) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with ImmichConnector(url, KEY, retry_policy=None) as immich:
        with pytest.raises(errors.ConnectError) as info:
            await immich.get_asset_statistics()
    assert str(info.value).startswith(
        f"cannot reach {url} — is the server running and the URL right?"
    )
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    async with connect_to(fake_immich) as immich:
        await immich.connect()
        fake_immich.faults.refuse_connections()
        with pytest.raises(errors.ConnectError):
            await immich.get_asset_statistics()


async def test_timeout(fake_immich: FakeImmich) -> None:
    fake_immich.faults.delay(3, path="/api/assets/statistics")
    async with connect_to(fake_immich, timeout=0.3) as immich:
        await immich.connect()
        started = trio.current_time()
        with pytest.raises(errors.RequestTimeout, match=r"within 0\.3 s") as info:
            await immich.get_asset_statistics()
        assert trio.current_time() - started < 2.5
    assert isinstance(info.value, errors.TransientError)
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


async def test_server_errors_and_rate_limits(fake_immich: FakeImmich) -> None:
    async with connect_to(fake_immich) as immich:
        await immich.connect()
        fake_immich.faults.fail(503, retry_after=3, path="/api/assets/statistics")
        with pytest.raises(errors.ServerError) as failed:
            await immich.get_asset_statistics()
        assert failed.value.status == 503 and failed.value.retry_after == 3
        fake_immich.faults.fail(500, path="/api/tags")
        with pytest.raises(errors.ServerError):
            await immich.get_tags()
        fake_immich.faults.fail(429, retry_after=5, path="/api/assets/statistics")
        with pytest.raises(errors.RateLimited) as limited:
            await immich.get_asset_statistics()
        assert limited.value.retry_after == 5 and limited.value.status == 429
        # the faults were used up: the same calls work again
        assert (await immich.get_asset_statistics())["total"] > 0
        # and the retry loop rides over transient failures
        fake_immich.faults.fail(503, times=2, path="/api/assets/statistics")
        fake_immich.requests.clear()
        stats = await RetryPolicy(base_delay=0.01).call(immich.get_asset_statistics)
        assert stats["total"] > 0
        assert len(fake_immich.requests.select("GET", "/api/assets/statistics")) == 3


async def test_truncated_and_cut_bodies(fake_immich: FakeImmich) -> None:
    lib = fake_immich.library
    photo = lib.find("Kinkaku-ji.jpg")
    async with connect_to(fake_immich) as immich:
        await immich.connect()
        fake_immich.faults.truncate(path="/api/assets/*/original")
        with pytest.raises(errors.TruncatedBody):
            await immich.get_full_resolution_file(photo.id)
        fake_immich.faults.truncate(500, path="/api/assets/*/original")
        with pytest.raises(errors.TruncatedBody):
            async with immich.stream_full_resolution_file(photo.id, 0, 9999) as chunks:
                async for _ in chunks:
                    pass
        fake_immich.faults.cut_after(1000, path="/api/assets/*/original")
        with pytest.raises(errors.TruncatedBody):
            await immich.get_full_resolution_file(photo.id)
        fake_immich.faults.truncate(path="/api/search/metadata")
        with pytest.raises(errors.TruncatedBody):
            await immich.get_assets()
        assert await immich.get_full_resolution_file(photo.id) == lib.content(photo.id)


async def test_range_ignored_by_the_server_is_a_protocol_error(fake_immich: FakeImmich) -> None:
    photo = fake_immich.library.find("Kinkaku-ji.jpg")
    fake_immich.faults.ignore_range()
    got: list[bytes] = []
    async with connect_to(fake_immich) as immich:
        with pytest.raises(errors.ProtocolError, match="ignored the range"):
            async with immich.stream_full_resolution_file(photo.id, 100, 199) as chunks:
                got.extend([chunk async for chunk in chunks])
    assert got == []


async def test_old_version_is_refused(fake_library: FakeLibrary) -> None:
    def old(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/server/version"
        return httpx.Response(200, json={"major": 1, "minor": 123, "patch": 0})

    async with ImmichConnector(
        "http://immich.test", KEY, transport=httpx.MockTransport(old)
    ) as immich:
        with pytest.raises(errors.UnsupportedVersion) as info:
            await immich.get_assets()
    assert str(info.value) == "Immich v1.123.0 is too old: immichfs needs v1.135 or newer"
    try:
        srv = FakeImmich(fake_library, version="1.123.0")
    except (ValueError, KeyError):
        return  # the fake emulates only supported versions
    with srv:
        async with connect_to(srv) as immich:
            with pytest.raises(errors.UnsupportedVersion):
                await immich.get_asset_statistics()
        assert not srv.requests.select("GET", "/api/assets/statistics")


async def test_the_key_never_appears_in_logs_or_errors(
    fake_library: FakeLibrary, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unknown = "5b3c6a0e-2f8e-4d8b-9c1a-7e6f5d4c3b2a"
    raised: list[BaseException] = []
    with FakeImmich(fake_library, version="2.7.5", permissions=["asset.read"]) as srv:
        key = srv.api_key
        async with connect_to(srv) as immich:
            await immich.get_assets(size=5)
            for call in (
                immich.get_asset_statistics,
                lambda: immich.get_asset_info(unknown),
                lambda: immich.get_thumbnail(unknown),
            ):
                try:
                    await call()
                except errors.ImmichError as exc:
                    raised.append(exc)
            srv.faults.revoke_key()
            try:
                await immich.get_tags()
            except errors.AuthenticationError as exc:
                raised.append(exc)
            shown = repr(immich) + str(immich)
    assert len(raised) == 4
    assert caplog.records  # the debug log did record the requests
    for record in caplog.records:
        assert key not in record.getMessage()
    assert key not in caplog.text
    for error in raised:
        assert key not in str(error) and key not in repr(error)
        assert all(key not in str(arg) for arg in error.args)
    assert key not in shown


def test_works_under_asyncio(fake_immich: FakeImmich) -> None:
    photo = fake_immich.library.find("Kinkaku-ji.jpg")

    async def main() -> tuple[Any, ...]:
        async with connect_to(fake_immich) as immich:
            version = await immich.connect()
            stats = await immich.get_asset_statistics()
            page = await immich.get_assets(size=3, page=1)
            async with immich.stream_full_resolution_file(photo.id, 0, 99) as chunks:
                head = b"".join([chunk async for chunk in chunks])
            return version, stats, page, head

    version, stats, page, head = asyncio.run(main())
    assert ".".join(map(str, version)) == fake_immich.version
    assert stats["total"] > 0
    assert ids(page) == timeline_ids(fake_immich.library)[3:6]
    assert head == fake_immich.library.content(photo.id)[:100]


@pytest.mark.slow
async def test_streaming_a_large_original_uses_bounded_memory() -> None:
    lib = FakeLibrary.generate(seed=7, photos=2, videos=0, extra=False, large_video_bytes=None)
    big = lib.add_asset("big.mp4", kind="mp4", size=200 << 20)
    expected = lib.sha1(big.id)  # materialises the file before measuring
    try:
        with FakeImmich(lib, version="2.7.5") as srv:
            async with connect_to(srv) as immich:
                assert await immich.head_original(big.id) == 200 << 20
                digest = hashlib.sha1()
                received = 0
                gc.collect()
                rss_before = psutil.Process().memory_info().rss
                tracemalloc.start()
                try:
                    async with immich.stream_full_resolution_file(big.id) as chunks:
                        async for chunk in chunks:
                            digest.update(chunk)
                            received += len(chunk)
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                rss_growth = psutil.Process().memory_info().rss - rss_before
    finally:
        lib.close()
    assert received == 200 << 20
    assert digest.hexdigest() == expected
    print(f"peak Python memory while streaming 200 MiB: {peak} bytes")
    assert peak < 20 << 20, f"peak {peak} bytes while streaming 200 MiB"
    # the process as a whole (C buffers included) did not grow by anything like the file
    assert rss_growth < 64 << 20, f"RSS grew by {rss_growth} bytes"


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
async def test_server_validation_errors_and_ranges_past_the_end(fake_immich: FakeImmich) -> None:
    photo = fake_immich.library.find("Kinkaku-ji.jpg")
    size = len(fake_immich.library.content(photo.id))
    async with connect_to(fake_immich) as immich:
        # v1/v2 send a list of messages, v3 {message, errors}: both are read
        with pytest.raises(errors.BadRequest, match="type") as info:
            await immich.search_metadata({"type": "NOPE"})
        assert info.value.status == 400
        # Immich answers 500 (v2) or 404 (v3), never 416: not a transient failure
        for start in (size, size + 10):
            with pytest.raises(errors.BadRequest, match="past the end") as past:
                async with immich.stream_full_resolution_file(photo.id, start, start + 9):
                    pass
            assert not isinstance(past.value, errors.TransientError)
