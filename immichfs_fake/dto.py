"""JSON shapes of the fake server, per emulated Immich version.

Each function maps library objects to the DTO the real server sends, with the
fields the given version's OpenAPI spec describes (``tests/test_contract.py``
checks them): ``duration`` a string before v3 and milliseconds from v3 on,
``deviceAssetId``/``deviceId`` only before v3, album ``owner``/``assets``
only before v3, ``createdAt`` from v1.140, ``width``/``height``/``isEdited``
from v2.5.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from immichfs_fake.library import (
    FakeAlbum,
    FakeAsset,
    FakeAssetFile,
    FakeLibrary,
    FakePerson,
    FakeTag,
    FakeUser,
    make_uuid,
)

log = logging.getLogger(__name__)

Version = tuple[int, int, int]
JSON = dict[str, Any]

#: ``AssetVisibility``, ``AssetTypeEnum`` and ``AssetFileType`` of the specs
VISIBILITIES = ("archive", "timeline", "hidden", "locked")
ASSET_TYPES = ("IMAGE", "VIDEO", "AUDIO", "OTHER")
ASSET_FILE_TYPES = ("fullsize", "preview", "thumbnail", "sidecar", "encoded_video")


def iso(value: datetime) -> str:
    """Immich's instant format: UTC with milliseconds and ``Z``."""
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


def iso_local(value: datetime) -> str:
    """``localDateTime``: wall-clock time serialised with a (misleading) ``Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def duration(asset: FakeAsset, version: Version) -> str | int | None:
    if version >= (3, 0, 0):
        return asset.duration_ms if asset.type == "VIDEO" else None
    if asset.type != "VIDEO" or not asset.duration_ms:
        return "0:00:00.00000"
    seconds, ms = divmod(asset.duration_ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}.{ms:03d}000"


def thumbhash(asset: FakeAsset) -> str:
    return base64.b64encode(hashlib.blake2b(asset.uid, digest_size=18).digest()).decode()


def user(u: FakeUser) -> JSON:
    return {
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "avatarColor": u.avatar_color,
        "profileImagePath": "",
        "profileChangedAt": iso(u.created_at),
    }


def user_admin(u: FakeUser, lib: FakeLibrary, version: Version = (0, 0, 0)) -> JSON:
    usage = sum(a.size for a in lib.sorted_assets() if a.owner_id == u.id)
    dto: JSON = {
        **user(u),
        "isAdmin": u.is_admin,
        "storageLabel": "admin" if u.is_admin else None,
        "shouldChangePassword": False,
        "createdAt": iso(u.created_at),
        "updatedAt": iso(u.created_at),
        "deletedAt": None,
        "oauthId": "",
        "quotaSizeInBytes": None,
        "quotaUsageInBytes": usage,
        "status": "active",
        "license": None,
    }
    if version >= (3, 2, 0):
        # required and not nullable in the 3.2 spec: every user is in a cluster group
        dto["clusterGroupId"] = make_uuid(lib.seed, "cluster-group", u.id)
    return dto


def _offset_zone(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def exif(lib: FakeLibrary, asset: FakeAsset, version: Version) -> JSON:
    is_image = asset.type == "IMAGE"
    return {
        "make": asset.make,
        "model": asset.model,
        "exifImageWidth": asset.width,
        "exifImageHeight": asset.height,
        "fileSizeInByte": asset.size,
        "orientation": "1" if is_image else None,
        "dateTimeOriginal": iso(asset.file_created_at),
        "modifyDate": iso(asset.file_modified_at),
        "timeZone": asset.time_zone or _offset_zone(asset.local_offset_minutes),
        "lensModel": asset.lens_model,
        "fNumber": 1.8 if is_image else None,
        "focalLength": 5.1 if is_image else None,
        "iso": 100 if is_image else None,
        "exposureTime": "1/120" if is_image else None,
        "latitude": asset.latitude,
        "longitude": asset.longitude,
        "city": asset.city,
        "state": asset.state,
        "country": asset.country,
        "description": asset.description,
        "projectionType": None,
        "rating": asset.rating,
    }


def person(p: FakePerson, version: Version) -> JSON:
    return {
        "id": p.id,
        "name": p.name,
        "birthDate": p.birth_date,
        "thumbnailPath": f"/data/thumbs/{p.owner_id}/{p.id[:2]}/{p.id[2:4]}/{p.id}.jpeg",
        "isHidden": p.is_hidden,
        "isFavorite": p.is_favorite,
        "color": p.color,
        "updatedAt": iso(p.updated_at),
    }


def _face_id(asset: FakeAsset, p: FakePerson) -> str:
    from immichfs_fake.library import make_uuid

    return make_uuid("face", asset.id, p.id)


def person_with_faces(asset: FakeAsset, p: FakePerson, version: Version) -> JSON:
    dto = person(p, version)
    if version < (3, 0, 0):
        dto["faces"] = [
            {
                "id": _face_id(asset, p),
                "imageWidth": asset.width,
                "imageHeight": asset.height,
                "boundingBoxX1": 10,
                "boundingBoxY1": 10,
                "boundingBoxX2": 60,
                "boundingBoxY2": 70,
                "sourceType": "machine-learning",
            }
        ]
    return dto


def tag(t: FakeTag) -> JSON:
    dto: JSON = {
        "id": t.id,
        "name": t.name,
        "value": t.value,
        "createdAt": iso(t.created_at),
        "updatedAt": iso(t.updated_at),
    }
    if t.parent_id:
        dto["parentId"] = t.parent_id
    if t.color:
        dto["color"] = t.color
    return dto


def asset(
    lib: FakeLibrary,
    a: FakeAsset,
    version: Version,
    caller_id: str,
    *,
    with_exif: bool = False,
    with_people: bool = False,
    full: bool = False,
) -> JSON:
    """``AssetResponseDto``; ``full`` adds owner, tags, people and exif as ``GET /assets/{id}``."""
    mine = a.owner_id == caller_id
    dto: JSON = {
        "id": a.id,
        "ownerId": a.owner_id,
        "type": a.type,
        "originalFileName": a.original_file_name,
        "originalPath": a.original_path,
        "originalMimeType": a.mime_type,
        "fileCreatedAt": iso(a.file_created_at),
        "fileModifiedAt": iso(a.file_modified_at),
        "localDateTime": iso_local(a.local_date_time),
        "updatedAt": iso(a.updated_at),
        "isFavorite": a.is_favorite and mine,
        "isArchived": a.visibility == "archive",
        "isTrashed": a.is_trashed,
        "isOffline": False,
        "visibility": a.visibility,
        "duration": duration(a, version),
        "checksum": lib.checksum(a.id),
        "thumbhash": thumbhash(a),
        "hasMetadata": True,
        "livePhotoVideoId": a.live_photo_video_id,
        "duplicateId": None,
        "libraryId": None,
        "people": [],
    }
    if version < (3, 0, 0):
        dto["deviceAssetId"] = f"{a.original_file_name}-{a.size}"
        dto["deviceId"] = "immichfs-fake-device"
        dto["resized"] = True
    if version >= (1, 140, 0):
        dto["createdAt"] = iso(a.created_at)
    if version >= (2, 5, 0):
        dto["isEdited"] = a.is_edited
        dto["width"] = a.width
        dto["height"] = a.height
    if with_exif or full:
        dto["exifInfo"] = exif(lib, a, version)
    if (with_people or full) and mine:
        dto["people"] = [
            person_with_faces(a, lib.people[pid], version)
            for pid in a.person_ids
            if pid in lib.people
        ]
    if full:
        dto["owner"] = user(lib.users[a.owner_id])
        dto["tags"] = [tag(lib.tags[tid]) for tid in a.tag_ids if tid in lib.tags] if mine else []
        dto["stack"] = None
    return dto


def album(
    lib: FakeLibrary,
    al: FakeAlbum,
    version: Version,
    caller_id: str,
    *,
    assets: list[JSON] | None = None,
) -> JSON:
    members = [lib.assets[i] for i in al.asset_ids if i in lib.assets]
    live = [a for a in members if not a.is_trashed and a.visibility != "locked"]
    owner = lib.users[al.owner_id]
    album_users = [
        {"user": user(lib.users[uid]), "role": role} for uid, role in al.members if uid in lib.users
    ]
    dto: JSON = {
        "id": al.id,
        "albumName": al.name,
        "description": al.description,
        "albumThumbnailAssetId": al.thumbnail_asset_id,
        "assetCount": len(live),
        "createdAt": iso(al.created_at),
        "updatedAt": iso(al.updated_at),
        "shared": bool(al.members),
        "hasSharedLink": False,
        "isActivityEnabled": True,
        "order": "desc",
    }
    if live:
        if version >= (3, 2, 0):
            # "UTC representation of (local) start date": local wall-clock time with a Z,
            # as localDateTime is written
            local = [a.local_date_time for a in live]
            dto["startDate"] = iso_local(min(local))
            dto["endDate"] = iso_local(max(local))
        else:
            dates = [a.file_created_at for a in live]
            dto["startDate"] = iso(min(dates))
            dto["endDate"] = iso(max(dates))
        dto["lastModifiedAssetTimestamp"] = iso(max(a.updated_at for a in live))
    if version >= (3, 0, 0):
        dto["albumUsers"] = [{"user": user(owner), "role": "owner"}, *album_users]
    else:
        dto["albumUsers"] = album_users
        dto["owner"] = user(owner)
        dto["ownerId"] = owner.id
        dto["assets"] = assets if assets is not None else []
    if version >= (2, 2, 0):
        counts: dict[str, int] = {}
        for a in live:
            counts[a.owner_id] = counts.get(a.owner_id, 0) + 1
        dto["contributorCounts"] = [
            {"userId": uid, "assetCount": n} for uid, n in sorted(counts.items())
        ]
    return dto


def asset_file(f: FakeAssetFile) -> JSON:
    """``AssetFileResponseDto`` (3.2): no asset id, no byte size."""
    return {
        "id": f.id,
        "type": f.type,
        "path": f.path,
        "isEdited": f.is_edited,
        "isProgressive": False,
        "isTransparent": False,
        "createdAt": iso(f.created_at),
        "updatedAt": iso(f.updated_at),
    }
