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
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_OCTAL = re.compile(r"\\([0-7]{3})")
SYSFS_BDI = Path("/sys/class/bdi")
MOUNTINFO = Path("/proc/self/mountinfo")


#: the filesystem type of an immichfs mount in /proc/self/mountinfo
FSTYPE = "fuse.immichfs"


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where, what type, which device (``major:minor``), and the
    source (``immichfs:HOST:PORT`` for ours)."""

    mountpoint: str
    fstype: str
    device: str
    source: str = field(default="", compare=False)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def mount_entries(mountinfo: Path = MOUNTINFO) -> list[MountEntry]:
    """Every mount, in mount order (later mounts on one point hide earlier ones)."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-")
            fstype, source = fields[dash + 1], _unescape(fields[dash + 2])
            entries.append(MountEntry(_unescape(fields[4]), fstype, fields[2], source))
        except (IndexError, ValueError):
            continue
    return entries


def _target(path: str | os.PathLike[str]) -> str:
    # resolve symlinks in the parent only: resolving the mount point itself would stat it
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mount_at(mountpoint: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> MountEntry | None:
    """The mount whose mount point is exactly ``mountpoint`` (the top one), or None."""
    target = _target(mountpoint)
    found = None
    for entry in mount_entries(mountinfo):
        if entry.mountpoint == target:
            found = entry
    return found


def mount_of(path: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> MountEntry | None:
    """The mount holding ``path`` (the deepest mount point above it), or None."""
    target = os.path.abspath(path)
    best: MountEntry | None = None
    for entry in mount_entries(mountinfo):
        point = entry.mountpoint
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = entry
    return best


def mount_device(mountpoint: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> str | None:
    """``major:minor`` of the filesystem mounted at ``mountpoint`` (the last one), or None."""
    entry = mount_at(mountpoint, mountinfo)
    return entry.device if entry else None


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
