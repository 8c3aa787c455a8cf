"""Tell systemd how the mount is doing (``Type=notify`` services).

The protocol is one datagram of ``KEY=VALUE`` lines sent to the unix socket named
in ``$NOTIFY_SOCKET``; a name starting with ``@`` lives in the abstract namespace.
This is all ``sd_notify(3)`` does, so no libsystemd binding is needed. Outside
systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes | None:
    if name.startswith("@"):
        # abstract namespace: a leading NUL byte instead of the "@"
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    # "vsock:CID:PORT" and anything newer: not used for local services
    return None


def notify(*messages: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``messages`` (e.g. ``"READY=1"``) as one datagram; True when sent.

    A failure is logged, never raised: a service manager that cannot be told
    must not stop the filesystem.
    """
    env = os.environ if env is None else env
    name = env.get("NOTIFY_SOCKET")
    if not name or not messages:
        return False
    address = _address(name)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s is not a unix socket; systemd not notified", name)
        return False
    payload = "\n".join(messages).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", name, exc.strerror or exc)
        return False
    log.debug("told systemd: %s", ", ".join(messages))
    return True


def ready(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """The mount is up: systemd may start the units ordered after this one."""
    messages = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        messages.append(f"STATUS={status}")
    return notify(*messages, env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """A one-line status shown by ``systemctl status``."""
    return notify(f"STATUS={text}", env=env)


def stopping(*, env: Mapping[str, str] | None = None) -> bool:
    """The mount is being taken down (SIGTERM, ``fusermount3 -u``)."""
    return notify("STOPPING=1", env=env)
