"""The one meaning of a text search, shared by the library, the gateway and the mount.

With smart search enabled on the server (``/server/features``) a query is CLIP
search: the ``size`` best matches. Otherwise it is metadata search over
:data:`FIELDS` in that order — file names containing the query, descriptions
containing it (both case-insensitive in Immich), then exact city, country,
camera make and model — merged without repeats and cut at ``size``. Trashed
assets are never part of an answer.

:meth:`ImmichConnector.search_assets <immichfs.client.connector.ImmichConnector.search_assets>`
and :meth:`Catalog.search <immichfs.catalog.catalog.Catalog.search>` both call
:func:`search_assets`, so ``ls search/Q``, the gateway's ``POST /search`` and
the library agree on every query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

#: metadata fields a query is matched against, in the order results are merged
FIELDS = ("originalFileName", "description", "city", "country", "make", "model")
#: Immich's largest page
MAX_PAGE_SIZE = 1000


class SearchApi(Protocol):
    """The two search endpoints (:class:`~immichfs.client.connector.ImmichConnector` has them)."""

    async def search_metadata(
        self, filters: Mapping[str, Any], *, page: int = ..., size: int = ...
    ) -> tuple[list[dict[str, Any]], int | None]: ...

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
        page: int | None = 1
        while page is not None and len(results) < size:
            items, page = await api.search_metadata(
                {**filters, field: query}, page=page, size=min(MAX_PAGE_SIZE, size)
            )
            take(items)
        if len(results) >= size:
            break
    return list(results.values())[:size]
