"""``immichfs serve``: the REST gateway on hypercorn's trio worker.

The gateway listens on 127.0.0.1 unless told otherwise: it answers with the
whole Immich library, using its own API key, to anyone who can reach the port.
Expose it beyond the machine only with ``IMMICHFS_GATEWAY_TOKEN`` set (and
behind TLS). Without Immich settings it still starts, answers ``/healthz``,
and tells every API caller which variables to set (503).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import trio

from immichfs import config
from immichfs._http import normalise_url
from immichfs.cli import UserError
from immichfs.errors import ConfigError, ImmichError
from immichfs.gateway import Gateway
from immichfs.logs import register_secret, scrub, setup_logging

if TYPE_CHECKING:  # the parser imports this module: keep httpx out until `serve` runs
    from immichfs.connector import ImmichConnector

log = logging.getLogger(__name__)

URL_VARIABLES = ["IMMICH_URL"]
KEY_VARIABLES = ["IMMICH_API_KEY", "IMMICH_API_KEY_FILE"]

EPILOG = (
    "The gateway binds 127.0.0.1 by default: it serves the whole Immich library with its own "
    "API key to anyone who can connect. Before listening on another address, set "
    "IMMICHFS_GATEWAY_TOKEN; clients then send 'Authorization: Bearer <token>' (or "
    "'X-Gateway-Token: <token>'). Without IMMICH_URL / IMMICH_API_KEY it still starts and "
    "answers 503 naming what to set."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    config.add_arguments(parser, groups=["server", "logging", "gateway"])
    parser.add_argument(
        "--host",
        dest="gateway_host",
        default=None,
        metavar="HOST",
        help="address to listen on (default 127.0.0.1: only this machine can connect; "
        "set IMMICHFS_GATEWAY_TOKEN before using anything else)",
    )
    parser.add_argument(
        "--port",
        dest="gateway_port",
        default=None,
        metavar="PORT",
        help="TCP port to listen on (default 8080; 0 picks a free port)",
    )


def build_gateway(settings: config.Settings) -> Gateway:
    """The app for ``settings``: connected to Immich when configured, else in 503 mode."""
    token = settings.gateway_token or None
    register_secret(token)
    missing: list[str] = []
    if not settings.url:
        missing += URL_VARIABLES
    if not settings.api_key:
        missing += KEY_VARIABLES
    if missing:
        needs = []
        if not settings.url:
            needs.append("IMMICH_URL (the server, e.g. http://immich.local:2283)")
        if not settings.api_key:
            needs.append("IMMICH_API_KEY or IMMICH_API_KEY_FILE")
        message = (
            f"Immich is not configured: set {' and '.join(needs)} in the gateway's "
            "environment and restart `immichfs serve`"
        )
        log.warning("%s; serving 503 on /api/immich until then", message)
        return Gateway(None, token=token, not_configured=message, missing=missing)
    from immichfs.connector import ImmichConnector

    try:
        # checked apart from the key, so the 503 names the right variables
        normalise_url(settings.url, config.source_name(settings, "url"))
    except ConfigError as exc:
        return _misconfigured(str(exc), URL_VARIABLES, token)
    try:
        # a gateway client waits at most one timeout plus the retry budget
        connector = ImmichConnector.from_settings(settings)
    except ConfigError as exc:
        return _misconfigured(str(exc), KEY_VARIABLES, token)
    return Gateway(connector, token=token)


def _misconfigured(problem: str, variables: list[str], token: str | None) -> Gateway:
    message = f"Immich is not configured correctly: {scrub(problem)}"
    log.warning("%s; serving 503 on /api/immich until it is fixed", message)
    return Gateway(None, token=token, not_configured=message, missing=variables)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_gateway(
    app: Gateway,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns; ``task_status`` gets the bound URLs."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    hyper = Config()
    hyper.bind = [_bind(host, port)]
    hyper.accesslog = None  # the gateway logs each request itself
    hyper.errorlog = logging.getLogger("hypercorn.error")  # through our scrubbing handler
    hyper.include_server_header = False
    hyper.graceful_timeout = 3.0
    await serve(
        cast(Any, app),
        hyper,
        shutdown_trigger=cast(Any, shutdown_trigger),
        task_status=task_status,
    )


async def _until_signalled() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received; finishing open requests", signal.Signals(signum).name)
            return


async def _probe(connector: ImmichConnector) -> None:
    """Say at start-up whether Immich answers; the gateway serves either way."""
    try:
        result = await connector.test_connection()
    except ImmichError as exc:
        log.warning("Immich does not answer yet (%s); requests get 502/504 until it does", exc)
    else:
        log.info("connected to Immich %s at %s", result.get("version"), connector.url)


async def _main(app: Gateway, host: str, port: int) -> None:
    connector = app.connector
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(serve_gateway, app, host, port, shutdown_trigger=_until_signalled)
            )
            for url in binds:
                # on stdout, flushed: scripts (and tests) read the port from here
                print(f"immichfs gateway listening on {url}", flush=True)
            if connector is not None:
                nursery.start_soon(_probe, connector)
            else:
                log.info("Immich not configured: /api/immich answers 503")
    finally:
        if connector is not None:
            with trio.CancelScope(shield=True):
                await connector.aclose()


def run(args: argparse.Namespace) -> int:
    settings = config.load_settings(args)
    setup_logging(
        logging.DEBUG if settings.debug else logging.INFO,
        log_file=str(settings.log_file) if settings.log_file else None,
    )
    host, port = settings.gateway_host, settings.gateway_port
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {port}", 2)
    if not is_loopback(host) and not settings.gateway_token:
        log.warning(
            "listening on %s without IMMICHFS_GATEWAY_TOKEN: anyone who can reach this "
            "address gets the whole Immich library",
            host,
        )
    app = build_gateway(settings)
    try:
        trio.run(_main, app, host, port)
    except (OSError, BaseExceptionGroup) as exc:
        failure = _listen_error(exc)
        if failure is None:
            raise
        raise UserError(
            f"cannot listen on {_bind(host, port)}: {failure.strerror or failure}"
        ) from None
    return 0


def _listen_error(exc: BaseException) -> OSError | None:
    """The OSError (address in use, ...) behind a failed start, if that is all there is."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(OSError)
        if matched is not None and rest is None:
            return _listen_error(matched.exceptions[0])
    return None
