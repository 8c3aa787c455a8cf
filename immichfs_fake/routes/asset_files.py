"""``/asset-files`` (Immich 3.2, alpha): the files Immich generated for an asset.

Thumbnails and previews, the edited renditions, XMP sidecars; listed with
``assetFile.read``, downloaded with ``assetFile.download``. The DTO carries
no asset id and no byte size (learn it from the download's headers).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from immichfs_fake import dto
from immichfs_fake.httpd import HttpError, Request, Response, send_file
from immichfs_fake.library import FakeAssetFile

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def _bool_arg(srv: FakeImmich, req: Request, name: str) -> bool | None:
    raw = req.arg(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise srv.validation(
            name, f"{name} must be a boolean value", "invalid_type", "Invalid input"
        )
    return raw == "true"


def search(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    raw_id = req.arg("assetId")
    if raw_id is None:
        raise srv.validation(
            "assetId", "assetId must be a UUID", "invalid_type", "Invalid input: expected string"
        )
    asset = srv.asset_for(srv.check_id(raw_id, "assetId"), "assetFile.read")
    type_ = req.arg("type")
    if type_ is not None and type_ not in dto.ASSET_FILE_TYPES:
        raise srv.validation(
            "type",
            "type must be one of the following values: " + ", ".join(dto.ASSET_FILE_TYPES),
            "invalid_value",
            "Invalid option",
        )
    edited = _bool_arg(srv, req, "isEdited")
    progressive = _bool_arg(srv, req, "isProgressive")
    transparent = _bool_arg(srv, req, "isTransparent")
    files = [
        f
        for f in srv.library.asset_files(asset.id)
        if (type_ is None or f.type == type_)
        and (edited is None or f.is_edited == edited)
        and progressive in (None, False)  # the fake never writes progressive JPEGs
        and transparent in (None, False)
    ]
    return srv.json_response([dto.asset_file(f) for f in files])


def file_for(srv: FakeImmich, raw_id: str, permission: str) -> FakeAssetFile:
    file = srv.library.asset_file(srv.check_id(raw_id))
    if file is None:
        raise HttpError(400, f"Not found or no {permission} access")
    asset = srv.library.get(file.asset_id)
    if asset is None or not srv.can_read(asset):
        raise HttpError(400, f"Not found or no {permission} access")
    return file


def info(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    return srv.json_response(dto.asset_file(file_for(srv, m["id"], "assetFile.read")))


def download(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    file = file_for(srv, m["id"], "assetFile.download")
    lib = srv.library
    content = lib.file_content(file)
    size = content.stat().st_size if not isinstance(content, bytes) else len(content)
    name = file.path.rpartition("/")[2]
    return send_file(
        req,
        size=size,
        mtime=file.updated_at,
        content_type=file.mime_type,
        download_name=name,
        cache_control=srv.cache_control(),
        content=lambda: content,
        version=srv.version_info,
        faults=srv.faults,
    )
