"""Checks run before mounting, each failing with one line that says what to do.

FUSE failures deep inside libfuse read like "fuse: device not found, try
'modprobe fuse' first" or a bare EPERM; these checks name the package to
install, or the ``docker run`` flags to add when running in a container.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from immichfs.errors import UserError
from immichfs.fuse import kernel

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"
CONTAINER_FLAGS = "--device /dev/fuse --cap-add SYS_ADMIN"
INSTALL_HINT = "apt-get install fuse3"


def in_container(env: Mapping[str, str] | None = None, root: str = "/") -> bool:
    """Best guess whether this process runs in a container (docker, podman, k8s)."""
    env = os.environ if env is None else env
    if env.get("container") or env.get("KUBERNETES_SERVICE_HOST"):
        return True
    return any(Path(root, marker).exists() for marker in (".dockerenv", "run/.containerenv"))


def check_fusermount(path: str | None = None) -> str:
    """The path of ``fusermount3``; unmounting (and mounting as non-root) needs it."""
    found = shutil.which("fusermount3", path=path)
    if found is None:
        raise UserError(f"fusermount3 is not installed (not found on PATH): run {INSTALL_HINT}")
    return found


def check_device(device: str = FUSE_DEVICE, *, container: bool | None = None) -> None:
    """``device`` exists and opens read-write, as the kernel side of FUSE needs."""
    container = in_container() if container is None else container
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        if container:
            raise UserError(
                f"{device} does not exist in this container: start it with {CONTAINER_FLAGS}"
            ) from None
        raise UserError(
            f"{device} does not exist: load the FUSE module (modprobe fuse) and run {INSTALL_HINT}"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            if container:
                raise UserError(
                    f"{device} cannot be opened (permission denied): start the container "
                    f"with {CONTAINER_FLAGS}"
                ) from None
            raise UserError(
                f"{device} cannot be opened (permission denied): run as root, or "
                f"chmod 666 {device} as the fuse3 package sets it"
            ) from None
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            raise UserError(
                f"{device} has no driver behind it: load the FUSE module (modprobe fuse)"
            ) from None
        raise UserError(f"{device} cannot be opened: {exc.strerror}") from None
    os.close(fd)


CAP_SYS_ADMIN = 21
PROC_STATUS = Path("/proc/self/status")


def check_capability(*, container: bool | None = None, status: Path = PROC_STATUS) -> None:
    """CAP_SYS_ADMIN is in the capability bounding set, else nothing here can mount.

    Not even the setuid ``fusermount3`` gains a capability outside that set, so
    without it libfuse only says "fusermount3: mount failed: Operation not
    permitted". Containers drop it unless started with ``--cap-add SYS_ADMIN``.
    """
    try:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        bounding = int(fields["CapBnd"].strip(), 16)
    except (OSError, KeyError, ValueError):
        return  # no procfs to ask: let the mount itself tell
    if bounding >> CAP_SYS_ADMIN & 1:
        return
    container = in_container() if container is None else container
    if container:
        raise UserError(
            "mounting needs the SYS_ADMIN capability, which this container lacks: "
            f"start it with {CONTAINER_FLAGS}"
        )
    raise UserError(
        "mounting needs CAP_SYS_ADMIN, which this process's capability bounding set lacks "
        "(a systemd CapabilityBoundingSet= or a sandbox dropped it)"
    )


def _clear_dead_immichfs_mount(path: str, mountinfo: Path) -> bool:
    """Detach a dead mount at ``path`` if an earlier immichfs left it; True if cleared.

    Only our own filesystem type is touched: someone else's dead mount may be
    something its owner wants to look at.
    """
    entry = kernel.mount_at(path, mountinfo)
    if entry is None or entry.fstype != kernel.FSTYPE:
        return False
    done = subprocess.run(
        ["fusermount3", "-u", "-z", path], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        log.warning("cannot clear the dead mount at %s: %s", path, done.stderr.strip())
        return False
    log.warning("cleared a dead immichfs mount at %s (its process had died)", path)
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def check_mountpoint(
    mountpoint: str | os.PathLike[str],
    mountinfo: Path = kernel.MOUNTINFO,
    *,
    nonempty: bool = False,
) -> None:
    """The mount point is an existing, empty directory and not already an immichfs mount.

    A dead mount that an earlier immichfs left behind is cleared, so a mount
    after a crash needs no `umount -l` by hand. A live immichfs mount is refused
    whatever ``nonempty`` says: a second one would stack on it, and the first
    ``fusermount3 -u`` would uncover the older one instead of unmounting.
    """
    path = os.fspath(mountpoint)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise UserError(f"mount point {path} does not exist: mkdir -p {path}") from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise UserError(f"mount point {path}: {exc.strerror}") from None
        # a filesystem process died without unmounting (killed, out of memory)
        if not _clear_dead_immichfs_mount(path, mountinfo):
            raise UserError(
                f"{path} is a dead FUSE mount (transport endpoint is not connected): "
                f"run fusermount3 -u {path}"
            ) from None
    if not os.path.isdir(path):
        raise UserError(f"mount point {path} is not a directory")
    entry = kernel.mount_at(path, mountinfo)
    if entry is not None and entry.fstype == kernel.FSTYPE:
        raise UserError(
            f"{path} is already an immichfs mount ({entry.source}): "
            f"unmount it first with fusermount3 -u {path}"
        )
    if not nonempty:
        try:
            with os.scandir(path) as entries:
                occupied = next(entries, None) is not None
        except OSError as exc:
            raise UserError(f"mount point {path}: {exc.strerror}") from None
        if occupied:
            raise UserError(
                f"mount point {path} is not empty: its files would be hidden while mounted; "
                "use an empty directory, or --nonempty to cover it anyway"
            )


def check_all(
    mountpoint: str | os.PathLike[str] | None = None,
    *,
    path: str | None = None,
    device: str = FUSE_DEVICE,
    container: bool | None = None,
    nonempty: bool = False,
) -> None:
    """Every check, in the order a user would fix them."""
    check_fusermount(path)
    check_device(device, container=container)
    check_capability(container=container)
    if mountpoint is not None:
        check_mountpoint(mountpoint, nonempty=nonempty)
