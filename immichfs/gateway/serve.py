"""``immichfs serve``: the REST gateway on hypercorn's trio worker.

The gateway listens on 127.0.0.1 unless told otherwise: it answers with the
whole Immich library, using its own API key, to anyone who can reach the port.
Expose it beyond the machine only with ``IMMICHFS_GATEWAY_TOKEN`` set (and
behind TLS). Without Immich settings it still starts, answers ``/healthz``,
and tells every API caller which variables to set (503).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import trio

from immichfs import options
from immichfs.client.http import normalise_url
from immichfs.errors import ConfigError, ImmichError, Unreachable
from immichfs.gateway.app import Gateway
from immichfs.logs import register_secret, scrub

if TYPE_CHECKING:  # the parser imports this module: keep httpx out until `serve` runs
    from immichfs.client.connector import ImmichConnector

log = logging.getLogger(__name__)

URL_VARIABLES = ["IMMICH_URL"]
KEY_VARIABLES = ["IMMICH_API_KEY", "IMMICH_API_KEY_FILE"]


def build_gateway(settings: options.Settings) -> Gateway:
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
    from immichfs.client.connector import ImmichConnector

    try:
        # checked apart from the key, so the 503 names the right variables
        normalise_url(settings.url, options.source_name(settings, "url"))
    except ConfigError as exc:
        return _misconfigured(str(exc), URL_VARIABLES, token)
    try:
        # a gateway client waits at most one timeout plus the retry budget; a server
        # that refuses connections is not retried: the app's outage watch answers 502
        # at once and probes in the background instead
        client = options.client_config(settings)
        if client.retry_policy is not None:
            policy = replace(client.retry_policy, retry_unreachable=False)
            client = replace(client, retry_policy=policy)
        connector = ImmichConnector(config=client)
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


async def _probe(app: Gateway, connector: ImmichConnector) -> None:
    """Say at start-up whether Immich answers; the gateway serves either way."""
    try:
        result = await connector.test_connection()
    except Unreachable as exc:
        app.outage.begin(exc)  # its one warning; the watch says when Immich is back
    except ImmichError as exc:
        log.warning("Immich does not answer yet (%s); requests get 502/504 until it does", exc)
    else:
        log.info("connected to Immich %s at %s", result.get("version"), connector.url)


async def _main(app: Gateway, host: str, port: int) -> None:
    connector = app.connector
    try:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve_gateway(
                    app, host, port, shutdown_trigger=_until_signalled, task_status=task_status
                )
                nursery.cancel_scope.cancel()  # the outage watch and probe end with it

            binds: list[str] = await nursery.start(serve_then_stop)
            for url in binds:
                # on stdout, flushed: scripts (and tests) read the port from here
                print(f"immichfs gateway listening on {url}", flush=True)
            if connector is not None:
                await nursery.start(app.outage.watch)
                nursery.start_soon(_probe, app, connector)
            else:
                log.info("Immich not configured: /api/immich answers 503")
    finally:
        if connector is not None:
            with trio.CancelScope(shield=True):
                await connector.aclose()
