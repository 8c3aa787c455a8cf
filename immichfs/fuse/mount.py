"""The composition root of the filesystem: settings in, a served mount out.

:func:`build_operations` wires the connector, caches, reader pool, tree and the
FUSE adapter; :func:`serve` mounts with ``fsname=immichfs,subtype=immichfs,ro,
default_permissions`` (plus ``allow_other`` only when asked), serves until
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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from immichfs import options as config
from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.cachedir import default_root
from immichfs.catalog.content import CachedSource
from immichfs.catalog.local import LocalCache, has_catalog
from immichfs.catalog.reader import RangeFetcher, RangeIntoFetcher, ReadaheadConfig, ReaderPool
from immichfs.catalog.store import Reachability
from immichfs.client.connector import ImmichConnector
from immichfs.errors import (
    ConnectError,
    ImmichError,
    PermissionDenied,
    RequestTimeout,
    ServerError,
    UserError,
)
from immichfs.fuse import kernel
from immichfs.model import Asset
from immichfs.vfs.refresh import RefreshTask
from immichfs.vfs.status import install_status, status_of
from immichfs.vfs.tree import Directory, Key, Node, Tree, TreeSettings, VirtualFile
from immichfs.vfs.views import ViewOptions, Views, install_views, views_of

if TYPE_CHECKING:
    from immichfs.fuse.operations import Operations

log = logging.getLogger(__name__)

GROUPS = ("server", "mount", "cache", "read", "logging")


@dataclass(frozen=True)
class MountPlan:
    """Everything needed to mount, decided before forking."""

    settings: config.Settings
    mountpoint: str
    demo: bool = False
    debug_fuse: bool = False
    #: the command found the server unreachable and a catalog to mount offline from
    #: (it has said so; the mount does not check the server again)
    offline: bool = False

    def fuse_options(self) -> set[str]:
        options = {"fsname=immichfs", "subtype=immichfs", "ro", "default_permissions"}
        if self.settings.allow_other:
            options.add("allow_other")
        if self.debug_fuse:
            options.add("debug")
        return options


#: errors that mean "the server is not there" (as opposed to "it said no")
UNREACHABLE = (ConnectError, RequestTimeout, ServerError)


def cache_root(settings: config.Settings) -> Path:
    """``--cache-dir`` or its default."""
    return settings.cache_dir or default_root()


def offline_possible(settings: config.Settings, url: str) -> bool:
    """A catalog saved by an earlier mount of ``url`` with this key exists."""
    if settings.api_key is None:
        return False
    try:
        return has_catalog(cache_root(settings), url, settings.api_key)
    except (OSError, sqlite3.Error) as exc:
        log.debug("no usable catalog for an offline mount: %s", exc)
        return False


async def open_local_cache(
    connector: ImmichConnector, settings: config.Settings, reachability: Reachability
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


def build_operations(
    connector: ImmichConnector,
    settings: config.Settings,
    fetch: RangeFetcher | RangeIntoFetcher | None = None,
    local: LocalCache | None = None,
) -> Operations:
    """The filesystem over ``connector``: caches, reader pool, tree, FUSE adapter.

    ``fetch`` serves the bytes of originals (default: the connector's ranged stream);
    ``local`` adds the on-disk catalog and content cache.
    """
    from immichfs.fuse.operations import Operations

    cache = MetadataCache(
        CacheSettings(
            listing_ttl=settings.listing_ttl,
            asset_ttl=settings.asset_ttl,
            max_assets=settings.cache_entries,
        )
    )
    source: RangeFetcher | RangeIntoFetcher = fetch or connector.stream_full_resolution_file
    tree_holder: list[Tree] = []
    if local is not None:
        store = local.store

        memory = local.memory

        async def version_of(asset_id: str) -> str | None:
            # the checksum the asset has now: its cached metadata, else the catalog's
            # (right after a remount, once the server confirmed the saved listing)
            await memory.confirmed(asset_id)
            known = tree_holder[0].cache.assets.peek(asset_id) if tree_holder else None
            if known is not None:
                return known.checksum or None
            return store.checksum(asset_id)

        source = CachedSource(source, local.content, version_of, online=local.reachability)
    readers = ReaderPool(source, ReadaheadConfig.from_settings(settings))
    tree = Tree(
        connector,
        cache,
        readers,
        TreeSettings(search_limit=settings.search_limit, show_trash=settings.show_trash),
    )
    views = install_views(
        tree,
        ViewOptions(
            show_unnamed_people=not settings.hide_unnamed_people,
            by_date_days=settings.by_date_days,
        ),
    )
    tree.add_extension(ViewsExtension(views))
    tree_holder.append(tree)
    operations = Operations(
        tree,
        kernel_ttl=settings.kernel_ttl,
        uid=settings.uid,
        gid=settings.gid,
        ready_entries=settings.cache_entries,
    )
    status = install_status(operations, connector, settings, fetch)  # /.immichfs/status
    if local is not None:
        tree.memory = local.memory

        async def fresh(key: Key, assets: list[Asset]) -> None:
            # a saved listing was served; the server's is here: show that one
            for asset in assets:
                tree.cache.assets.put(asset.id, asset)
            tree.cache.listings.pop(key)
            await operations.invalidate({key})

        local.memory.on_fresh = fresh
        status.local = local
        status.reachability = local.reachability
    return operations


class ViewsExtension:
    """The views' virtual files (``.manifest.jsonl``) and extended attributes, as the
    tree's :class:`~immichfs.vfs.tree.TreeExtension`."""

    def __init__(self, views: Views) -> None:
        self.views = views

    def node(self, key: Key) -> VirtualFile | None:
        return self.views.virtual_node(key)

    def lookup(self, directory: Directory, name: str) -> VirtualFile | None:
        return self.views.manifest(directory, name)

    async def xattrs(self, node: Node) -> Mapping[str, bytes]:
        return await self.views.xattrs(node)  # type: ignore[arg-type]

    async def getxattr(self, node: Node, name: str) -> bytes | None:
        return await self.views.getxattr(node, name)  # type: ignore[arg-type]


def refresh_task(operations: Operations, settings: config.Settings) -> RefreshTask | None:
    """The background refresh of ``operations``' views; changes reach the kernel too."""
    views = views_of(operations.tree)
    if views is None:
        return None

    async def on_change(keys: set[Key]) -> None:
        await operations.invalidate(keys)

    task = RefreshTask(
        operations.tree, views, interval=settings.refresh_interval, on_change=on_change
    )
    views.refresh_hook = task.refresh_now  # getfattr -n user.immichfs.refresh MOUNTPOINT
    return task


async def check_server(connector: ImmichConnector) -> None:
    """The server is an Immich we support and the key is accepted."""
    await connector.connect()
    await connector.validate_key()


async def _watch_server(
    connector: ImmichConnector,
    reachability: Reachability,
    refresh: RefreshTask | None,
    settings: config.Settings,
) -> None:
    """Keep ``reachability`` true to the server: probe it while it is away (every few
    seconds) or while the refresh fails, and catch up at once when it is back."""
    while True:
        failing = refresh is not None and getattr(refresh, "_failing", False)
        if reachability.online and not failing:
            await trio.sleep(min(5.0, settings.refresh_interval))
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
            if refresh is not None:
                refresh.trigger()
        elif not reachable and reachability.online:
            log.warning("%s does not answer: offline (cached bytes only)", connector.url)
            reachability.set(False, reason)
        await trio.sleep(min(5.0, settings.refresh_interval))


async def _watch_signals(signals: AsyncIterator[int]) -> None:
    import pyfuse3

    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()


async def _tune_kernel(mountpoint: str) -> None:
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

    from immichfs.client.originals import RangeGetClient

    settings = plan.settings
    async with ImmichConnector.from_settings(settings) as connector:
        reachability = Reachability()
        if plan.offline:
            reachability.set(False, "unreachable at mount time")
        else:
            try:
                await check_server(connector)
            except UNREACHABLE as exc:
                if not offline_possible(settings, connector.url):
                    raise
                log.warning("%s: mounting offline from the saved catalog (cached bytes only)", exc)
                reachability.set(False, str(exc))
        assert settings.api_key is not None  # the connector refused to start otherwise
        # the catalog is kept even with --cache-size-mb 0 (no bytes then)
        local = await open_local_cache(connector, settings, reachability)
        if local is None and not reachability.online:
            raise UserError(f"cannot reach {connector.url} and there is no catalog to mount")
        # the byte path: a lean ranged-GET client, the connector for what it cannot do
        fetch = RangeGetClient(
            connector.url,
            settings.api_key,
            verify=settings.verify,
            timeout=settings.timeout,
            max_connections=settings.max_connections,
            fallback=connector.stream_full_resolution_file,
        )
        try:
            operations = build_operations(connector, settings, fetch, local)
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
                        refresh = refresh_task(operations, settings)
                        status = status_of(operations.tree)
                        if status is not None:
                            status.mountpoint, status.refresh = plan.mountpoint, refresh
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_watch_signals, signals)
                            nursery.start_soon(_tune_kernel, plan.mountpoint)
                            if refresh is not None and reachability.online:
                                # it first takes the asset counts its renewal compares
                                # with, before any listing is loaded (FUSE requests wait)
                                await nursery.start(refresh.run)
                            elif refresh is not None:
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
                local.close()
