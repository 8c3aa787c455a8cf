"""``immichfs serve``: the command that runs the REST gateway (:mod:`immichfs.gateway`)."""

from __future__ import annotations

import argparse
import logging

import trio

from immichfs import options
from immichfs.errors import UserError
from immichfs.gateway.serve import _bind, _main, build_gateway, is_loopback
from immichfs.logs import setup_logging

log = logging.getLogger(__name__)

EPILOG = (
    "The gateway binds 127.0.0.1 by default: it serves the whole Immich library with its own "
    "API key to anyone who can connect. Before listening on another address, set "
    "IMMICHFS_GATEWAY_TOKEN; clients then send 'Authorization: Bearer <token>' (or "
    "'X-Gateway-Token: <token>'). Without IMMICH_URL / IMMICH_API_KEY it still starts and "
    "answers 503 naming what to set."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    options.add_arguments(parser, groups=["server", "logging", "gateway"])
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


def run(args: argparse.Namespace) -> int:
    settings = options.load_settings(args)
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
