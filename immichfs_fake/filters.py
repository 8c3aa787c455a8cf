"""The search filter language of ``/search/metadata``, ``/search/statistics`` and ``/search/smart``.

:func:`parse` validates a request body (class-validator messages before v3,
zod issues from v3), :func:`matcher` turns it into a predicate over assets
(the flat fields, and from 3.2 the filter tree of :mod:`immichfs_fake.filter_tree`),
:func:`ordered`/:func:`after` order and resume a 3.2 search at a cursor,
:func:`page` answers one page; :func:`smart_rank` orders assets for a smart
search without a model (word overlap, deterministic ties).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from immichfs_fake import dto, filter_tree
from immichfs_fake.dto import JSON
from immichfs_fake.filter_tree import default_visibility, fold
from immichfs_fake.httpd import HttpError, Response
from immichfs_fake.library import FakeAsset, FakeLibrary

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def parse(
    srv: FakeImmich, body: JSON, *, paged: bool, default_size: int, cursor: bool = False
) -> JSON:
    """A search body validated and normalised. ``cursor``: the endpoint takes
    ``orderBy`` and ``cursor`` (``/search/metadata`` from 3.2); ``filter`` is
    read from 3.2 on (older servers drop unknown fields)."""
    f = dict(body)
    v2 = srv.version_info >= V2_SINCE
    for name in ("filter", "orderBy", "cursor"):
        if not v2 or (name != "filter" and not cursor):
            f.pop(name, None)
    if f.get("filter") is not None:
        f["filter"] = filter_tree.parse(srv, f["filter"])
    else:
        f.pop("filter", None)
    if cursor and v2:
        f["orderBy"] = _order_by(srv, f)
        if f.get("cursor") is not None:
            if body.get("page") is not None:
                raise filter_tree.invalid(
                    ["cursor"], "custom", "cursor and page cannot be used together"
                )
            f["after"] = decode_cursor(f["cursor"], f["orderBy"])
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
        ("type", dto.ASSET_TYPES),
        ("visibility", dto.VISIBILITIES),
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
    """The predicate of a parsed search: flat fields, and from 3.2 the filter tree."""
    tree = f.get("filter")
    flat = _flat_matcher(srv, f, implicit=tree is None)
    if tree is None:
        return flat
    branches = [
        filter_tree.conjunction(srv, conditions, flat_scope(f))
        for conditions in filter_tree.conjunctions(tree)
    ]
    return lambda a: flat(a) and any(branch(a) for branch in branches)


def flat_scope(f: JSON) -> filter_tree.FlatScope:
    """What the deprecated flat fields of a request already decide for the tree's
    implicit conditions (visibility, trash, album scope)."""
    return filter_tree.FlatScope(
        visibility=f.get("visibility") is not None,
        with_deleted=bool(f.get("withDeleted"))
        or any(f.get(k) is not None for k in ("trashedAfter", "trashedBefore"))
        or f.get("isOffline") is not None,
        albums=bool(f.get("albumIds")),
    )


# -- order and cursors (search v2, Immich 3.2) --------------------------------------

V2_SINCE = (3, 2, 0)
ORDER_FIELDS = ("fileCreatedAt", "localDateTime", "fileSizeInBytes", "rating")
SortKey = tuple[tuple[int, Any], str]


def _order_by(srv: FakeImmich, f: JSON) -> tuple[str, str]:
    """(field, direction): ``orderBy``, else the deprecated ``order`` by fileCreatedAt."""
    order = f.get("orderBy")
    if order is None:
        return "fileCreatedAt", f.get("order") or "desc"
    if not isinstance(order, dict):
        raise filter_tree.invalid(["orderBy"], "invalid_type", "Invalid input: expected object")
    field = order.get("field", "fileCreatedAt")
    direction = order.get("direction", "desc")
    if field not in ORDER_FIELDS:
        raise filter_tree.invalid(
            ["orderBy", "field"],
            "invalid_value",
            "Invalid option: expected one of " + "|".join(ORDER_FIELDS),
        )
    if direction not in ("asc", "desc"):
        raise filter_tree.invalid(
            ["orderBy", "direction"],
            "invalid_value",
            'Invalid option: expected one of "asc"|"desc"',
        )
    return field, direction


def sort_key(a: FakeAsset, field: str) -> SortKey:
    """Where ``a`` sorts by ``field`` ascending, ties by id; nulls sort last
    ascending and first descending (PostgreSQL's default)."""
    value: Any
    if field == "fileCreatedAt":
        value = a.file_created_at.timestamp()
    elif field == "localDateTime":
        value = a.local_date_time.replace(tzinfo=UTC).timestamp()
    elif field == "fileSizeInBytes":
        value = a.size
    else:
        value = a.rating
    return ((1, 0) if value is None else (0, value)), a.id


def ordered(srv: FakeImmich, order: tuple[str, str]) -> list[FakeAsset]:
    field, direction = order
    if field == "fileCreatedAt":  # the library keeps this order cached
        assets = srv.library.sorted_assets()
        return list(reversed(assets)) if direction == "desc" else list(assets)
    return sorted(
        srv.library.sorted_assets(),
        key=lambda a: sort_key(a, field),
        reverse=direction == "desc",
    )


def encode_cursor(a: FakeAsset, order: tuple[str, str]) -> str:
    """An opaque cursor: the sort key of the last asset returned (never an offset, so
    paging stays exact while assets come and go)."""
    (null, value), asset_id = sort_key(a, order[0])
    raw = json.dumps([order[0], order[1], null, value, asset_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: Any, order: tuple[str, str]) -> SortKey:
    bad = filter_tree.invalid(["cursor"], "custom", "Invalid cursor")
    if not isinstance(text, str) or not text:
        raise bad
    try:
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        field, direction, null, value, asset_id = raw
    except (ValueError, TypeError):
        raise bad from None
    if (field, direction) != order or null not in (0, 1) or not isinstance(asset_id, str):
        raise bad  # a cursor continues the ordering it was made for
    return (null, value), asset_id


def after(key: SortKey, order: tuple[str, str]) -> Callable[[FakeAsset], bool]:
    """Assets strictly past ``key`` in the ordering."""
    field, direction = order
    if direction == "asc":
        return lambda a: sort_key(a, field) > key
    return lambda a: sort_key(a, field) < key


def _flat_matcher(srv: FakeImmich, f: JSON, *, implicit: bool) -> Callable[[FakeAsset], bool]:
    """The flat fields' predicate. ``implicit``: with the conditions a request gets
    without asking (default visibility, own assets only, no trash); without it
    only what the flat fields ask (a filter tree decides the rest)."""
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
        if a.visibility == "locked":  # an API key never gets an elevated session
            return False
        if (implicit or visibility) and a.visibility not in allowed_vis:
            return False
        if in_albums is not None:
            if a.id not in in_albums:
                return False
        elif implicit and a.owner_id != me:
            return False
        if implicit and a.is_trashed and not with_deleted:
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
    """One page of ``ordered``: by page number, or from 3.2 after ``f["after"]``
    (a decoded cursor); ``nextCursor`` when ``f`` carries an ``orderBy``."""
    page, size = f["page"], f["size"]
    by_cursor = f.get("after") is not None
    order = f.get("orderBy")
    skip = 0 if by_cursor else (page - 1) * size
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
    assets: JSON = {}
    if srv.version_info >= V2_SINCE:
        # smart search takes no cursor: its nextCursor is always null
        next_cursor = None
        if has_next and order is not None:
            next_cursor = encode_cursor(items[-1], order)
        assets["nextCursor"] = next_cursor
    return srv.json_response(
        {
            "albums": {"total": 0, "count": 0, "items": [], "facets": []},
            "assets": {
                **assets,
                "total": len(dtos),
                "count": len(dtos),
                "items": dtos,
                "facets": [],
                "nextPage": str(page + 1) if has_next and not by_cursor else None,
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
