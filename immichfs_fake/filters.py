"""The search filter language of ``/search/metadata``, ``/search/statistics`` and ``/search/smart``.

:func:`parse` validates a request body (class-validator messages before v3,
zod issues from v3), :func:`matcher` turns it into a predicate over assets,
:func:`page` answers one page of a search; :func:`smart_rank` orders assets
for a smart search without a model (word overlap, deterministic ties).
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from immichfs_fake import dto
from immichfs_fake.dto import JSON, Version
from immichfs_fake.httpd import HttpError, Response
from immichfs_fake.library import FakeAsset, FakeLibrary

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich

VISIBILITIES = ("archive", "timeline", "hidden", "locked")
TYPES = ("IMAGE", "VIDEO", "AUDIO", "OTHER")


def fold(text: str) -> str:
    """Case- and accent-insensitive form, as Immich's ``f_unaccent`` + ILIKE."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def default_visibility(version: Version) -> tuple[str, ...]:
    if version >= (3, 0, 0):
        return ("timeline", "archive", "hidden")
    return ("timeline",)


def parse(srv: FakeImmich, body: JSON, *, paged: bool, default_size: int) -> JSON:
    f = dict(body)
    if paged:
        for name, default, low, high in (("page", 1, 1, None), ("size", default_size, 1, 1000)):
            value = f.get(name, default)
            if value is None:
                value = default
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise srv.validation(
                    name,
                    f"{name} must be an integer number",
                    "invalid_type",
                    "Invalid input: expected int",
                )
            value = int(value)
            if value < low:
                raise srv.validation(
                    name,
                    f"{name} must not be less than {low}",
                    "too_small",
                    f"Too small: expected number to be >={low}",
                )
            if high is not None and value > high:
                raise srv.validation(
                    name,
                    f"{name} must not be greater than {high}",
                    "too_big",
                    f"Too big: expected number to be <={high}",
                )
            f[name] = value
    for name, allowed in (
        ("type", TYPES),
        ("visibility", VISIBILITIES),
        ("order", ("asc", "desc")),
    ):
        value = f.get(name)
        if value is not None and value not in allowed:
            raise srv.validation(
                name,
                f"{name} must be one of the following values: {', '.join(allowed)}",
                "invalid_value",
                "Invalid option",
            )
    if isinstance(f.get("id"), str):
        srv.check_id(f["id"], "id")
    rating = f.get("rating")
    if rating is not None:
        low = 1 if srv.version_info >= (3, 0, 0) else -1  # 0 and -1 went away in v3
        if isinstance(rating, bool) or not isinstance(rating, int) or not low <= rating <= 5:
            raise srv.validation(
                "rating",
                f"rating must not be less than {low}",
                "too_small",
                f"Too small: expected number to be >={low}",
            )
    for name in ("personIds", "albumIds", "tagIds"):
        value = f.get(name)
        if value is None:
            continue
        if not isinstance(value, list):
            raise srv.validation(
                name,
                f"{name} must be an array",
                "invalid_type",
                "Invalid input: expected array",
            )
        for item in value:
            srv.check_id(str(item), name)
    for name in (
        "takenAfter",
        "takenBefore",
        "updatedAfter",
        "updatedBefore",
        "createdAfter",
        "createdBefore",
        "trashedAfter",
        "trashedBefore",
    ):
        value = f.get(name)
        if value is None:
            continue
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise srv.validation(
                name,
                f"{name} must be a Date instance",
                "invalid_type",
                "Invalid input: expected date",
            ) from None
        f[name] = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if f.get("visibility") == "locked":
        raise HttpError(401, "Elevated permission is required")
    if f.get("albumIds"):
        for album_id in f["albumIds"]:
            if not srv.album_access(album_id.lower()):
                raise HttpError(400, "Not found or no album.read access")
    return f


def matcher(srv: FakeImmich, f: JSON) -> Callable[[FakeAsset], bool]:
    lib = srv.library
    me = srv.user.id
    album_ids = [a.lower() for a in f.get("albumIds") or []]
    in_albums: set[str] | None = None
    if album_ids:
        sets = [set(lib.albums[a].asset_ids) for a in album_ids if a in lib.albums]
        in_albums = set.intersection(*sets) if sets else set()
    visibility = f.get("visibility")
    allowed_vis = (visibility,) if visibility else default_visibility(srv.version_info)
    with_deleted = (
        bool(f.get("withDeleted"))
        or any(f.get(k) is not None for k in ("trashedAfter", "trashedBefore"))
        or f.get("isOffline") is not None
    )
    tag_filter = f.get("tagIds", ())
    tag_values: list[str] = []
    if tag_filter:
        tag_values = [lib.tags[t.lower()].value for t in tag_filter if t.lower() in lib.tags]
        if len(tag_values) != len(tag_filter):
            return lambda a: False
    not_in_album: set[str] | None = None
    if f.get("isNotInAlbum"):
        not_in_album = {i for al in list(lib.albums.values()) for i in list(al.asset_ids)}
    checksum = f.get("checksum")
    checksum_raw: bytes | None = None
    if isinstance(checksum, str):
        try:
            checksum_raw = (
                base64.b64decode(checksum) if len(checksum) == 28 else bytes.fromhex(checksum)
            )
        except ValueError:
            checksum_raw = b""
    name_part = fold(f["originalFileName"]) if f.get("originalFileName") else None
    path_part = fold(f["originalPath"]) if f.get("originalPath") else None
    desc_part = fold(f["description"]) if f.get("description") else None
    windows = [
        (key, attr, after)
        for key, attr, after in (
            ("takenAfter", "file_created_at", True),
            ("takenBefore", "file_created_at", False),
            ("updatedAfter", "updated_at", True),
            ("updatedBefore", "updated_at", False),
            ("createdAfter", "created_at", True),
            ("createdBefore", "created_at", False),
            ("trashedAfter", "deleted_at", True),
            ("trashedBefore", "deleted_at", False),
        )
        if f.get(key) is not None
    ]
    exact = [
        (k, attr)
        for k, attr in (
            ("city", "city"),
            ("state", "state"),
            ("country", "country"),
            ("make", "make"),
            ("model", "model"),
            ("lensModel", "lens_model"),
        )
        if k in f
    ]

    def match(a: FakeAsset) -> bool:
        if a.visibility not in allowed_vis or a.visibility == "locked":
            return False
        if in_albums is not None:
            if a.id not in in_albums:
                return False
        elif a.owner_id != me:
            return False
        if a.is_trashed and not with_deleted:
            return False
        if f.get("type") and a.type != f["type"]:
            return False
        if f.get("isFavorite") is not None and (a.is_favorite and a.owner_id == me) != bool(
            f["isFavorite"]
        ):
            return False
        if f.get("isMotion") is not None and (a.live_photo_video_id is not None) != bool(
            f["isMotion"]
        ):
            return False
        if f.get("isOffline") is True:
            return False
        if f.get("id") and a.id != f["id"].lower():
            return False
        if checksum_raw is not None and lib.checksum_raw(a.id) != checksum_raw:
            return False
        if name_part is not None and name_part not in fold(a.original_file_name):
            return False
        if path_part is not None and path_part not in fold(a.original_path):
            return False
        if desc_part is not None and desc_part not in fold(a.description):
            return False
        for key, attr, after in windows:
            value = getattr(a, attr)
            if value is None:
                return False
            if after and value < f[key]:
                return False
            if not after and value > f[key]:
                return False
        for key, attr in exact:
            if getattr(a, attr) != f[key]:
                return False
        if "rating" in f and a.rating != f["rating"]:
            return False
        if f.get("personIds") and not all(p.lower() in a.person_ids for p in f["personIds"]):
            return False
        if "tagIds" in f:
            if tag_filter is None:
                if a.tag_ids:
                    return False
            elif tag_values:
                values = [lib.tags[t].value for t in a.tag_ids if t in lib.tags]
                for wanted in tag_values:
                    if not any(v == wanted or v.startswith(wanted + "/") for v in values):
                        return False
        return not (not_in_album is not None and a.id in not_in_album)

    return match


def page(srv: FakeImmich, f: JSON, ordered: Iterator[FakeAsset]) -> Response:
    page, size = f["page"], f["size"]
    skip = (page - 1) * size
    items: list[FakeAsset] = []
    for asset in ordered:
        if skip:
            skip -= 1
            continue
        items.append(asset)
        if len(items) > size:
            break
    has_next = len(items) > size
    items = items[:size]
    me = srv.user.id
    dtos = [
        dto.asset(
            srv.library,
            a,
            srv.version_info,
            me,
            with_exif=bool(f.get("withExif")),
            with_people=bool(f.get("withPeople")),
        )
        for a in items
    ]
    return srv.json_response(
        {
            "albums": {"total": 0, "count": 0, "items": [], "facets": []},
            "assets": {
                "total": len(dtos),
                "count": len(dtos),
                "items": dtos,
                "facets": [],
                "nextPage": str(page + 1) if has_next else None,
            },
        }
    )


def search_text(lib: FakeLibrary, a: FakeAsset) -> str:
    """What a smart search without a model matches words against."""
    parts = [a.original_file_name, a.description, a.city or "", a.country or ""]
    parts += [lib.people[p].name for p in a.person_ids if p in lib.people]
    parts += [lib.tags[t].value for t in a.tag_ids if t in lib.tags]
    parts.append("video" if a.type == "VIDEO" else "photo")
    return " ".join(parts)


def smart_rank(
    lib: FakeLibrary, assets: Iterable[FakeAsset], query: str, seed: FakeAsset | None = None
) -> Iterator[FakeAsset]:
    """``assets`` best first for ``query`` (or, without words, for ``seed``'s text):
    whole words count twice, substrings once; ties broken by a hash standing in
    for vector distance, deterministic per query."""
    words = [w for w in re.split(r"\W+", fold(query)) if w]
    if not words and seed is not None:
        words = re.split(r"\W+", fold(search_text(lib, seed)))
    key = "/".join(words)

    def score(a: FakeAsset) -> tuple[int, str]:
        text = search_text(lib, a)
        tokens = set(re.split(r"\W+", fold(text)))
        folded = fold(text)
        total = sum(2 if w in tokens else 1 if w in folded else 0 for w in words)
        tie = hashlib.blake2b(f"{key}/{a.id}".encode(), digest_size=8).hexdigest()
        return (-total, tie)

    return iter(sorted(assets, key=score))
