"""immichfs: an Immich photo server as ordinary read-only files.

Layers, bottom to top; a module imports only from its own layer or lower ones
(docs/DEVELOPMENT.md names every module):

1. ``errors``, ``model``, ``logs``  the error tree, Immich's objects, key-scrubbing logs
2. ``client/``       talking to Immich: URL/key validation, the JSON API (httpx),
                     the ranged-GET byte client (h11), the retry loop
3. ``catalog/``      what is known about a library: the Catalog (typed single-flight
                     queries), TTL caches, read-ahead
4. ``vfs/``          the tree users see: nodes, names, inodes, views, status, refresh
                     (no pyfuse3, no HTTP)
5. ``options``       the one options table: flags, environment, TOML file;
   ``compose``       the tree from settings, for every adapter that shows it
6. ``fuse/``, ``gateway/``, ``fsspec/``, ``dask/``  adapters: pyfuse3 (the only
                     pyfuse3 importer) and the mount's composition root; the REST
                     gateway; ``immich://`` for fsspec; a library on a Dask cluster
7. ``cli/``          the commands, preflight, sd_notify, the mount helper

The fake Immich server is the separate top-level package ``immichfs_fake``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from immichfs.errors import (
    AuthenticationError,
    BadRequest,
    ConfigError,
    ConnectError,
    ImmichError,
    ImmichfsError,
    NotFound,
    Offline,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    ServerError,
    StaleAsset,
    TransientError,
    TruncatedBody,
    Unreachable,
    UnsupportedVersion,
    UserError,
)

if TYPE_CHECKING:
    from immichfs.client.connector import ImmichConnector

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "ConfigError",
    "ConnectError",
    "ImmichConnector",
    "ImmichError",
    "ImmichfsError",
    "NotFound",
    "Offline",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "RequestTimeout",
    "ServerError",
    "StaleAsset",
    "TransientError",
    "TruncatedBody",
    "Unreachable",
    "UnsupportedVersion",
    "UserError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # the connector pulls in httpx: imported on first use, so `immichfs --help` and the
    # commands that need no HTTP start without it
    if name == "ImmichConnector":
        from immichfs.client.connector import ImmichConnector

        return ImmichConnector
    raise AttributeError(f"module 'immichfs' has no attribute {name!r}")
