"""The REST gateway: the connector's operations over HTTP, as a small ASGI app.

Other services (a VR viewer, a depth worker) reach Immich through this one
gateway instead of each holding an API key. The app is written directly
against the ASGI 3 spec and runs under trio (hypercorn's trio worker, see
``immichfs.gateway.serve``); it needs no web framework for a dozen fixed routes.

Invariants:

* Originals are streamed chunk by chunk from the connector to the client;
  nothing holds a whole file. Backpressure comes from ``send`` (hypercorn
  awaits the socket write), so memory stays bounded however large the file.
* A client that goes away mid-download cancels the upstream request: a
  watcher task waits for ASGI's ``http.disconnect`` and cancels the copy, which
  closes the connector's stream (and with it the connection to Immich).
* Ranges are clamped to the size Immich reports (HEAD); Immich is never asked
  for bytes past the end, because it answers that with 404/500 instead of 416.
* Errors are JSON ``{"error": code, "message": text}``; no message ever holds
  the API key or the gateway token.
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from immichfs import errors
from immichfs.logs import scrub

if TYPE_CHECKING:
    from immichfs.client.connector import ImmichConnector

log = logging.getLogger(__name__)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/api/immich"
#: Immich's own page-size limit for search/metadata
MAX_PAGE_SIZE = 1000
#: a search request is a few dozen bytes; refuse anything that is clearly not one
MAX_JSON_BODY = 64 * 1024
ASSET_TYPES = ("ALL", "IMAGE", "VIDEO")
THUMBNAIL_FORMATS = ("JPEG", "WEBP")
THUMBNAIL_SIZES = ("preview", "thumbnail")
#: Immich ids are UUIDs; anything else cannot name an asset (and never reaches Immich's URLs)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class HTTPError(Exception):
    """An error answer: status, a short machine-readable code and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)
        self.extra = dict(extra or {})


def bad_request(field: str, message: str) -> HTTPError:
    """400 naming the offending field, in the body and in ``field``."""
    return HTTPError(400, "bad_request", f"{field}: {message}", extra={"field": field})


def upstream_error(exc: errors.ImmichError, needs: str | None = None) -> HTTPError:
    """How a connector error looks to a gateway client.

    Immich's faults are the gateway's upstream faults: 502 (504 for a timeout),
    except "no such asset", which is the client's 404. ``needs`` is the Immich
    permission the endpoint uses, named when Immich's 403 does not say (a HEAD
    answer has no body).
    """
    text = scrub(str(exc))
    if isinstance(exc, errors.NotFound):
        return HTTPError(404, "not_found", text or "no such asset")
    if isinstance(exc, errors.AuthenticationError):
        return HTTPError(
            502,
            "upstream_auth",
            "Immich rejected the gateway's API key (401); check IMMICH_API_KEY or "
            "IMMICH_API_KEY_FILE where the gateway runs",
        )
    if isinstance(exc, errors.PermissionDenied):
        permission = exc.permission or needs or "a permission this endpoint needs"
        return HTTPError(
            502,
            "upstream_permission",
            f"the gateway's API key lacks {permission} (Immich answered 403); "
            "give the key that permission in Immich's account settings",
        )
    if isinstance(exc, errors.RequestTimeout):
        return HTTPError(504, "upstream_timeout", text or "Immich did not answer in time")
    if isinstance(exc, errors.ConnectError):
        return HTTPError(502, "upstream_unreachable", text or "cannot reach Immich")
    if isinstance(exc, errors.UnsupportedVersion):
        return HTTPError(502, "upstream_unsupported", text)
    return HTTPError(502, "upstream_error", text or f"Immich failed ({type(exc).__name__})")


class Outage:
    """Whether Immich is known to be unreachable, and the background probe that ends it.

    Without it, every request during an outage waits out the retries (seconds)
    before its 502, and logs a line per retry. Once a request (or the start-up
    check) could not connect, requests get their 502 at once until :meth:`watch`
    sees Immich answer again: one WARNING when an outage starts, one INFO when it
    ends. Nothing begins while no :meth:`watch` runs (nothing could end it).
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        interval: float = 0.5,
        max_interval: float = 5.0,
    ) -> None:
        self._probe = probe
        self.interval = interval
        self.max_interval = max_interval
        #: the error that began the outage; None while Immich is thought reachable
        self.cause: errors.ImmichError | None = None
        self._began_at = 0.0
        self._begun = trio.Event()
        self._watching = False

    def begin(self, exc: errors.ImmichError) -> None:
        if self.cause is not None or not self._watching:
            return
        self.cause = exc
        self._began_at = trio.current_time()
        log.warning("%s; answering 502 at once until it answers again", scrub(str(exc)).rstrip("."))
        self._begun.set()

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe Immich while an outage lasts (backing off to ``max_interval``); end it."""
        self._watching = True
        task_status.started()
        try:
            while True:
                await self._begun.wait()
                delay = self.interval
                while True:
                    await trio.sleep(delay)
                    try:
                        await self._probe()
                    except errors.Unreachable:
                        delay = min(delay * 2, self.max_interval)
                        continue
                    except errors.ImmichError:
                        pass  # it answered, even if with an error: reachable again
                    break
                log.info(
                    "Immich answers again (after %.0f s); passing requests on",
                    trio.current_time() - self._began_at,
                )
                self.cause = None
                self._begun = trio.Event()
        finally:
            self._watching = False


# -- request parsing ---------------------------------------------------------------------


def parse_query(query_string: bytes, allowed: Sequence[str]) -> dict[str, str]:
    """The query parameters, refusing unknown or repeated names (typos must not pass silently)."""
    try:
        pairs = urllib.parse.parse_qsl(
            query_string.decode("ascii"), keep_blank_values=True, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError):
        raise bad_request("query", "the query string is not valid") from None
    result: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise bad_request(name, f"unknown query parameter (known: {known})")
        if name in result:
            raise bad_request(name, "given more than once")
        result[name] = value
    return result


def int_param(
    params: Mapping[str, str], name: str, default: int, low: int, high: int | None
) -> int:
    """An integer parameter within [low, high]."""
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise bad_request(name, f"must be a whole number, not {raw!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(name, f"must be {bound}, not {value}")
    return value


def bool_param(params: Mapping[str, str], name: str) -> bool | None:
    """``true``/``false`` (also 1/0), or None when absent."""
    raw = params.get(name)
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise bad_request(name, f"must be true or false, not {raw!r}")


def choice_param(
    params: Mapping[str, str], name: str, choices: Sequence[str], default: str | None
) -> str | None:
    """One of ``choices`` (matched without regard to case, returned as spelled there)."""
    raw = params.get(name)
    if raw is None:
        return default
    for choice in choices:
        if raw.strip().lower() == choice.lower():
            return choice
    raise bad_request(name, f"must be one of {', '.join(choices)}, not {raw!r}")


@dataclass(frozen=True)
class SearchRequest:
    query: str
    type: str = "ALL"
    size: int = 100


def parse_search(body: bytes) -> SearchRequest:
    """The JSON body of POST /search: ``{"query": str, "type"?: str, "size"?: int}``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request("body", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad_request("body", 'must be a JSON object like {"query": "beach"}')
    unknown = sorted(set(data) - {"query", "type", "size"})
    if unknown:
        raise bad_request(unknown[0], "unknown field (known: query, type, size)")
    query = data.get("query")
    if not isinstance(query, str) or not query.strip():
        raise bad_request("query", "required, a non-empty string")
    kind = data.get("type", "ALL")
    if not isinstance(kind, str) or kind.strip().upper() not in ASSET_TYPES:
        raise bad_request("type", f"must be one of {', '.join(ASSET_TYPES)}, not {kind!r}")
    size = data.get("size", 100)
    if isinstance(size, bool) or not isinstance(size, int):
        raise bad_request("size", f"must be a whole number, not {size!r}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise bad_request("size", f"must be between 1 and {MAX_PAGE_SIZE}, not {size}")
    return SearchRequest(query=query, type=kind.strip().upper(), size=size)


class ClientDisconnected(Exception):
    """The client went away before its request was read; nobody is left to answer."""


class RangeNotSatisfiable(Exception):
    """The Range header cannot be served for this size (answered with 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range to serve as (start, end inclusive), or None for the whole file.

    Follows RFC 9110 §14: another unit than ``bytes`` is ignored, and so are
    several ranges (the whole file is sent, as Immich itself does). A malformed
    or unsatisfiable ``bytes`` range raises RangeNotSatisfiable. The result is
    always clamped to ``size``, so Immich is never asked past the end.
    """
    if header is None:
        return None
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [part for part in specs.split(",") if part.strip()]
    if len(parts) > 1:
        return None
    match = _RANGE_SPEC.match(parts[0]) if parts else None
    if match is None or (not match[1] and not match[2]):
        raise RangeNotSatisfiable(header)
    if not match[1]:  # suffix: the last N bytes
        length = int(match[2])
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - length), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if start > end or start >= size:
        raise RangeNotSatisfiable(header)
    return start, min(end, size - 1)


def content_disposition(file_name: str, disposition: str = "inline") -> str:
    """``inline; filename="ascii"; filename*=UTF-8''...`` (RFC 6266 + RFC 5987).

    The plain ``filename`` is an ASCII stand-in for old clients; ``filename*``
    carries the real (unicode) name. Path separators never survive: a name is
    not a path.
    """
    name = file_name.replace("/", "_").replace("\\", "_") or "file"
    fallback = "".join(
        char if 0x20 <= ord(char) < 0x7F and char not in '"%' else "_" for char in name
    )
    encoded = urllib.parse.quote(name, safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def content_type_for(info: Mapping[str, Any]) -> str:
    """The original's media type: Immich's ``originalMimeType``, else guessed from the name."""
    mime = info.get("originalMimeType")
    if isinstance(mime, str) and "/" in mime and mime.isascii():
        return mime
    name = info.get("originalFileName")
    if isinstance(name, str):
        guessed, _ = mimetypes.guess_type(name, strict=False)
        if guessed:
            return guessed
    return "application/octet-stream"


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case bytes), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def token_matches(scope: Mapping[str, Any], token: str) -> bool:
    """Whether the request carries ``token`` (Bearer or X-Gateway-Token); constant-time compare."""
    expected = token.encode("utf-8")
    given: list[str] = []
    authorization = header(scope, b"authorization")
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            given.append(credentials.strip())
    direct = header(scope, b"x-gateway-token")
    if direct is not None:
        given.append(direct.strip())
    matched = False
    for candidate in given:
        # compare every candidate so the time taken does not depend on which one matched
        matched |= hmac.compare_digest(candidate.encode("latin-1"), expected)
    return matched


# -- responses -------------------------------------------------------------------------------


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class Exchange:
    """One request being answered: remembers what was sent, for the log line."""

    scope: Mapping[str, Any]
    receive: Receive
    send: Send
    status: int = 0
    body_bytes: int = 0
    started: bool = False
    client_left: bool = False

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.status = status
        self.started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers
                ],
            }
        )

    async def body(self, data: bytes, *, more: bool = False) -> None:
        self.body_bytes += len(data)
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(
        self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        data = _json_bytes(payload)
        await self.start(
            status,
            [
                ("content-type", "application/json"),
                ("content-length", str(len(data))),
                ("cache-control", "no-store"),
                *headers,
            ],
        )
        await self.body(data)

    async def error(self, problem: HTTPError) -> None:
        payload = {"error": problem.code, "message": problem.message, **problem.extra}
        await self.json(problem.status, payload, problem.headers)

    async def read_body(self, limit: int) -> bytes:
        """The whole request body, refusing more than ``limit`` bytes."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_left = True
                raise ClientDisconnected
            chunk = bytes(message.get("body", b""))
            total += len(chunk)
            if total > limit:
                raise HTTPError(413, "payload_too_large", f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


# -- the app ------------------------------------------------------------------------------------

Handler = Callable[[Exchange, dict[str, str]], Awaitable[None]]


@dataclass(frozen=True)
class _Download:
    """One answer of the file endpoint: what to ask Immich for and what to send."""

    asset_id: str
    status: int
    headers: list[tuple[str, str]]
    start: int | None
    end: int | None
    length: int
    edited: bool = False


class Gateway:
    """The ASGI application.

    ``connector`` is None when Immich is not configured; every ``/api/immich``
    route then answers 503 naming ``missing`` (the variables to set) and
    ``/healthz`` still answers. ``token``, when set, must accompany every
    request except ``/healthz`` (which reveals nothing and serves liveness probes).
    """

    def __init__(
        self,
        connector: ImmichConnector | None,
        *,
        token: str | None = None,
        not_configured: str | None = None,
        missing: Sequence[str] = (),
    ) -> None:
        self.connector = connector
        self.token = token or None
        self.not_configured = not_configured or (
            "Immich is not configured: set IMMICH_URL and IMMICH_API_KEY "
            "(or IMMICH_API_KEY_FILE) and restart the gateway"
        )
        self.missing = list(missing)
        #: run ``outage.watch()`` beside the server (``immichfs.gateway.serve`` does)
        self.outage = Outage(connector.get_server_version if connector else _nothing)
        self.downloads_active = 0
        self.downloads_cancelled = 0
        asset = r"^/api/immich/assets/(?P<asset_id>[^/]+)"
        #: (method, path, handler, the Immich permission it needs: named in 502s)
        self._routes: list[tuple[str, re.Pattern[str], Handler, str]] = [
            ("GET", re.compile(r"^/api/immich/test$"), self._test, "server.about"),
            ("GET", re.compile(r"^/api/immich/version$"), self._version, "server.about"),
            ("GET", re.compile(r"^/api/immich/statistics$"), self._statistics, "asset.statistics"),
            ("GET", re.compile(r"^/api/immich/assets$"), self._assets, "asset.read"),
            ("GET", re.compile(r"^/api/immich/photos$"), self._photos, "asset.read"),
            ("GET", re.compile(r"^/api/immich/videos$"), self._videos, "asset.read"),
            ("GET", re.compile(asset + "$"), self._asset_info, "asset.read"),
            ("GET", re.compile(asset + "/thumbnail$"), self._thumbnail, "asset.view"),
            ("GET", re.compile(asset + "/file$"), self._file, "asset.download"),
            ("POST", re.compile(r"^/api/immich/search$"), self._search, "asset.read"),
        ]

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not offered
            return
        exchange = Exchange(scope, receive, send)
        started = time.monotonic()
        try:
            await self._dispatch(exchange)
        except ClientDisconnected:
            pass
        except HTTPError as problem:
            if exchange.started:
                raise
            await exchange.error(problem)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not exchange.started:
                await exchange.error(
                    HTTPError(500, "internal", "the gateway failed; see its log for details")
                )
        finally:
            path = scope.get("path", "")
            level = logging.DEBUG if path == "/healthz" else logging.INFO
            log.log(
                level,
                "%s %s -> %s (%d bytes, %.3f s%s)",
                scope.get("method"),
                path,
                exchange.status or "no answer",
                exchange.body_bytes,
                time.monotonic() - started,
                ", client left" if exchange.client_left else "",
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # the connector's lifetime belongs to whoever built it (immichfs.gateway.serve)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, exchange: Exchange) -> None:
        scope = exchange.scope
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                raise _method_not_allowed("GET")
            await exchange.json(
                200, {"status": "ok", "immichConfigured": self.connector is not None}
            )
            return
        if self.token is not None and not token_matches(scope, self.token):
            raise HTTPError(
                401,
                "unauthorized",
                "this gateway needs its token: send 'Authorization: Bearer <token>' or "
                "'X-Gateway-Token: <token>' (the value of IMMICHFS_GATEWAY_TOKEN)",
                headers=[("www-authenticate", 'Bearer realm="immichfs"')],
            )
        for route_method, pattern, handler, needs in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            allowed = (route_method, "HEAD") if route_method == "GET" else (route_method,)
            if method not in allowed:
                raise _method_not_allowed(", ".join(allowed))
            if self.connector is None:
                raise HTTPError(
                    503,
                    "not_configured",
                    self.not_configured,
                    extra={"variables": self.missing},
                )
            params = match.groupdict()
            if "asset_id" in params and not _UUID.match(params["asset_id"]):
                raise bad_request("assetId", "must be an Immich asset id (a UUID)")
            if self.outage.cause is not None:
                raise upstream_error(self.outage.cause, needs)
            try:
                await handler(exchange, params)
            except errors.ImmichError as exc:
                if isinstance(exc, errors.Unreachable):
                    self.outage.begin(exc)
                raise upstream_error(exc, needs) from None
            return
        raise HTTPError(404, "not_found", f"no endpoint {path}; the API lives under {PREFIX}/")

    def _immich(self) -> ImmichConnector:
        assert self.connector is not None  # checked by _dispatch
        return self.connector

    # -- handlers: JSON -----------------------------------------------------------------

    async def _test(self, exchange: Exchange, _: dict[str, str]) -> None:
        parse_query(exchange.scope.get("query_string", b""), ())
        await exchange.json(200, await self._immich().test_connection())

    async def _version(self, exchange: Exchange, _: dict[str, str]) -> None:
        parse_query(exchange.scope.get("query_string", b""), ())
        await exchange.json(200, await self._immich().get_server_version())

    async def _statistics(self, exchange: Exchange, _: dict[str, str]) -> None:
        parse_query(exchange.scope.get("query_string", b""), ())
        await exchange.json(200, await self._immich().get_asset_statistics())

    async def _assets(self, exchange: Exchange, _: dict[str, str]) -> None:
        params = parse_query(
            exchange.scope.get("query_string", b""), ("size", "page", "isFavorite", "isArchived")
        )
        size = int_param(params, "size", 100, 1, MAX_PAGE_SIZE)
        page = int_param(params, "page", 0, 0, None)
        favorite = bool_param(params, "isFavorite")
        archived = bool_param(params, "isArchived")
        assets = await self._immich().get_assets(
            size=size, page=page, is_archived=archived, is_favorite=favorite
        )
        await exchange.json(200, assets)

    async def _photos(self, exchange: Exchange, _: dict[str, str]) -> None:
        params = parse_query(exchange.scope.get("query_string", b""), ("size", "page"))
        size = int_param(params, "size", 100, 1, MAX_PAGE_SIZE)
        page = int_param(params, "page", 0, 0, None)
        await exchange.json(200, await self._immich().get_photos(size=size, page=page))

    async def _videos(self, exchange: Exchange, _: dict[str, str]) -> None:
        params = parse_query(exchange.scope.get("query_string", b""), ("size", "page"))
        size = int_param(params, "size", 100, 1, MAX_PAGE_SIZE)
        page = int_param(params, "page", 0, 0, None)
        await exchange.json(200, await self._immich().get_videos(size=size, page=page))

    async def _asset_info(self, exchange: Exchange, params: dict[str, str]) -> None:
        parse_query(exchange.scope.get("query_string", b""), ())
        await exchange.json(200, await self._immich().get_asset_info(params["asset_id"]))

    async def _search(self, exchange: Exchange, _: dict[str, str]) -> None:
        parse_query(exchange.scope.get("query_string", b""), ())
        request = parse_search(await exchange.read_body(MAX_JSON_BODY))
        found = await self._immich().search_assets(
            request.query, type=request.type, size=request.size
        )
        await exchange.json(200, found)

    # -- handlers: bytes -------------------------------------------------------------------

    async def _thumbnail(self, exchange: Exchange, params: dict[str, str]) -> None:
        query = parse_query(exchange.scope.get("query_string", b""), ("format", "size"))
        image_format = choice_param(query, "format", THUMBNAIL_FORMATS, None)
        size = choice_param(query, "size", THUMBNAIL_SIZES, None)
        if size is None:
            # Immich >= 1.106 ignores `format`; its sizes carry the encoding instead
            # (thumbnail is WebP, preview JPEG by default), as the old API's format did
            size = "thumbnail" if image_format == "WEBP" else "preview"
        data, content_type = await self._immich().get_thumbnail_response(params["asset_id"], size)
        await exchange.start(
            200,
            [
                # Immich's own type: admins can switch encodings, so never assume one
                ("content-type", content_type or "application/octet-stream"),
                ("content-length", str(len(data))),
                ("cache-control", "private, max-age=86400"),
                ("x-content-type-options", "nosniff"),
            ],
        )
        await exchange.body(data)

    async def _file(self, exchange: Exchange, params: dict[str, str]) -> None:
        query = parse_query(exchange.scope.get("query_string", b""), ("edited",))
        edited = choice_param(query, "edited", ("true", "false"), "false") == "true"
        asset_id = params["asset_id"]
        immich = self._immich()
        info = await immich.get_asset_info(asset_id)
        # the size of the bytes Immich will serve, which is what a Range counts in
        size, served_type = await immich.head_original_file(asset_id, edited=edited)
        content_type, name = content_type_for(info), _file_name(info, asset_id)
        if edited and info.get("isEdited") is True and served_type:
            # an edit is a file of its own format, named as Immich names it: stem + its type
            content_type = served_type
            extension = mimetypes.guess_extension(served_type, strict=False)
            if extension and not name.lower().endswith(extension):
                name = name.rsplit(".", 1)[0] + extension
        headers = [
            ("content-type", content_type),
            ("accept-ranges", "bytes"),
            ("content-disposition", content_disposition(name)),
            ("cache-control", "private, max-age=86400"),
            ("x-content-type-options", "nosniff"),
        ]
        # If-Range cannot be evaluated (no validator is handed out): send everything
        range_header = (
            None if header(exchange.scope, b"if-range") else header(exchange.scope, b"range")
        )
        try:
            wanted = parse_range(range_header, size)
        except RangeNotSatisfiable:
            raise HTTPError(
                416,
                "range_not_satisfiable",
                f"Range {range_header!r} does not fit the file's {size} bytes",
                headers=[("content-range", f"bytes */{size}")],
            ) from None
        if wanted is None:
            status, start, end = 200, None, None
            length = size
        else:
            status, (start, end) = 206, wanted
            length = end - start + 1
            headers.append(("content-range", f"bytes {start}-{end}/{size}"))
        headers.append(("content-length", str(length)))
        if exchange.scope.get("method") == "HEAD" or length == 0:
            await exchange.start(status, headers)
            await exchange.body(b"")
            return
        await self._stream(
            exchange, _Download(asset_id, status, headers, start, end, length, edited)
        )

    async def _stream(self, exchange: Exchange, download: _Download) -> None:
        """Copy the original from Immich to the client, cancelled when the client leaves."""
        failure: errors.ImmichError | None = None
        self.downloads_active += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, exchange, nursery.cancel_scope)
                try:
                    await self._copy(exchange, download)
                except errors.ImmichError as exc:
                    failure = exc
                finally:
                    nursery.cancel_scope.cancel()  # stops the watcher
        finally:
            self.downloads_active -= 1
        if failure is not None:
            if not exchange.started:
                raise failure
            # the status line is gone; ending the body early closes the connection, and
            # the client sees fewer bytes than Content-Length: an error, never wrong bytes
            log.warning(
                "download of asset %s broke off: %s", download.asset_id, scrub(str(failure))
            )

    async def _copy(self, exchange: Exchange, download: _Download) -> None:
        asset_id, status, headers = download.asset_id, download.status, download.headers
        start, end, length = download.start, download.end, download.length
        immich = self._immich()
        async with immich.stream_full_resolution_file(
            asset_id, start, end, edited=download.edited
        ) as chunks:
            # headers only once Immich has answered, so its errors still become JSON
            await exchange.start(status, headers)
            # One chunk is held back until the next arrives: the body is only completed
            # once Immich's answer has ended with exactly the announced length, so a
            # client never takes a short or changed file for a whole one.
            pending = b""
            received = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                received += len(chunk)
                if received > length:
                    raise errors.StaleAsset(
                        f"asset {asset_id} grew while being sent (more than {length} bytes)"
                    )
                if pending:
                    await exchange.body(pending, more=True)
                pending = chunk
        if received < length:
            raise errors.TruncatedBody(
                f"Immich sent {received} of {length} bytes of asset {asset_id}"
            )
        await exchange.body(pending)

    async def _watch_disconnect(self, exchange: Exchange, scope: trio.CancelScope) -> None:
        while True:
            message = await exchange.receive()
            if message["type"] == "http.disconnect":
                self.downloads_cancelled += 1
                exchange.client_left = True
                log.debug("client left; cancelling the transfer from Immich")
                scope.cancel()
                return

    def statistics(self) -> dict[str, int]:
        return {
            "downloads_active": self.downloads_active,
            "downloads_cancelled": self.downloads_cancelled,
        }


def _method_not_allowed(allowed: str) -> HTTPError:
    return HTTPError(
        405,
        "method_not_allowed",
        f"this endpoint answers {allowed}",
        headers=[("allow", allowed)],
    )


def _file_name(info: Mapping[str, Any], asset_id: str) -> str:
    name = info.get("originalFileName")
    return name if isinstance(name, str) and name else asset_id


async def _nothing() -> None:
    """The probe of a gateway without Immich: there is nothing to wait for."""
