"""Helpers for tests that really mount: the FUSE probe and a mount process.

The filesystem always runs in a subprocess (``python -m immichfs mount
--foreground``), never in the pytest process: a test that stats the mount from
the process serving it would deadlock.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")

_PROBE = """
import sys, pyfuse3
class Ops(pyfuse3.Operations):
    pass
pyfuse3.init(Ops(), sys.argv[1], {"fsname=immichfs-probe", "ro"})
pyfuse3.close(unmount=True)
"""


@functools.cache
def fuse_unavailable() -> str | None:
    """Why this machine cannot mount FUSE filesystems, or None if it can (probed once)."""
    if FUSERMOUNT is None:
        return "fusermount3 is not installed"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if os.geteuid() != 0:
        if not os.stat(FUSERMOUNT).st_mode & 0o4000:
            return f"not root and {FUSERMOUNT} is not setuid"
        try:
            os.close(os.open("/dev/fuse", os.O_RDWR))
        except OSError as exc:
            return f"/dev/fuse cannot be opened: {exc.strerror}"
    with tempfile.TemporaryDirectory(prefix="immichfs-probe-") as mountpoint:
        try:
            result = subprocess.run(
                [sys.executable, "-c", _PROBE, mountpoint],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            subprocess.run([FUSERMOUNT, "-u", "-z", mountpoint], capture_output=True)
            return "a probe mount did not finish within 30 s"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return f"a probe mount failed: {last}"
    return None


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment for an immichfs command, without the machine's
    settings (IMMICH* variables, ~/.config/immichfs) or a systemd socket, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMMICH", "NOTIFY_SOCKET"))}
    env["HOME"] = "/nonexistent"
    if "IMMICHFS_CACHE_DIR" in os.environ:  # the test session's (conftest), never ~/.cache
        env["IMMICHFS_CACHE_DIR"] = os.environ["IMMICHFS_CACHE_DIR"]
    env.update(extra)
    return env


def unmount(
    mountpoint: str | os.PathLike[str], lazy: bool = False
) -> subprocess.CompletedProcess[str]:
    assert FUSERMOUNT is not None
    args = [FUSERMOUNT, "-u", *(["-z"] if lazy else []), os.fspath(mountpoint)]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


class MountProcess:
    """``immichfs mount --foreground`` in a subprocess, with its output in a file."""

    def __init__(
        self,
        mountpoint: Path,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.mountpoint = mountpoint
        self.log_path = log_path or mountpoint.with_name(mountpoint.name + ".log")
        self._log = self.log_path.open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("IMMICH")}
        # each mount its own cache directory unless the test names one (never ~/.cache)
        full_env["IMMICHFS_CACHE_DIR"] = str(mountpoint.with_name(mountpoint.name + ".cache"))
        full_env.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "immichfs", "mount", "--foreground", str(mountpoint), *args],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_mounted(self, timeout: float = 30.0) -> None:
        """Until the mount is up; fails at once if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"immichfs exited with {self.process.returncode} before mounting:\n"
                    + self.output()
                )
            if os.path.ismount(self.mountpoint):
                return
            time.sleep(0.05)
        raise AssertionError(f"not mounted after {timeout} s:\n{self.output()}")

    def unmount(self, timeout: float = 30.0) -> tuple[int, int]:
        """(fusermount exit code, process exit code) of a clean unmount."""
        result = unmount(self.mountpoint)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -1
        return result.returncode, code

    def cleanup(self) -> None:
        """Whatever state things are in: no mount and no process left behind."""
        if os.path.ismount(self.mountpoint):
            unmount(self.mountpoint, lazy=True)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


#: the top-level directories a mount (and ``immich://``) shows with default settings
VIEWS = frozenset(
    {
        "albums",
        "archive",
        "by-date",
        "favorites",
        "people",
        "photos",
        "search",
        "tags",
        "thumbs",
        "videos",
    }
)

T = TypeVar("T")


def poll(
    read: Callable[[], T], *, until: Callable[[T], bool], timeout: float = 30.0, every: float = 0.05
) -> T:
    """``read()`` again and again until ``until(value)``; AssertionError after ``timeout``.

    The bound is far above what the behaviour needs: it only stops a broken test
    from hanging, it is not a measurement.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout:g} s"
        time.sleep(every)


def stat_past_the_kernel_cache(mountpoint: Path, paths: Sequence[Path]) -> None:
    """``os.stat`` each path until the stats reach immichfs itself, not the kernel's
    attribute cache (which answers for ``--kernel-ttl`` seconds after a lookup).

    The mount's status file counts the kernel's lookups and getattrs; a round of
    stats that raised it by at least ``len(paths)`` reached immichfs (reading the
    status file itself costs at most three such requests)."""
    import json

    def attribute_requests() -> int:
        report = json.loads((mountpoint / ".immichfs" / "status").read_bytes())
        return int(report["kernel"]["attribute_requests"])

    def one_round() -> int:
        before = attribute_requests()
        for path in paths:
            os.stat(path)
        return attribute_requests() - before

    poll(one_round, until=lambda reached: reached >= len(paths) > 3)
