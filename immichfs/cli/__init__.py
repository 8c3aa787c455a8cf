"""The ``immichfs`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so
``immichfs check`` works on a machine without FUSE.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from immichfs import __version__
from immichfs.errors import ImmichfsError, UserError
from immichfs.logs import scrub

log = logging.getLogger(__name__)

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "mount": ("immichfs.cli.mount", "mount an Immich library as read-only files"),
    "check": ("immichfs.cli.check", "test the connection to an Immich server, step by step"),
    "fake-server": ("immichfs.cli.demo", "run the bundled fake Immich server (sample library)"),
    "serve": ("immichfs.cli.serve", "run the REST gateway to Immich (127.0.0.1:8080 by default)"),
    "install-helper": (
        "immichfs.cli.mounthelper",
        "put mount.fuse.immichfs where mount(8) finds it, for /etc/fstab",
    ),
    "refresh": ("immichfs.cli.refresh", "make a mounted immichfs look for changes in Immich now"),
    "warm": (
        "immichfs.cli.warm",
        "pre-fetch the listings (and thumbnails) of a mounted subtree, with progress",
    ),
    "status": ("immichfs.cli.status", "show what a mounted immichfs is doing (cache, requests)"),
    "cache": (
        "immichfs.cli.cache",
        "show, prune or clear the catalogs and bytes kept on disk (--cache-dir)",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported, to add its arguments
    (``None``: every command's, as the docs generator and tests want)."""
    parser = argparse.ArgumentParser(
        prog="immichfs",
        description="Immich photo library as read-only files, connector and REST gateway.",
    )
    parser.add_argument("--version", action="version", version=f"immichfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        if command is None or command == name:
            importlib.import_module(module_name).add_arguments(command_parser)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named on the command line (its first word that is no option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS:
        from immichfs.cli import mounthelper

        if mounthelper.looks_like_mount_call(argv):
            return mounthelper.main(argv)
    parser = build_parser(_command_of(argv) or "")
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        result: int = module.run(args)
    except (KeyboardInterrupt, ImmichfsError, BaseExceptionGroup) as raised:
        exc = _sole_exception(raised)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if not isinstance(exc, ImmichfsError):
            raise
        print(f"immichfs {args.command}: {scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, UserError) else 1
    return result


def _sole_exception(exc: BaseException) -> BaseException:
    """The one exception inside (nested) groups of one, else ``exc`` itself.

    A trio nursery wraps what its body raises in an exception group, which must
    not turn a one-line error into a traceback.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
