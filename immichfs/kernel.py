"""Kernel tuning for a mounted immichfs (Linux sysfs), kept out of the FUSE adapter.

The kernel sends FUSE reads of at most its readahead size: 128 KiB by default.
Raising the mount's ``read_ahead_kb`` to 1024 makes sequential readers arrive
as 1 MiB reads, an eighth of the requests and Python calls per byte, which
matters because the filesystem process is CPU-bound when streaming. It needs
root (or write access to sysfs); without it immichfs still works, with 128 KiB
reads.

The mount is found through ``/proc/self/mountinfo``, never by ``stat`` of the
mount point: a ``stat`` would be a FUSE request to this very process, which
deadlocks if called from the trio loop that serves it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_OCTAL = re.compile(r"\\([0-7]{3})")
SYSFS_BDI = Path("/sys/class/bdi")
MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def mount_device(mountpoint: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> str | None:
    """``major:minor`` of the filesystem mounted at ``mountpoint`` (the last one), or None."""
    # resolve symlinks in the parent only: resolving the mount point itself would stat it
    path = os.path.abspath(mountpoint)
    target = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    found = None
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4 and _unescape(fields[4]) == target:
            found = fields[2]  # later mounts on the same point hide earlier ones
    return found


def read_ahead_path(
    mountpoint: str | os.PathLike[str], mountinfo: Path = MOUNTINFO, sysfs: Path = SYSFS_BDI
) -> Path | None:
    """The ``read_ahead_kb`` file of the mount's backing device, if there is one."""
    device = mount_device(mountpoint, mountinfo)
    if device is None:
        return None
    for name in (device, f"{device}-fuseblk"):
        path = sysfs / name / "read_ahead_kb"
        if path.exists():
            return path
    return None


def raise_read_ahead(
    mountpoint: str | os.PathLike[str],
    kb: int = 1024,
    *,
    mountinfo: Path = MOUNTINFO,
    sysfs: Path = SYSFS_BDI,
) -> bool:
    """Set the mount's ``read_ahead_kb`` to at least ``kb``; True if it is that now.

    Safe to call from the process serving the mount (no FUSE request is made).
    Failure (not root, no sysfs) is logged at debug level and returns False.
    """
    path = read_ahead_path(mountpoint, mountinfo, sysfs)
    if path is None:
        log.debug("no read_ahead_kb for %s", mountpoint)
        return False
    try:
        current = int(path.read_text().strip() or 0)
        if current >= kb:
            return True
        path.write_text(f"{kb}\n")
        now = int(path.read_text().strip() or 0)
    except (OSError, ValueError) as exc:
        log.debug("cannot raise %s to %d KiB: %s", path, kb, exc)
        return False
    log.debug("%s: read_ahead_kb %d → %d", mountpoint, current, now)
    return now >= kb
