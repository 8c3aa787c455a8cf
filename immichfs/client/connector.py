"""An async Immich client on httpx, for trio and asyncio alike.

``ImmichConnector`` speaks Immich's REST API (v1.135 through v3.x) and hands
out Immich's own JSON objects. It is the one place where httpx exceptions and
HTTP statuses become :mod:`immichfs.errors` (as httpx's own
``map_httpcore_exceptions`` does one layer down), always chained ``from`` the
original. Given a ``retry_policy`` (:class:`immichfs.client.retry.RetryPolicy`, e.g.
``DEFAULT_RETRY_POLICY``), idempotent JSON calls (every GET, and the read-only
POSTs: search, key validation), thumbnails and HEAD are retried after
transient failures (502/503/504, 429 with ``Retry-After``, refused or broken
connections, timeouts, truncated bodies; not 500, see :mod:`immichfs.client.retry`)
within its budget. Without one (the default) every failure is raised at once:
a diagnosis (``immichfs check``) or a gateway answering its own client wants
that. Streams of originals are never retried here:
:func:`immichfs.client.retry.resuming` resumes them at the offset reached.

The API key is sent only in the ``x-api-key`` header and only to the server's
own origin (a redirect elsewhere goes without it); it is registered with the
log scrubber and never appears in ``repr``, messages or logs.

    async with ImmichConnector("http://immich.local:2283", key) as immich:
        print(await immich.get_asset_statistics())
        async with immich.stream_full_resolution_file(asset_id) as chunks:
            async for chunk in chunks:
                ...
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    aclosing,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from types import TracebackType
from typing import Any, TypeVar

import httpx

from immichfs import __version__
from immichfs.client import search
from immichfs.client.config import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT, ClientConfig
from immichfs.client.http import (
    check_asset_id,
    check_content_range,
    expect_json_list,
    expect_json_object,
    status_error,
)
from immichfs.client.retry import RetryPolicy
from immichfs.errors import (
    ConnectError,
    ImmichError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RequestTimeout,
    TruncatedBody,
    Unreachable,
    UnsupportedVersion,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: oldest Immich immichfs supports (see docs/CONNECTOR.md: /api/server/*, visibility, albumIds)
MIN_VERSION = (1, 135, 0)
#: newest major release this code was checked against
NEWEST_KNOWN_MAJOR = 3
#: Immich's largest page for search and people
MAX_PAGE_SIZE = 1000
#: a JSON answer larger than this is refused (a 1000-asset page with EXIF is ~3 MiB)
MAX_JSON_BYTES = 64 * 1024 * 1024
#: an error body is read this far for its message
_MAX_ERROR_BYTES = 64 * 1024
#: the policy the filesystem uses by default (the ``retry_budget`` setting's default)
DEFAULT_RETRY_POLICY = RetryPolicy()
#: ids go into URL paths: refuse anything that could change the path
_THUMBNAIL_SIZES = ("thumbnail", "preview", "fullsize")
_ASSET_TYPES = {"ALL": None, "IMAGE": "IMAGE", "VIDEO": "VIDEO"}

Version = tuple[int, int, int]

#: ``GET /config`` replaces ``/server/config`` and ``/server/features`` from here
CONFIG_SINCE = (3, 2, 0)
#: edits (``isEdited``, ``edited=true`` on the original and thumbnails) from here
EDITS_SINCE = (2, 5, 0)
#: the asset files API (``/asset-files``: renditions, sidecars) from here
ASSET_FILES_SINCE = (3, 2, 0)
ASSET_FILE_TYPES = ("fullsize", "preview", "thumbnail", "sidecar", "encoded_video")


def features_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/server/features`` flags a 3.2 ``UserConfigDto`` (``GET /config``) implies."""

    def on(*path: str) -> bool:
        node: Any = config
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        return node is True

    ml = on("machineLearning", "enabled")
    return {
        "smartSearch": ml and on("machineLearning", "clip", "enabled"),
        "facialRecognition": ml and on("machineLearning", "facialRecognition", "enabled"),
        "duplicateDetection": ml and on("machineLearning", "duplicateDetection", "enabled"),
        "ocr": ml and on("machineLearning", "ocr", "enabled"),
        "map": on("map", "enabled"),
        "reverseGeocoding": on("reverseGeocoding", "enabled"),
        "trash": on("trash", "enabled"),
        "oauth": on("oauth", "enabled"),
        "passwordLogin": on("passwordLogin", "enabled"),
        "realtimeTranscoding": on("ffmpeg", "realtime", "enabled"),
    }


def _bool_param(value: Any) -> Any:
    # Immich's query booleans are the strings true/false
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _page_args(size: int, page: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
        raise ValueError(f"size must be an integer from 1 to {MAX_PAGE_SIZE}, not {size!r}")
    if isinstance(page, bool) or not isinstance(page, int) or page < 0:
        raise ValueError(f"page must be an integer ≥ 0 (0 is the first page), not {page!r}")


class ImmichConnector:
    """A connection to one Immich server with one API key.

    ``url`` and ``api_key`` default to ``$IMMICH_URL`` and ``$IMMICH_API_KEY``
    (or the file named by ``$IMMICH_API_KEY_FILE``); both are validated here and
    a :class:`ConfigError` names the setting that is missing or malformed.
    ``verify`` is httpx's: ``True``, ``False`` (no TLS checks) or a CA bundle path.
    ``env`` replaces ``os.environ`` (for tests and embedding). ``retry_policy``
    governs retries of idempotent calls (``None``, the default, or ``attempts=1``:
    none). ``config``, a :class:`~immichfs.client.config.ClientConfig`, replaces all
    of these at once (the mount, the gateway and ``immichfs check`` build one from
    their settings).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str | ssl.SSLContext = True,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        env: Mapping[str, str] | None = None,
        retry_policy: RetryPolicy | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        if config is None:
            config = ClientConfig.from_env(
                env,
                url=url,
                api_key=api_key,
                timeout=timeout,
                verify=verify,
                max_connections=max_connections,
                retry_policy=retry_policy,
            )
        self.config = config
        self.url = config.url
        self.retry_policy = config.retry_policy
        self.__key = config.api_key
        self.timeout = config.timeout
        self.server_version: Version | None = None
        self._features: dict[str, Any] | None = None
        #: API requests sent, those answered with an error or not at all, body bytes
        self._requests = 0
        self._failed = 0
        self._bytes_received = 0
        origin = httpx.URL(self.url)
        self._origin = (origin.scheme, origin.host, origin.port)
        self._client = httpx.AsyncClient(
            base_url=self.url + "/api",
            timeout=httpx.Timeout(self.timeout),
            verify=config.ssl_context(),
            transport=transport,
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
            ),
            headers={
                "User-Agent": f"immichfs/{__version__}",
                "Accept": "application/json",
                # what _read can decode (httpx would add br/zstd when installed)
                "Accept-Encoding": "gzip, deflate",
            },
            event_hooks={"request": [self._authorise]},
            follow_redirects=False,
            trust_env=False,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> ImmichConnector:
        """A connector configured only from the environment (``IMMICH_URL``, ...)."""
        return cls(None, None, env=env, **kwargs)

    def __repr__(self) -> str:
        version = ".".join(map(str, self.server_version)) if self.server_version else "?"
        return f"<ImmichConnector url={self.url!r} version={version}>"

    __str__ = __repr__

    async def __aenter__(self) -> ImmichConnector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _count_failure(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc_type is not None and issubclass(exc_type, Exception):
            self._failed += 1

    def _count_bytes(self, response: httpx.Response) -> None:
        self._bytes_received += response.num_bytes_downloaded

    def statistics(self) -> dict[str, int]:
        """API requests sent, failed (an error status or no answer) and body bytes."""
        return {
            "requests": self._requests,
            "failed": self._failed,
            "bytes_received": self._bytes_received,
        }

    # -- plumbing ---------------------------------------------------------------

    async def _authorise(self, request: httpx.Request) -> None:
        # runs for every request, redirects included: the key goes to our origin only
        if (request.url.scheme, request.url.host, request.url.port) == self._origin:
            request.headers["x-api-key"] = self.__key
        else:
            request.headers.pop("x-api-key", None)

    @contextmanager
    def _translate(self, what: str, *, in_body: bool = False) -> Iterator[None]:
        """httpx exceptions → immichfs errors, chained ``from`` the original."""
        try:
            yield
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            raise RequestTimeout(
                f"{what}: no {kind} from {self.url} within {self.timeout:g} s"
            ) from exc
        except (httpx.ConnectError, httpx.ProxyError) as exc:
            tls = _tls_failure(exc)
            if tls is not None:
                # not transient: the same certificate fails the same way every time
                raise ImmichError(_tls_message(self.url, tls)) from exc
            raise Unreachable(
                f"cannot reach {self.url} — is the server running and the URL right? "
                f"({_os_reason(exc)})"
            ) from exc
        except httpx.DecodingError as exc:
            raise ProtocolError(f"{what}: the body could not be decoded ({exc})") from exc
        except httpx.TooManyRedirects as exc:
            raise ProtocolError(f"{what}: too many redirects") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ProtocolError(f"{what}: the server redirected to an unusable URL") from exc
        except httpx.TransportError as exc:
            # RemoteProtocolError, ReadError, WriteError: the connection broke
            if in_body:
                raise TruncatedBody(
                    f"{what}: the connection broke before the whole body arrived ({exc})"
                ) from exc
            raise ConnectError(f"{what}: the connection to {self.url} broke ({exc})") from exc

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
        what: str | None = None,
        about_id: bool = False,
        range_start: int | None = None,
    ) -> AsyncGenerator[httpx.Response, None]:
        """Send a request; yield the 2xx response with its body still unread."""
        if self.server_version is None and path != "/server/version":
            await self.connect()
        what = what or f"{method} /api{path}"
        started = time.monotonic()
        self._requests += 1
        async with AsyncExitStack() as stack:
            stack.push(self._count_failure)  # runs last: sees every failure, body included
            with self._translate(what):
                response = await stack.enter_async_context(
                    self._client.stream(
                        method,
                        path,
                        params={k: _bool_param(v) for k, v in (params or {}).items()},
                        json=body,
                        headers=headers,
                        follow_redirects=follow_redirects,
                    )
                )
            stack.callback(self._count_bytes, response)
            log.debug(
                "%s /api%s → %d (%.0f ms)",
                method,
                path,
                response.status_code,
                (time.monotonic() - started) * 1000,
            )
            if not 200 <= response.status_code < 300:
                raw = b""
                with suppress(ImmichError):  # the status alone says enough
                    raw = await self._read(response, _MAX_ERROR_BYTES, what, truncate=True)
                raise status_error(
                    status=response.status_code,
                    reason=response.reason_phrase,
                    body=raw,
                    headers=response.headers,
                    what=what,
                    base_url=self.url,
                    about_id=about_id,
                    range_start=range_start,
                )
            yield response

    async def _read(
        self, response: httpx.Response, limit: int, what: str, *, truncate: bool = False
    ) -> bytes:
        """The (decoded) body, at most ``limit`` bytes: more is ProtocolError or cut.

        The raw body is decoded here, not by httpx, so that a gzip bomb is cut at
        ``limit`` decoded bytes (never inflated whole) and leaving early closes
        every generator at once.
        """
        declared = response.headers.get("content-length")
        if not truncate and declared and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(f"{what}: the answer is too large ({declared} bytes)")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in _DECODERS:
            raise ProtocolError(f"{what}: the server sent it {encoding}-encoded")
        # a body read before it got here (httpx.MockTransport) is decoded already
        decoder = _Identity() if response.is_stream_consumed else _DECODERS[encoding]()
        parts: list[bytes] = []
        got = 0
        with self._translate(what, in_body=True):
            async with aclosing(_raw_body(response)) as body:
                async for raw in body:
                    for chunk in _decoded(decoder, raw, limit - got + 1, what):
                        got += len(chunk)
                        if got > limit:
                            if not truncate:
                                raise ProtocolError(
                                    f"{what}: the answer is larger than {limit} bytes"
                                )
                            parts.append(chunk[: limit - (got - len(chunk))])
                            return b"".join(parts)
                        parts.append(chunk)
        return b"".join(parts)

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        what: str | None = None,
        about_id: bool = False,
        idempotent: bool | None = None,
    ) -> Any:
        """The decoded JSON answer; retried if ``idempotent`` (default: GET and HEAD)."""
        what = what or f"{method} /api{path}"
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")

        async def once() -> tuple[bytes, str]:
            async with self._open(
                method, path, params=params, body=body, what=what, about_id=about_id
            ) as response:
                raw = await self._read(response, MAX_JSON_BYTES, what)
                return raw, response.headers.get("content-type", "")

        raw, content_type = await self._retrying(once, what, idempotent=idempotent, path=path)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: absurdly deep nesting ("[[[[..."), from a broken or hostile server
            shown = content_type.split(";")[0] or "no content type"
            raise ProtocolError(
                f"{what}: the answer is not valid JSON ({shown}, {len(raw)} bytes) — "
                f"is {self.url} an Immich server?",
                status=200,
            ) from exc

    async def _retrying(
        self,
        call: Callable[[], Awaitable[T]],
        what: str,
        *,
        idempotent: bool = True,
        path: str = "",
    ) -> T:
        """``call()`` under the retry policy when ``idempotent``, else once."""
        if self.retry_policy is None or not idempotent:
            return await call()
        if self.server_version is None and path != "/server/version":
            # outside the loop: connect() retries on its own; nesting would multiply tries
            await self.connect()
        return await self.retry_policy.call(call, what=what)

    async def _chunks(
        self, response: httpx.Response, expected: int | None, what: str
    ) -> AsyncGenerator[bytes, None]:
        """The raw body chunk by chunk, counted against ``expected`` bytes."""
        got = 0
        body = _raw_body(response)
        try:
            with self._translate(what, in_body=True):
                async for chunk in body:
                    got += len(chunk)
                    if expected is not None and got > expected:
                        raise ProtocolError(f"{what}: the server sent more than {expected} bytes")
                    yield chunk
        finally:
            # close the inner generators now, not whenever the garbage collector runs
            await body.aclose()
        if expected is not None and got < expected:
            raise TruncatedBody(f"{what}: the body ended after {got} of {expected} bytes")

    def _asset_path(self, asset_id: str, suffix: str = "") -> str:
        return f"/assets/{check_asset_id(asset_id)}{'/' + suffix if suffix else ''}"

    # -- server -----------------------------------------------------------------

    async def get_server_version(self) -> dict[str, Any]:
        """``GET /api/server/version``: ``{major, minor, patch, prerelease?}`` (public)."""
        return expect_json_object(
            await self._json("GET", "/server/version", what="server version"), "server version"
        )

    async def connect(self) -> Version:
        """Read the server's version once and refuse versions older than v1.135.

        Idempotent; every other method calls it first, so an unsupported server
        fails on the first request with :class:`UnsupportedVersion`.
        """
        if self.server_version is not None:
            return self.server_version
        data = await self.get_server_version()
        try:
            version: Version = (int(data["major"]), int(data["minor"]), int(data["patch"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(
                f"{self.url}/api/server/version did not answer with a version — "
                "is this an Immich server?"
            ) from exc
        shown = "v" + ".".join(map(str, version))
        if version < MIN_VERSION:
            raise UnsupportedVersion(
                f"Immich {shown} is too old: immichfs needs "
                f"v{MIN_VERSION[0]}.{MIN_VERSION[1]} or newer"
            )
        if version[0] > NEWEST_KNOWN_MAJOR:
            log.warning("Immich %s is newer than immichfs was tested with (v3.x)", shown)
        log.debug("connected to Immich %s at %s", shown, self.url)
        self.server_version = version
        return version

    async def test_connection(self) -> dict[str, Any]:
        """Ping, read the version and validate the key; raise the first failure.

        Returns ``{"url", "version", "authenticated"}``.
        """
        version = await self.connect()
        await self.validate_key()
        return {
            "url": self.url,
            "version": "v" + ".".join(map(str, version)),
            "authenticated": True,
        }

    async def validate_key(self) -> None:
        """``POST /api/auth/validateToken``: AuthenticationError unless the key is valid."""
        data = await self._json(
            "POST", "/auth/validateToken", what="validate the API key", idempotent=True
        )
        if not isinstance(data, dict) or data.get("authStatus") is not True:
            raise ProtocolError("the server did not confirm the API key (authStatus)")

    async def get_my_user_id(self) -> str:
        """``GET /api/users/me``: the id of the user the key belongs to (``user.read``)."""
        answer = await self._json("GET", "/users/me", what="the key's user")
        data = expect_json_object(answer, "user")
        user_id = data.get("id")
        if not isinstance(user_id, str) or not user_id:
            raise ProtocolError("the key's user: no id in the answer")
        return user_id

    async def get_server_features(self) -> dict[str, Any]:
        """The server's features as ``/server/features`` names them (``smartSearch``, ``trash``).

        On 3.2+, where ``/server/features`` is deprecated, they are read from
        ``GET /api/config`` (``userConfig.read``); a key without that permission
        falls back to ``/server/features``, which still answers.
        """
        data: dict[str, Any] | None = None
        if await self.connect() >= CONFIG_SINCE:
            try:
                data = features_from_config(await self.get_config())
            except (NotFound, PermissionDenied) as exc:
                log.debug("GET /config refused (%s): asking /server/features", exc)
        if data is None:
            data = expect_json_object(
                await self._json("GET", "/server/features", what="server features"),
                "server features",
            )
        self._features = data
        return data

    async def get_config(self) -> dict[str, Any]:
        """``GET /api/config`` (3.2+, ``userConfig.read``): the settings users may see."""
        return expect_json_object(await self._json("GET", "/config", what="config"), "config")

    async def get_key_permissions(self) -> list[str] | None:
        """The key's permissions (``["all"]`` for a full key); None when unknown.

        ``GET /api/api-keys/me`` exists from v1.139; older servers and servers that
        refuse it give None.
        """
        version = await self.connect()
        if version < (1, 139, 0):
            return None
        try:
            data = await self._json("GET", "/api-keys/me", what="key permissions")
        except (NotFound, PermissionDenied):
            return None
        permissions = expect_json_object(data, "key permissions").get("permissions")
        if not isinstance(permissions, list):
            raise ProtocolError("key permissions: no permissions list in the answer")
        return [str(p) for p in permissions]

    # -- assets: the original specification's operations ----------------------

    async def get_assets(
        self,
        size: int = 100,
        page: int = 0,
        is_archived: bool | None = None,
        is_favorite: bool | None = None,
    ) -> list[dict[str, Any]]:
        """One page of assets, newest first (page 0 is the first).

        ``is_archived=True`` lists the archive, otherwise the timeline (Immich's
        main view: not archived, not hidden, not trashed).
        """
        filters: dict[str, Any] = {"visibility": "archive" if is_archived else "timeline"}
        if is_favorite is not None:
            filters["isFavorite"] = is_favorite
        return await self._page(filters, size, page)

    async def get_photos(self, size: int = 100, page: int = 0) -> list[dict[str, Any]]:
        """One page of images of the timeline (page 0 is the first)."""
        return await self._page({"type": "IMAGE"}, size, page)

    async def get_videos(self, size: int = 100, page: int = 0) -> list[dict[str, Any]]:
        """One page of videos of the timeline (page 0 is the first)."""
        return await self._page({"type": "VIDEO"}, size, page)

    async def _page(self, filters: dict[str, Any], size: int, page: int) -> list[dict[str, Any]]:
        _page_args(size, page)
        items, _ = await self.search_metadata(filters, page=page + 1, size=size)
        return items

    async def get_asset_info(self, asset_id: str) -> dict[str, Any]:
        """``GET /api/assets/{id}``: the full asset, EXIF, people and tags included."""
        what = f"asset {asset_id}"
        path = self._asset_path(asset_id)
        return expect_json_object(await self._json("GET", path, what=what, about_id=True), what)

    async def get_asset_statistics(self) -> dict[str, Any]:
        """``GET /api/assets/statistics``: ``{images, videos, total}`` of the key's owner."""
        data = expect_json_object(
            await self._json("GET", "/assets/statistics", what="statistics"), "statistics"
        )
        for name in ("images", "videos", "total"):
            if not isinstance(data.get(name), int):
                raise ProtocolError(f"statistics: {name!r} is missing or not a number")
        return data

    async def get_thumbnail(
        self, asset_id: str, format: str = "JPEG", size: str | None = None
    ) -> bytes:
        """A rendition of the asset as image bytes.

        ``size`` is ``thumbnail`` (small, WebP by default), ``preview`` (1440 px, JPEG
        by default) or ``fullsize``. Immich dropped the ``format`` parameter in
        v1.106: the server's settings decide the format (see the Content-Type from
        :meth:`get_thumbnail_response`). ``format`` therefore only picks the size
        when ``size`` is not given, as it did in old Immich: ``JPEG`` → ``preview``,
        ``WEBP`` → ``thumbnail``.
        """
        wanted = format.upper() if isinstance(format, str) else format
        if wanted not in ("JPEG", "WEBP"):
            raise ValueError(f"format must be 'JPEG' or 'WEBP', not {format!r}")
        if size is None:
            size = "preview" if wanted == "JPEG" else "thumbnail"
        data, _ = await self.get_thumbnail_response(asset_id, size)
        return data

    async def get_thumbnail_response(
        self, asset_id: str, size: str = "preview", *, edited: bool = False
    ) -> tuple[bytes, str]:
        """(bytes, content type) of a rendition; follows ``fullsize``'s redirect.

        ``edited`` asks for the rendition of the edited asset (``edited=true``,
        v2.5+; an unedited asset answers as without it).
        """
        if size not in _THUMBNAIL_SIZES:
            raise ValueError(f"size must be one of {', '.join(_THUMBNAIL_SIZES)}, not {size!r}")
        what = f"asset {asset_id}: {size}"
        path = self._asset_path(asset_id, "thumbnail")
        # older servers have no edits: they are not sent a parameter they do not know
        edited = edited and await self.connect() >= EDITS_SINCE

        async def once() -> tuple[bytes, str]:
            async with self._open(
                "GET",
                path,
                params={"size": size, **({"edited": True} if edited else {})},
                headers={"Accept": "image/*", "Accept-Encoding": "identity"},
                follow_redirects=True,
                what=what,
                about_id=True,
            ) as response:
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if response.status_code != 200 or content_type in (
                    "application/json",
                    "text/html",
                ):
                    raise ProtocolError(
                        f"{what}: expected an image, got {response.status_code} {content_type!r}"
                    )
                chunks = self._chunks(response, _length(response), what)
                data = b"".join([c async for c in chunks])
            return data, content_type or "application/octet-stream"

        return await self._retrying(once, what, path=path)

    async def get_thumbnail_length(
        self, asset_id: str, size: str = "preview"
    ) -> tuple[int, str, bytes | None]:
        """(length, content type, bytes or None) of a rendition, without downloading it
        where the server honours ``Range: bytes=0-0``: Immich serves thumbnails as it
        serves originals (``res.sendFile``), answering 206 with the total length in
        ``Content-Range``. A server that ignores the range sends the whole rendition
        (200): its bytes are returned then, so they need not be fetched again."""
        if size not in _THUMBNAIL_SIZES:
            raise ValueError(f"size must be one of {', '.join(_THUMBNAIL_SIZES)}, not {size!r}")
        what = f"asset {asset_id}: {size}"
        path = self._asset_path(asset_id, "thumbnail")

        async def once() -> tuple[int, str, bytes | None]:
            async with self._open(
                "GET",
                path,
                params={"size": size},
                headers={"Accept": "image/*", "Accept-Encoding": "identity", "Range": "bytes=0-0"},
                follow_redirects=True,
                what=what,
                about_id=True,
            ) as response:
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if response.status_code not in (200, 206) or content_type in (
                    "application/json",
                    "text/html",
                ):
                    raise ProtocolError(
                        f"{what}: expected an image, got {response.status_code} {content_type!r}"
                    )
                content_type = content_type or "application/octet-stream"
                if response.status_code == 206:
                    _, _, total = check_content_range(
                        response.headers.get("content-range"), 0, 0, what
                    )
                    if total is None:
                        raise ProtocolError(f"{what}: 206 without the total length")
                    await response.aread()  # the one byte: the connection stays reusable
                    return total, content_type, None
                chunks = self._chunks(response, _length(response), what)
                data = b"".join([c async for c in chunks])
                return len(data), content_type, data

        return await self._retrying(once, what, path=path)

    async def head_original(self, asset_id: str, *, edited: bool = False) -> int:
        """The size in bytes of the original (``HEAD``, ``Content-Length``).

        ``edited``: of the edited rendition (``edited=true``, v2.5+), whose size no
        JSON answer carries; an unedited asset answers with its original's.
        """
        size, _ = await self.head_original_file(asset_id, edited=edited)
        return size

    async def head_original_file(
        self, asset_id: str, *, edited: bool = False
    ) -> tuple[int, str | None]:
        """(size, Content-Type) of the original or, with ``edited``, of the edited
        rendition (its own format: Immich writes edits as new files), by one HEAD."""
        what = f"asset {asset_id}: {'edited' if edited else 'original'}"
        path = self._asset_path(asset_id, "original")

        async def once() -> tuple[int | None, str | None]:
            async with self._open(
                "HEAD",
                path,
                params={"edited": True} if edited else None,
                headers={"Accept-Encoding": "identity"},
                what=what,
                about_id=True,
            ) as response:
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                return _length(response), content_type or None

        length, content_type = await self._retrying(once, what, path=path)
        if length is None:
            # a proxy may drop it from HEAD: the total of a one-byte range says it too
            length = await self._size_from_range(asset_id, edited, what)
        return length, content_type

    async def _size_from_range(self, asset_id: str, edited: bool, what: str) -> int:
        """The file's size from the ``Content-Range`` total of ``Range: bytes=0-0``."""
        path = self._asset_path(asset_id, "original")

        async def once() -> int | None:
            async with self._open(
                "GET",
                path,
                params={"edited": True} if edited else None,
                headers={"Accept": "*/*", "Accept-Encoding": "identity", "Range": "bytes=0-0"},
                what=what,
                about_id=True,
                range_start=0,
            ) as response:
                self._check_range(response, 0, 0, what)
                _, _, total = check_content_range(response.headers.get("content-range"), 0, 0, what)
                async for _ in self._chunks(response, 1, what):
                    pass
                return total

        total = await self._retrying(once, what, path=path)
        if total is None:
            raise ProtocolError(f"{what}: neither HEAD nor a range says the file's size")
        return total

    async def get_full_resolution_file(self, asset_id: str, *, edited: bool = False) -> bytes:
        """The whole original file in memory (use the stream for big files)."""
        async with self.stream_full_resolution_file(asset_id, edited=edited) as chunks:
            return b"".join([chunk async for chunk in chunks])

    def stream_full_resolution_file(
        self,
        asset_id: str,
        start: int | None = None,
        end: int | None = None,
        *,
        edited: bool = False,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The original's bytes as an async iterator of chunks, memory-bounded.

        With ``start``/``end`` only bytes ``start..end`` are sent (``end`` is
        INCLUSIVE, as in HTTP ``Range``; ``end=None`` means to the end of the file;
        ``start=None`` with an ``end`` means from 0). The server must answer 206 with
        a matching ``Content-Range`` (a 200 is refused with ProtocolError, never
        served as the range). A range must not start past the end of the file:
        Immich answers that with 404/500, not 416, so callers clamp to the size they
        know. A body that ends early raises TruncatedBody. ``edited`` streams the
        edited rendition instead (``edited=true``, v2.5+; the original of an
        unedited asset).
        """
        return self._stream_original(asset_id, start, end, edited)

    @asynccontextmanager
    async def _stream_original(
        self, asset_id: str, start: int | None, end: int | None, edited: bool = False
    ) -> AsyncGenerator[AsyncIterator[bytes], None]:
        what = f"asset {asset_id}: {'edited' if edited else 'original'}"
        path = self._asset_path(asset_id, "original")
        headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
        ranged = start is not None or end is not None
        first = start or 0
        if ranged:
            for name, value in (("start", start), ("end", end)):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0
                ):
                    raise ValueError(f"{name} must be an integer ≥ 0, not {value!r}")
            if end is not None and end < first:
                raise ValueError(f"end ({end}) is before start ({first}); end is inclusive")
            headers["Range"] = f"bytes={first}-{'' if end is None else end}"
            what = f"{what} bytes {first}-{'' if end is None else end}"
        async with self._open(
            "GET",
            path,
            params={"edited": True} if edited else None,
            headers=headers,
            what=what,
            about_id=True,
            range_start=first if ranged else None,
        ) as response:
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding not in ("", "identity"):
                raise ProtocolError(f"{what}: the server sent it {encoding}-encoded")
            expected: int | None
            if ranged:
                expected = self._check_range(response, first, end, what)
            elif response.status_code != 200:
                raise ProtocolError(f"{what}: expected 200, got {response.status_code}")
            else:
                expected = _length(response)
            chunks = self._chunks(response, expected, what)
            try:
                yield chunks
            finally:
                await chunks.aclose()

    @staticmethod
    def _check_range(response: httpx.Response, first: int, end: int | None, what: str) -> int:
        """The number of bytes a 206 promises, after checking it answers our range."""
        if response.status_code != 206:
            raise ProtocolError(
                f"{what}: the server ignored the range and answered {response.status_code}; "
                "refusing to treat the whole file as the range",
                status=response.status_code,
            )
        got_first, got_last, _ = check_content_range(
            response.headers.get("content-range"), first, end, what
        )
        return got_last - got_first + 1

    # -- asset files (3.2+, alpha): renditions and sidecars ------------------------

    async def _check_asset_files(self) -> None:
        if await self.connect() < ASSET_FILES_SINCE:
            raise UnsupportedVersion(
                "the asset files API (sidecars, renditions) needs Immich 3.2 or newer"
            )

    async def get_asset_files(
        self,
        asset_id: str,
        type: str | None = None,
        is_edited: bool | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /api/asset-files``: an asset's stored files (``assetFile.read``, 3.2+).

        ``type`` is ``fullsize``, ``preview``, ``thumbnail``, ``sidecar`` or
        ``encoded_video``; ``is_edited`` picks the renditions of the edit (or not).
        Each is Immich's ``AssetFileResponseDto`` (``id``, ``type``, ``isEdited``,
        ``path``, dates; no byte size: HEAD the download for that).
        """
        if type is not None and type not in ASSET_FILE_TYPES:
            raise ValueError(f"type must be one of {', '.join(ASSET_FILE_TYPES)}, not {type!r}")
        await self._check_asset_files()
        params: dict[str, Any] = {"assetId": check_asset_id(asset_id)}
        if type is not None:
            params["type"] = type
        if is_edited is not None:
            params["isEdited"] = is_edited
        what = f"asset {asset_id}: files"
        data = expect_json_list(
            await self._json("GET", "/asset-files", params=params, what=what, about_id=True),
            what,
        )
        files = [f for f in data if isinstance(f, dict)]
        for found in files:
            if not isinstance(found.get("id"), str) or not isinstance(found.get("type"), str):
                raise ProtocolError(f"{what}: a file without an id or type")
        return files

    async def get_asset_file_info(self, file_id: str) -> dict[str, Any]:
        """``GET /api/asset-files/{id}``: one stored file (``assetFile.read``, 3.2+)."""
        await self._check_asset_files()
        what = f"asset file {file_id}"
        path = f"/asset-files/{check_asset_id(file_id)}"
        return expect_json_object(await self._json("GET", path, what=what, about_id=True), what)

    async def get_asset_file(self, file_id: str, *, limit: int = MAX_JSON_BYTES) -> bytes:
        """A stored file's bytes in memory (a sidecar); more than ``limit`` is refused."""
        what = f"asset file {file_id}"
        path = f"/asset-files/{check_asset_id(file_id)}/download"
        await self._check_asset_files()

        async def once() -> bytes:
            async with self.stream_asset_file(file_id) as chunks:
                parts: list[bytes] = []
                got = 0
                async for chunk in chunks:
                    got += len(chunk)
                    if got > limit:
                        raise ProtocolError(f"{what}: larger than {limit} bytes")
                    parts.append(chunk)
                return b"".join(parts)

        return await self._retrying(once, what, path=path)

    @asynccontextmanager
    async def stream_asset_file(self, file_id: str) -> AsyncGenerator[AsyncIterator[bytes], None]:
        """``GET /api/asset-files/{id}/download`` (``assetFile.download``, 3.2+) as an
        async iterator of chunks, checked against its ``Content-Length``."""
        await self._check_asset_files()
        what = f"asset file {file_id}"
        path = f"/asset-files/{check_asset_id(file_id)}/download"
        async with self._open(
            "GET",
            path,
            headers={"Accept": "*/*", "Accept-Encoding": "identity"},
            what=what,
            about_id=True,
        ) as response:
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding not in ("", "identity"):
                raise ProtocolError(f"{what}: the server sent it {encoding}-encoded")
            if response.status_code != 200:
                raise ProtocolError(f"{what}: expected 200, got {response.status_code}")
            chunks = self._chunks(response, _length(response), what)
            try:
                yield chunks
            finally:
                await chunks.aclose()

    # -- search -----------------------------------------------------------------

    async def search_v2(self) -> bool:
        """Whether the server has search v2 (``filter``, ``orderBy``, ``cursor``: 3.2+).

        The one choice every search makes: v2 servers are sent a filter tree and
        paged by cursor, older ones the flat fields and page numbers.
        """
        return await self.connect() >= search.SEARCH_V2

    async def search_metadata(
        self, filters: Mapping[str, Any], *, page: int = 1, size: int = 1000
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of ``POST /api/search/metadata`` by Immich's 1-based ``page``.

        Returns (assets, next page number or None). ``filters`` are Immich's flat
        search fields; on 3.2+ they are sent as a filter tree
        (:func:`immichfs.client.search.filter_tree`) and only the page number
        stays a deprecated field (a cursor cannot jump to a page: use
        :meth:`iter_search_metadata` to walk a listing). ``withExif`` is on (the
        file size lives there) and ``visibility`` is always sent — ``timeline``
        unless ``filters`` sets it — because its default differs between
        versions; ``"visibility": None`` in ``filters`` leaves it to the server.
        """
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise ValueError(f"page must be an integer ≥ 1 (Immich's pages), not {page!r}")
        _page_args(size, 0)
        body = self._search_body(filters, v2=await self.search_v2())
        body.update(page=page, size=size)
        data = await self._json(
            "POST", "/search/metadata", body=body, what="search", idempotent=True
        )
        return self._search_page(data, page, "search")

    async def search_metadata_page(
        self, filters: Mapping[str, Any], *, cursor: str | None = None, size: int = 1000
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``POST /api/search/metadata`` after ``cursor`` (None: the first).

        Returns (assets, the cursor of the next page or None after the last). On
        3.2+ the cursor is Immich's ``nextCursor``: a page continues after the
        last asset of the one before, so assets added or removed meanwhile
        neither shift nor repeat the pages. Below 3.2 it is the page number.
        """
        _page_args(size, 0)
        if not await self.search_v2():
            page = 1 if cursor is None else int(cursor)
            items, next_page = await self.search_metadata(filters, page=page, size=size)
            return items, None if next_page is None else str(next_page)
        body = self._search_body(filters, v2=True)
        body["size"] = size
        if cursor is not None:
            body["cursor"] = cursor
        data = await self._json(
            "POST", "/search/metadata", body=body, what="search", idempotent=True
        )
        items, _ = self._search_page(data, 1, "search", cursor=True)
        next_cursor = data["assets"].get("nextCursor")
        if next_cursor is not None and (not isinstance(next_cursor, str) or not next_cursor):
            raise ProtocolError(f"search: nextCursor is {next_cursor!r}, not a cursor")
        if next_cursor is not None and next_cursor == cursor:
            raise ProtocolError("search: nextCursor does not move past the page")
        return items, next_cursor

    @staticmethod
    def _search_body(filters: Mapping[str, Any] | None, *, v2: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"withExif": True, "visibility": "timeline"}
        body.update(filters or {})
        if body.get("visibility") is None:
            del body["visibility"]
        if not v2:
            return body
        kept = {k: v for k, v in body.items() if k in search.BODY_FIELDS}
        tree, rest = search.filter_tree({k: v for k, v in body.items() if k not in kept})
        if rest:
            # fields the tree does not know still work, deprecated, ANDed with it
            log.debug("search: sent as flat fields: %s", ", ".join(sorted(rest)))
        return {**kept, **rest, "filter": tree}

    @staticmethod
    def _search_page(
        data: Any, page: int, what: str, *, cursor: bool = False
    ) -> tuple[list[dict[str, Any]], int | None]:
        assets = data.get("assets") if isinstance(data, dict) else None
        items = assets.get("items") if isinstance(assets, dict) else None
        if not isinstance(assets, dict) or not isinstance(items, list):
            raise ProtocolError(f"{what}: the answer has no assets.items list")
        if not all(isinstance(item, dict) for item in items):
            raise ProtocolError(f"{what}: an item of assets.items is not an object")
        if cursor:
            return items, None  # paged by nextCursor (the caller reads it)
        raw_next = assets.get("nextPage")
        next_page: int | None
        if raw_next is None:
            next_page = None
        elif isinstance(raw_next, str) and raw_next.isdigit():
            next_page = int(raw_next)  # Immich sends a string
        elif isinstance(raw_next, int) and not isinstance(raw_next, bool):
            next_page = raw_next
        else:
            raise ProtocolError(f"{what}: nextPage is {raw_next!r}, not a page number")
        if next_page is not None and next_page <= page:
            raise ProtocolError(f"{what}: nextPage {next_page} does not move past page {page}")
        return items, next_page

    async def iter_search_metadata(
        self, filters: Mapping[str, Any], *, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every asset matching ``filters``, page after page (by cursor on 3.2+)."""
        cursor: str | None = None
        while True:
            items, cursor = await self.search_metadata_page(filters, cursor=cursor, size=page_size)
            for item in items:
                yield item
            if cursor is None:
                return

    async def search_smart(
        self, query: str, *, size: int = 100, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """CLIP search (``POST /api/search/smart``): the ``size`` best matches.

        Smart search ranks every asset and has no cut-off, so ``size`` is the limit;
        it may exceed 1000 (pages are fetched until it is reached).
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, not {size!r}")
        body = self._search_body(filters, v2=await self.search_v2())
        body["query"] = query
        results: list[dict[str, Any]] = []
        page: int | None = 1
        while page is not None and len(results) < size:
            body.update(page=page, size=min(MAX_PAGE_SIZE, size - len(results)))
            data = await self._json(
                "POST", "/search/smart", body=body, what="smart search", idempotent=True
            )
            items, page = self._search_page(data, page, "smart search")
            results.extend(items)
        return results[:size]

    async def search_assets(
        self, query: str, type: str = "ALL", size: int = 100
    ) -> list[dict[str, Any]]:
        """Assets matching a text ``query``, best first, at most ``size``.

        Smart (CLIP) search when the server has it, else metadata search over file
        names, descriptions, city, country, camera make and model: the meaning
        :func:`immichfs.client.search.search_assets` defines for the whole package.
        """
        if type not in _ASSET_TYPES:
            raise ValueError(f"type must be ALL, IMAGE or VIDEO, not {type!r}")
        _page_args(size, 0)
        features = self._features or await self.get_server_features()
        return await search.search_assets(
            self,
            query,
            size=size,
            smart=features.get("smartSearch") is True,
            asset_type=_ASSET_TYPES[type],
        )

    # -- collections ------------------------------------------------------------

    async def get_albums(self) -> list[dict[str, Any]]:
        """Every album the key can see: its owner's and those shared with it.

        Up to v2 ``GET /albums`` lists owned albums and ``?shared=true`` the shared
        ones (owned included), so both are fetched and merged; v3 lists all at once.
        """
        version = await self.connect()
        calls: list[dict[str, Any]] = [{}] if version >= (3, 0, 0) else [{}, {"shared": True}]
        albums: dict[str, dict[str, Any]] = {}
        for params in calls:
            data = expect_json_list(
                await self._json("GET", "/albums", params=params, what="albums"), "albums"
            )
            for album in data:
                if isinstance(album, dict):
                    albums.setdefault(str(album.get("id")), album)
        return list(albums.values())

    async def get_people(self, *, with_hidden: bool = False) -> list[dict[str, Any]]:
        """Every person (face cluster) of the key's owner, all pages."""
        people: list[dict[str, Any]] = []
        page = 1
        while True:
            data = expect_json_object(
                await self._json(
                    "GET",
                    "/people",
                    params={"page": page, "size": MAX_PAGE_SIZE, "withHidden": with_hidden},
                    what="people",
                ),
                "people",
            )
            batch = data.get("people")
            if not isinstance(batch, list):
                raise ProtocolError("people: the answer has no people list")
            people.extend(p for p in batch if isinstance(p, dict))
            if data.get("hasNextPage") is not True or not batch:
                return people
            page += 1

    async def get_tags(self) -> list[dict[str, Any]]:
        """``GET /api/tags``: every tag, flat; ``value`` is the full path ("A/B")."""
        data = expect_json_list(await self._json("GET", "/tags", what="tags"), "tags")
        return [tag for tag in data if isinstance(tag, dict)]

    async def get_timeline_buckets(self, **filters: Any) -> list[dict[str, Any]]:
        """``GET /api/timeline/buckets``: ``[{timeBucket: "YYYY-MM-01", count}]``.

        ``visibility`` defaults to ``timeline`` (the server's default also counts
        the archive); ``visibility=None`` leaves it to the server.
        """
        params = {"visibility": "timeline", **filters}
        params = {k: v for k, v in params.items() if v is not None}
        data = expect_json_list(
            await self._json("GET", "/timeline/buckets", params=params, what="timeline buckets"),
            "timeline buckets",
        )
        return [bucket for bucket in data if isinstance(bucket, dict)]


async def _raw_body(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    if response.is_stream_consumed:
        # a transport that hands over bodies already read (httpx.MockTransport)
        yield response.content
        return
    chunks = response.aiter_raw()
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or during, groups included (bounded walk)."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo and len(seen) < 50:
        cause = todo.pop(0)
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        if isinstance(cause, BaseExceptionGroup):
            todo.extend(cause.exceptions)
        todo.extend(e for e in (cause.__cause__, cause.__context__) if e is not None)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connection, if that is what it was."""
    return next((e for e in _causes(exc) if isinstance(e, ssl.SSLError)), None)


def _tls_message(url: str, error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or "verification failed"
        return (
            f"the TLS certificate of {url} is not trusted ({detail}); for a private CA "
            "give its certificate with --ca-cert FILE (IMMICH_CA_CERT), or skip the check "
            "with --insecure"
        )
    return f"TLS with {url} failed ({error.reason or error}); is it really https?"


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("connection refused")."""
    todo: list[BaseException] = [exc]
    for _ in range(20):  # the chain is short; never loop on a cycle
        if not todo:
            break
        seen = todo.pop(0)
        if isinstance(seen, socket.gaierror):
            return str(seen.strerror or seen).lower()
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or seen}"
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        if isinstance(seen, BaseExceptionGroup):
            todo.extend(seen.exceptions)
        todo.extend(e for e in (seen.__cause__, seen.__context__) if e is not None)
    return str(exc) or type(exc).__name__


class _Identity:
    """The decoder of a body sent as it is."""

    unconsumed_tail = b""

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        return data


#: Content-Encoding -> a fresh decoder (what the client offers in Accept-Encoding)
_DECODERS: dict[str, Callable[[], Any]] = {
    "identity": _Identity,
    "": _Identity,
    "gzip": lambda: zlib.decompressobj(zlib.MAX_WBITS | 16),
    "x-gzip": lambda: zlib.decompressobj(zlib.MAX_WBITS | 16),
    "deflate": lambda: zlib.decompressobj(),
}


def _decoded(decoder: Any, data: bytes, most: int, what: str) -> Iterator[bytes]:
    """``data`` decoded piece by piece, no piece larger than ``most`` (bomb-proof)."""
    try:
        while data:
            piece = decoder.decompress(data, max(most, 1))
            data = decoder.unconsumed_tail
            if piece:
                yield piece
            elif data:
                raise ProtocolError(f"{what}: the compressed body does not decode")
    except zlib.error as exc:
        raise ProtocolError(f"{what}: the compressed body is corrupt ({exc})") from exc


def _length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None
