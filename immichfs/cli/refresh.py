"""``immichfs refresh MOUNTPOINT``: make a mount look for changes in Immich now."""

from __future__ import annotations

import argparse
import errno
import os

from immichfs.errors import UserError
from immichfs.vfs.views import REFRESH_XATTR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", help="where immichfs is mounted")


def run(args: argparse.Namespace) -> int:
    """Ask the mount to refresh now; print what it found (one JSON line).

    The request is ``getxattr(MOUNTPOINT, "user.immichfs.refresh")``: a read
    through the mount itself, so it needs no pid file and reaches exactly the
    process serving that mount point (the same as ``getfattr -n
    user.immichfs.refresh MOUNTPOINT``). It returns once the refresh is done.
    """
    try:
        value = os.getxattr(args.mountpoint, REFRESH_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise UserError(f"{args.mountpoint} is not an immichfs mount", 1) from None
        raise UserError(f"{args.mountpoint}: {exc.strerror}", 1) from None
    print(value.decode("utf-8", "replace"))
    return 0
