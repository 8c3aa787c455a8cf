"""The composition root of the filesystem: settings in, a served mount out.

:func:`build_mount` wires, explicitly and once, the tree and its views (built by
:func:`immichfs.compose.build_tree`, as for ``immich://``), the FUSE adapter, the
refresh task and the status file; :func:`serve` mounts with ``fsname=immichfs:HOST[:PORT],
subtype=immichfs,ro,default_permissions`` (plus ``allow_other`` only when asked), serves until
SIGINT/SIGTERM or ``fusermount3 -u``, and runs ``pyfuse3.close(unmount=True)``
in ``finally`` whatever happened, so a crash never leaves a dead mount
("transport endpoint is not connected"). The command (:mod:`immichfs.cli.mount`)
checks, forks and reports readiness.

pyfuse3 is imported only inside :func:`serve` and below.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from immichfs import options
from immichfs.catalog.cachedir import default_root
from immichfs.catalog.local import LocalCache, has_catalog
from immichfs.catalog.reader import RangeSource
from immichfs.catalog.store import Reachability
from immichfs.client.connector import ImmichConnector
from immichfs.client.retry import RangeFetcher
from immichfs.compose import build_tree, byte_client
from immichfs.errors import (
    ConnectError,
    ImmichError,
    PermissionDenied,
    RequestTimeout,
    ServerError,
    UserError,
)
from immichfs.fuse import kernel
from immichfs.vfs.refresh import RefreshTask
from immichfs.vfs.status import MountStatus, install_status
from immichfs.vfs.views import ViewsExtension

if TYPE_CHECKING:
    from immichfs.fuse.operations import Operations

log = logging.getLogger(__name__)

GROUPS = ("server", "mount", "cache", "read", "logging")
#: the settings ``/.immichfs/status`` shows (never a secret: no key, no token)
SHOWN_SETTINGS = (
    "listing_ttl",
    "asset_ttl",
    "kernel_ttl",
    "refresh_interval",
    "cache_entries",
    "readahead_mb",
    "readahead_budget_mb",
    "max_connections",
    "timeout",
    "retry_budget",
    "search_limit",
    "show_trash",
    "edits",
    "sidecars",
    "allow_other",
)


@dataclass(frozen=True)
class MountPlan:
    """Everything needed to mount, decided before forking."""

    settings: options.Settings
    mountpoint: str
    demo: bool = False
    debug_fuse: bool = False
    #: the command found the server unreachable and a catalog to mount offline from
    #: (it has said so; the mount does not check the server again)
    offline: bool = False

    @property
    def source(self) -> str:
        """The mount's source as ``mount`` shows it: ``immichfs:HOST[:PORT]`` names the
        server, and (unlike a bare ``immichfs``) never names a path util-linux resolves."""
        netloc = urlsplit(self.settings.url or "").netloc
        # fuse options are comma-separated and libfuse takes a backslash as an escape
        return "immichfs:" + netloc.replace("\\", "").replace(",", "")

    def fuse_options(self) -> set[str]:
        flags = {f"fsname={self.source}", "subtype=immichfs", "ro", "default_permissions"}
        if self.settings.allow_other:
            flags.add("allow_other")
        if self.debug_fuse:
            flags.add("debug")
        return flags


@dataclass(frozen=True)
class Mount:
    """A filesystem ready to serve: the adapter and what runs beside it."""

    operations: Operations
    refresh: RefreshTask
    status: MountStatus


#: errors that mean "the server is not there" (as opposed to "it said no")
UNREACHABLE = (ConnectError, RequestTimeout, ServerError)


def cache_root(settings: options.Settings) -> Path:
    """``--cache-dir`` or its default."""
    return settings.cache_dir or default_root()


def offline_possible(settings: options.Settings, url: str) -> bool:
    """A catalog saved by an earlier mount of ``url`` with this key exists."""
    if settings.api_key is None:
        return False
    try:
        return has_catalog(cache_root(settings), url, settings.api_key)
    except (OSError, sqlite3.Error) as exc:
        log.debug("no usable catalog for an offline mount: %s", exc)
        return False


async def open_local_cache(
    connector: ImmichConnector, settings: options.Settings, reachability: Reachability
) -> LocalCache | None:
    """The mount's cache directory, catalog and content cache (None: none usable).

    Online, the directory is the key's user's (``GET /users/me``); offline, the one
    an earlier mount with this key used.
    """
    assert settings.api_key is not None
    user_id = None
    if reachability.online:
        try:
            user_id = await connector.get_my_user_id()
        except PermissionDenied:
            log.warning(
                "the API key lacks user.read: nothing is cached on disk (--cache-dir unused)"
            )
            return None
    try:
        return await trio.to_thread.run_sync(
            lambda: LocalCache.open(
                cache_root(settings),
                connector.url,
                settings.api_key or "",
                user_id,
                size_mb=settings.cache_size_mb,
                reachability=reachability,
            )
        )
    except (OSError, sqlite3.Error) as exc:
        log.warning("cannot use the cache directory %s: %s", cache_root(settings), exc)
        return None


def build_mount(
    connector: ImmichConnector,
    settings: options.Settings,
    fetch: RangeSource | RangeFetcher | None = None,
    *,
    mountpoint: str | None = None,
    local: LocalCache | None = None,
) -> Mount:
    """The filesystem over ``connector``: the tree and its views
    (:func:`immichfs.compose.build_tree`), FUSE adapter, refresh task and status file.

    ``fetch`` serves the bytes of originals (default: the connector's ranged stream);
    ``local`` adds the on-disk catalog and content cache.
    The refresh task is built, not started (:func:`serve` runs it).
    """
    from immichfs.fuse.operations import Operations

    tree, views = build_tree(connector, settings, fetch, local=local)  # as immich:// shows it
    operations = Operations(
        tree,
        kernel_ttl=settings.kernel_ttl,
        uid=settings.uid,
        gid=settings.gid,
        ready_entries=settings.cache_entries,
    )
    # changes the refresh finds reach the kernel too
    refresh = RefreshTask(
        tree, views, interval=settings.refresh_interval, on_change=operations.invalidate
    )
    # getfattr -n user.immichfs.refresh MOUNTPOINT runs a refresh at once
    tree.add_extension(ViewsExtension(views, refresh=refresh.refresh_now))
    counters = getattr(fetch, "statistics", None)
    shown: dict[str, Any] = {name: getattr(settings, name) for name in SHOWN_SETTINGS}
    status = MountStatus(
        operations,
        connector,
        shown,
        counters if callable(counters) else None,
        mountpoint=mountpoint,
        refresh=refresh,
    )
    install_status(tree, status)  # /.immichfs/status
    if local is not None:
        status.local = local
        status.reachability = local.reachability
    return Mount(operations, refresh, status)


def build_operations(
    connector: ImmichConnector,
    settings: options.Settings,
    fetch: RangeSource | RangeFetcher | None = None,
) -> Operations:
    """The FUSE adapter of :func:`build_mount` (its refresh task not running)."""
    return build_mount(connector, settings, fetch).operations


async def check_server(connector: ImmichConnector) -> None:
    """The server is an Immich we support and the key is accepted."""
    await connector.connect()
    await connector.validate_key()


async def check_or_go_offline(connector: ImmichConnector, settings: options.Settings) -> str | None:
    """Check the server (:func:`check_server`). None when it answers; when it cannot
    be reached but an earlier mount saved a catalog, why (after one warning line) —
    the mount then serves offline. Any other failure is raised."""
    try:
        await check_server(connector)
    except UNREACHABLE as exc:
        if not offline_possible(settings, connector.url):
            raise
        log.warning("%s: mounting offline from the saved catalog (cached bytes only)", exc)
        return str(exc)
    return None


async def _watch_server(
    connector: ImmichConnector,
    reachability: Reachability,
    refresh: RefreshTask,
    settings: options.Settings,
) -> None:
    """Keep ``reachability`` true to the server: probe it while it is away or while
    the refresh fails (every few seconds), and catch up at once when it is back."""
    while True:
        await trio.sleep(min(5.0, settings.refresh_interval))
        if reachability.online and not refresh.failing:
            continue
        reachable = False
        reason = "no answer"
        with trio.move_on_after(max(1.0, settings.timeout)):
            try:
                await connector.get_server_version()
                await connector.connect()
                reachable = True
            except ImmichError as exc:
                reason = str(exc)
        if reachable and not reachability.online:
            log.info("%s answers again: online", connector.url)
            reachability.set(True)
            refresh.trigger()
        elif not reachable and reachability.online:
            log.warning("%s does not answer: offline (cached bytes only)", connector.url)
            reachability.set(False, reason)


async def _watch_signals(signals: AsyncIterator[int]) -> None:
    import pyfuse3

    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()


async def _tune_kernel(mountpoint: str, initialised: trio.Event) -> None:
    # after the kernel's INIT is answered: the answer sets the read-ahead (to at most
    # what the kernel proposed, 128 KiB) and would undo a larger value set before it
    await initialised.wait()
    # in a thread: file I/O on mountinfo and sysfs stays off the loop that serves the mount
    await trio.to_thread.run_sync(kernel.raise_read_ahead, mountpoint)


async def serve(
    plan: MountPlan,
    ready: Callable[[str], None],
    stopping: Callable[[], None] = lambda: None,
) -> None:
    """Mount, call ``ready(description)``, serve until unmounted, call ``stopping()``;
    always unmounts."""
    import pyfuse3

    settings = plan.settings
    async with ImmichConnector(config=options.client_config(settings)) as connector:
        reachability = Reachability()
        if plan.offline:
            reachability.set(False, "unreachable at mount time")
        else:
            away = await check_or_go_offline(connector, settings)
            if away is not None:
                reachability.set(False, away)
        # the catalog is kept even with --cache-size-mb 0 (no bytes then)
        local = await open_local_cache(connector, settings, reachability)
        if local is None and not reachability.online:
            raise UserError(f"cannot reach {connector.url} and there is no catalog to mount")
        fetch = byte_client(connector)
        try:
            mount = build_mount(connector, settings, fetch, mountpoint=plan.mountpoint, local=local)
            operations, refresh = mount.operations, mount.refresh
            # signals are caught from before the mount until after the unmount, so
            # a second SIGTERM cannot kill the process between the two
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with operations.tree.readers.running():
                    try:
                        pyfuse3.init(operations, plan.mountpoint, plan.fuse_options())
                    except RuntimeError as exc:
                        # libfuse explains on stderr; in the background that is /dev/null
                        raise UserError(
                            f"cannot mount at {plan.mountpoint} ({exc}); "
                            "--foreground shows libfuse's reason"
                        ) from exc
                    try:
                        ready(f"mounted {connector.url} at {plan.mountpoint}")
                        log.info("mounted %s at %s", connector.url, plan.mountpoint)
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_watch_signals, signals)
                            nursery.start_soon(
                                _tune_kernel, plan.mountpoint, operations.initialised
                            )
                            if reachability.online:
                                # it first takes the asset counts its renewal compares
                                # with, before any listing is loaded (FUSE requests wait)
                                await nursery.start(refresh.run)
                            else:
                                nursery.start_soon(refresh.run)
                            if local is not None:
                                nursery.start_soon(
                                    _watch_server, connector, reachability, refresh, settings
                                )
                            await pyfuse3.main()
                            nursery.cancel_scope.cancel()
                        log.info("unmounted %s", plan.mountpoint)
                    finally:
                        stopping()
                        # unmount=True also after a crash: never leave a dead mount
                        pyfuse3.close(unmount=True)
        finally:
            await fetch.aclose()
            if local is not None:
                # the listings loaded last are kept too (a bounded wait: it is an unmount)
                with trio.move_on_after(10, shield=True):
                    await local.memory.flush()
                local.close()
