"""``/assets/*``: statistics, one asset, its original, thumbnails and video playback."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from immichfs_fake import dto, media
from immichfs_fake.httpd import (
    Body,
    HttpError,
    Request,
    Response,
    http_date,
    parse_range,
    send_file,
)
from immichfs_fake.library import FILE_THRESHOLD, FakeAsset

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def asset_statistics(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    visibility = req.arg("visibility")
    if visibility is not None and visibility not in dto.VISIBILITIES:
        raise srv.validation(
            "visibility",
            "visibility must be one of the following values: " + ", ".join(dto.VISIBILITIES),
            "invalid_value",
            "Invalid option",
        )
    favorite = req.arg("isFavorite")
    trashed = req.arg("isTrashed") == "true"
    images = videos = total = 0
    for a in srv.library.sorted_assets():
        if a.owner_id != srv.user.id or a.visibility == "locked":
            continue
        if visibility is not None:
            if a.visibility != visibility:
                continue
        elif a.visibility not in ("timeline", "archive"):
            continue
        if a.is_trashed != trashed:
            continue
        if favorite is not None and a.is_favorite != (favorite == "true"):
            continue
        total += 1
        images += a.type == "IMAGE"
        videos += a.type == "VIDEO"
    return srv.json_response({"images": images, "videos": videos, "total": total})


def asset_info(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    asset = srv.asset_for(m["id"], "asset.read")
    return srv.json_response(
        dto.asset(srv.library, asset, srv.version_info, srv.user.id, full=True)
    )


def file_response(srv: FakeImmich, req: Request, asset: FakeAsset, download_name: str) -> Response:
    """The asset's original bytes as ``res.sendFile`` sends them."""
    lib = srv.library

    def content() -> bytes | Path:
        return lib.content_path(asset.id) if asset.size > FILE_THRESHOLD else lib.content(asset.id)

    return send_file(
        req,
        size=asset.size,
        mtime=asset.file_modified_at,
        content_type=asset.mime_type,
        download_name=download_name,
        cache_control=srv.cache_control(),
        content=content,
        version=srv.version_info,
        faults=srv.faults,
    )


def download_name(asset: FakeAsset, extension: str | None = None) -> str:
    stem = asset.original_file_name.rpartition(".")[0] or asset.original_file_name
    return stem + (extension if extension is not None else asset.extension)


def wants_edited(srv: FakeImmich, req: Request) -> bool:
    """``edited=true`` (Immich 2.5+; older servers ignore the parameter)."""
    return srv.version_info >= (2, 5, 0) and req.arg("edited") == "true"


def edited_response(srv: FakeImmich, req: Request, asset: FakeAsset) -> Response:
    """The edited rendition as ``res.sendFile`` sends it (a JPEG: the download name
    takes the served file's extension)."""
    lib = srv.library
    size = asset.edited_size
    assert size is not None and asset.edited_at is not None

    def content() -> bytes | Path:
        if size > FILE_THRESHOLD:
            return lib.edited_content_path(asset.id)
        return lib.edited_content(asset.id)

    return send_file(
        req,
        size=size,
        mtime=asset.edited_at,
        content_type="image/jpeg",
        download_name=download_name(asset, ".jpeg"),
        cache_control=srv.cache_control(),
        content=content,
        version=srv.version_info,
        faults=srv.faults,
    )


def asset_original(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    asset = srv.asset_for(m["id"], "asset.download")
    if asset.is_edited and wants_edited(srv, req):
        return edited_response(srv, req, asset)
    return file_response(srv, req, asset, download_name(asset))


def asset_playback(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    asset = srv.asset_for(m["id"], "asset.view")
    if asset.type != "VIDEO":
        if srv.version_info >= (3, 0, 0):
            raise HttpError(404, "Not Found")
        raise HttpError(404, "Asset not found or asset is not a video")
    return file_response(srv, req, asset, download_name(asset))


def asset_thumbnail(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    asset = srv.asset_for(m["id"], "asset.view")
    size = req.arg("size") or "thumbnail"
    allowed = ["preview", "thumbnail"]
    if srv.version_info >= (1, 131, 0):
        allowed.insert(0, "fullsize")
    if srv.version_info >= (3, 0, 0):
        allowed.append("original")
    if size not in allowed:
        raise srv.validation(
            "size",
            "size must be one of the following values: " + ", ".join(allowed),
            "invalid_value",
            "Invalid option",
        )
    if size in ("fullsize", "original"):
        # only the endpoint's own parameters travel (never apiKey)
        rest = {k: v for k, v in req.query.items() if k in ("edited", "key", "slug")}
        query = "&".join(f"{quote(k)}={quote(v[-1])}" for k, v in rest.items())
        if asset.type == "IMAGE" or size == "original":
            location = "original" + (f"?{query}" if query else "")
        else:
            location = "thumbnail?" + "&".join(filter(None, [query, "size=preview"]))
        return Response(302, [("Location", location), ("Content-Length", "0")])
    edited = asset.is_edited and wants_edited(srv, req)
    data, content_type = media.thumbnail(size, asset.edited_uid if edited else asset.uid)
    ext = ".webp" if content_type == "image/webp" else ".jpeg"
    stem = asset.original_file_name.rpartition(".")[0] or asset.original_file_name
    etag = f'W/"{len(data):x}-{int(asset.updated_at.timestamp() * 1000):x}"'
    headers = [
        ("Cache-Control", srv.cache_control()),
        (
            "Content-Disposition",
            "inline; filename*=UTF-8''" + quote(f"{stem}_{size}{ext}", safe=""),
        ),
        ("Accept-Ranges", "bytes"),
        ("Last-Modified", http_date(asset.updated_at)),
        ("ETag", etag),
        ("Content-Type", content_type),
    ]
    if req.headers.get("If-None-Match") == etag:
        return Response(304, headers[:-1])
    # res.sendFile, as for originals: one satisfiable range gets 206 (what the client
    # uses to learn a thumbnail's length with ``Range: bytes=0-0``); anything else
    # the whole file (unsatisfiable ranges of a thumbnail are not exercised)
    range_header = req.headers.get("Range")
    if range_header and srv.faults.take("ignore_range", req.path) is None:
        parsed = parse_range(range_header, len(data))
        if isinstance(parsed, tuple):
            start, end = parsed
            headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
            return Response(206, headers, Body(data=data, offset=start, length=end - start + 1))
    return Response(200, headers, Body(data=data, length=len(data)))
