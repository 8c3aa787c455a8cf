"""Operations against real mounts: mount(8) and fstab, systemd readiness, start-up
checks, the container entrypoint in fresh namespaces, and ``immichfs warm``.

The filesystem always runs in another process (mount(8)'s helper daemonizes it,
or ``MountProcess`` runs it in the foreground); the fake server counts requests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mountutil import MountProcess, clean_env, stat_past_the_kernel_cache, unmount

from immichfs.cli import mounthelper

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IS_ROOT = os.geteuid() == 0


def mounted_fstype(mountpoint: Path) -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mountpoint):
            return fields[fields.index("-") + 1]
    return None


def serving_processes(mountpoint: Path) -> list[psutil.Process]:
    """immichfs processes serving ``mountpoint`` (the daemon mount(8) left running)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "immichfs" in cmdline and "mount" in cmdline and str(mountpoint) in cmdline:
            found.append(process)
    return found


def wait_gone(processes: list[psutil.Process], timeout: float = 30) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"still running after unmount: {alive}"


@pytest.fixture
def key_file(tmp_path: Path, fake_immich: Any) -> Path:
    path = tmp_path / "api-key"
    path.write_text(fake_immich.api_key + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if os.path.ismount(path):  # a failed test must not leave a mount behind
        unmount(path, lazy=True)
    for process in serving_processes(path):
        process.terminate()


@pytest.fixture
def helper_in_sbin() -> Iterator[Path]:
    """mount(8) finds helpers only in /sbin: link ours there for the test."""
    if not IS_ROOT:
        pytest.skip("mount(8) with a helper in /sbin needs root")
    if not (BIN / mounthelper.HELPER_NAME).exists():
        pytest.skip("package not installed (pip install -e .)")
    target = mounthelper.HELPER_DIR / mounthelper.HELPER_NAME
    existed = target.exists() or target.is_symlink()
    if not existed:
        mounthelper.install_helper(mounthelper.HELPER_DIR)
    try:
        yield target
    finally:
        if not existed:
            target.unlink(missing_ok=True)


# -- mount(8), umount(8) and /etc/fstab


def test_mount_8_calls_the_helper(helper_in_sbin: Path, tmp_path: Path) -> None:
    # mount -f runs the helper with -f: everything but the mount itself
    result = subprocess.run(
        [
            *("mount", "-f", "-t", "fuse.immichfs", "immichfs", str(tmp_path)),
            *("-o", "allow_other,listing_ttl=3,config=/etc/immichfs/x.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"-m immichfs mount {tmp_path} --allow-other --listing-ttl 3 "
        "--config /etc/immichfs/x.toml" in result.stderr
    )
    assert mounted_fstype(tmp_path) is None


def test_mount_t_fuse_immichfs_and_umount(
    helper_in_sbin: Path, fake_immich: Any, key_file: Path, mountpoint: Path
) -> None:
    result = subprocess.run(
        [
            *("mount", "-t", "fuse.immichfs", fake_immich.url, str(mountpoint)),
            *("-o", f"_netdev,nofail,allow_other,uid=1234,gid=4321,api_key_file={key_file}"),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    # mount(8) returned: the filesystem is mounted and answering already
    assert mounted_fstype(mountpoint) == "fuse.immichfs"
    photos = sorted(os.listdir(mountpoint / "photos"))
    assert photos
    st = os.stat(mountpoint / "photos" / photos[0])
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert "allow_other" in Path("/proc/self/mountinfo").read_text()
    daemons = serving_processes(mountpoint)
    assert len(daemons) == 1
    # the key is not on the daemon's command line
    assert fake_immich.api_key not in " ".join(daemons[0].cmdline())

    umount = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    assert umount.returncode == 0, umount.stderr
    assert mounted_fstype(mountpoint) is None
    wait_gone(daemons)


def test_fstab_line(
    helper_in_sbin: Path, fake_immich: Any, key_file: Path, mountpoint: Path, tmp_path: Path
) -> None:
    # the fstab line of docs/OPERATIONS.md, with the URL and key in the config file; mount -T reads
    # this file instead of /etc/fstab, and `mount MOUNTPOINT` finds the line by target
    config = tmp_path / "config.toml"
    config.write_text(f'url = "{fake_immich.url}"\napi_key_file = "{key_file}"\n')
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"immichfs  {mountpoint}  fuse.immichfs  "
        f"_netdev,nofail,allow_other,uid=1000,gid=1000,config={config}  0  0\n"
    )
    result = subprocess.run(
        ["mount", "-T", str(fstab), str(mountpoint)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert mounted_fstype(mountpoint) == "fuse.immichfs"
    assert {"photos", "videos", "thumbs"} <= set(os.listdir(mountpoint))
    assert os.stat(mountpoint / "photos").st_uid == 1000
    daemons = serving_processes(mountpoint)
    assert subprocess.run(["umount", str(mountpoint)]).returncode == 0
    wait_gone(daemons)


def test_mount_failure_is_one_line_and_mounts_nothing(
    helper_in_sbin: Path, fake_immich: Any, mountpoint: Path, tmp_path: Path
) -> None:
    wrong_key = tmp_path / "wrong-key"
    wrong_key.write_text("not-the-key-" + "x" * 20)
    wrong_key.chmod(0o600)
    result = subprocess.run(
        [
            *("mount", "-t", "fuse.immichfs", fake_immich.url, str(mountpoint)),
            *("-o", f"api_key_file={wrong_key}"),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("immichfs mount:")
    assert "not-the-key" not in result.stderr
    assert mounted_fstype(mountpoint) is None


# -- systemd readiness


def test_sd_notify_ready_once_mounted_and_stopping_on_sigterm(
    fake_immich: Any, mountpoint: Path, tmp_path: Path
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify"
    notify.bind(str(notify_path))
    notify.settimeout(60)
    process = MountProcess(
        mountpoint,
        {
            "IMMICH_URL": fake_immich.url,
            "IMMICH_API_KEY": fake_immich.api_key,
            "NOTIFY_SOCKET": str(notify_path),
        },
        log_path=tmp_path / "mount.log",
    )
    try:
        first = notify.recv(4096).decode().split("\n")
        # what systemd needs for Type=notify, and the mount is usable at that moment
        assert first[0] == "READY=1"
        assert f"MAINPID={process.process.pid}" in first
        assert any(line.startswith("STATUS=mounted ") for line in first)
        assert mounted_fstype(mountpoint) == "fuse.immichfs"
        assert os.listdir(mountpoint / "photos")
        # `systemctl stop`: SIGTERM to the main process
        process.process.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert process.process.wait(30) == 0, process.output()
        assert mounted_fstype(mountpoint) is None
    finally:
        notify.close()
        process.cleanup()


# -- start-up checks, from the command a user runs


def test_missing_fusermount_stops_immichfs_mount(
    fake_immich: Any, mountpoint: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "immichfs", "mount", str(mountpoint)],
        env=clean_env(
            PATH=str(empty), IMMICH_URL=fake_immich.url, IMMICH_API_KEY=fake_immich.api_key
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "immichfs mount: fusermount3 is not installed (not found on PATH): "
        "run apt-get install fuse3\n"
    )
    assert mounted_fstype(mountpoint) is None
    assert fake_immich.count() == 0  # checked before talking to the server


# -- the container entrypoint, in fresh mount, network and PID namespaces

NAMESPACE_SCRIPT = r"""
set -u
ip link set lo up
immichfs fake-server --port 0 --photos 12 --videos 2 --large-video-mb 0 \
    --ready-file "$WORK/ready" >"$WORK/fake.log" 2>&1 &
for i in $(seq 300); do [ -s "$WORK/ready" ] && break; sleep 0.1; done
. "$WORK/ready"
printf '%s\n' "$IMMICH_API_KEY" >"$WORK/secrets/immich_api_key"
chmod 600 "$WORK/secrets/immich_api_key"
export IMMICH_URL
unset IMMICH_API_KEY
sh "$ENTRYPOINT" --listing-ttl 30 >"$WORK/mount.log" 2>&1 &
mounter=$!
for i in $(seq 600); do mountpoint -q "$IMMICHFS_MOUNTPOINT" && break; sleep 0.1; done
echo "mounted=$(mountpoint -q "$IMMICHFS_MOUNTPOINT" && echo yes || echo no)"
echo "photos=$(ls "$IMMICHFS_MOUNTPOINT/photos" | wc -l)"
kill -TERM "$mounter"
wait "$mounter"
echo "exit=$?"
echo "after=$(mountpoint -q "$IMMICHFS_MOUNTPOINT" && echo mounted || echo unmounted)"
"""


def test_entrypoint_in_fresh_namespaces(tmp_path: Path) -> None:
    """The container's start, as near as this machine allows without a Docker engine:
    private mount, network (loopback only) and PID namespaces, the real entrypoint and
    immichfs, the key from /run/secrets-style file, SIGTERM as `docker stop` sends."""
    if not IS_ROOT:
        pytest.skip("unshare of mount/net/pid namespaces needs root")
    check = subprocess.run(
        ["unshare", "--mount", "--net", "--pid", "--fork", "true"], capture_output=True
    )
    if check.returncode != 0:
        pytest.skip(f"cannot create namespaces here: {check.stderr.decode().strip()}")
    (tmp_path / "secrets").mkdir()
    env = clean_env(
        PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        WORK=str(tmp_path),
        ENTRYPOINT=str(REPO / "contrib" / "docker" / "entrypoint.sh"),
        IMMICHFS_MOUNTPOINT=str(tmp_path / "mnt"),
        IMMICHFS_SECRETS_DIR=str(tmp_path / "secrets"),
    )
    result = subprocess.run(
        [
            *("unshare", "--mount", "--net", "--pid", "--fork", "--kill-child"),
            *("sh", "-c", NAMESPACE_SCRIPT),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    mount_log = (tmp_path / "mount.log").read_text(errors="replace")
    report = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    assert report.get("mounted") == "yes", result.stderr + mount_log
    assert int(report["photos"]) >= 12
    assert report["exit"] == "0", mount_log
    assert report["after"] == "unmounted"
    # the namespace kept the mount private: the host never saw it
    assert mounted_fstype(tmp_path / "mnt") is None


# -- immichfs warm


def test_warm_prints_progress_and_fills_the_cache(
    fake_immich: Any, mountpoint: Path, tmp_path: Path
) -> None:
    process = MountProcess(
        mountpoint,
        {"IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key},
        args=["--listing-ttl", "600", "--asset-ttl", "600"],
        log_path=tmp_path / "mount.log",
    )
    try:
        process.wait_mounted()
        fake_immich.reset_log()
        result = subprocess.run(
            [sys.executable, "-m", "immichfs", "warm", str(mountpoint / "photos")],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"warming {mountpoint / 'photos'}" in result.stderr  # the progress bar
        files = len(os.listdir(mountpoint / "photos"))
        assert f"1 directories, {files} files" in result.stdout
        assert fake_immich.count() > 0  # warming asked the server
        fake_immich.reset_log()
        photos = [Path(entry.path) for entry in os.scandir(mountpoint / "photos")]
        stat_past_the_kernel_cache(mountpoint, photos)
        assert fake_immich.count() == 0, [r.path for r in fake_immich.requests]
    finally:
        process.cleanup()


def test_warm_reads_thumbnails(fake_immich: Any, mountpoint: Path, tmp_path: Path) -> None:
    process = MountProcess(
        mountpoint,
        {"IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key},
        log_path=tmp_path / "mount.log",
    )
    try:
        process.wait_mounted()
        fake_immich.reset_log()
        result = subprocess.run(
            [
                *(sys.executable, "-m", "immichfs", "warm", "--no-progress", "--thumbnails"),
                str(mountpoint / "thumbs" / "thumbnail"),
            ],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        thumbs = len(os.listdir(mountpoint / "thumbs" / "thumbnail"))
        assert thumbs > 0
        assert fake_immich.count(path_prefix="/api/assets/") >= thumbs
        assert "MiB of thumbnails read" in result.stdout
        assert "warming" not in result.stderr
    finally:
        process.cleanup()
