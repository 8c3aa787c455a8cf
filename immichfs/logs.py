"""Logging set-up shared by every command.

Secrets (the API key, a gateway token) are registered here and scrubbed from
every record that reaches a handler, whatever module or level produced it: a
second line of defence behind never formatting them in the first place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

_SECRETS: set[str] = set()
_MASK = "***"
FORMAT = "%(asctime)s %(levelname)s %(name)s.%(funcName)s: %(message)s"


def register_secret(secret: str | None) -> None:
    """Never let ``secret`` appear in log output from now on."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by a mask."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


class RedactingFilter(logging.Filter):
    """Formats the record's message once and removes secrets from it and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = scrub(record.getMessage())
            record.msg, record.args = message, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
            if record.stack_info:
                record.stack_info = scrub(record.stack_info)
        return True


def setup_logging(
    level: int = logging.INFO,
    *,
    log_file: str | None = None,
    debug_modules: Iterable[str] = (),
) -> None:
    """Log to stderr (or ``log_file``) with level and module names, secrets scrubbed."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    if level > logging.DEBUG:
        # httpx logs every request at INFO; that is debug detail for a filesystem
        logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in debug_modules:
        logging.getLogger(name).setLevel(logging.DEBUG)
