"""``/albums`` and ``/albums/{id}``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from immichfs_fake import dto
from immichfs_fake.dto import JSON
from immichfs_fake.httpd import HttpError, Request, Response

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def albums(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    lib, me = srv.library, srv.user.id
    albums = [a for a in list(lib.albums.values()) if srv.album_access(a.id)]
    if srv.version_info >= (3, 0, 0):
        is_owned, is_shared = req.arg("isOwned"), req.arg("isShared")
        if is_owned is not None:
            albums = [a for a in albums if (a.owner_id == me) == (is_owned == "true")]
        if is_shared is not None:
            albums = [a for a in albums if bool(a.members) == (is_shared == "true")]
        if req.arg("name") is not None:
            albums = [a for a in albums if a.name == req.arg("name")]
        if req.arg("id") is not None:
            albums = [a for a in albums if a.id == str(req.arg("id")).lower()]
    else:
        shared = req.arg("shared")
        if shared is None:
            albums = [a for a in albums if a.owner_id == me]
        elif shared == "true":
            albums = [a for a in albums if a.members]
        else:
            albums = [a for a in albums if a.owner_id == me and not a.members]
    asset_id = req.arg("assetId")
    if asset_id is not None:
        srv.check_id(asset_id, "assetId")
        albums = [a for a in albums if asset_id.lower() in a.asset_ids]
    albums.sort(key=lambda a: (a.created_at, a.id), reverse=True)
    return srv.json_response([dto.album(lib, a, srv.version_info, me) for a in albums])


def album_info(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    album_id = srv.check_id(m["id"])
    lib = srv.library
    album = lib.albums.get(album_id)
    if album is None or not srv.album_access(album_id):
        raise HttpError(400, "Not found or no album.read access")
    assets: list[JSON] | None = None
    if srv.version_info < (3, 0, 0) and req.arg("withoutAssets") != "true":
        members = [lib.assets[i] for i in album.asset_ids if i in lib.assets]
        members = [a for a in members if not a.is_trashed and a.visibility != "locked"]
        members.sort(key=lambda a: (a.file_created_at, a.id), reverse=True)
        assets = [dto.asset(lib, a, srv.version_info, srv.user.id, with_exif=True) for a in members]
    return srv.json_response(dto.album(lib, album, srv.version_info, srv.user.id, assets=assets))
