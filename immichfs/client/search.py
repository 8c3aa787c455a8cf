"""The one meaning of a text search, shared by the library, the gateway and the mount.

With smart search enabled on the server (``/server/features``; ``/config`` on
3.2+) a query is CLIP search: the ``size`` best matches. Otherwise it is metadata search over
:data:`FIELDS` in that order — file names containing the query, descriptions
containing it (both case-insensitive in Immich), then exact city, country,
camera make and model — merged without repeats and cut at ``size``. Trashed
assets are never part of an answer.

:meth:`ImmichConnector.search_assets <immichfs.client.connector.ImmichConnector.search_assets>`
and :meth:`Catalog.search <immichfs.catalog.catalog.Catalog.search>` both call
:func:`search_assets`, so ``ls search/Q``, the gateway's ``POST /search`` and
the library agree on every query.

On Immich 3.2+ the searches send search v2's filter tree instead of the
deprecated flat fields: :func:`filter_tree` is that translation, with the same
meaning (see docs/CONNECTOR.md, "Search v2").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Protocol

#: metadata fields a query is matched against, in the order results are merged
FIELDS = ("originalFileName", "description", "city", "country", "make", "model")
#: Immich's largest page
MAX_PAGE_SIZE = 1000


class SearchApi(Protocol):
    """The two search endpoints (:class:`~immichfs.client.connector.ImmichConnector` has them)."""

    def iter_search_metadata(
        self, filters: Mapping[str, Any], *, page_size: int = ...
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def search_smart(
        self, query: str, *, size: int = ..., filters: Mapping[str, Any] | None = ...
    ) -> list[dict[str, Any]]: ...


async def search_assets(
    api: SearchApi,
    query: str,
    *,
    size: int,
    smart: bool,
    asset_type: str | None = None,
) -> list[dict[str, Any]]:
    """Assets (Immich's JSON) matching ``query``, best first, at most ``size``.

    ``smart`` says whether the server has smart search; ``asset_type`` is
    ``IMAGE``, ``VIDEO`` or None (any). Only timeline assets are searched.
    """
    filters: dict[str, Any] = {"visibility": "timeline"}
    if asset_type:
        filters["type"] = asset_type
    results: dict[str, dict[str, Any]] = {}

    def take(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item.get("isTrashed") is not True:
                results.setdefault(str(item.get("id")), item)

    if smart:
        take(await api.search_smart(query, size=size, filters=filters))
        return list(results.values())[:size]
    for field in FIELDS:
        pages = api.iter_search_metadata(
            {**filters, field: query}, page_size=min(MAX_PAGE_SIZE, size)
        )
        async with aclosing(pages):  # type: ignore[type-var]
            async for item in pages:
                take([item])
                if len(results) >= size:
                    break
        if len(results) >= size:
            break
    return list(results.values())[:size]


# -- search v2 (Immich 3.2+): the flat fields as a filter tree ------------------------

#: the first version with ``filter``, ``orderBy`` and ``cursor`` on the search endpoints
SEARCH_V2 = (3, 2, 0)
#: fields of a search body that are not filters (kept as they are in v2)
BODY_FIELDS = frozenset({"withExif", "withPeople", "withStacked", "size", "query", "language"})
_EQUAL = {
    "type": "type",
    "visibility": "visibility",
    "isFavorite": "isFavorite",
    "isMotion": "isMotion",
    "isOffline": "isOffline",
    "city": "city",
    "state": "state",
    "country": "country",
    "make": "make",
    "model": "model",
    "lensModel": "lensModel",
    "checksum": "checksum",
    "id": "id",
    "rating": "rating",
    "libraryId": "libraryId",
}
#: flat "contains" text fields (case- and accent-insensitive) → ``like`` fields
_CONTAINS = ("originalFileName", "description", "originalPath")
#: flat id lists: every id must match, as the flat fields do
_ALL_IDS = ("albumIds", "personIds", "tagIds")
#: flat date bounds (both inclusive in Immich) → (field, operator)
_BOUNDS = {
    "takenAfter": ("takenAt", "gte"),
    "takenBefore": ("takenAt", "lte"),
    "updatedAfter": ("updatedAt", "gte"),
    "updatedBefore": ("updatedAt", "lte"),
    "createdAfter": ("createdAt", "gte"),
    "createdBefore": ("createdAt", "lte"),
    "trashedAfter": ("trashedAt", "gte"),
    "trashedBefore": ("trashedAt", "lte"),
}
#: the trash, both ways: a filter tree says it explicitly (see docs/CONNECTOR.md)
NOT_TRASHED = {"eq": None}
TRASHED = {"ne": None}


def like_pattern(text: str) -> str:
    """A LIKE pattern matching any text containing ``text`` (``%``, ``_``, ``\\`` escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def filter_tree(filters: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``SearchFilter``, what is left) for the flat search fields in ``filters``.

    The flat fields keep their meaning: text fields contain the text, id lists
    must all match, date bounds are inclusive. The trash is always explicit:
    excluded (``trashedAt`` is null) unless ``withDeleted`` (either, as two ``or``
    branches) or a ``trashed*`` bound (only trashed assets) asks for it. Keys
    this does not know are returned in the second dict, unchanged.
    """
    tree: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    with_deleted = False
    for key, value in filters.items():
        if key in _EQUAL:
            tree[_EQUAL[key]] = {"eq": value}
        elif key in _CONTAINS:
            if value:
                tree[key] = {"like": like_pattern(str(value))}
        elif key in _ALL_IDS:
            if value:
                tree[key] = {"all": list(value)}
        elif key in _BOUNDS:
            name, operator = _BOUNDS[key]
            if value is not None:
                tree.setdefault(name, {})[operator] = value
        elif key == "withDeleted":
            with_deleted = bool(value)
        else:
            rest[key] = value
    if "trashedAt" not in tree:
        if with_deleted:
            tree["or"] = [{"trashedAt": dict(NOT_TRASHED)}, {"trashedAt": dict(TRASHED)}]
        else:
            tree["trashedAt"] = dict(NOT_TRASHED)
    return tree, rest
