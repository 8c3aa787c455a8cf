"""``immichfs mount``: the composition root of the filesystem.

Order of events, so that a failure never leaves a mount behind:

1. settings are resolved and the FUSE prerequisites checked (``preflight``);
2. the server and the key are checked (version, ``validateToken``); a failure is
   one line on stderr and a non-zero exit, and nothing is mounted;
3. without ``--foreground`` the process forks: the child detaches (new session,
   ``/`` as working directory, stdio on /dev/null — use ``--log-file`` for logs)
   and tells the parent through a pipe when the mount is ready; the parent exits
   0 then, or non-zero with the child's error line;
4. the connector, caches, reader pool, tree and ``Operations`` are built and
   ``pyfuse3.init`` mounts with ``fsname=immichfs,subtype=immichfs,ro,
   default_permissions`` (plus ``allow_other`` only when asked);
5. SIGINT/SIGTERM call ``pyfuse3.terminate()``; ``fusermount3 -u`` ends the FUSE
   session; either way the main loop returns and the process exits 0;
6. ``pyfuse3.close(unmount=True)`` runs in ``finally``, whatever happened, so a
   crash does not leave a dead mount ("transport endpoint is not connected").

pyfuse3 is imported only inside :func:`run` and below: the command-line parser
imports this module on machines without FUSE.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from immichfs import config, kernel, preflight, sdnotify
from immichfs.cache import CacheSettings, MetadataCache
from immichfs.cli import UserError
from immichfs.connector import ImmichConnector
from immichfs.logs import scrub, setup_logging
from immichfs.reader import RangeFetcher, RangeIntoFetcher, ReadaheadConfig, ReaderPool
from immichfs.refresh import RefreshTask
from immichfs.status import install_status, status_of
from immichfs.tree import Directory, Key, Node, Tree, TreeSettings, VirtualFile
from immichfs.views import ViewOptions, Views, install_views, views_of

if TYPE_CHECKING:
    from immichfs.fs import Operations

log = logging.getLogger(__name__)

GROUPS = ("server", "mount", "cache", "read", "logging")
#: bytes of the large sample video in the demo library
DEMO_LARGE_VIDEO_BYTES = 300 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", help="an existing, empty directory")
    config.add_arguments(parser, GROUPS)
    parser.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="stay attached until unmounted (logs on stderr); default: return once mounted",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="mount the bundled fake server's sample library (no Immich needed)",
    )
    parser.add_argument(
        "--debug-fuse", action="store_true", help="log every FUSE request (libfuse debug)"
    )


@dataclass(frozen=True)
class MountPlan:
    """Everything needed to mount, decided before forking."""

    settings: config.Settings
    mountpoint: str
    demo: bool = False
    debug_fuse: bool = False

    def fuse_options(self) -> set[str]:
        options = {"fsname=immichfs", "subtype=immichfs", "ro", "default_permissions"}
        if self.settings.allow_other:
            options.add("allow_other")
        if self.debug_fuse:
            options.add("debug")
        return options


def build_operations(
    connector: ImmichConnector,
    settings: config.Settings,
    fetch: RangeFetcher | RangeIntoFetcher | None = None,
) -> Operations:
    """The filesystem over ``connector``: caches, reader pool, tree, FUSE adapter.

    ``fetch`` serves the bytes of originals (default: the connector's ranged stream).
    """
    from immichfs.fs import Operations

    cache = MetadataCache(
        CacheSettings(
            listing_ttl=settings.listing_ttl,
            asset_ttl=settings.asset_ttl,
            max_assets=settings.cache_entries,
        )
    )
    readers = ReaderPool(
        fetch or connector.stream_full_resolution_file, ReadaheadConfig.from_settings(settings)
    )
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
    operations = Operations(
        tree,
        kernel_ttl=settings.kernel_ttl,
        uid=settings.uid,
        gid=settings.gid,
        ready_entries=settings.cache_entries,
    )
    install_status(operations, connector, settings, fetch)  # /.immichfs/status
    return operations


class ViewsExtension:
    """The views' virtual files (``.manifest.jsonl``) and extended attributes, as the
    tree's :class:`~immichfs.tree.TreeExtension`."""

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


async def _check_only(settings: config.Settings) -> None:
    async with ImmichConnector.from_settings(settings, retry=False) as connector:
        await check_server(connector)


async def _watch_signals(signals: AsyncIterator[int]) -> None:
    import pyfuse3

    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()


async def _tune_kernel(mountpoint: str) -> None:
    # in a thread: file I/O on mountinfo and sysfs stays off the loop that serves the mount
    await trio.to_thread.run_sync(kernel.raise_read_ahead, mountpoint)


async def serve(plan: MountPlan, ready: Callable[[], None]) -> None:
    """Mount, call ``ready()``, serve until unmounted; always unmounts."""
    import pyfuse3

    from immichfs.rangeget import RangeGetClient

    settings = plan.settings
    async with ImmichConnector.from_settings(settings) as connector:
        await check_server(connector)
        assert settings.api_key is not None  # the connector refused to start otherwise
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
            operations = build_operations(connector, settings, fetch)
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
                        ready()
                        sdnotify.ready(f"mounted {connector.url} at {plan.mountpoint}")
                        log.info("mounted %s at %s", connector.url, plan.mountpoint)
                        refresh = refresh_task(operations, settings)
                        status = status_of(operations.tree)
                        if status is not None:
                            status.mountpoint, status.refresh = plan.mountpoint, refresh
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_watch_signals, signals)
                            nursery.start_soon(_tune_kernel, plan.mountpoint)
                            if refresh is not None:
                                # it first takes the asset counts its renewal compares
                                # with, before any listing is loaded (FUSE requests wait)
                                await nursery.start(refresh.run)
                            await pyfuse3.main()
                            nursery.cancel_scope.cancel()
                        log.info("unmounted %s", plan.mountpoint)
                    finally:
                        sdnotify.stopping()
                        # unmount=True also after a crash: never leave a dead mount
                        pyfuse3.close(unmount=True)
        finally:
            await fetch.aclose()


@contextmanager
def _demo_server(plan: MountPlan) -> Iterator[MountPlan]:
    """Run the bundled fake Immich in this process; the plan then points at it."""
    from immichfs.fake.library import FakeLibrary
    from immichfs.fake.server import FakeImmich

    library = FakeLibrary.generate(seed=0, large_video_bytes=DEMO_LARGE_VIDEO_BYTES)
    try:
        with FakeImmich(library) as server:
            log.info("demo: fake Immich with %d assets at %s", len(library.assets), server.url)
            settings = replace(plan.settings, url=server.url, api_key=server.api_key)
            yield replace(plan, settings=settings)
    finally:
        library.close()  # its temporary files (the daemon ends with os._exit: no finalizers)


def _serve_here(plan: MountPlan, ready: Callable[[], None]) -> int:
    if plan.demo:
        with _demo_server(plan) as demo_plan:
            trio.run(serve, demo_plan, ready)
    else:
        trio.run(serve, plan, ready)
    return 0


def _daemonize(plan: MountPlan) -> int:
    """Fork; the parent returns once the child reports the mount ready (or failed)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode("utf-8", "replace").strip()
        if message == "ready":
            return 0
        _, status = os.waitpid(pid, 0)
        if not message:
            message = f"the filesystem process ended (status {status}) before the mount was ready"
        print(f"immichfs mount: {message}", file=sys.stderr)
        return 1

    # the child: detach from the terminal and the caller's working directory
    os.close(read_end)
    code = 1
    reported = False

    def report(text: str) -> None:
        nonlocal reported
        if not reported:
            reported = True
            os.write(write_end, text.encode("utf-8", "replace"))
            os.close(write_end)

    try:
        os.setsid()
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if plan.settings.log_file is None:
            os.dup2(devnull, 2)
        os.close(devnull)
        code = _serve_here(plan, lambda: report("ready"))
    except BaseException as exc:  # the child must report whatever ends it, then exit
        if not reported:
            report(scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        else:
            log.exception("the filesystem ended with an error")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def run(args: argparse.Namespace) -> int:
    settings = config.load_settings(args)
    setup_logging(
        logging.DEBUG if settings.debug else logging.INFO,
        log_file=str(settings.log_file) if settings.log_file else None,
    )
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: every thread's stack
    if settings.kernel_ttl <= 0:
        # 0 makes Linux look up every entry readdir just returned, once more
        raise UserError("--kernel-ttl must be more than 0 (1 is the default)", 2)
    # resolved now: once mounted, resolving it would ask this very process
    mountpoint = os.path.realpath(args.mountpoint)
    preflight.check_all(mountpoint)
    plan = MountPlan(settings, mountpoint, demo=args.demo, debug_fuse=args.debug_fuse)
    if not plan.demo:
        # before forking: a wrong URL or key is one line here and nothing is mounted
        trio.run(_check_only, settings)
    if args.foreground:
        return _serve_here(plan, lambda: None)
    return _daemonize(plan)
