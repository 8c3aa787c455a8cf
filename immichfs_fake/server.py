"""A fake Immich server over real HTTP on loopback.

It speaks the subset of the Immich API immichfs uses, with the status codes,
headers and quirks of real servers as ``shared/immich-api-notes.md`` records
them (400 for unknown ids, single-range 206 / multi-range 200 / past-EOF 500
or 404, weak ETags, 302 thumbnails, string ``nextPage``), for an emulated
version chosen at start-up.

This module holds :class:`FakeImmich`: lifecycle, authentication and access,
error shapes per version, dispatch. The rest is split by concern:
:mod:`~immichfs_fake.httpd` (sockets, parsing, sending, ranges),
:mod:`~immichfs_fake.routes` (endpoints per area),
:mod:`~immichfs_fake.filters` (the search filter language),
:mod:`~immichfs_fake.library`, :mod:`~immichfs_fake.dto`,
:mod:`~immichfs_fake.media`, :mod:`~immichfs_fake.faults`.
The server only ever binds loopback addresses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import socket
from typing import Any

from immichfs_fake.dto import JSON, Version
from immichfs_fake.faults import Faults, RequestLog
from immichfs_fake.httpd import ERROR_NAMES, Body, HttpError, Listener, Request, Response
from immichfs_fake.library import FakeAsset, FakeLibrary
from immichfs_fake.routes import ROUTES, Route

log = logging.getLogger(__name__)

__all__ = [
    "KEY_PREFIX",
    "LOOPBACK",
    "REALISTIC_LATENCY_MS",
    "REALISTIC_STREAM_MIB_S",
    "FakeImmich",
    "Version",
    "parse_version",
]

LOOPBACK = {"127.0.0.1": socket.AF_INET, "localhost": socket.AF_INET, "::1": socket.AF_INET6}
KEY_PREFIX = "fake-immich-key-"
_UUID_ANY = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_UUID_V4 = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I
)
#: the Immich-like origin (``realistic=True``): what a real Immich on loopback costs
#: per request before its first byte, and how fast Node streams one response
REALISTIC_LATENCY_MS = 5.0
REALISTIC_STREAM_MIB_S = 350.0


def parse_version(text: str) -> Version:
    """ "2.7.5" or "v2.7.5" as (2, 7, 5)."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if not match:
        raise ValueError(f"not an X.Y.Z version: {text!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


class FakeImmich:
    """A running fake Immich server (see the module docstring).

    ``with FakeImmich(lib, version="2.7.5") as srv:`` starts it on
    ``127.0.0.1`` (``port=0``: any free port); ``srv.url`` and ``srv.api_key``
    are what a client needs. ``permissions`` are the key's scopes (default
    ``["all"]``); ``smart_search`` enables ``/search/smart``.

    ``latency_ms`` delays every response's first byte to at least that long
    after its request was read; ``stream_mib_s`` caps each response body's
    throughput (MiB/s, per stream). ``realistic=True`` presets both to an
    Immich-like origin (:data:`REALISTIC_LATENCY_MS`,
    :data:`REALISTIC_STREAM_MIB_S`) unless given. Both are plain attributes a
    test may change while the server runs; ``None``/0 turns them off.
    """

    def __init__(
        self,
        library: FakeLibrary | None = None,
        version: str = "2.7.5",
        api_key: str | None = None,
        permissions: list[str] | None = None,
        smart_search: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float | None = None,
        stream_mib_s: float | None = None,
        realistic: bool = False,
    ) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"the fake Immich server only binds loopback, not {host!r}")
        self.library = library if library is not None else FakeLibrary.generate()
        #: the emulated version as given ("2.7.5") and as a tuple
        self.version = version
        self.version_info = parse_version(version)
        self.api_key = api_key or KEY_PREFIX + secrets.token_hex(16)
        self.permissions = list(permissions) if permissions is not None else ["all"]
        self.smart_search = smart_search
        if realistic:
            latency_ms = REALISTIC_LATENCY_MS if latency_ms is None else latency_ms
            stream_mib_s = REALISTIC_STREAM_MIB_S if stream_mib_s is None else stream_mib_s
        if latency_ms is not None and latency_ms < 0:
            raise ValueError(f"the latency must be >= 0 ms, not {latency_ms:g}")
        if stream_mib_s is not None and stream_mib_s < 0:
            raise ValueError(f"the stream cap must be >= 0 MiB/s, not {stream_mib_s:g}")
        #: first byte of every response no earlier than this after its request (ms)
        self.latency_ms = latency_ms or 0.0
        #: per-response body throughput cap in MiB/s (None: as fast as the socket)
        self.stream_mib_s = stream_mib_s or None
        self.host = host
        self._family = LOOPBACK[host]
        self._bind_host = "127.0.0.1" if host == "localhost" else host
        self.faults = Faults(on_refuse=self._set_refusing)
        self.requests = RequestLog()
        self.user = self.library.me
        self._listener = Listener(self._family, self._bind_host, port, self)
        self._running = False
        self.routes: list[Route] = list(ROUTES)

    def __repr__(self) -> str:
        return f"<FakeImmich v{self.version} {self.url if self._running else 'stopped'}>"

    # -- lifecycle -----------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def url(self) -> str:
        host = f"[{self._bind_host}]" if self._family == socket.AF_INET6 else self._bind_host
        return f"http://{host}:{self.port}"

    def start(self) -> FakeImmich:
        if self._running:
            return self
        self._running = True
        self._listener.listen()
        log.info("fake Immich v%s listening on %s", self.version, self.url)
        return self

    def stop(self) -> None:
        self._running = False
        self._listener.close()
        self._listener.drop_connections()

    def __enter__(self) -> FakeImmich:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _set_refusing(self, refusing: bool) -> None:
        if not self._running:
            return
        if refusing:
            self._listener.close()
            self._listener.drop_connections()
        elif not self._listener.listening:
            self._listener.listen()

    # -- request log -----------------------------------------------------------------

    def reset_log(self) -> None:
        self.requests.clear()

    def count(
        self, method: str | None = None, path_prefix: str | None = None, status: int | None = None
    ) -> int:
        """How many logged requests match (``path_prefix`` like "/api/assets/")."""
        return len(self.requests.select(method, path_prefix, status))

    def bytes_sent(self, path_prefix: str | None = None) -> int:
        """Body bytes sent for logged requests under ``path_prefix``."""
        return sum(r.bytes_sent for r in self.requests.select(None, path_prefix))

    # -- errors ------------------------------------------------------------------------

    def error_response(self, err: HttpError) -> Response:
        correlation = secrets.token_hex(4)
        headers = list(err.headers)
        message = err.message
        body: JSON
        if self.version_info >= (3, 0, 0):
            headers.append(("X-Correlation-ID", correlation))
            if err.zod is not None:
                body = {"message": "Validation failed", "errors": err.zod}
            elif err.status >= 500 and err.status not in (502, 503, 504):
                body = {"message": "Internal server error"}
            else:
                body = {"message": message if isinstance(message, str) else "; ".join(message)}
        else:
            headers.append(("x-immich-cid", correlation))
            if err.status == 500:
                body = {
                    "message": "Internal server error",
                    "statusCode": 500,
                    "error": "Internal Server Error",
                    "correlationId": correlation,
                }
            else:
                body = {
                    "message": message,
                    "error": ERROR_NAMES.get(err.status, "Error"),
                    "statusCode": err.status,
                    "correlationId": correlation,
                }
        return self.json_response(body, status=err.status, headers=headers)

    def validation(self, field_name: str, v2_message: str, code: str, v3_message: str) -> HttpError:
        """A request-validation failure (class-validator text before v3, zod issues from v3)."""
        return HttpError(
            400,
            [v2_message],
            zod=[{"code": code, "path": field_name.split("."), "message": v3_message}]
            if self.version_info >= (3, 0, 0)
            else None,
        )

    def json_response(
        self,
        body: Any,
        *,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        hdrs = [("Content-Type", "application/json; charset=utf-8")]
        if status == 200:
            digest = base64.b64encode(hashlib.sha1(data).digest()).decode()[:27]
            hdrs.append(("ETag", f'"{len(data):x}-{digest}"'))
        hdrs.extend(headers or [])
        return Response(status, hdrs, Body(data=data, length=len(data), json=True))

    # -- auth ------------------------------------------------------------------------------

    def authenticate(self, req: Request, route: Route) -> None:
        key = req.headers.get("x-api-key") or req.arg("apiKey")
        if not key:
            if req.headers.get("Authorization", "").lower().startswith("bearer "):
                raise HttpError(401, "Invalid user token")  # no login sessions here
            raise HttpError(401, "Authentication required")
        if key != self.api_key or self.faults.key_revoked:
            raise HttpError(401, "Invalid API key")
        if route.any_credential or route.permission is None:
            return
        enforced = self.version_info >= (1, 137, 0) or route.checked_before_137
        if enforced and "all" not in self.permissions and route.permission not in self.permissions:
            raise HttpError(403, f"Missing required permission: {route.permission}")

    def check_id(self, value: str, name: str = "id") -> str:
        if self.version_info >= (3, 0, 0):
            if not _UUID_V4.match(value):
                raise self.validation(
                    name, f"{name} must be a UUID", "invalid_format", "Invalid UUID"
                )
        elif not _UUID_ANY.match(value):
            raise self.validation(name, f"{name} must be a UUID", "invalid_format", "Invalid UUID")
        return value.lower()

    def can_read(self, asset: FakeAsset) -> bool:
        """The caller owns the asset or sees it through an album shared with them."""
        if asset.visibility == "locked":  # an API key never gets an elevated session
            return False
        if asset.owner_id == self.user.id:
            return True
        return any(
            asset.id in album.asset_ids and self.album_access(album.id)
            for album in list(self.library.albums.values())
        )

    def album_access(self, album_id: str) -> bool:
        """The caller owns the album or is one of its members."""
        album = self.library.albums.get(album_id)
        if album is None:
            return False
        return album.owner_id == self.user.id or any(
            uid == self.user.id for uid, _ in album.members
        )

    def asset_for(self, asset_id: str, permission: str) -> FakeAsset:
        asset = self.library.get(self.check_id(asset_id))
        if asset is None or not self.can_read(asset):
            raise HttpError(400, f"Not found or no {permission} access")
        return asset

    def cache_control(self) -> str:
        """``Cache-Control`` of asset bytes (originals, thumbnails)."""
        if self.version_info >= (2, 5, 0):
            return (
                "private, max-age=86400, no-transform, stale-while-revalidate=2592000, "
                "stale-if-error=2592000"
            )
        return "private, max-age=86400, no-transform"

    # -- routing -----------------------------------------------------------------------

    def dispatch(self, req: Request) -> Response:
        method = "GET" if req.method == "HEAD" else req.method
        for route in self.routes:
            if route.method != method:
                continue
            match = route.pattern.match(req.path)
            if match is None:
                continue
            if self.version_info < route.since:
                if req.path == "/api/api-keys/me":
                    # older servers route "me" to GET /api-keys/{id}
                    self.authenticate(req, route)
                    self.check_id("me")
                continue
            if route.permission is not None:
                self.authenticate(req, route)
            return route.handler(self, req, match)
        raise HttpError(404, f"Cannot {req.method} {req.path}")
