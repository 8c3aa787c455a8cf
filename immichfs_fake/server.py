"""A fake Immich server over real HTTP on loopback.

It speaks the subset of the Immich API immichfs uses, with the status codes,
headers and quirks of real servers as ``shared/immich-api-notes.md`` records
them (400 for unknown ids, single-range 206 / multi-range 200 / past-EOF 500
or 404, weak ETags, 302 thumbnails, string ``nextPage``), for an emulated
version chosen at start-up. Originals are sent with ``sendfile`` from a cache
file when large, from memory when small.

One thread accepts connections, one thread per connection serves HTTP/1.1
keep-alive requests (``http.server`` does the parsing). The server only ever
binds loopback addresses.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import secrets
import select
import socket
import struct
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from immichfs_fake import dto, media
from immichfs_fake.faults import Faults, RequestLog, RequestRecord
from immichfs_fake.library import FILE_THRESHOLD, FakeAsset, FakeLibrary

log = logging.getLogger(__name__)

Version = tuple[int, int, int]
JSON = dict[str, Any]

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
_VISIBILITIES = ("archive", "timeline", "hidden", "locked")
_TYPES = ("IMAGE", "VIDEO", "AUDIO", "OTHER")


def parse_version(text: str) -> Version:
    """ "2.7.5" or "v2.7.5" as (2, 7, 5)."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if not match:
        raise ValueError(f"not an X.Y.Z version: {text!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _http_date(value: datetime) -> str:
    return format_datetime(value.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _fold(text: str) -> str:
    """Case- and accent-insensitive form, as Immich's ``f_unaccent`` + ILIKE."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


# -- responses -----------------------------------------------------------------


@dataclass(slots=True)
class Body:
    """A response body: bytes in memory or a slice of a file (sent with sendfile)."""

    data: bytes | None = None
    path: Path | None = None
    offset: int = 0
    length: int = 0
    json: bool = False  # a JSON document: may be gzipped, answers If-None-Match


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = field(default_factory=Body)


class HttpError(Exception):
    """Raised by a route to answer an error (shaped per version by the server)."""

    def __init__(
        self,
        status: int,
        message: str | list[str],
        *,
        headers: list[tuple[str, str]] | None = None,
        zod: list[JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.zod = zod


_ERROR_NAMES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # http.client.HTTPMessage
    body: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> JSON:
        if not self.body:
            return {}
        try:
            parsed = json.loads(self.body)
        except ValueError:
            raise HttpError(400, "Unexpected token in JSON body") from None
        if not isinstance(parsed, dict):
            raise HttpError(400, "Request body must be an object")
        return parsed


Handler = Callable[[Request, "re.Match[str]"], Response]


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
            raise ValueError(f"latency_ms must be >= 0, not {latency_ms}")
        if stream_mib_s is not None and stream_mib_s < 0:
            raise ValueError(f"stream_mib_s must be >= 0, not {stream_mib_s}")
        #: first byte of every response no earlier than this after its request (ms)
        self.latency_ms = latency_ms or 0.0
        #: per-response body throughput cap in MiB/s (None: as fast as the socket)
        self.stream_mib_s = stream_mib_s or None
        self.host = host
        self._family = LOOPBACK[host]
        self._bind_host = "127.0.0.1" if host == "localhost" else host
        self._port = port
        self.faults = Faults(on_refuse=self._set_refusing)
        self.requests = RequestLog()
        self.user = self.library.me
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._running = False
        self.routes = self._routes()

    def __repr__(self) -> str:
        return f"<FakeImmich v{self.version} {self.url if self._running else 'stopped'}>"

    # -- lifecycle -----------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._bind_host}]" if self._family == socket.AF_INET6 else self._bind_host
        return f"http://{host}:{self._port}"

    def start(self) -> FakeImmich:
        if self._running:
            return self
        self._running = True
        self._listen()
        log.info("fake Immich v%s listening on %s", self.version, self.url)
        return self

    def stop(self) -> None:
        self._running = False
        self._close_listener()
        self._drop_connections()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None

    def __enter__(self) -> FakeImmich:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._bind_host, self._port))
        sock.listen(128)
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(sock,), name=f"fake-immich-{self._port}", daemon=True
        )
        self._accept_thread.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _drop_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _set_refusing(self, refusing: bool) -> None:
        if not self._running:
            return
        if refusing:
            self._close_listener()
            if self._accept_thread is not None:
                self._accept_thread.join(timeout=5)
                self._accept_thread = None
            self._drop_connections()
        elif self._listener is None:
            self._listen()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._conn_lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve_connection, args=(conn, addr), daemon=True).start()

    def _serve_connection(self, conn: socket.socket, addr: Any) -> None:
        try:
            _Handler(conn, addr, self)
        except (OSError, ValueError):
            pass  # the client went away or sent garbage: drop the connection
        except Exception:
            log.exception("fake server connection failed")
        finally:
            with self._conn_lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

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
                    "error": _ERROR_NAMES.get(err.status, "Error"),
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
            asset.id in album.asset_ids and self._album_access(album.id)
            for album in list(self.library.albums.values())
        )

    def _album_access(self, album_id: str) -> bool:
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

    # -- routing -----------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        uuid_ = r"(?P<id>[^/]+)"

        def r(method: str, path: str, handler: Handler, permission: str | None, **kw: Any) -> Route:
            return Route(method, re.compile("^/api" + path + "$"), handler, permission, **kw)

        return [
            r("GET", "/server/ping", self.ping, None),
            r("GET", "/server/version", self.server_version, None),
            r("GET", "/server/features", self.server_features, None),
            r("GET", "/server/config", self.server_config, None),
            r("GET", "/server/media-types", self.media_types, None),
            r("GET", "/server/about", self.server_about, "server.about"),
            r("GET", "/server/storage", self.server_storage, "server.storage"),
            r("POST", "/auth/validateToken", self.validate_token, "", any_credential=True),
            r(
                "GET",
                "/api-keys/me",
                self.api_key_me,
                "apiKey.read",
                since=(1, 139, 0),
                any_credential=True,
            ),
            r("GET", "/users/me", self.users_me, "user.read", checked_before_137=False),
            r(
                "POST",
                "/search/metadata",
                self.search_metadata,
                "asset.read",
                checked_before_137=False,
            ),
            r("POST", "/search/smart", self.search_smart, "asset.read", checked_before_137=False),
            r(
                "POST",
                "/search/statistics",
                self.search_statistics,
                "asset.statistics",
                since=(1, 135, 0),
            ),
            r("GET", "/assets/statistics", self.asset_statistics, "asset.statistics"),
            r(
                "GET",
                f"/assets/{uuid_}/original",
                self.asset_original,
                "asset.download",
                checked_before_137=False,
            ),
            r(
                "GET",
                f"/assets/{uuid_}/thumbnail",
                self.asset_thumbnail,
                "asset.view",
                checked_before_137=False,
            ),
            r(
                "GET",
                f"/assets/{uuid_}/video/playback",
                self.asset_playback,
                "asset.view",
                checked_before_137=False,
            ),
            r("GET", f"/assets/{uuid_}", self.asset_info, "asset.read"),
            r("GET", "/albums", self.albums, "album.read"),
            r("GET", f"/albums/{uuid_}", self.album_info, "album.read"),
            r("GET", "/people", self.people, "person.read"),
            r("GET", f"/people/{uuid_}/thumbnail", self.person_thumbnail, "person.read"),
            r("GET", f"/people/{uuid_}", self.person_info, "person.read"),
            r("GET", "/tags", self.tags, "tag.read"),
            r("GET", "/timeline/buckets", self.timeline_buckets, "asset.read"),
            r("GET", "/timeline/bucket", self.timeline_bucket, "asset.read"),
        ]

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
            return route.handler(req, match)
        raise HttpError(404, f"Cannot {req.method} {req.path}")

    # -- server ------------------------------------------------------------------------

    def ping(self, req: Request, m: re.Match[str]) -> Response:
        return self.json_response({"res": "pong"})

    def server_version(self, req: Request, m: re.Match[str]) -> Response:
        major, minor, patch = self.version_info
        body: JSON = {"major": major, "minor": minor, "patch": patch}
        if self.version_info >= (3, 0, 0):
            body["prerelease"] = None
        return self.json_response(body)

    def server_features(self, req: Request, m: re.Match[str]) -> Response:
        body: JSON = {
            "smartSearch": self.smart_search,
            "facialRecognition": True,
            "duplicateDetection": self.smart_search,
            "map": True,
            "reverseGeocoding": True,
            "importFaces": False,
            "sidecar": True,
            "search": True,
            "trash": True,
            "oauth": False,
            "oauthAutoLaunch": False,
            "passwordLogin": True,
            "configFile": False,
            "email": False,
        }
        if self.version_info >= (2, 2, 0):
            body["ocr"] = False
        if self.version_info >= (3, 0, 0):
            body["realtimeTranscoding"] = False
        return self.json_response(body)

    def server_config(self, req: Request, m: re.Match[str]) -> Response:
        body: JSON = {
            "loginPageMessage": "",
            "trashDays": 30,
            "userDeleteDelay": 7,
            "oauthButtonText": "Login with OAuth",
            "isInitialized": True,
            "isOnboarded": True,
            "externalDomain": "",
            "publicUsers": True,
            "mapDarkStyleUrl": "https://tiles.immich.cloud/v1/style/dark.json",
            "mapLightStyleUrl": "https://tiles.immich.cloud/v1/style/light.json",
        }
        if self.version_info >= (2, 3, 0):  # between v2.0.1 and v2.7.5 (inferred)
            body["maintenanceMode"] = False
        if self.version_info >= (3, 0, 0):
            body["minFaces"] = 3
        return self.json_response(body)

    def media_types(self, req: Request, m: re.Match[str]) -> Response:
        return self.json_response(
            {
                "image": [".jpg", ".jpeg", ".png", ".webp", ".heic", ".gif", ".tif", ".dng"],
                "video": [".mp4", ".mov", ".webm", ".mkv", ".avi", ".3gp"],
                "sidecar": [".xmp"],
            }
        )

    def server_about(self, req: Request, m: re.Match[str]) -> Response:
        tag = f"v{self.version}"
        return self.json_response(
            {
                "version": tag,
                "versionUrl": f"https://github.com/immich-app/immich/releases/tag/{tag}",
                "licensed": False,
                "nodejs": "v22.18.0",
                "ffmpeg": "7.1.1",
                "libvips": "8.17.1",
                "exiftool": "13.30",
                "imagemagick": "7.1.2",
                "repository": "immich-app/immich",
                "repositoryUrl": "https://github.com/immich-app/immich",
                "sourceRef": tag,
            }
        )

    def server_storage(self, req: Request, m: re.Match[str]) -> Response:
        used = sum(a.size for a in self.library.sorted_assets())
        size = max(1 << 40, used * 4)  # a 1 TiB disk, or bigger for huge libraries

        def human(n: int) -> str:
            value = float(n)
            for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
                if value < 1024 or unit == "TiB":
                    return f"{value:.1f} {unit}"
                value /= 1024
            return f"{value:.1f} TiB"

        return self.json_response(
            {
                "diskSize": human(size),
                "diskUse": human(used),
                "diskAvailable": human(size - used),
                "diskSizeRaw": size,
                "diskUseRaw": used,
                "diskAvailableRaw": size - used,
                "diskUsagePercentage": round(used * 100 / size, 2),
            }
        )

    def validate_token(self, req: Request, m: re.Match[str]) -> Response:
        return self.json_response({"authStatus": True})

    def api_key_me(self, req: Request, m: re.Match[str]) -> Response:
        return self.json_response(
            {
                "id": str(uuid.UUID(bytes=hashlib.md5(self.api_key.encode()).digest(), version=4)),
                "name": "immichfs fake key",
                "createdAt": dto.iso(self.user.created_at),
                "updatedAt": dto.iso(self.user.created_at),
                "permissions": list(self.permissions),
            }
        )

    def users_me(self, req: Request, m: re.Match[str]) -> Response:
        return self.json_response(dto.user_admin(self.user, self.library))

    # -- search ------------------------------------------------------------------------

    def _parse_filters(self, body: JSON, *, paged: bool, default_size: int) -> JSON:
        f = dict(body)
        if paged:
            for name, default, low, high in (("page", 1, 1, None), ("size", default_size, 1, 1000)):
                value = f.get(name, default)
                if value is None:
                    value = default
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or value != int(value)
                ):
                    raise self.validation(
                        name,
                        f"{name} must be an integer number",
                        "invalid_type",
                        "Invalid input: expected int",
                    )
                value = int(value)
                if value < low:
                    raise self.validation(
                        name,
                        f"{name} must not be less than {low}",
                        "too_small",
                        f"Too small: expected number to be >={low}",
                    )
                if high is not None and value > high:
                    raise self.validation(
                        name,
                        f"{name} must not be greater than {high}",
                        "too_big",
                        f"Too big: expected number to be <={high}",
                    )
                f[name] = value
        for name, allowed in (
            ("type", _TYPES),
            ("visibility", _VISIBILITIES),
            ("order", ("asc", "desc")),
        ):
            value = f.get(name)
            if value is not None and value not in allowed:
                raise self.validation(
                    name,
                    f"{name} must be one of the following values: {', '.join(allowed)}",
                    "invalid_value",
                    "Invalid option",
                )
        if isinstance(f.get("id"), str):
            self.check_id(f["id"], "id")
        rating = f.get("rating")
        if rating is not None:
            low = 1 if self.version_info >= (3, 0, 0) else -1  # 0 and -1 went away in v3
            if isinstance(rating, bool) or not isinstance(rating, int) or not low <= rating <= 5:
                raise self.validation(
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
                raise self.validation(
                    name,
                    f"{name} must be an array",
                    "invalid_type",
                    "Invalid input: expected array",
                )
            for item in value:
                self.check_id(str(item), name)
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
                raise self.validation(
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
                if not self._album_access(album_id.lower()):
                    raise HttpError(400, "Not found or no album.read access")
        return f

    def _default_visibility(self) -> tuple[str, ...]:
        if self.version_info >= (3, 0, 0):
            return ("timeline", "archive", "hidden")
        return ("timeline",)

    def _matcher(self, f: JSON) -> Callable[[FakeAsset], bool]:
        lib = self.library
        me = self.user.id
        album_ids = [a.lower() for a in f.get("albumIds") or []]
        in_albums: set[str] | None = None
        if album_ids:
            sets = [set(lib.albums[a].asset_ids) for a in album_ids if a in lib.albums]
            in_albums = set.intersection(*sets) if sets else set()
        visibility = f.get("visibility")
        allowed_vis = (visibility,) if visibility else self._default_visibility()
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
        name_part = _fold(f["originalFileName"]) if f.get("originalFileName") else None
        path_part = _fold(f["originalPath"]) if f.get("originalPath") else None
        desc_part = _fold(f["description"]) if f.get("description") else None
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
            if name_part is not None and name_part not in _fold(a.original_file_name):
                return False
            if path_part is not None and path_part not in _fold(a.original_path):
                return False
            if desc_part is not None and desc_part not in _fold(a.description):
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

    def _page(self, f: JSON, ordered: Iterator[FakeAsset]) -> Response:
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
        me = self.user.id
        dtos = [
            dto.asset(
                self.library,
                a,
                self.version_info,
                me,
                with_exif=bool(f.get("withExif")),
                with_people=bool(f.get("withPeople")),
            )
            for a in items
        ]
        return self.json_response(
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

    def search_metadata(self, req: Request, m: re.Match[str]) -> Response:
        f = self._parse_filters(req.json(), paged=True, default_size=250)
        match = self._matcher(f)
        ordered = self.library.sorted_assets()
        sequence = reversed(ordered) if f.get("order", "desc") == "desc" else iter(ordered)
        return self._page(f, (a for a in sequence if match(a)))

    def search_statistics(self, req: Request, m: re.Match[str]) -> Response:
        f = self._parse_filters(req.json(), paged=False, default_size=0)
        match = self._matcher(f)
        return self.json_response(
            {"total": sum(1 for a in self.library.sorted_assets() if match(a))}
        )

    def search_smart(self, req: Request, m: re.Match[str]) -> Response:
        if not self.smart_search:
            raise HttpError(400, "Smart search is not enabled")
        body = req.json()
        query = body.get("query")
        if not query and not body.get("queryAssetId"):
            raise self.validation(
                "query",
                "query should not be empty",
                "custom",
                "Either query or queryAssetId must be set",
            )
        f = self._parse_filters(body, paged=True, default_size=100)
        match = self._matcher(f)
        words = [w for w in re.split(r"\W+", _fold(str(query or ""))) if w]
        if not words and body.get("queryAssetId"):
            seed_asset = self.library.get(str(body["queryAssetId"]).lower())
            words = re.split(r"\W+", _fold(self._search_text(seed_asset))) if seed_asset else []
        key = "/".join(words)

        def score(a: FakeAsset) -> tuple[int, str]:
            text = self._search_text(a)
            tokens = set(re.split(r"\W+", _fold(text)))
            folded = _fold(text)
            total = sum(2 if w in tokens else 1 if w in folded else 0 for w in words)
            # deterministic tie-break standing in for vector distance
            tie = hashlib.blake2b(f"{key}/{a.id}".encode(), digest_size=8).hexdigest()
            return (-total, tie)

        ranked = sorted((a for a in self.library.sorted_assets() if match(a)), key=score)
        return self._page(f, iter(ranked))

    def _search_text(self, a: FakeAsset) -> str:
        lib = self.library
        parts = [a.original_file_name, a.description, a.city or "", a.country or ""]
        parts += [lib.people[p].name for p in a.person_ids if p in lib.people]
        parts += [lib.tags[t].value for t in a.tag_ids if t in lib.tags]
        parts.append("video" if a.type == "VIDEO" else "photo")
        return " ".join(parts)

    def asset_statistics(self, req: Request, m: re.Match[str]) -> Response:
        visibility = req.arg("visibility")
        if visibility is not None and visibility not in _VISIBILITIES:
            raise self.validation(
                "visibility",
                "visibility must be one of the following values: " + ", ".join(_VISIBILITIES),
                "invalid_value",
                "Invalid option",
            )
        favorite = req.arg("isFavorite")
        trashed = req.arg("isTrashed") == "true"
        images = videos = total = 0
        for a in self.library.sorted_assets():
            if a.owner_id != self.user.id or a.visibility == "locked":
                continue
            if visibility is not None:
                if a.visibility != visibility:
                    continue
            elif a.visibility not in ("timeline", "archive"):
                continue
            if a.is_trashed != trashed:
                continue
            if favorite is not None and a.is_favorite != (favorite == "true"):
                continue
            total += 1
            images += a.type == "IMAGE"
            videos += a.type == "VIDEO"
        return self.json_response({"images": images, "videos": videos, "total": total})

    # -- assets ----------------------------------------------------------------------------

    def asset_info(self, req: Request, m: re.Match[str]) -> Response:
        asset = self.asset_for(m["id"], "asset.read")
        return self.json_response(
            dto.asset(self.library, asset, self.version_info, self.user.id, full=True)
        )

    def _cache_control(self) -> str:
        if self.version_info >= (2, 5, 0):
            return (
                "private, max-age=86400, no-transform, stale-while-revalidate=2592000, "
                "stale-if-error=2592000"
            )
        return "private, max-age=86400, no-transform"

    def _file_response(self, req: Request, asset: FakeAsset, download_name: str) -> Response:
        """``res.sendFile`` semantics: ranges, conditional GET, caching headers."""
        size = asset.size
        mtime = asset.file_modified_at
        etag = f'W/"{size:x}-{int(mtime.timestamp() * 1000):x}"'
        headers = [
            ("Cache-Control", self._cache_control()),
            ("Content-Disposition", "inline; filename*=UTF-8''" + quote(download_name, safe="")),
            ("Accept-Ranges", "bytes"),
            ("Last-Modified", _http_date(mtime)),
            ("ETag", etag),
            ("Content-Type", asset.mime_type),
        ]
        if_none_match = req.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [t.strip() for t in if_none_match.split(",")]
            if "*" in tags or any(t.removeprefix("W/") == etag.removeprefix("W/") for t in tags):
                return Response(304, [h for h in headers if h[0] != "Content-Type"])
        else:
            since = req.headers.get("If-Modified-Since")
            if since:
                try:
                    when = parsedate_to_datetime(since)
                except (TypeError, ValueError):
                    when = None
                if when is not None and mtime.replace(microsecond=0) <= when:
                    return Response(304, [h for h in headers if h[0] != "Content-Type"])

        start, end = 0, size - 1
        status = 200
        range_header = req.headers.get("Range")
        if range_header and self.faults.take("ignore_range", req.path) is None:
            if_range = req.headers.get("If-Range")
            if if_range and if_range.strip() != etag and if_range.strip() != _http_date(mtime):
                range_header = None
        else:
            range_header = None
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable" or (
                parsed == "malformed" and self.version_info < (3, 0, 0)
            ):
                extra = [("Content-Range", f"bytes */{size}")]
                if self.version_info >= (3, 0, 0):
                    raise HttpError(404, "Not Found", headers=extra)
                raise HttpError(500, "Internal server error", headers=extra)
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        length = end - start + 1
        body = Body(offset=start, length=length)
        if req.method != "HEAD":
            if size > FILE_THRESHOLD:
                body.path = self.library.content_path(asset.id)
            else:
                body.data = self.library.content(asset.id)
        return Response(status, headers, body)

    def _download_name(self, asset: FakeAsset, extension: str | None = None) -> str:
        stem = asset.original_file_name.rpartition(".")[0] or asset.original_file_name
        return stem + (extension if extension is not None else asset.extension)

    def asset_original(self, req: Request, m: re.Match[str]) -> Response:
        asset = self.asset_for(m["id"], "asset.download")
        return self._file_response(req, asset, self._download_name(asset))

    def asset_playback(self, req: Request, m: re.Match[str]) -> Response:
        asset = self.asset_for(m["id"], "asset.view")
        if asset.type != "VIDEO":
            if self.version_info >= (3, 0, 0):
                raise HttpError(404, "Not Found")
            raise HttpError(404, "Asset not found or asset is not a video")
        return self._file_response(req, asset, self._download_name(asset))

    def asset_thumbnail(self, req: Request, m: re.Match[str]) -> Response:
        asset = self.asset_for(m["id"], "asset.view")
        size = req.arg("size") or "thumbnail"
        allowed = ["preview", "thumbnail"]
        if self.version_info >= (1, 131, 0):
            allowed.insert(0, "fullsize")
        if self.version_info >= (3, 0, 0):
            allowed.append("original")
        if size not in allowed:
            raise self.validation(
                "size",
                "size must be one of the following values: " + ", ".join(allowed),
                "invalid_value",
                "Invalid option",
            )
        if size in ("fullsize", "original"):
            # only the endpoint's own parameters travel (never apiKey)
            rest = {k: v for k, v in req.query.items() if k in ("edited", "key", "slug")}
            query = "&".join(f"{quote(k)}={quote(v[-1])}" for k, v in rest.items())
            if asset.type == "IMAGE" or size == "original":
                location = "original" + (f"?{query}" if query else "")
            else:
                location = "thumbnail?" + "&".join(filter(None, [query, "size=preview"]))
            return Response(302, [("Location", location), ("Content-Length", "0")])
        data, content_type = media.thumbnail(size, asset.uid)
        ext = ".webp" if content_type == "image/webp" else ".jpeg"
        stem = asset.original_file_name.rpartition(".")[0] or asset.original_file_name
        etag = f'W/"{len(data):x}-{int(asset.updated_at.timestamp() * 1000):x}"'
        headers = [
            ("Cache-Control", self._cache_control()),
            (
                "Content-Disposition",
                "inline; filename*=UTF-8''" + quote(f"{stem}_{size}{ext}", safe=""),
            ),
            ("Accept-Ranges", "bytes"),
            ("Last-Modified", _http_date(asset.updated_at)),
            ("ETag", etag),
            ("Content-Type", content_type),
        ]
        if req.headers.get("If-None-Match") == etag:
            return Response(304, headers[:-1])
        return Response(200, headers, Body(data=data, length=len(data)))

    # -- albums, people, tags ------------------------------------------------------------

    def _album_visible(self, album_id: str) -> bool:
        return self._album_access(album_id)

    def albums(self, req: Request, m: re.Match[str]) -> Response:
        lib, me = self.library, self.user.id
        albums = [a for a in list(lib.albums.values()) if self._album_visible(a.id)]
        if self.version_info >= (3, 0, 0):
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
            self.check_id(asset_id, "assetId")
            albums = [a for a in albums if asset_id.lower() in a.asset_ids]
        albums.sort(key=lambda a: (a.created_at, a.id), reverse=True)
        return self.json_response([dto.album(lib, a, self.version_info, me) for a in albums])

    def album_info(self, req: Request, m: re.Match[str]) -> Response:
        album_id = self.check_id(m["id"])
        lib = self.library
        album = lib.albums.get(album_id)
        if album is None or not self._album_visible(album_id):
            raise HttpError(400, "Not found or no album.read access")
        assets: list[JSON] | None = None
        if self.version_info < (3, 0, 0) and req.arg("withoutAssets") != "true":
            members = [lib.assets[i] for i in album.asset_ids if i in lib.assets]
            members = [a for a in members if not a.is_trashed and a.visibility != "locked"]
            members.sort(key=lambda a: (a.file_created_at, a.id), reverse=True)
            assets = [
                dto.asset(lib, a, self.version_info, self.user.id, with_exif=True) for a in members
            ]
        return self.json_response(
            dto.album(lib, album, self.version_info, self.user.id, assets=assets)
        )

    def _face_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self.library.sorted_assets():
            if a.owner_id == self.user.id and not a.is_trashed:
                for pid in a.person_ids:
                    counts[pid] = counts.get(pid, 0) + 1
        return counts

    def people(self, req: Request, m: re.Match[str]) -> Response:
        def number(name: str, default: int, high: int | None) -> int:
            raw = req.arg(name)
            if raw is None:
                return default
            if not raw.isdigit() or int(raw) < 1 or (high is not None and int(raw) > high):
                raise self.validation(
                    name,
                    f"{name} must not be less than 1"
                    if not high
                    else f"{name} must not be greater than {high}",
                    "too_big",
                    "Invalid input",
                )
            return int(raw)

        page = number("page", 1, None)
        size = number("size", 500, 1000)
        with_hidden = req.arg("withHidden") == "true"
        counts = self._face_counts()
        people = [
            p
            for p in self.library.people.values()
            if p.owner_id == self.user.id and counts.get(p.id, 0) >= (1 if p.name else 3)
        ]
        hidden = sum(1 for p in people if p.is_hidden)
        total = len(people)
        listed = [p for p in people if with_hidden or not p.is_hidden]
        listed.sort(
            key=lambda p: (
                p.is_hidden,
                not p.is_favorite,
                p.name == "",
                -counts.get(p.id, 0),
                p.name,
                p.id,
            )
        )
        chunk = listed[(page - 1) * size : page * size]
        return self.json_response(
            {
                "people": [dto.person(p, self.version_info) for p in chunk],
                "total": total,
                "hidden": hidden,
                "hasNextPage": page * size < len(listed),
            }
        )

    def _person_for(self, raw_id: str) -> Any:
        person = self.library.people.get(self.check_id(raw_id))
        if person is None or person.owner_id != self.user.id:
            raise HttpError(400, "Not found or no person.read access")
        return person

    def person_info(self, req: Request, m: re.Match[str]) -> Response:
        return self.json_response(dto.person(self._person_for(m["id"]), self.version_info))

    def person_thumbnail(self, req: Request, m: re.Match[str]) -> Response:
        person = self._person_for(m["id"])
        data, content_type = media.thumbnail("person", person.id.encode())
        return Response(
            200,
            [
                ("Content-Type", content_type),
                ("Cache-Control", "private, no-cache, no-transform"),
                ("Content-Disposition", f"inline; filename*=UTF-8''{person.id}.jpeg"),
            ],
            Body(data=data, length=len(data)),
        )

    def tags(self, req: Request, m: re.Match[str]) -> Response:
        tags = sorted(self.library.tags.values(), key=lambda t: t.value)
        return self.json_response([dto.tag(t) for t in tags])

    # -- timeline ----------------------------------------------------------------------------

    def _timeline_assets(self, req: Request) -> list[FakeAsset]:
        lib, me = self.library, self.user.id
        visibility = req.arg("visibility")
        if visibility is not None and visibility not in _VISIBILITIES:
            raise self.validation(
                "visibility",
                "visibility must be one of the following values: " + ", ".join(_VISIBILITIES),
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
            album_id = self.check_id(album_id, "albumId")
            if not self._album_access(album_id):
                raise HttpError(400, "Not found or no album.read access")
            in_album = set(lib.albums[album_id].asset_ids)
        tag_value: str | None = None
        if tag_id is not None:
            tag = lib.tags.get(self.check_id(tag_id, "tagId"))
            if tag is None:
                raise HttpError(400, "Not found or no tag.read access")
            tag_value = tag.value
        if person_id is not None:
            person_id = self.check_id(person_id, "personId")
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

    def _bucket_key(self, a: FakeAsset, req: Request) -> str:
        if self.version_info >= (3, 0, 0) and req.arg("orderBy") == "createdAt":
            return a.created_at.strftime("%Y-%m-01")
        return a.local_date_time.strftime("%Y-%m-01")

    def timeline_buckets(self, req: Request, m: re.Match[str]) -> Response:
        counts: dict[str, int] = {}
        for a in self._timeline_assets(req):
            key = self._bucket_key(a, req)
            counts[key] = counts.get(key, 0) + 1
        order_desc = req.arg("order") != "asc"
        return self.json_response(
            [{"timeBucket": k, "count": counts[k]} for k in sorted(counts, reverse=order_desc)]
        )

    def timeline_bucket(self, req: Request, m: re.Match[str]) -> Response:
        bucket = req.arg("timeBucket")
        if not bucket or not re.match(r"^\d{4}-\d{2}-\d{2}", bucket):
            raise self.validation(
                "timeBucket",
                "timeBucket must be a string",
                "invalid_type",
                "Invalid input: expected string",
            )
        key = bucket[:7] + "-01"
        assets = [a for a in self._timeline_assets(req) if self._bucket_key(a, req) == key]
        assets.sort(key=lambda a: (a.file_created_at, a.id), reverse=req.arg("order") != "asc")
        with_coordinates = req.arg("withCoordinates") == "true" and self.version_info >= (1, 142, 0)
        columns: JSON = {
            "id": [a.id for a in assets],
            "ownerId": [a.owner_id for a in assets],
            "isImage": [a.type == "IMAGE" for a in assets],
            "isFavorite": [a.is_favorite for a in assets],
            "isTrashed": [a.is_trashed for a in assets],
            "visibility": [a.visibility for a in assets],
            "duration": [self._bucket_duration(a) for a in assets],
            "fileCreatedAt": [dto.iso(a.file_created_at) for a in assets],
            "localOffsetHours": [a.local_offset_minutes / 60 for a in assets],
            "livePhotoVideoId": [a.live_photo_video_id for a in assets],
            "ratio": [round(a.width / a.height, 4) for a in assets],
            "thumbhash": [dto.thumbhash(a) for a in assets],
            "projectionType": [None for _ in assets],
            "city": [a.city for a in assets],
            "country": [a.country for a in assets],
        }
        if self.version_info >= (3, 0, 0):
            columns["createdAt"] = [dto.iso(a.created_at) for a in assets]
        if with_coordinates:
            columns["latitude"] = [a.latitude for a in assets]
            columns["longitude"] = [a.longitude for a in assets]
        return self.json_response(columns)

    def _bucket_duration(self, a: FakeAsset) -> Any:
        if self.version_info >= (3, 0, 0):
            return a.duration_ms if a.type == "VIDEO" else None
        value = dto.duration(a, self.version_info)
        return value if a.type == "VIDEO" else None


def _parse_range(header: str, size: int) -> tuple[int, int] | str:
    """One byte range clamped to ``size`` (inclusive end), "multiple", "unsatisfiable"
    or "malformed" (the ``range-parser`` rules Express uses)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return "malformed"
    parts = [p.strip() for p in spec.split(",")]
    ranges: list[tuple[int, int]] = []
    for part in parts:
        first, dash, last = part.partition("-")
        if not dash:
            return "malformed"
        try:
            if first == "":
                suffix = int(last)
                start, end = size - suffix, size - 1
            else:
                start = int(first)
                end = int(last) if last else size - 1
        except ValueError:
            return "malformed"
        start = max(start, 0)
        end = min(end, size - 1)
        if start > end or start >= size:
            continue
        ranges.append((start, end))
    if not ranges:
        return "unsatisfiable"
    if len(parts) > 1:
        return "multiple"
    return ranges[0]


class _Handler(BaseHTTPRequestHandler):
    """One connection; ``http.server`` parses, :class:`FakeImmich` answers."""

    protocol_version = "HTTP/1.1"
    _progress = 0  # body bytes of the current response written so far
    timeout = 120  # idle keep-alive connections are closed after this
    server: Any

    def __init__(self, conn: socket.socket, addr: Any, fake: FakeImmich) -> None:
        self.fake = fake
        super().__init__(conn, addr, fake)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests go to the fake's request log, never to stderr

    def send_response(self, code: int, message: str | None = None) -> None:
        # like Express: no Server header
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline(1024)
                length = int(line.split(b";")[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(length))
                self.rfile.readline(8)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        path = split.path
        body = self._read_body()
        received = time.monotonic()
        req = Request(
            self.command, path, parse_qs(split.query, keep_blank_values=True), self.headers, body
        )
        masked_query = re.sub(r"(?i)(apiKey=)[^&]*", r"\1***", split.query)
        range_header = self.headers.get("Range")

        delay = fake.faults.take("delay", path)
        if delay is not None:
            time.sleep(delay.seconds)
        failure = fake.faults.take("fail", path)
        try:
            if failure is not None:
                extra = (
                    [("Retry-After", str(failure.retry_after))]
                    if failure.retry_after is not None
                    else []
                )
                raise HttpError(
                    failure.status, _ERROR_NAMES.get(failure.status, "Error"), headers=extra
                )
            response = fake.dispatch(req)
        except HttpError as err:
            response = fake.error_response(err)
        except Exception:
            log.exception("fake server failed on %s %s", self.command, path)
            response = fake.error_response(HttpError(500, "Internal server error"))

        record = RequestRecord(
            self.command, path, masked_query, response.status, 0, range_header, received=received
        )
        latency = fake.latency_ms / 1000
        if latency > 0:
            # the origin's cost before its first byte (a real Immich authenticates the
            # key and checks access in its database on every request)
            wait = received + latency - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._send(response, path, record)

    def _send(self, response: Response, path: str, record: RequestRecord) -> None:
        body = response.body
        data = body.data
        headers = response.headers
        fake = self.fake
        if data is not None and body.json:
            # compress like Immich (v1.133+) when the client accepts it
            if (
                fake.version_info >= (1, 133, 0)
                and len(data) > 1024
                and "gzip" in self.headers.get("Accept-Encoding", "")
            ):
                data = gzip.compress(data, compresslevel=1)
                headers = [*headers, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
            body = Body(data=data, length=len(data))
            if response.status == 200 and self._not_modified(headers):
                response = Response(304, [h for h in headers if h[0] != "Content-Type"])
                body = Body()
        length = body.length
        self.send_response(response.status)
        cid = "X-Correlation-ID" if fake.version_info >= (3, 0, 0) else "x-immich-cid"
        if not any(name == cid for name, _ in headers):  # Immich tags every response
            self.send_header(cid, secrets.token_hex(4))
        for name, value in headers:
            self.send_header(name, value)
        if response.status != 304 and not any(n.lower() == "content-length" for n, _ in headers):
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        record.status = response.status
        record.first_byte = time.monotonic()
        if self.command == "HEAD" or response.status == 304 or length == 0:
            fake.requests.append(record)
            self.end_headers()
            return

        limit = length
        cut = fake.faults.take("cut", path, length)
        truncate = None if cut else fake.faults.take("truncate", path, length)
        if cut is not None:
            limit = min(length, cut.nbytes)
        elif truncate is not None:
            limit = length // 2 if truncate.nbytes < 0 else min(length, truncate.nbytes)
        slow = fake.faults.take("slow", path)
        stall = fake.faults.take("stall", path, length)
        record.bytes_sent = limit
        fake.requests.append(record)
        self.end_headers()
        self._progress = 0
        rate = fake.stream_mib_s * (1 << 20) if fake.stream_mib_s else None
        try:
            if slow is not None or stall is not None:
                self._send_paced(
                    body,
                    limit,
                    rate=min(slow.nbytes, rate or slow.nbytes) if slow is not None else rate,
                    stall_at=stall.nbytes if stall is not None else None,
                    stall_for=stall.seconds if stall is not None else 0.0,
                )
            elif body.path is not None:
                with body.path.open("rb") as f:
                    self._sendfile(f, body.offset, limit, rate)
            elif body.data is not None:
                self._send_all(memoryview(body.data)[body.offset : body.offset + limit], rate)
        except OSError:
            self.close_connection = True
            record.bytes_sent = self._progress
            return
        record.bytes_sent = self._progress
        if cut is not None or truncate is not None:
            self.close_connection = True
            self.wfile.flush()
            if cut is not None:
                # abortive close: the client sees a reset, not a clean end
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            else:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_WR)

    def _send_all(self, data: bytes | memoryview, rate: float | None = None) -> None:
        """Send all of ``data``, counting each piece as it goes out (sendall would
        not say how much left before the client hung up)."""
        view = memoryview(data)
        self._pump(lambda pos, n: self.connection.send(view[pos : pos + n]), len(view), rate)

    def _sendfile(self, f: Any, offset: int, count: int, rate: float | None = None) -> None:
        # os.sendfile, not socket.sendfile: the latter loops internally and, when the
        # client hangs up midway, raises without saying how much was already sent.
        out = self.connection.fileno()

        def write(pos: int, n: int) -> int:
            while True:
                try:
                    return os.sendfile(out, f.fileno(), offset + pos, n)
                except BlockingIOError:
                    # the handler's timeout makes the socket non-blocking underneath
                    if not select.select([], [out], [], self.timeout)[1]:
                        raise TimeoutError("client stopped reading") from None

        self._pump(write, count, rate)

    def _pump(self, write: Callable[[int, int], int], count: int, rate: float | None) -> None:
        """Write ``count`` bytes with ``write(pos, n)`` (returns how many went out),
        adding each to ``_progress`` as it goes, never ahead of ``rate`` bytes/s:
        each piece waits (sleeps, no spinning) until the stream may have sent it."""
        step = count if rate is None else max(16 << 10, int(rate / 500))  # ~2 ms pieces
        start = time.monotonic()
        pos = 0
        while pos < count:
            n = min(step, count - pos)
            if rate is not None:
                wait = start + (pos + n) / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            written = write(pos, n)
            if written == 0:
                break
            pos += written
            self._progress += written

    def _send_paced(
        self,
        body: Body,
        limit: int,
        *,
        rate: float | None,
        stall_at: int | None,
        stall_for: float,
    ) -> None:
        """Send in small pieces: at ``rate`` bytes/s, and/or pausing at ``stall_at``."""
        chunk = 16 << 10 if rate is None else max(1, min(16 << 10, int(rate // 20)))
        fd = None
        try:
            if body.path is not None:
                fd = body.path.open("rb")
            while self._progress < limit:
                n = min(chunk, limit - self._progress)
                if stall_at is not None and self._progress + n > stall_at:
                    n = stall_at - self._progress
                    if n <= 0:
                        time.sleep(stall_for)
                        stall_at = None
                        continue
                start = body.offset + self._progress
                if fd is not None:
                    fd.seek(start)
                    piece = fd.read(n)
                else:
                    assert body.data is not None
                    piece = body.data[start : start + n]
                self._send_all(piece)
                if rate:
                    time.sleep(len(piece) / rate)
        finally:
            if fd is not None:
                fd.close()

    def _not_modified(self, headers: list[tuple[str, str]]) -> bool:
        wanted = self.headers.get("If-None-Match")
        if not wanted:
            return False
        etag = next((v for n, v in headers if n == "ETag"), None)
        return etag is not None and etag in [t.strip() for t in wanted.split(",")]
