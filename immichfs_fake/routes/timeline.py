"""``/timeline/buckets`` and ``/timeline/bucket``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from immichfs_fake import dto
from immichfs_fake.dto import JSON
from immichfs_fake.httpd import HttpError, Request, Response
from immichfs_fake.library import FakeAsset

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def timeline_assets(srv: FakeImmich, req: Request) -> list[FakeAsset]:
    lib, me = srv.library, srv.user.id
    visibility = req.arg("visibility")
    if visibility is not None and visibility not in dto.VISIBILITIES:
        raise srv.validation(
            "visibility",
            "visibility must be one of the following values: " + ", ".join(dto.VISIBILITIES),
            "invalid_value",
            "Invalid option",
        )
    if visibility == "locked":
        raise HttpError(401, "Elevated permission is required")
    allowed = (visibility,) if visibility else ("timeline", "archive")
    trashed = req.arg("isTrashed") == "true"
    favorite = req.arg("isFavorite")
    album_id, person_id, tag_id = req.arg("albumId"), req.arg("personId"), req.arg("tagId")
    in_album: set[str] | None = None
    if album_id is not None:
        album_id = srv.check_id(album_id, "albumId")
        if not srv.album_access(album_id):
            raise HttpError(400, "Not found or no album.read access")
        in_album = set(lib.albums[album_id].asset_ids)
    tag_value: str | None = None
    if tag_id is not None:
        tag = lib.tags.get(srv.check_id(tag_id, "tagId"))
        if tag is None:
            raise HttpError(400, "Not found or no tag.read access")
        tag_value = tag.value
    if person_id is not None:
        person_id = srv.check_id(person_id, "personId")
    out = []
    for a in lib.sorted_assets():
        if a.visibility not in allowed or a.visibility == "locked" or a.is_trashed != trashed:
            continue
        if in_album is not None:
            if a.id not in in_album:
                continue
        elif a.owner_id != me:
            continue
        if favorite is not None and a.is_favorite != (favorite == "true"):
            continue
        if person_id is not None and person_id not in a.person_ids:
            continue
        if tag_value is not None:
            values = [lib.tags[t].value for t in a.tag_ids if t in lib.tags]
            if not any(v == tag_value or v.startswith(tag_value + "/") for v in values):
                continue
        out.append(a)
    return out


def bucket_key(srv: FakeImmich, a: FakeAsset, req: Request) -> str:
    if srv.version_info >= (3, 0, 0) and req.arg("orderBy") == "createdAt":
        return a.created_at.strftime("%Y-%m-01")
    return a.local_date_time.strftime("%Y-%m-01")


def timeline_buckets(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    counts: dict[str, int] = {}
    for a in timeline_assets(srv, req):
        key = bucket_key(srv, a, req)
        counts[key] = counts.get(key, 0) + 1
    order_desc = req.arg("order") != "asc"
    return srv.json_response(
        [{"timeBucket": k, "count": counts[k]} for k in sorted(counts, reverse=order_desc)]
    )


def timeline_bucket(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    bucket = req.arg("timeBucket")
    if not bucket or not re.match(r"^\d{4}-\d{2}-\d{2}", bucket):
        raise srv.validation(
            "timeBucket",
            "timeBucket must be a string",
            "invalid_type",
            "Invalid input: expected string",
        )
    key = bucket[:7] + "-01"
    assets = [a for a in timeline_assets(srv, req) if bucket_key(srv, a, req) == key]
    assets.sort(key=lambda a: (a.file_created_at, a.id), reverse=req.arg("order") != "asc")
    with_coordinates = req.arg("withCoordinates") == "true" and srv.version_info >= (1, 142, 0)
    columns: JSON = {
        "id": [a.id for a in assets],
        "ownerId": [a.owner_id for a in assets],
        "isImage": [a.type == "IMAGE" for a in assets],
        "isFavorite": [a.is_favorite for a in assets],
        "isTrashed": [a.is_trashed for a in assets],
        "visibility": [a.visibility for a in assets],
        "duration": [bucket_duration(srv, a) for a in assets],
        "fileCreatedAt": [dto.iso(a.file_created_at) for a in assets],
        "localOffsetHours": [a.local_offset_minutes / 60 for a in assets],
        "livePhotoVideoId": [a.live_photo_video_id for a in assets],
        "ratio": [round(a.width / a.height, 4) for a in assets],
        "thumbhash": [dto.thumbhash(a) for a in assets],
        "projectionType": [None for _ in assets],
        "city": [a.city for a in assets],
        "country": [a.country for a in assets],
    }
    if srv.version_info >= (3, 0, 0):
        columns["createdAt"] = [dto.iso(a.created_at) for a in assets]
    if with_coordinates:
        columns["latitude"] = [a.latitude for a in assets]
        columns["longitude"] = [a.longitude for a in assets]
    return srv.json_response(columns)


def bucket_duration(srv: FakeImmich, a: FakeAsset) -> Any:
    if srv.version_info >= (3, 0, 0):
        return a.duration_ms if a.type == "VIDEO" else None
    value = dto.duration(a, srv.version_info)
    return value if a.type == "VIDEO" else None
