"""The size of an edited rendition: one HEAD, or the total of a one-byte range when a
proxy drops HEAD's Content-Length (httpx's MockTransport stands in for such a proxy)."""

from __future__ import annotations

import httpx

from immichfs.client.connector import ImmichConnector

ASSET = "0b5c3f3e-2d1a-4f6b-8c7d-9e0f1a2b3c4d"
EDITED = b"E" * 4321


def transport(*, head_length: bool) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/server/version":
            return httpx.Response(200, json={"major": 3, "minor": 2, "patch": 0})
        assert request.url.path == f"/api/assets/{ASSET}/original"
        assert request.url.params.get("edited") == "true"
        if request.method == "HEAD":
            headers = {"content-type": "image/jpeg"}
            if head_length:
                headers["content-length"] = str(len(EDITED))
            return httpx.Response(200, headers=headers)
        assert request.headers["range"] == "bytes=0-0"
        return httpx.Response(
            206, headers={"content-range": f"bytes 0-0/{len(EDITED)}"}, content=EDITED[:1]
        )

    return httpx.MockTransport(handle), seen


async def test_edited_size_from_head() -> None:
    mock, seen = transport(head_length=True)
    async with ImmichConnector("http://immich.test", "k" * 20, transport=mock) as immich:
        assert await immich.head_original_file(ASSET, edited=True) == (len(EDITED), "image/jpeg")
    assert [r.method for r in seen] == ["GET", "HEAD"]


async def test_edited_size_from_a_one_byte_range_when_head_has_no_length() -> None:
    mock, seen = transport(head_length=False)
    async with ImmichConnector("http://immich.test", "k" * 20, transport=mock) as immich:
        assert await immich.head_original(ASSET, edited=True) == len(EDITED)
    assert [r.method for r in seen] == ["GET", "HEAD", "GET"]


async def test_thumbnails_ask_for_edits_only_where_there_are_edits() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/server/version":
            return httpx.Response(200, json={"major": 2, "minor": 4, "patch": 0})
        return httpx.Response(200, headers={"content-type": "image/jpeg"}, content=b"jpeg")

    mock = httpx.MockTransport(handle)
    async with ImmichConnector("http://immich.test", "k" * 20, transport=mock) as immich:
        await immich.get_thumbnail_response(ASSET, "preview", edited=True)
    assert "edited" not in seen[-1].url.params
