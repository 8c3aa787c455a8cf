"""``immichfs mount``: the command; the filesystem itself is built in :mod:`immichfs.fuse.mount`.

Order of events, so that a failure never leaves a mount behind: settings are
resolved and the FUSE prerequisites checked (``preflight``); the server and the
key are checked; without ``--foreground`` the process forks and the parent
returns once the child reports the mount ready (or its error line).
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable

import trio

from immichfs import options
from immichfs.cli import preflight, sdnotify
from immichfs.cli.check import (
    ADD_PERMISSION,
    PERMISSIONS,
    REQUIRED_PERMISSION,
    missing_permissions,
)
from immichfs.client.connector import ImmichConnector
from immichfs.errors import UserError
from immichfs.fuse.mount import (
    GROUPS,
    MountPlan,
    check_or_go_offline,
    serve,
)
from immichfs.logs import scrub, setup_logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "mountpoint", help="an existing, empty directory (--nonempty: or one with files)"
    )
    options.add_arguments(parser, GROUPS)
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


async def _check_only(settings: options.Settings) -> bool:
    """The server and key are fine (True), or the server is unreachable but an earlier
    mount saved a catalog to mount offline from (False, after one warning line)."""
    async with ImmichConnector(config=options.client_config(settings, retry=False)) as connector:
        if await check_or_go_offline(connector, settings) is not None:
            return False
        missing = missing_permissions(
            await connector.get_key_permissions(), connector.server_version, settings
        )
    if REQUIRED_PERMISSION in missing:
        raise UserError(
            f"the API key lacks {REQUIRED_PERMISSION}: without it "
            f"{PERMISSIONS[REQUIRED_PERMISSION]}; {ADD_PERMISSION}"
        )
    # on stderr before detaching: once detached, the log goes to /dev/null
    for permission in missing:
        print(
            f"immichfs mount: warning: the API key lacks {permission}: "
            f"{PERMISSIONS[permission]}; {ADD_PERMISSION}",
            file=sys.stderr,
            flush=True,
        )
    return True


def _serve_here(plan: MountPlan, ready: Callable[[], None]) -> int:
    def mounted(description: str) -> None:
        ready()
        sdnotify.ready(description)

    def stopping() -> None:
        sdnotify.stopping()

    if plan.demo:
        from immichfs.cli.demo import demo_server

        with demo_server(plan) as demo_plan:
            trio.run(serve, demo_plan, mounted, stopping)
    else:
        trio.run(serve, plan, mounted, stopping)
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
    settings = options.load_settings(args)
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
    preflight.check_all(mountpoint, nonempty=settings.nonempty)
    plan = MountPlan(settings, mountpoint, demo=args.demo, debug_fuse=args.debug_fuse)
    if not plan.demo:
        # before forking: a wrong URL or key is one line here and nothing is mounted
        online = trio.run(_check_only, settings)
        if not online:
            plan = dataclasses.replace(plan, offline=True)
    if args.foreground:
        return _serve_here(plan, lambda: None)
    return _daemonize(plan)
