"""Operations: sd_notify, preflight checks, the mount(8) helper, the container entrypoint."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import deadmount
import pytest

from immichfs import options
from immichfs.cli import mounthelper, preflight, sdnotify
from immichfs.cli.mounthelper import HelperError, Invocation
from immichfs.errors import UserError
from immichfs.fuse import kernel

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0

# -- sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_ready_sends_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    assert sdnotify.ready("mounted /mnt/immich", env={"NOTIFY_SOCKET": name})
    lines = sock.recv(4096).decode().split("\n")
    assert lines == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=mounted /mnt/immich"]


def test_status_and_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    env = {"NOTIFY_SOCKET": name}
    assert sdnotify.status("3 files open", env=env)
    assert sock.recv(4096) == b"STATUS=3 files open"
    assert sdnotify.stopping(env=env)
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket() -> None:
    name = f"immichfs-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_notify_reads_the_process_environment(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, name = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    assert sdnotify.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent() -> None:
    assert sdnotify.ready(env={}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


@pytest.mark.expect_log("cannot notify systemd", logger="immichfs.cli.sdnotify")
def test_unreachable_socket_warns_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="immichfs.cli.sdnotify"):
        sent = sdnotify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert sent is False
    assert "cannot notify systemd" in caplog.text


# -- preflight


def test_missing_fusermount_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        preflight.check_fusermount(path=str(tmp_path))
    assert str(info.value) == (
        "fusermount3 is not installed (not found on PATH): run apt-get install fuse3"
    )


def test_fusermount_found_on_given_path(tmp_path: Path) -> None:
    tool = tmp_path / "fusermount3"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert preflight.check_fusermount(path=str(tmp_path)) == str(tool)


def test_missing_device_in_container_names_the_docker_flags(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        preflight.check_device(str(tmp_path / "fuse"), container=True)
    message = str(info.value)
    assert "--device /dev/fuse --cap-add SYS_ADMIN" in message
    assert "\n" not in message


def test_missing_device_on_host_names_module_and_package(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        preflight.check_device(str(tmp_path / "fuse"), container=False)
    assert "modprobe fuse" in str(info.value)
    assert "apt-get install fuse3" in str(info.value)


def test_device_without_driver(tmp_path: Path) -> None:
    # opening a unix socket file fails with ENXIO, like a device node without its module
    path = tmp_path / "fuse"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        with pytest.raises(UserError, match="modprobe fuse"):
            preflight.check_device(str(path), container=False)


def check_device_as_nobody(device: Path, container: bool) -> str:
    """The check's message when run by an unprivileged user (a forked child drops root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        message = "no error"
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            preflight.check_device(str(device), container=container)
        except UserError as exc:
            message = str(exc)
        except BaseException as exc:
            message = f"unexpected {exc!r}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the check as another user")
@pytest.mark.parametrize(
    ("container", "expected"),
    [(True, "--device /dev/fuse --cap-add SYS_ADMIN"), (False, "run as root")],
)
def test_unopenable_device_as_unprivileged_user(
    tmp_path: Path, container: bool, expected: str
) -> None:
    device = tmp_path / "fuse"
    device.write_bytes(b"")
    device.chmod(0o600)  # root only
    message = check_device_as_nobody(device, container)
    assert "permission denied" in message
    assert expected in message


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine")
def test_real_device_and_fusermount_pass() -> None:
    if shutil.which("fusermount3") is None:
        pytest.skip("fusermount3 not installed")
    preflight.check_all(path=os.environ.get("PATH"))


def test_container_detection(tmp_path: Path) -> None:
    assert preflight.in_container(env={}, root=str(tmp_path)) is False
    assert preflight.in_container(env={"container": "podman"}, root=str(tmp_path)) is True
    (tmp_path / ".dockerenv").write_text("")
    assert preflight.in_container(env={}, root=str(tmp_path)) is True


@pytest.mark.fuse
def test_mountpoint_checks(tmp_path: Path) -> None:
    preflight.check_mountpoint(tmp_path)
    with pytest.raises(UserError, match=f"mkdir -p {tmp_path}/absent"):
        preflight.check_mountpoint(tmp_path / "absent")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        preflight.check_mountpoint(tmp_path / "file")


@pytest.fixture
def dead_fuse_mount(tmp_path: Path) -> Iterator[Path]:
    with deadmount.dead_fuse_mount(tmp_path / "dead") as target:
        yield target


@pytest.mark.fuse
def test_dead_mount_is_named_with_the_fix(dead_fuse_mount: Path) -> None:
    with pytest.raises(OSError) as raw:
        os.stat(dead_fuse_mount)
    assert raw.value.errno == errno.ENOTCONN
    with pytest.raises(UserError) as info:
        preflight.check_mountpoint(dead_fuse_mount)
    assert f"run fusermount3 -u {dead_fuse_mount}" in str(info.value)
    assert os.path.ismount(dead_fuse_mount) or _is_listed(dead_fuse_mount)  # left alone


def _is_listed(path: Path) -> bool:
    return kernel.mount_at(path) is not None


@pytest.mark.expect_log("cleared a dead immichfs mount", logger="immichfs.cli.preflight")
@pytest.mark.fuse
def test_a_dead_immichfs_mount_is_cleared(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # what a killed immichfs leaves behind: the next mount must not need `umount -l`
    with deadmount.dead_fuse_mount(tmp_path / "dead", fstype="fuse.immichfs") as target:
        with pytest.raises(OSError):
            os.stat(target)
        preflight.check_mountpoint(target)
        assert kernel.mount_at(target) is None
        assert os.path.isdir(target)
    assert "cleared a dead immichfs mount" in caplog.text


# -- mount(8) helper


def test_parse_mount_calling_convention() -> None:
    inv = mounthelper.parse_argv(
        ["http://h:2283", "/mnt/p", "-s", "-v", "-o", "rw,allow_other", "-t", "fuse.immichfs"]
    )
    assert inv == Invocation("http://h:2283", "/mnt/p", ["rw", "allow_other"], False, True, True)
    inv = mounthelper.parse_argv(["-o", "uid=1", "-fn", "immichfs", "/mnt/p", "-ogid=2"])
    assert (inv.source, inv.mountpoint, inv.options, inv.fake) == (
        "immichfs",
        "/mnt/p",
        ["uid=1", "gid=2"],
        True,
    )
    with pytest.raises(HelperError, match="usage"):
        mounthelper.parse_argv(["/mnt/p"])
    with pytest.raises(HelperError, match="-N"):
        mounthelper.parse_argv(["immichfs", "/mnt/p", "-N", "/proc/1/ns/mnt"])


def test_option_mapping() -> None:
    flags = mounthelper.option_flags(
        [
            *("rw", "nosuid", "nodev", "_netdev", "nofail", "noauto", "defaults", "users"),
            *("user=alice", "x-systemd.automount", "X-mount.mkdir", "allow_other"),
            *("uid=nobody", "gid=0", "config=/etc/immichfs/a.toml"),
            *("api-key-file=/run/secrets/k", "listing_ttl=5", "insecure=false", "debug"),
        ]
    )
    assert flags == [
        "--allow-other",
        "--uid",
        "65534",
        "--gid",
        "0",
        "--config",
        "/etc/immichfs/a.toml",
        "--api-key-file",
        "/run/secrets/k",
        "--listing-ttl",
        "5",
        "--no-insecure",
        "--debug",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["api_key=s3cret"], "use api_key_file=PATH"),
        (["bogus=1"], "unknown mount option 'bogus'"),
        (["listing_ttl"], "needs a value"),
        (["uid=no-such-user-here"], "no such user"),
        (["debug=maybe"], "expected true or false"),
        (["config="], "config= needs a file name"),
    ],
)
def test_bad_options_fail_with_one_line(options: list[str], message: str) -> None:
    with pytest.raises(HelperError) as info:
        mounthelper.option_flags(options)
    assert message in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.expect_log("ignoring unknown mount option bogus", logger="immichfs.cli.mounthelper")
def test_sloppy_drops_unknown_options(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="immichfs.cli.mounthelper"):
        assert mounthelper.option_flags(["bogus", "allow_other"], sloppy=True) == ["--allow-other"]
    assert "ignoring unknown mount option bogus" in caplog.text


@pytest.mark.parametrize(
    ("source", "flags"),
    [
        ("http://immich.local:2283", ["--url", "http://immich.local:2283"]),
        ("https://photos.example.org/", ["--url", "https://photos.example.org/"]),
        ("immichfs#https://p.example", ["--url", "https://p.example"]),
        ("immichfs", []),
        ("/work/immichfs", []),  # what mount(8) makes of "immichfs" when ./immichfs exists
        ("none", []),
        ("demo", ["--demo"]),
    ],
)
def test_source_mapping(source: str, flags: list[str]) -> None:
    command = mounthelper.build_command(Invocation(source, "/mnt/p", ["allow_other"]))
    assert command == [sys.executable, "-m", "immichfs", "mount", "/mnt/p", *flags, "--allow-other"]


def test_bad_source() -> None:
    with pytest.raises(HelperError, match="not a server URL"):
        mounthelper.build_command(Invocation("immich.local", "/mnt/p"))


def test_mapped_flags_are_what_immichfs_mount_accepts() -> None:
    # the command the helper builds, parsed by the real `immichfs mount` parser
    from immichfs.cli import mount

    parser = argparse.ArgumentParser()
    mount.add_arguments(parser)
    command = mounthelper.build_command(
        Invocation(
            "http://immich.local:2283",
            "/mnt/p",
            ["allow_other", "uid=12", "gid=34", "listing_ttl=7.5", "readahead_mb=8", "show_trash"],
        )
    )
    assert command[1:4] == ["-m", "immichfs", "mount"]
    args = parser.parse_args(command[4:])
    assert args.mountpoint == "/mnt/p" and not args.foreground  # mount(8) wants it to return
    settings = options.load_settings(args, env={}, config_path=None)
    assert settings.url == "http://immich.local:2283"
    assert (settings.allow_other, settings.uid, settings.gid) == (True, 12, 34)
    assert (settings.listing_ttl, settings.readahead_mb, settings.show_trash) == (7.5, 8, True)
    demo = parser.parse_args(mounthelper.build_command(Invocation("demo", "/mnt/p"))[4:])
    assert demo.demo is True


def test_gateway_settings_are_not_mount_options() -> None:
    with pytest.raises(HelperError, match="unknown mount option 'gateway_port'"):
        mounthelper.option_flags(["gateway_port=8080"])


def test_helper_script_fake_mode_prints_command() -> None:
    script = Path(sys.executable).parent / mounthelper.HELPER_NAME
    if not script.exists():
        pytest.skip("package not installed (pip install -e .)")
    result = subprocess.run(
        [str(script), "https://p.example", "/mnt/p", "-f", "-o", "_netdev,uid=0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "-m immichfs mount /mnt/p --url https://p.example --uid 0" in result.stderr
    bad = subprocess.run(
        [str(script), "https://p.example", "/mnt/p", "-o", "api_key=s3cret"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("mount.fuse.immichfs: api_key in mount options")
    assert "s3cret" not in bad.stderr


def install_helper_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    mounthelper.add_arguments(parser)
    return mounthelper.run(parser.parse_args(argv))


def test_install_helper_command(tmp_path: Path) -> None:
    assert install_helper_cli("--dir", str(tmp_path)) == 0
    link = tmp_path / mounthelper.HELPER_NAME
    assert link.resolve() == (Path(sys.executable).parent / mounthelper.HELPER_NAME).resolve()
    assert os.access(link, os.X_OK)
    # installing again replaces our own link
    assert install_helper_cli("--dir", str(tmp_path)) == 0
    assert install_helper_cli("--dir", str(tmp_path), "--uninstall") == 0
    assert not link.exists() and not link.is_symlink()
    # a foreign file of that name is left alone
    link.write_text("#!/bin/sh\necho other\n")
    with pytest.raises(UserError, match="is not the immichfs helper; use --force"):
        install_helper_cli("--dir", str(tmp_path))
    assert link.read_text() == "#!/bin/sh\necho other\n"
    assert install_helper_cli("--dir", str(tmp_path), "--force") == 0
    assert link.is_symlink()


def test_install_helper_is_a_command() -> None:
    from immichfs.cli import COMMANDS

    assert COMMANDS["install-helper"][0] == "immichfs.cli.mounthelper"


# -- container entrypoint

ENTRYPOINT = REPO / "contrib" / "docker" / "entrypoint.sh"


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A PATH directory whose `immichfs` prints its arguments and environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "immichfs"
    tool.write_text(
        '#!/bin/sh\nprintf "ARG %s\\n" "$@"\n'
        'echo "KEYFILE=${IMMICH_API_KEY_FILE:-}"\necho "URL=${IMMICH_URL:-}"\n'
    )
    tool.chmod(0o755)
    return bin_dir


def run_entrypoint(fake_bin: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": f"{fake_bin}:/usr/bin:/bin", **env}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entrypoint_runs_foreground_mount(fake_bin: Path, tmp_path: Path) -> None:
    # /dev/null stands in for /dev/fuse: a character device that opens read-write
    mountpoint = tmp_path / "mnt"
    result = run_entrypoint(
        fake_bin,
        "--allow-other",
        IMMICHFS_FUSE_DEVICE="/dev/null",
        IMMICHFS_MOUNTPOINT=str(mountpoint),
        IMMICH_URL="http://immich:2283",
        IMMICH_API_KEY_FILE="/dev/null",
    )
    assert result.returncode == 0, result.stderr
    args = [line[4:] for line in result.stdout.splitlines() if line.startswith("ARG ")]
    assert args == ["mount", "--foreground", str(mountpoint), "--allow-other"]
    assert mountpoint.is_dir()  # created for the user
    assert "URL=http://immich:2283" in result.stdout


def test_entrypoint_picks_up_the_docker_secret(fake_bin: Path, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "immich_api_key").write_text("k" * 20)
    result = run_entrypoint(
        fake_bin,
        IMMICHFS_FUSE_DEVICE="/dev/null",
        IMMICHFS_MOUNTPOINT=str(tmp_path / "mnt"),
        IMMICHFS_SECRETS_DIR=str(secrets),
    )
    assert result.returncode == 0, result.stderr
    assert f"KEYFILE={secrets / 'immich_api_key'}" in result.stdout


def test_entrypoint_without_a_key_names_the_secret_file(fake_bin: Path, tmp_path: Path) -> None:
    env = {"IMMICHFS_FUSE_DEVICE": "/dev/null", "IMMICHFS_MOUNTPOINT": str(tmp_path / "mnt")}
    env |= {"IMMICHFS_SECRETS_DIR": str(tmp_path), "HOME": str(tmp_path)}
    result = run_entrypoint(fake_bin, **env)
    assert result.returncode == 1
    assert f"no API key: mount it as a secret file at {tmp_path}/immich_api_key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "ARG" not in result.stdout
    # a config file given on the command line may hold the key: immichfs decides
    assert run_entrypoint(fake_bin, "--config", "/etc/x.toml", **env).returncode == 0
    assert run_entrypoint(fake_bin, "--demo", **env).returncode == 0  # the bundled library


def test_entrypoint_unreadable_key_file(fake_bin: Path, tmp_path: Path) -> None:
    result = run_entrypoint(
        fake_bin,
        IMMICHFS_FUSE_DEVICE="/dev/null",
        IMMICHFS_MOUNTPOINT=str(tmp_path / "mnt"),
        IMMICH_API_KEY_FILE=str(tmp_path / "missing"),
    )
    assert result.returncode == 1
    assert f"IMMICH_API_KEY_FILE={tmp_path / 'missing'} cannot be read" in result.stderr
    assert "ARG" not in result.stdout


def test_entrypoint_without_dev_fuse_says_which_flags(fake_bin: Path, tmp_path: Path) -> None:
    result = run_entrypoint(
        fake_bin,
        IMMICHFS_FUSE_DEVICE=str(tmp_path / "fuse"),
        IMMICHFS_MOUNTPOINT=str(tmp_path / "mnt"),
    )
    assert result.returncode == 1
    assert "--device /dev/fuse --cap-add SYS_ADMIN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "ARG" not in result.stdout
    # a regular file is not a device either
    (tmp_path / "fuse").write_text("")
    result = run_entrypoint(
        fake_bin,
        IMMICHFS_FUSE_DEVICE=str(tmp_path / "fuse"),
        IMMICHFS_MOUNTPOINT=str(tmp_path / "mnt"),
    )
    assert result.returncode == 1
    assert "not a character device" in result.stderr


def test_entrypoint_runs_other_commands(fake_bin: Path, tmp_path: Path) -> None:
    # `docker run IMAGE immichfs check` runs that command, no /dev/fuse needed
    result = run_entrypoint(
        fake_bin, "immichfs", "check", IMMICHFS_FUSE_DEVICE=str(tmp_path / "fuse")
    )
    assert result.returncode == 0, result.stderr
    assert [ln for ln in result.stdout.splitlines() if ln.startswith("ARG")] == ["ARG check"]


def test_entrypoint_is_executable() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


# -- systemd units, Dockerfile, Kubernetes example

SYSTEMD = REPO / "contrib" / "systemd"


def unit_settings(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize("name", ["immichfs@.service", "immichfs-user.service"])
def test_units_are_notify_services_running_in_the_foreground(name: str) -> None:
    unit = unit_settings(SYSTEMD / name)
    assert unit["Type"] == ["notify"]
    (exec_start,) = unit["ExecStart"]
    assert exec_start.split()[1:3] == ["mount", "--foreground"]
    mountpoint = exec_start.split()[3]
    assert any(mountpoint in line and "fusermount3 -u" in line for line in unit["ExecStopPost"])
    assert unit["Restart"] == ["on-failure"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize(
    ("name", "instance"),
    [("immichfs@.service", "immichfs@mnt-immich.service"), ("immichfs-user.service", None)],
)
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str, instance: str | None) -> None:
    # verify needs the ExecStart program to exist: point it at this installation.
    # The user unit is checked with the same parser after %h is spelled out.
    immichfs = shutil.which("immichfs", path=str(Path(sys.executable).parent))
    if immichfs is None:
        pytest.skip("package not installed (pip install -e .)")
    text = (SYSTEMD / name).read_text()
    text = text.replace("/usr/local/bin/immichfs", immichfs)
    text = text.replace("%h/.local/bin/immichfs", immichfs)
    unit = tmp_path / (name if instance else "immichfs.service")
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit), *([instance] if instance else [])],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_dockerfile_uses_the_entrypoint_and_fuse3() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "apt-get install -y --no-install-recommends fuse3" in text
    assert "COPY contrib/docker/entrypoint.sh /usr/local/bin/immichfs-entrypoint" in text
    assert 'ENTRYPOINT ["/usr/local/bin/immichfs-entrypoint"]' in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "venv" in ignored and ".git" in ignored  # the build context stays small


def test_kubernetes_sidecar_example() -> None:
    yaml = pytest.importorskip("yaml")
    pod = yaml.safe_load((REPO / "contrib" / "kubernetes" / "sidecar.yaml").read_text())
    assert pod["kind"] == "Pod"
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    sidecar, app = containers["immichfs"], containers["app"]
    assert sidecar["securityContext"]["privileged"] is True
    assert "SYS_ADMIN" in sidecar["securityContext"]["capabilities"]["add"]
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["immich"]["mountPropagation"] == "Bidirectional"
    assert mounts["fuse-device"]["mountPath"] == "/dev/fuse"
    assert volumes["fuse-device"]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    key_dir = mounts["api-key"]["mountPath"]
    assert env["IMMICH_API_KEY_FILE"].startswith(key_dir + "/")
    assert volumes["api-key"]["secret"]["secretName"]
    assert env["IMMICHFS_MOUNTPOINT"] == mounts["immich"]["mountPath"]
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"][:2] == ["fusermount3", "-u"]
    (app_mount,) = app["volumeMounts"]
    assert (app_mount["name"], app_mount["mountPropagation"]) == ("immich", "HostToContainer")
    assert "emptyDir" in volumes["immich"]


def test_compose_example() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO / "contrib" / "docker" / "compose.yaml").read_text())
    immichfs, job = compose["services"]["immichfs"], compose["services"]["photo-job"]
    assert immichfs["devices"] == ["/dev/fuse:/dev/fuse"]
    assert immichfs["cap_add"] == ["SYS_ADMIN"]
    assert "apparmor=unconfined" in immichfs["security_opt"]
    assert immichfs["secrets"] == ["immich_api_key"]  # /run/secrets/immich_api_key
    (shared,) = immichfs["volumes"]
    (seen,) = job["volumes"]
    assert shared["source"] == seen["source"]
    assert shared["target"] == "/mnt/immich"  # the entrypoint's default mount point
    assert (shared["bind"]["propagation"], seen["bind"]["propagation"]) == ("rshared", "rslave")
    assert job["depends_on"]["immichfs"]["condition"] == "service_healthy"
    assert "HEALTHCHECK" in (REPO / "Dockerfile").read_text()
