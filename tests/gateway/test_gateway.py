"""The REST gateway (``immichfs serve``) over real HTTP.

The gateway runs on a loopback port (hypercorn's trio worker, in the test's
nursery, or as the real ``immichfs serve`` process for the memory test) with
the fake Immich behind it; requests go through httpx. The pure parsing helpers
(ranges, Content-Disposition, the search body) are tested first.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import psutil
import pytest
import trio
from mountutil import clean_env
from netutil import free_port

from immichfs import options
from immichfs.client.connector import DEFAULT_RETRY_POLICY, ImmichConnector
from immichfs.client.retry import RetryPolicy
from immichfs.gateway.app import (
    Gateway,
    HTTPError,
    RangeNotSatisfiable,
    content_disposition,
    parse_range,
    parse_search,
)
from immichfs.gateway.serve import build_gateway, serve_gateway

TOKEN = "gw-token-" + "Z" * 24
#: the Immich versions the fake emulates; behaviour that differs between them is run on each
VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]
every_version = pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),  # suffix longer than the file: all of it
        ("bytes=90-1000", 100, (90, 99)),  # clamped, never past the end
        ("bytes=99-99", 100, (99, 99)),
        ("BYTES = 5 - 6", 100, (5, 6)),
        ("items=0-5", 100, None),  # another unit: ignored (RFC 9110)
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file, as Immich does
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),  # starts at the end
        ("bytes=500-600", 100),
        ("bytes=9-5", 100),  # backwards
        ("bytes=-0", 100),
        ("bytes=abc", 100),
        ("bytes=-", 100),
        ("bytes=", 100),
        ("bytes=1-2-3", 100),
        ("bytes=0-", 0),  # an empty file has no byte to serve
        ("bytes=-5", 0),
    ],
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def _disposition_name(value: str) -> str:
    encoded = value.split("filename*=UTF-8''", 1)[1].split(";")[0]
    return urllib.parse.unquote(encoded, errors="strict")


def test_content_disposition_unicode_and_ascii_fallback() -> None:
    name = 'Été à "Zürich" 東京 100%.jpg'
    value = content_disposition(name)
    value.encode("latin-1")  # must be a legal header value
    assert value.startswith("inline; ")
    assert _disposition_name(value) == name
    fallback = value.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.isascii() and '"' not in fallback and fallback.endswith(".jpg")


def test_content_disposition_never_carries_a_path() -> None:
    value = content_disposition("../../etc/passwd")
    assert "/" not in _disposition_name(value)
    assert "/" not in value.split("filename*=", 1)[0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{", "body"),
        (b"\xff\xfe", "body"),
        (b"[1, 2]", "body"),
        (b"{}", "query"),
        (b'{"query": ""}', "query"),
        (b'{"query": 5}', "query"),
        (b'{"query": "x", "type": "AUDIO"}', "type"),
        (b'{"query": "x", "type": 1}', "type"),
        (b'{"query": "x", "size": 0}', "size"),
        (b'{"query": "x", "size": 1001}', "size"),
        (b'{"query": "x", "size": "10"}', "size"),
        (b'{"query": "x", "size": true}', "size"),
        (b'{"query": "x", "size": 1.5}', "size"),
        (b'{"query": "x", "limit": 5}', "limit"),
    ],
)
def test_search_body_validation_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(HTTPError) as info:
        parse_search(body)
    assert info.value.status == 400
    assert info.value.extra["field"] == field
    assert info.value.message.startswith(field)


def test_search_body_defaults() -> None:
    request = parse_search(b'{"query": "beach"}')
    assert (request.query, request.type, request.size) == ("beach", "ALL", 100)
    request = parse_search(b'{"query": "beach", "type": "video", "size": 7}')
    assert (request.type, request.size) == ("VIDEO", 7)


# -- running the gateway ------------------------------------------------------------------------


@asynccontextmanager
async def running(app: Gateway) -> AsyncIterator[str]:
    """``app`` served by hypercorn's trio worker on a free loopback port; yields its URL."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve_gateway, app, "127.0.0.1", 0, shutdown_trigger=stop.wait)
        )
        try:
            yield binds[0]
        finally:
            stop.set()


@asynccontextmanager
async def gateway_for(
    url: str,
    key: str,
    *,
    timeout: float = 10.0,
    token: str | None = None,
    retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY,
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """A gateway in front of the Immich at ``url`` and an httpx client pointed at it."""
    async with ImmichConnector(url, key, timeout=timeout, retry_policy=retry_policy) as connector:
        app = Gateway(connector, token=token)
        async with running(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield client, app


@pytest.fixture
async def gateway(fake_immich: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    async with gateway_for(fake_immich.url, fake_immich.api_key) as pair:
        yield pair


@pytest.fixture
async def client(gateway: tuple[httpx.AsyncClient, Gateway]) -> httpx.AsyncClient:
    return gateway[0]


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    for word in words:
        assert word in body["message"], body
    return body


# -- without Immich ----------------------------------------------------------------------------

SOME_ID = "1f0c5a3e-8b7a-4c53-9d1e-0a6f4b2c7d11"
API_REQUESTS = [
    ("GET", "/api/immich/test"),
    ("GET", "/api/immich/version"),
    ("GET", "/api/immich/statistics"),
    ("GET", "/api/immich/assets"),
    ("GET", "/api/immich/photos"),
    ("GET", "/api/immich/videos"),
    ("GET", f"/api/immich/assets/{SOME_ID}"),
    ("GET", f"/api/immich/assets/{SOME_ID}/thumbnail"),
    ("GET", f"/api/immich/assets/{SOME_ID}/file"),
    ("POST", "/api/immich/search"),
]


@pytest.mark.expect_log("Immich is not configured", logger="immichfs.gateway.serve")
async def test_unconfigured_gateway_answers_503_naming_the_variables() -> None:
    app = build_gateway(options.load_settings({}, env={}, config_path=None))
    assert app.connector is None
    async with running(app) as base, httpx.AsyncClient(base_url=base) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "immichConfigured": False}
        for method, path in API_REQUESTS:
            response = await client.request(method, path, json={"query": "x"})
            body = assert_error(response, 503, "not_configured", "IMMICH_URL", "IMMICH_API_KEY")
            assert "IMMICH_API_KEY_FILE" in body["message"]
            assert body["variables"] == ["IMMICH_URL", "IMMICH_API_KEY", "IMMICH_API_KEY_FILE"]


@pytest.mark.expect_log(
    "Immich is not configured correctly: IMMICH_URL .* has no scheme",
    logger="immichfs.gateway.serve",
)
async def test_malformed_url_is_503_naming_it() -> None:
    settings = options.load_settings(
        {}, env={"IMMICH_URL": "immich.local:2283", "IMMICH_API_KEY": "k" * 40}
    )
    app = build_gateway(settings)
    async with running(app) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.get("/api/immich/version")
    body = assert_error(response, 503, "not_configured", "IMMICH_URL")
    assert body["variables"] == ["IMMICH_URL"]
    assert "k" * 40 not in response.text


async def test_dead_upstream_is_502() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # no retries: a dead server is reported after one refused connection
    async with gateway_for(dead, "fake-" + "D" * 30, retry_policy=None) as (client, _):
        for path in (
            "/api/immich/version",
            "/api/immich/assets",
            f"/api/immich/assets/{SOME_ID}/file",
        ):
            response = await client.get(path)
            assert_error(response, 502, "upstream_unreachable", "cannot reach")
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.expect_log("Immich is not configured", logger="immichfs.gateway.serve")
async def test_unknown_paths_and_methods() -> None:
    app = build_gateway(options.load_settings({}, env={}))
    async with running(app) as base, httpx.AsyncClient(base_url=base) as client:
        assert_error(await client.get("/api/immich/nothing"), 404, "not_found")
        assert_error(await client.get("/"), 404, "not_found")
        response = await client.post("/api/immich/assets")
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "GET, HEAD"
        response = await client.get("/api/immich/search")
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST"


# -- against the fake Immich ---------------------------------------------------------------------


def timeline(library: Any, **where: Any) -> set[str]:
    """Ids of the owner's timeline assets (not archived, hidden, locked or trashed)."""
    visibility = where.pop("visibility", "timeline")
    return {
        asset.id
        for asset in library.assets.values()
        if asset.owner_id == library.me.id
        and asset.visibility == visibility
        and not asset.is_trashed
        and all(getattr(asset, name) == value for name, value in where.items())
    }


def by_name(library: Any, name: str) -> Any:
    return next(a for a in library.assets.values() if a.original_file_name == name)


async def test_healthz_configured(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.json() == {"status": "ok", "immichConfigured": True}


@every_version
async def test_connection_version_and_statistics(
    client: httpx.AsyncClient, fake_immich: Any
) -> None:
    test = await client.get("/api/immich/test")
    assert test.status_code == 200
    assert test.json()["authenticated"] is True
    direct = httpx.get(f"{fake_immich.url}/api/server/version").json()
    version = (await client.get("/api/immich/version")).json()
    assert (version["major"], version["minor"], version["patch"]) == (
        direct["major"],
        direct["minor"],
        direct["patch"],
    )
    assert test.json()["version"] == f"v{direct['major']}.{direct['minor']}.{direct['patch']}"
    statistics = (await client.get("/api/immich/statistics")).json()
    expected = httpx.get(
        f"{fake_immich.url}/api/assets/statistics", headers={"x-api-key": fake_immich.api_key}
    ).json()
    assert statistics == expected
    assert statistics["total"] == statistics["images"] + statistics["videos"] > 0


async def test_assets_pages_cover_the_timeline_once(
    client: httpx.AsyncClient, fake_library: Any
) -> None:
    seen: list[str] = []
    for page in range(100):
        response = await client.get("/api/immich/assets", params={"size": 40, "page": page})
        assert response.status_code == 200
        items = response.json()
        assert len(items) <= 40
        seen += [item["id"] for item in items]
        if len(items) < 40:
            break
    assert len(seen) == len(set(seen))
    assert set(seen) == timeline(fake_library)
    first = (await client.get("/api/immich/assets", params={"size": 40})).json()
    assert [item["id"] for item in first] == seen[:40]  # page defaults to 0, the first


@every_version
async def test_assets_filters(client: httpx.AsyncClient, fake_library: Any) -> None:
    async def ids(**params: Any) -> set[str]:
        response = await client.get("/api/immich/assets", params={"size": 1000, **params})
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()}

    favorites = timeline(fake_library, is_favorite=True)
    assert favorites and await ids(isFavorite="true") == favorites
    assert await ids(isFavorite="false") == timeline(fake_library, is_favorite=False)
    archived = timeline(fake_library, visibility="archive")
    assert archived and await ids(isArchived="true") == archived
    assert await ids(isArchived="false") == timeline(fake_library)


@every_version
async def test_photos_and_videos(client: httpx.AsyncClient, fake_library: Any) -> None:
    for path, kind in (("/api/immich/photos", "IMAGE"), ("/api/immich/videos", "VIDEO")):
        response = await client.get(path, params={"size": 1000})
        assert response.status_code == 200
        items = response.json()
        assert {item["type"] for item in items} == {kind}
        assert {item["id"] for item in items} == timeline(fake_library, type=kind)
        small = (await client.get(path, params={"size": 2, "page": 1})).json()
        assert [item["id"] for item in small] == [item["id"] for item in items[2:4]]


async def test_asset_info(client: httpx.AsyncClient, fake_library: Any) -> None:
    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    response = await client.get(f"/api/immich/assets/{asset.id}")
    assert response.status_code == 200
    info = response.json()
    assert info["id"] == asset.id
    assert info["originalFileName"] == "Kinkaku-ji.jpg"
    assert info["exifInfo"]["city"] == "Kyoto"


@every_version
async def test_unknown_asset_is_404(client: httpx.AsyncClient, fake_immich: Any) -> None:
    unknown = str(uuid.uuid4())
    for suffix in ("", "/thumbnail", "/file"):
        response = await client.get(f"/api/immich/assets/{unknown}{suffix}")
        assert_error(response, 404, "not_found")
    # a malformed id never reaches Immich
    fake_immich.requests.clear()
    response = await client.get("/api/immich/assets/..%2F..%2Fserver%2Fversion")
    assert response.status_code in (400, 404)
    assert_error(
        await client.get("/api/immich/assets/not-an-id/file"), 400, "bad_request", "assetId"
    )
    assert not fake_immich.requests.select(path_prefix="/api/assets")


@every_version
async def test_thumbnails_carry_immichs_content_type(
    client: httpx.AsyncClient, fake_library: Any
) -> None:
    from io import BytesIO

    from PIL import Image

    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    path = f"/api/immich/assets/{asset.id}/thumbnail"
    cases = [
        ({}, "image/jpeg", "JPEG"),  # preview by default
        ({"size": "preview"}, "image/jpeg", "JPEG"),
        ({"size": "thumbnail"}, "image/webp", "WEBP"),
        ({"format": "WEBP"}, "image/webp", "WEBP"),  # the old API: WEBP meant the thumbnail
        ({"format": "jpeg", "size": "thumbnail"}, "image/webp", "WEBP"),  # size wins: the truth
    ]
    for params, content_type, pil_format in cases:
        response = await client.get(path, params=params)
        assert response.status_code == 200, (params, response.text)
        assert response.headers["content-type"] == content_type, params
        assert int(response.headers["content-length"]) == len(response.content)
        with Image.open(BytesIO(response.content)) as image:
            assert image.format == pil_format


async def test_file_whole(client: httpx.AsyncClient, fake_library: Any) -> None:
    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    response = await client.get(f"/api/immich/assets/{asset.id}/file")
    assert response.status_code == 200
    assert response.content == fake_library.content(asset.id)
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["accept-ranges"] == "bytes"
    assert _disposition_name(response.headers["content-disposition"]) == "Kinkaku-ji.jpg"


async def test_file_unicode_name(client: httpx.AsyncClient, fake_library: Any) -> None:
    for asset in fake_library.assets.values():
        name = asset.original_file_name
        if asset.is_trashed or asset.visibility != "timeline" or name.isascii():
            continue
        response = await client.get(f"/api/immich/assets/{asset.id}/file")
        assert response.status_code == 200
        disposition = response.headers["content-disposition"]
        assert _disposition_name(disposition) == name.replace("/", "_")
        assert response.content == fake_library.content(asset.id)


@every_version
async def test_file_ranges(client: httpx.AsyncClient, fake_library: Any, fake_immich: Any) -> None:
    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    data = fake_library.content(asset.id)
    size = len(data)
    path = f"/api/immich/assets/{asset.id}/file"
    cases = [
        ("bytes=0-0", 0, 0),
        ("bytes=100-1099", 100, 1099),
        ("bytes=1000-", 1000, size - 1),
        ("bytes=-500", size - 500, size - 1),
        (f"bytes={size - 10}-{size + 10_000}", size - 10, size - 1),  # clamped
    ]
    for header, start, end in cases:
        response = await client.get(path, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == data[start : end + 1], header
        assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert response.headers["content-length"] == str(end - start + 1)
    fake_immich.requests.clear()
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=9-3", "bytes=x-y"):
        response = await client.get(path, headers={"Range": header})
        assert_error(response, 416, "range_not_satisfiable")
        assert response.headers["content-range"] == f"bytes */{size}"
    # Immich was never asked past the end: only HEADs, no GET of the original
    originals = fake_immich.requests.select(path_prefix=f"/api/assets/{asset.id}/original")
    assert originals and {record.method for record in originals} == {"HEAD"}
    multi = await client.get(path, headers={"Range": "bytes=0-1,5-6"})
    assert multi.status_code == 200 and multi.content == data


async def test_file_head(client: httpx.AsyncClient, fake_library: Any, fake_immich: Any) -> None:
    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    fake_immich.requests.clear()
    response = await client.head(f"/api/immich/assets/{asset.id}/file")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(asset.size)
    assert not fake_immich.requests.select(
        method="GET", path_prefix="/api/assets/" + asset.id + "/original"
    )


@every_version
async def test_search(client: httpx.AsyncClient, fake_library: Any) -> None:
    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    response = await client.post("/api/immich/search", json={"query": "Kinkaku"})
    assert response.status_code == 200, response.text
    assert asset.id in {item["id"] for item in response.json()}
    response = await client.post(
        "/api/immich/search", json={"query": "VID_", "type": "VIDEO", "size": 3}
    )
    items = response.json()
    assert 0 < len(items) <= 3 and {item["type"] for item in items} == {"VIDEO"}
    response = await client.post("/api/immich/search", json={"query": "VID_", "type": "IMAGE"})
    assert response.json() == []


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/immich/assets", {"size": "0"}, "size"),
        ("/api/immich/assets", {"size": "1001"}, "size"),
        ("/api/immich/assets", {"size": "ten"}, "size"),
        ("/api/immich/assets", {"size": "-1"}, "size"),
        ("/api/immich/assets", {"page": "-1"}, "page"),
        ("/api/immich/assets", {"page": "1.5"}, "page"),
        ("/api/immich/assets", {"isFavorite": "yes please"}, "isFavorite"),
        ("/api/immich/assets", {"isArchived": "maybe"}, "isArchived"),
        ("/api/immich/assets", {"isFavourite": "true"}, "isFavourite"),  # a typo is not ignored
        ("/api/immich/photos", {"size": ""}, "size"),
        ("/api/immich/videos", {"page": "x"}, "page"),
        ("/api/immich/photos", {"isFavorite": "true"}, "isFavorite"),
        (f"/api/immich/assets/{SOME_ID}/thumbnail", {"format": "GIF"}, "format"),
        (f"/api/immich/assets/{SOME_ID}/thumbnail", {"size": "huge"}, "size"),
    ],
)
async def test_bad_parameters_are_400_naming_the_field(
    client: httpx.AsyncClient, fake_immich: Any, path: str, params: dict[str, str], field: str
) -> None:
    fake_immich.requests.clear()
    body = assert_error(await client.get(path, params=params), 400, "bad_request", field)
    assert body["field"] == field
    assert not fake_immich.requests.select(path_prefix="/api/search")  # refused before Immich


async def test_bad_search_bodies_are_400(client: httpx.AsyncClient) -> None:
    for content, field in (
        (b"{not json", "body"),
        (b'{"query": "x", "type": "AUDIO"}', "type"),
        (b'{"query": "x", "size": 5000}', "size"),
        (b'{"type": "ALL"}', "query"),
    ):
        response = await client.post("/api/immich/search", content=content)
        assert assert_error(response, 400, "bad_request", field)["field"] == field
    huge = await client.post("/api/immich/search", content=b" " * (200 * 1024))
    assert_error(huge, 413, "payload_too_large")


@every_version
async def test_rejected_key_is_502_without_the_key(fake_immich: Any) -> None:
    wrong = "fake-wrong-" + "W" * 30
    async with gateway_for(fake_immich.url, wrong) as (client, _):
        for path in (
            "/api/immich/test",
            "/api/immich/assets",
            f"/api/immich/assets/{SOME_ID}/file",
        ):
            response = await client.get(path)
            assert_error(response, 502, "upstream_auth", "API key", "IMMICH_API_KEY")
            assert wrong not in response.text
            assert fake_immich.api_key not in response.text


async def test_revoked_key_is_502(client: httpx.AsyncClient, fake_immich: Any) -> None:
    assert (await client.get("/api/immich/statistics")).status_code == 200
    fake_immich.faults.revoke_key()
    response = await client.get("/api/immich/statistics")
    assert_error(response, 502, "upstream_auth")
    assert fake_immich.api_key not in response.text


@pytest.mark.parametrize(
    "fake_immich", [{"permissions": ["asset.read", "asset.view", "server.about"]}], indirect=True
)
async def test_missing_permission_is_502_naming_it(
    client: httpx.AsyncClient, fake_library: Any
) -> None:
    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    assert (await client.get(f"/api/immich/assets/{asset.id}")).status_code == 200
    response = await client.get(f"/api/immich/assets/{asset.id}/file")
    assert_error(response, 502, "upstream_permission", "asset.download")


async def test_immich_server_error_is_502(client: httpx.AsyncClient, fake_immich: Any) -> None:
    assert (await client.get("/api/immich/statistics")).status_code == 200  # connected first
    fake_immich.faults.fail(500, times=1, path="/api/assets/statistics")
    assert_error(await client.get("/api/immich/statistics"), 502, "upstream_error")


async def test_slow_immich_is_504(fake_immich: Any) -> None:
    # without retries the answer comes after one timeout; with them, after the budget
    async with gateway_for(
        fake_immich.url, fake_immich.api_key, timeout=0.5, retry_policy=None
    ) as (client, _):
        assert (await client.get("/api/immich/version")).status_code == 200
        fake_immich.faults.delay(2.0, path="/api/search/metadata")
        # a 504, not the 200 the server sends after 2 s: the 0.5 s timeout fired
        response = await client.get("/api/immich/assets")
        assert_error(response, 504, "upstream_timeout")
        assert (await client.get("/api/immich/version")).status_code == 200


async def test_token_is_required_when_set(fake_immich: Any) -> None:
    async with gateway_for(fake_immich.url, fake_immich.api_key, token=TOKEN) as (client, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Gateway-Token": TOKEN[:-1]}):
            response = await client.get("/api/immich/statistics", headers=headers)
            assert_error(response, 401, "unauthorized", "IMMICHFS_GATEWAY_TOKEN")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in response.text
        # refused before anything reaches Immich
        assert not fake_immich.requests.select(path_prefix="/api/assets/statistics")
        for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-Gateway-Token": TOKEN}):
            response = await client.get("/api/immich/statistics", headers=headers)
            assert response.status_code == 200
            assert response.json()["total"] > 0
        assert (await client.get("/healthz")).status_code == 200  # liveness probes need none


@pytest.mark.expect_log("download of asset .* broke off", logger="immichfs.gateway.app")
async def test_broken_upstream_mid_file_never_completes_the_body(
    client: httpx.AsyncClient, fake_library: Any, fake_immich: Any
) -> None:
    asset = max(
        (
            a
            for a in fake_library.assets.values()
            if a.visibility == "timeline" and not a.is_trashed
        ),
        key=lambda a: a.size,
    )
    fake_immich.faults.cut_after(1 << 20, path=f"/api/assets/{asset.id}/original")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(f"/api/immich/assets/{asset.id}/file")
    response = await client.get(f"/api/immich/assets/{asset.id}/file")  # and then it recovers
    assert hashlib.sha1(response.content).hexdigest() == fake_library.sha1(asset.id)


# -- big files: bounded memory and cancellation ------------------------------------------------

BIG = 200 << 20


@pytest.fixture(scope="module")
def big_library() -> Iterator[Any]:
    """A small library whose large video is 200 MiB (far beyond any buffer on the way)."""
    from immichfs_fake import FakeLibrary

    library = FakeLibrary.generate(seed=3, photos=2, videos=1, large_video_bytes=BIG)
    yield library
    library.close()


@pytest.fixture
def big_immich(big_library: Any) -> Iterator[Any]:
    from immichfs_fake import FakeImmich

    with FakeImmich(big_library) as server:
        yield server


async def test_client_disconnect_cancels_the_upstream_transfer(
    big_immich: Any, big_library: Any
) -> None:
    asset = by_name(big_library, "large-video.mp4")
    assert asset.size >= BIG
    original = f"/api/assets/{asset.id}/original"
    async with gateway_for(big_immich.url, big_immich.api_key) as (client, app):
        big_immich.requests.clear()
        # a plain socket client: read the headers and 1 MiB of body, then hang up
        host, port = str(client.base_url.host), client.base_url.port
        assert port is not None
        stream = await trio.open_tcp_stream(host, port)
        request = f"GET /api/immich/assets/{asset.id}/file HTTP/1.1\r\nHost: {host}\r\n\r\n"
        await stream.send_all(request.encode())
        received = b""
        while len(received) < 1 << 20:
            chunk = await stream.receive_some(1 << 16)
            assert chunk, "the gateway closed the connection early"
            received += chunk
        await stream.aclose()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert f"content-length: {asset.size}".encode() in head.lower()
        with big_library.open_content(asset.id) as source:
            assert body == source.read(len(body))
        # The fake logs a transfer at its full size and lowers bytes_sent when the
        # connection breaks: had the gateway kept reading (or kept the connection open)
        # it would stay at the full size and this would time out.
        with trio.fail_after(10):
            while True:
                records = big_immich.requests.select("GET", original)
                if records and records[0].bytes_sent < asset.size and not app.downloads_active:
                    break
                await trio.sleep(0.02)
        assert app.downloads_cancelled == 1
        assert len(records) == 1
        assert records[0].bytes_sent < asset.size // 4, records[0]


def _rss(process: psutil.Process) -> int:
    rss: int = process.memory_info().rss
    return rss


@pytest.mark.slow
def test_serve_streams_a_large_file_with_bounded_memory(
    big_immich: Any, big_library: Any, tmp_path: Any
) -> None:
    """The real ``immichfs serve`` process: 200 MiB through it, its RSS barely moves."""
    asset = by_name(big_library, "large-video.mp4")
    env = clean_env(IMMICH_URL=big_immich.url, IMMICH_API_KEY=big_immich.api_key)
    env["IMMICHFS_GATEWAY_TOKEN"] = TOKEN
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "immichfs", "serve", "--port", "0", "--config", os.devnull],
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, log_path.read_text()
        base = line.rsplit(" ", 1)[1].strip()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        gateway = psutil.Process(process.pid)
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            # warm up: imports, the connection to Immich, the first small download
            small = by_name(big_library, "Kinkaku-ji.jpg")
            assert client.get(f"/api/immich/assets/{small.id}/file").status_code == 200
            baseline = _rss(gateway)
            peak = baseline
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, _rss(gateway))
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample)
            sampler.start()
            digest = hashlib.sha1()
            received = 0
            started = time.monotonic()
            try:
                with client.stream("GET", f"/api/immich/assets/{asset.id}/file") as response:
                    assert response.status_code == 200
                    assert response.headers["content-length"] == str(asset.size)
                    for chunk in response.iter_raw():
                        digest.update(chunk)
                        received += len(chunk)
            finally:
                done.set()
                sampler.join()
            elapsed = time.monotonic() - started
        assert received == asset.size
        assert digest.hexdigest() == big_library.sha1(asset.id)
        growth = peak - baseline
        print(
            f"\n{received / 2**20:.0f} MiB through `immichfs serve` in {elapsed:.2f} s "
            f"({received / 2**20 / elapsed:.0f} MiB/s); RSS {baseline / 2**20:.1f} MiB, "
            f"peak +{growth / 2**20:.1f} MiB"
        )
        assert growth < 24 << 20, f"RSS grew by {growth / 2**20:.1f} MiB for a 200 MiB file"
        # SIGTERM: finishes open requests and exits 0
        process.terminate()
        assert process.wait(timeout=15) == 0
        logged = log_path.read_text()
        assert TOKEN not in logged and big_immich.api_key not in logged
        assert f"GET /api/immich/assets/{asset.id}/file -> 200" in logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# -- the command ------------------------------------------------------------------------------


def _serve_settings(*argv: str, env: dict[str, str] | None = None) -> options.Settings:
    from immichfs.cli import build_parser

    args = build_parser().parse_args(["serve", "--config", os.devnull, *argv])
    return options.load_settings(args, env=env or {})


def test_serve_binds_loopback_8080_by_default() -> None:
    settings = _serve_settings()
    assert (settings.gateway_host, settings.gateway_port) == ("127.0.0.1", 8080)
    settings = _serve_settings("--host", "::1", "--port", "9000")
    assert (settings.gateway_host, settings.gateway_port) == ("::1", 9000)
    settings = _serve_settings(
        env={"IMMICHFS_GATEWAY_PORT": "9001", "IMMICHFS_GATEWAY_TOKEN": TOKEN}
    )
    assert settings.gateway_port == 9001
    assert settings.gateway_token == TOKEN
    assert TOKEN not in repr(settings)


def test_serve_refuses_the_token_as_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _serve_settings("--gateway-token", TOKEN)
    assert info.value.code == 2
    assert "ps" in capsys.readouterr().err


def test_serve_help_explains_the_loopback_default() -> None:
    import argparse

    from immichfs.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "127.0.0.1" in text and "IMMICHFS_GATEWAY_TOKEN" in text
    assert "anyone who can connect" in text


def test_serve_on_a_busy_port_fails_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = clean_env()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "immichfs",
                "serve",
                "--port",
                str(port),
                "--config",
                os.devnull,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"immichfs serve: cannot listen on 127.0.0.1:{port}"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("fake_immich", ["3.2.0"], indirect=True)
async def test_file_edited(client: httpx.AsyncClient, fake_library: Any) -> None:
    asset = by_name(fake_library, "Kinkaku-ji.jpg")
    assert asset.is_edited
    path = f"/api/immich/assets/{asset.id}/file"
    edited = await client.get(path, params={"edited": "true"})
    assert edited.status_code == 200
    assert edited.content == fake_library.edited_content(asset.id)
    assert edited.headers["content-length"] == str(len(edited.content))
    assert edited.headers["content-type"] == "image/jpeg"
    tail = await client.get(path, params={"edited": "true"}, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206
    assert tail.content == fake_library.edited_content(asset.id)[-100:]
    original = await client.get(path)
    assert original.content == fake_library.content(asset.id)
    bad = await client.get(path, params={"edited": "maybe"})
    assert_error(bad, 400, "bad_request", "edited")
