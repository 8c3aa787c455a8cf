"""The endpoints the fake serves, one module per area, and the table that routes to them.

A handler is ``handler(srv, req, match) -> Response`` where ``srv`` is the
:class:`~immichfs_fake.server.FakeImmich` answering (library, version, key,
faults) and ``match`` the path's regular-expression match (``match["id"]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from immichfs_fake.dto import Version
from immichfs_fake.httpd import Request, Response
from immichfs_fake.routes import albums, asset_files, assets, people, search, server, timeline

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich

Handler = Callable[["FakeImmich", Request, "re.Match[str]"], Response]


@dataclass(slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    permission: str | None  # None: public (no credentials needed)
    #: v1.113-v1.136 checked a permission only where an endpoint declared one
    checked_before_137: bool = True
    #: v1.139+ only (earlier servers route it elsewhere)
    since: Version = (0, 0, 0)
    any_credential: bool = False  # no permission needed, any valid key


def _r(method: str, path: str, handler: Handler, permission: str | None, **kw: Any) -> Route:
    return Route(method, re.compile("^/api" + path + "$"), handler, permission, **kw)


_ID = r"(?P<id>[^/]+)"
V3_2 = (3, 2, 0)
_LEGACY = {"checked_before_137": False}

#: in matching order (``/assets/statistics`` before ``/assets/{id}``)
ROUTES: list[Route] = [
    _r("GET", "/server/ping", server.ping, None),
    _r("GET", "/server/version", server.server_version, None),
    _r("GET", "/server/features", server.server_features, None),
    _r("GET", "/server/config", server.server_config, None),
    _r("GET", "/server/media-types", server.media_types, None),
    _r("GET", "/config", server.config, "userConfig.read", since=V3_2),
    _r("GET", "/config/defaults", server.config, "userConfig.read", since=V3_2),
    _r("GET", "/public/config", server.public_config, None, since=V3_2),
    _r("GET", "/public/config/defaults", server.public_config, None, since=V3_2),
    _r("GET", "/server/about", server.server_about, "server.about"),
    _r("GET", "/server/storage", server.server_storage, "server.storage"),
    _r("POST", "/auth/validateToken", server.validate_token, "", any_credential=True),
    _r(
        "GET",
        "/api-keys/me",
        server.api_key_me,
        "apiKey.read",
        since=(1, 139, 0),
        any_credential=True,
    ),
    _r("GET", "/users/me", server.users_me, "user.read", **_LEGACY),
    _r("POST", "/search/metadata", search.search_metadata, "asset.read", **_LEGACY),
    _r("POST", "/search/smart", search.search_smart, "asset.read", **_LEGACY),
    _r(
        "POST",
        "/search/statistics",
        search.search_statistics,
        "asset.statistics",
        since=(1, 135, 0),
    ),
    _r("GET", "/assets/statistics", assets.asset_statistics, "asset.statistics"),
    _r("GET", f"/assets/{_ID}/original", assets.asset_original, "asset.download", **_LEGACY),
    _r("GET", f"/assets/{_ID}/thumbnail", assets.asset_thumbnail, "asset.view", **_LEGACY),
    _r("GET", f"/assets/{_ID}/video/playback", assets.asset_playback, "asset.view", **_LEGACY),
    _r("GET", f"/assets/{_ID}", assets.asset_info, "asset.read"),
    _r("GET", "/asset-files", asset_files.search, "assetFile.read", since=V3_2),
    _r("GET", f"/asset-files/{_ID}", asset_files.info, "assetFile.read", since=V3_2),
    _r(
        "GET",
        f"/asset-files/{_ID}/download",
        asset_files.download,
        "assetFile.download",
        since=V3_2,
    ),
    _r("GET", "/albums", albums.albums, "album.read"),
    _r("GET", f"/albums/{_ID}", albums.album_info, "album.read"),
    _r("GET", "/people", people.people, "person.read"),
    _r("GET", f"/people/{_ID}/thumbnail", people.person_thumbnail, "person.read"),
    _r("GET", f"/people/{_ID}", people.person_info, "person.read"),
    _r("GET", "/tags", people.tags, "tag.read"),
    _r("GET", "/timeline/buckets", timeline.timeline_buckets, "asset.read"),
    _r("GET", "/timeline/bucket", timeline.timeline_bucket, "asset.read"),
]
