"""The one error hierarchy of immichfs.

Every failure that crosses a layer boundary is one of these; httpx, h11 and
socket errors are translated where they happen (the connector and the byte
reader), and these are turned into errno values in exactly one place, the
FUSE adapter. Messages are written for the person running immichfs: they say
what went wrong and what to do. No message ever contains the API key.

    ImmichfsError
    ├── UserError                a command's failure, shown as one line with an exit code
    ├── ConfigError              bad or missing configuration (URL, key, options)
    └── ImmichError              something about talking to the server
        ├── TransientError       worth retrying: the same request may succeed later
        │   ├── ConnectError     cannot open a connection (server down, wrong host/port)
        │   ├── RequestTimeout   no answer within the configured timeout
        │   ├── TruncatedBody    the body ended before its declared length
        │   ├── ServerError      5xx from the server (or a proxy in front of it)
        │   └── RateLimited      429, with the server's Retry-After when given
        ├── AuthenticationError  401: key missing, wrong or revoked
        ├── PermissionDenied     403: the key lacks a permission (named in .permission)
        ├── NotFound             the asset/album/... does not exist or is not visible
        │                        (Immich answers 400 "Not found or no ... access")
        ├── BadRequest           400 for any other reason (validation)
        ├── UnsupportedVersion   the server is older than immichfs supports
        ├── ProtocolError        the server answered something that is not Immich
        │                        (malformed JSON, a 200 to a ranged request, ...)
        ├── StaleAsset           the asset's bytes changed while a file was open
        └── Offline              the server is unreachable and what was asked is
                                 neither in the catalog nor in the content cache
"""

from __future__ import annotations


class ImmichfsError(Exception):
    """Base class of every error immichfs raises on purpose."""


class ConfigError(ImmichfsError):
    """The configuration is missing or malformed; the message names the setting."""


class ImmichError(ImmichfsError):
    """A request to the Immich server failed.

    ``status`` is the HTTP status when there was a response, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(ImmichError):
    """A failure that may go away if the same request is tried again later."""

    #: seconds the server asked us to wait (Retry-After), if it said so
    retry_after: float | None = None


class ConnectError(TransientError):
    """No connection could be made: the server is down or the URL is wrong."""


class Unreachable(ConnectError):
    """Not even a connection could be opened (refused, no route): the server is down or
    the URL is wrong, unlike a connection that broke on the way."""


class RequestTimeout(TransientError):
    """The server did not answer within the configured timeout."""


class TruncatedBody(TransientError):
    """A body ended before the length its headers announced."""


class ServerError(TransientError):
    """The server (or a proxy in front of it) answered 5xx."""


class RateLimited(TransientError):
    """The server (or a proxy) answered 429 Too Many Requests."""

    def __init__(
        self, message: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class AuthenticationError(ImmichError):
    """The server rejected the credentials (401): missing, wrong or revoked key."""


class PermissionDenied(ImmichError):
    """The key is valid but lacks a permission (403). ``permission`` names it when known."""

    def __init__(
        self, message: str, *, status: int | None = 403, permission: str | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.permission = permission


class NotFound(ImmichError):
    """The thing asked for does not exist or is not visible to this key."""


class BadRequest(ImmichError):
    """The server refused the request as malformed (400, other than not-found)."""


class UnsupportedVersion(ImmichError):
    """The server's Immich version is outside the range immichfs supports."""


class ProtocolError(ImmichError):
    """The server's answer does not follow Immich's API (bad JSON, wrong status, ...)."""


class StaleAsset(ImmichError):
    """The asset's content changed on the server while a file handle was open."""


class Offline(ImmichError):
    """The server cannot be reached and the catalog or content cache does not hold this.

    Not transient on purpose: retrying within the budget would make every
    uncached read of an offline mount wait the whole budget.
    """


class UserError(ImmichfsError):
    """An error to show as one line, exiting with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
