"""``/search/metadata``, ``/search/statistics``, ``/search/smart``.

The filter language they share lives in :mod:`immichfs_fake.filters`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from immichfs_fake import filters
from immichfs_fake.httpd import HttpError, Request, Response

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def search_metadata(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    f = filters.parse(srv, req.json(), paged=True, default_size=250, cursor=True)
    match = filters.matcher(srv, f)
    order = f.get("orderBy")
    if order is None:  # before 3.2: by fileCreatedAt, then id
        ordered = srv.library.sorted_assets()
        sequence = reversed(ordered) if f.get("order", "desc") == "desc" else iter(ordered)
        return filters.page(srv, f, (a for a in sequence if match(a)))
    past = filters.after(f["after"], order) if f.get("after") is not None else None
    return filters.page(
        srv,
        f,
        (a for a in filters.ordered(srv, order) if (past is None or past(a)) and match(a)),
    )


def search_statistics(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    f = filters.parse(srv, req.json(), paged=False, default_size=0)
    match = filters.matcher(srv, f)
    return srv.json_response({"total": sum(1 for a in srv.library.sorted_assets() if match(a))})


def search_smart(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    if not srv.smart_search:
        raise HttpError(400, "Smart search is not enabled")
    body = req.json()
    query = body.get("query")
    if not query and not body.get("queryAssetId"):
        raise srv.validation(
            "query",
            "query should not be empty",
            "custom",
            "Either query or queryAssetId must be set",
        )
    f = filters.parse(srv, body, paged=True, default_size=100)
    match = filters.matcher(srv, f)
    seed = None
    if not query and body.get("queryAssetId"):
        seed = srv.library.get(str(body["queryAssetId"]).lower())
    ranked = filters.smart_rank(
        srv.library, (a for a in srv.library.sorted_assets() if match(a)), str(query or ""), seed
    )
    return filters.page(srv, f, ranked)
