"""HTTP details of the connector: URL and key validation, error translation.

Everything here is pure (no I/O): it turns configuration strings into a
validated base URL and key, and an HTTP status plus body into one of the
exceptions of :mod:`immichfs.errors`, with a message that says what to do.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import stat
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from immichfs.errors import (
    AuthenticationError,
    BadRequest,
    ConfigError,
    ImmichError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    ServerError,
)
from immichfs.logs import scrub

log = logging.getLogger(__name__)

#: characters allowed in an API key: Immich keys are base64url-like; anything that
#: could break a header line (whitespace, control characters, non-ASCII) is refused
_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "-_.~+/=:")
_PERMISSION = re.compile(r"Missing required permission:\s*([A-Za-z0-9_.]+)")
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$")
#: Immich ids are UUIDs; a little wider, never a path separator or dot
_ASSET_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def normalise_url(value: str | None, source: str) -> str:
    """The server's base URL (no trailing slash, without ``/api``), or ConfigError.

    ``source`` names where the value came from (``$IMMICH_URL``, ``url``) so the
    message points at the right place. A trailing ``/api`` (often pasted from the
    API docs) is removed; a path prefix of a reverse proxy (``https://host/immich``)
    is kept, so requests go to ``https://host/immich/api/...``.
    """
    if value is None or not value.strip():
        raise ConfigError(
            f"{source} is not set: give the Immich server URL, e.g. http://immich.local:2283 "
            "(no server at hand? try the demo library: immichfs mount --demo MOUNTPOINT)"
        )
    url = value.strip()
    if any(ch.isspace() for ch in url) or not url.isprintable():
        raise ConfigError(f"{source} must not contain spaces or control characters: {url!r}")
    if "://" not in url:
        raise ConfigError(
            f"{source} {url!r} has no scheme: write it as http://{url} or https://{url}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{source} {url!r} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"{source} {url!r}: the scheme must be http or https, not {scheme!r}")
    if parts.username is not None or parts.password is not None:
        # never echo the URL here: it holds a password
        raise ConfigError(
            f"{source} must not contain a user name or password; "
            "immichfs authenticates with the API key only"
        )
    if not parts.hostname:
        raise ConfigError(f"{source} {url!r} has no host name")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(f"{source} {url!r} must not have a query (?) or fragment (#)")
    if port == 0:
        raise ConfigError(f"{source} {url!r}: port 0 is not a server port")
    path = parts.path.rstrip("/")
    if path.endswith("/api"):
        path = path[: -len("/api")].rstrip("/")
    return f"{scheme}://{parts.netloc}{path}"


def validate_key(value: str | None, source: str) -> str:
    """The API key, stripped of surrounding whitespace, or ConfigError (never quoting it)."""
    if value is None or not value.strip():
        raise ConfigError(
            f"{source} is not set: create an API key in Immich (Account Settings → API Keys) "
            "and set IMMICH_API_KEY or IMMICH_API_KEY_FILE"
        )
    key = value.strip()
    if any(ch.isspace() for ch in key):
        raise ConfigError(
            f"{source} contains whitespace or a line break inside it; "
            "paste the key again as one word"
        )
    if not set(key) <= _KEY_CHARS:
        raise ConfigError(
            f"{source} contains characters that cannot be part of an Immich API key "
            "(only letters, digits and -_.~+/=: are possible)"
        )
    return key


def error_message(body: bytes) -> str:
    """The server's own message from an error body, in either of Immich's shapes.

    Before v3: ``{message, error, statusCode, correlationId}`` where ``message`` is a
    list of strings for validation failures. From v3: ``{message}`` or
    ``{message: "Validation failed", errors: [{path, message, ...}]}``.
    """
    if not body:
        return ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON, or absurdly nested
        return ""
    if not isinstance(data, Mapping):
        return ""
    message = data.get("message")
    text = ""
    if isinstance(message, str):
        text = message
    elif isinstance(message, list):
        text = "; ".join(str(m) for m in message)
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        details = []
        for issue in errors[:5]:
            if isinstance(issue, Mapping):
                path = issue.get("path")
                where = ".".join(str(p) for p in path) if isinstance(path, list) else ""
                details.append(f"{where}: {issue.get('message')}" if where else str(issue))
        if details:
            text = f"{text}: {'; '.join(details)}" if text else "; ".join(details)
    return scrub(text)[:500]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes first-last/total`` as (first, last, total or None); None if absent/bad."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value)
    if not match:
        return None
    first, last = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


def check_asset_id(asset_id: object) -> str:
    """``asset_id`` if it can be an Immich asset id (a UUID), else NotFound: an id that
    cannot exist must never be spliced into a request path."""
    if not isinstance(asset_id, str) or not _ASSET_ID.match(asset_id):
        raise NotFound(f"{asset_id!r} is not an Immich asset id")
    return asset_id


def check_content_range(
    value: str | None, first: int, end: int | None, what: str
) -> tuple[int, int, int | None]:
    """(first, last, total) of a 206's ``Content-Range``, checked against the range
    asked for: it starts at ``first`` and ends at ``end`` (inclusive; None: the end
    of the file), or earlier only where the file ends. Anything else is a
    ProtocolError: a byte of another range must never pass for ours."""
    parsed = parse_content_range(value)
    if parsed is None:
        raise ProtocolError(f"{what}: 206 without a valid Content-Range")
    got_first, got_last, total = parsed
    at_eof = total is not None and got_last == total - 1
    if got_first != first or not (got_last == end or (at_eof and (end is None or end > got_last))):
        raise ProtocolError(
            f"{what}: the server sent bytes {got_first}-{got_last}, not the range asked for"
        )
    return parsed


def status_error(
    *,
    status: int,
    reason: str,
    body: bytes,
    headers: Mapping[str, str],
    what: str,
    base_url: str,
    about_id: bool = False,
    range_start: int | None = None,
) -> ImmichError:
    """The exception for a non-2xx answer to ``what``.

    ``about_id``: the request named one object by id in its path, so a 400 that
    complains about the id (v3 answers "Invalid UUID") means "no such object".
    ``range_start``: the first byte a ranged request asked for. Immich answers a
    range past the end with 500 (v2) or 404 (v3) plus ``Content-Range: bytes */size``;
    that is the caller's mistake, not a failure worth retrying.
    """
    message = error_message(body) or reason
    detail = f"{status} {message}".strip()
    lowered = message.lower()
    if range_start is not None:
        unsatisfied = _UNSATISFIED_RANGE.match(headers.get("content-range", ""))
        if unsatisfied and range_start >= int(unsatisfied[1]):
            return BadRequest(
                f"{what}: the range starts past the end of the file, which has "
                f"{unsatisfied[1]} bytes (the server answered {detail})",
                status=status,
            )
    if status == 401:
        return AuthenticationError(
            f"the API key was rejected by {base_url} ({detail}) — check IMMICH_API_KEY",
            status=status,
        )
    if status == 403:
        match = _PERMISSION.search(message)
        if match:
            permission = match[1]
            return PermissionDenied(
                f"the key lacks permission {permission} — add it to the API key in Immich "
                "(Account Settings → API Keys)",
                status=status,
                permission=permission,
            )
        return PermissionDenied(f"{what}: the server refused access ({detail})", status=status)
    if status == 400:
        if "not found or no" in lowered or (about_id and ("uuid" in lowered or not body)):
            return NotFound(f"{what}: not found, or not visible to this API key", status=status)
        return BadRequest(f"{what}: the server refused the request ({detail})", status=status)
    if status == 404:
        return NotFound(f"{what}: not found ({detail})", status=status)
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        wait = f"; it asks to wait {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(
            f"{what}: {base_url} is limiting the request rate (429){wait}",
            status=status,
            retry_after=retry_after,
        )
    if status >= 500:
        error = ServerError(f"{what}: the server failed ({detail})", status=status)
        error.retry_after = parse_retry_after(headers.get("retry-after"))
        return error
    if 300 <= status < 400:
        location = headers.get("location", "")
        return ProtocolError(
            f"{what}: the server redirected ({status}) to {location!r}; if it moved, "
            "set IMMICH_URL to the new address",
            status=status,
        )
    return ImmichError(f"{what}: the server answered {detail}", status=status)


def expect_json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def expect_json_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: expected a JSON array, got {type(value).__name__}")
    return value


def warn_if_readable(path: Path) -> None:
    """A secret file that others can read deserves a warning (not a refusal: containers)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        log.warning(
            "%s is readable by group or others (mode %s); run: chmod 600 %s",
            path,
            oct(stat.S_IMODE(mode)),
            path,
        )


def read_key_file(path: Path) -> str:
    """The API key stored in ``path`` (surrounding whitespace stripped)."""
    warn_if_readable(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"API key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read API key file {path}: {exc}") from None
    if not key:
        raise ConfigError(f"API key file {path} is empty")
    return key
