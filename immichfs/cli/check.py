"""``immichfs check``: test the way to an Immich server, one step at a time.

Each step prints ``✓ step: result``. The first failing step ends the check
with one line naming it, and an exit code that says what kind of failure it
was (see ``EXIT_CODES``), so scripts can tell a dead server from a bad key.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

import trio

from immichfs import options
from immichfs.client.connector import ImmichConnector
from immichfs.errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    ImmichfsError,
    PermissionDenied,
    RequestTimeout,
    UnsupportedVersion,
    UserError,
)
from immichfs.logs import scrub, setup_logging

log = logging.getLogger(__name__)

#: exit status by failure kind (first match wins); anything else is 1
EXIT_CODES: tuple[tuple[type[ImmichfsError], int], ...] = (
    (ConfigError, 2),
    (ConnectError, 3),
    (RequestTimeout, 3),
    (AuthenticationError, 4),
    (PermissionDenied, 5),
    (UnsupportedVersion, 6),
)

#: the permissions immichfs reads with -> what a key without it loses, in the mount's
#: words (`immichfs check` lists the missing ones, `immichfs mount` warns about each)
PERMISSIONS: dict[str, str] = {
    "asset.read": "nothing can be listed",
    "asset.view": "thumbs/ answers 'Permission denied'",
    "asset.download": "reading a file answers 'Permission denied' (listings and thumbs/ work)",
    "asset.statistics": "listings are loaded again every listing TTL even while nothing changes",
    "album.read": "albums/, getfattr -d and .manifest.jsonl answer 'Permission denied'",
    "person.read": "people/, getfattr -d and .manifest.jsonl answer 'Permission denied'",
    "tag.read": "tags/, getfattr -d and .manifest.jsonl answer 'Permission denied'",
    "assetFile.read": "--sidecars lists no NAME.xmp files",
    "assetFile.download": "--sidecars' NAME.xmp files answer 'Permission denied'",
}
#: permissions Immich 1.135 did not have: the version that brought each (a key of an older
#: server cannot have it) and the setting that uses it (missed only where that is on)
PERMISSION_NEEDS: dict[str, tuple[tuple[int, int, int], str]] = {
    "assetFile.read": ((3, 2, 0), "sidecars"),
    "assetFile.download": ((3, 2, 0), "sidecars"),
}
#: without it nothing can be listed: the mount refuses such a key
REQUIRED_PERMISSION = "asset.read"
ADD_PERMISSION = "add it to the API key in Immich (Account Settings → API Keys)"


def missing_permissions(
    granted: list[str] | None,
    version: tuple[int, int, int] | None = None,
    settings: options.Settings | None = None,
) -> list[str]:
    """The permissions of :data:`PERMISSIONS` a key lacks ([] when the server does not say),
    leaving out those ``version`` does not have and those only a setting off in
    ``settings`` uses (:data:`PERMISSION_NEEDS`; None: not asked)."""
    if granted is None or "all" in granted:
        return []

    def wanted(permission: str) -> bool:
        since, setting = PERMISSION_NEEDS.get(permission, ((0, 0, 0), ""))
        if version is not None and version < since:
            return False
        return settings is None or not setting or bool(getattr(settings, setting))

    return [p for p in PERMISSIONS if p not in granted and wanted(p)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_arguments(parser, groups=["server", "logging"])


def exit_code(error: BaseException) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return 1


def run(args: argparse.Namespace) -> int:
    settings = options.load_settings(args)
    setup_logging(
        logging.DEBUG if settings.debug else logging.WARNING,
        log_file=str(settings.log_file) if settings.log_file else None,
    )
    if not settings.url:
        raise UserError(
            "no Immich server configured: set IMMICH_URL (and IMMICH_API_KEY) to your server, "
            "or start the demo server with `immichfs fake-server`, which prints both",
            2,
        )
    try:
        # a diagnosis shows the first failure, at once
        connector = ImmichConnector(config=options.client_config(settings, retry=False))
    except ConfigError as exc:
        raise UserError(str(exc), 2) from None
    return trio.run(_check, connector, _printer())


def _printer() -> Callable[[str, str], None]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    mark = "✓"
    try:
        mark.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        mark = "ok"  # a terminal that cannot show the check mark

    def show(step: str, result: str) -> None:
        print(f"{mark} {step}: {scrub(result)}", flush=True)

    return show


async def _check(immich: ImmichConnector, show: Callable[[str, str], None]) -> int:
    step = "connect"
    try:
        async with immich:
            version = await immich.connect()
            show(step, f"Immich v{'.'.join(map(str, version))} at {immich.url}")

            step = "API key"
            await immich.validate_key()
            show(step, "accepted")

            step = "permissions"
            show(step, _describe_permissions(await immich.get_key_permissions(), version))

            step = "statistics"
            stats = await immich.get_asset_statistics()
            show(
                step,
                f"{stats['images']} images, {stats['videos']} videos, {stats['total']} assets",
            )

            step = "list assets"
            assets = await immich.get_assets(size=5, page=0)
            if not assets:
                show(step, "the timeline is empty; nothing more to check")
                return 0
            show(step, f"{len(assets)} assets on the first page of the timeline")

            step = "asset info"
            info = await immich.get_asset_info(str(assets[0]["id"]))
            asset_id = str(info["id"])
            show(step, _describe_asset(info))

            step = "thumbnail"
            data, content_type = await immich.get_thumbnail_response(asset_id, "preview")
            show(step, f"preview, {len(data)} bytes, {content_type}")

            step = "original"
            size = _size_of(info)
            if size is None:
                size = await immich.head_original(asset_id)
            if size == 0:
                show(step, "the original is empty (0 bytes)")
                return 0
            end = min(size, 1024) - 1
            async with immich.stream_full_resolution_file(asset_id, 0, end) as chunks:
                first = b"".join([chunk async for chunk in chunks])
            show(step, f"first {len(first)} of {size} bytes (starting {first[:4].hex(' ')})")
    except ImmichfsError as exc:
        raise UserError(f'step "{step}" failed: {exc}', exit_code(exc)) from None
    return 0


def _describe_permissions(
    permissions: list[str] | None, version: tuple[int, int, int] = (0, 0, 0)
) -> str:
    if permissions is None:
        return "not reported by this server (GET /api/api-keys/me needs Immich v1.139+)"
    if "all" in permissions:
        return "all"
    missing = missing_permissions(permissions, version)
    text = ", ".join(sorted(permissions)) or "none"
    if missing:
        needs = "; ".join(f"{p} (without it {PERMISSIONS[p]})" for p in missing)
        text += f" (immichfs also needs: {needs})"
    return text


def _size_of(info: dict[str, Any]) -> int | None:
    exif = info.get("exifInfo")
    size = exif.get("fileSizeInByte") if isinstance(exif, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _describe_asset(info: dict[str, Any]) -> str:
    size = _size_of(info)
    shown_size = f"{size} bytes" if size is not None else "size unknown"
    taken = str(info.get("localDateTime") or info.get("fileCreatedAt") or "?")[:16]
    return (
        f"{info.get('originalFileName')!r} ({info.get('type')}, {shown_size}, "
        f"taken {taken.replace('T', ' ')}, id {info.get('id')})"
    )
