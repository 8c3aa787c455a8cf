"""The container image, built and run for real with rootful podman (runc).

Against the fake Immich on the host's loopback (``--network host``), the key as a
secret file at ``/run/secrets/immich_api_key``, as ``docs/CONTAINERS.md`` describes:
the image builds (``--format docker`` keeps the HEALTHCHECK), the FUSE mount made
inside reaches the host through an ``rshared`` bind and a sibling container, started
before it, through ``rslave``, byte-exact; the HEALTHCHECK turns healthy; ``podman
stop`` unmounts everywhere with exit status 0; and a container missing ``/dev/fuse``,
the SYS_ADMIN capability or the key fails with one line.

Nothing can be pulled here: the base images come from
``../shared/containers/podman-base-images.sh`` (``.ci/run`` runs it). Without podman
or those images every test skips with the reason. The image keeps a stable tag, so
the next run reuses podman's layer cache; containers are named after this process
and removed, mounts undone, whatever happens.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mountutil import fuse_unavailable

from immichfs.fuse import kernel
from immichfs_fake import FakeImmich, FakeLibrary

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/immichfs:test"
#: the Dockerfile's FROM, also the sibling's image (as in contrib/docker/compose.yaml)
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
SETUP = "sh ../shared/containers/podman-base-images.sh (as root)"
SECRET = "/run/secrets/immich_api_key"
INSIDE = "/mnt/immich"  # the image's IMMICHFS_MOUNTPOINT
SIBLING_INSIDE = "/data/immich"
PHOTO_SAMPLE = 6
NAME = f"immichfs-test-{os.getpid()}"


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def podman_ok(*args: str, timeout: float = 120) -> str:
    result = podman(*args, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr.strip()[-2000:]}"
    return result.stdout


@functools.cache
def podman_unavailable() -> str | None:
    """Why the container tests cannot run here, or None (probed once)."""
    if shutil.which("podman") is None:
        return f"podman is not installed: run {SETUP}"
    if os.geteuid() != 0:
        return "the container tests need rootful podman: run them as root"
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}")
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"podman cannot start: {last}"
    if podman("image", "exists", BASE_IMAGE).returncode != 0:
        return f"the base image {BASE_IMAGE} is missing (no registry can be reached): run {SETUP}"
    fuse = fuse_unavailable()
    if fuse is not None:
        return f"this host cannot mount FUSE: {fuse}"
    return None


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def remove_containers(*names: str) -> None:
    for name in names:
        podman("rm", "--force", "--time", "0", "--ignore", name, timeout=60)


def fuse_mount_at(path: str, mountinfo: Path = kernel.MOUNTINFO) -> bool:
    entry = kernel.mount_at(path, mountinfo)
    return entry is not None and entry.fstype == kernel.FSTYPE


# -- fixtures: the image, the fake server, the key, the shared directory


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built from this checkout (cached layers make a rebuild quick).

    Run by id, not by tag: a concurrent build of another checkout may move the tag.
    """
    reason = podman_unavailable()
    if reason is not None:
        pytest.skip(reason)
    iidfile = tmp_path_factory.mktemp("image") / "id"
    # --format docker: the OCI format (podman's default) drops HEALTHCHECK
    podman_ok(
        "build", "--pull=never", "--format", "docker", "--quiet",
        "--iidfile", str(iidfile), "-t", IMAGE, str(REPO),
        timeout=1200,
    )  # fmt: skip
    return iidfile.read_text().strip()


@pytest.fixture(scope="module")
def server(fake_library: FakeLibrary) -> Iterator[FakeImmich]:
    with FakeImmich(fake_library) as running:
        yield running


@pytest.fixture(scope="module")
def key_file(server: FakeImmich, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "immich_api_key"
    path.write_text(server.api_key + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A host directory on a shared mount, made as the docs tell users."""
    path = tmp_path_factory.mktemp("srv-immich")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(path)], check=True)
        yield path
    finally:
        # the top one first: a dead FUSE mount a failed test left, then the bind itself
        for _ in range(5):
            if kernel.mount_at(path) is None:
                break
            subprocess.run(["umount", "--lazy", str(path)], check=False)


def run_args(server: FakeImmich, image: str, *options: str) -> list[str]:
    return ["run", "--network", "host", "-e", f"IMMICH_URL={server.url}", *options, image]


@dataclass
class Stack:
    host_dir: Path
    mounter: str
    sibling: str

    def in_sibling(self, script: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.sibling, "sh", "-c", script)


@pytest.fixture(scope="module")
def stack(image: str, server: FakeImmich, key_file: Path, shared_dir: Path) -> Iterator[Stack]:
    """A sibling reading ``shared_dir`` (rslave), then immichfs mounting into it (rshared)."""
    stack = Stack(shared_dir, f"{NAME}-mount", f"{NAME}-sibling")
    try:
        # the sibling starts first: the mount must reach it by propagation, not by a bind
        # of an already mounted directory
        podman_ok(
            "run", "-d", "--name", stack.sibling, "--network", "none",
            "-v", f"{shared_dir}:{SIBLING_INSIDE}:rslave,ro",
            BASE_IMAGE, "sleep", "infinity",
        )  # fmt: skip
        podman_ok(
            *run_args(
                server, image,
                "-d", "--name", stack.mounter,
                "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
                "-v", f"{key_file}:{SECRET}:ro",
                "-v", f"{shared_dir}:{INSIDE}:rshared",
            )
        )  # fmt: skip

        def mounted() -> bool:
            if fuse_mount_at(str(shared_dir)):
                return True
            state = podman_ok("inspect", "--format", "{{.State.Status}}", stack.mounter)
            if state.strip() not in ("created", "running"):
                logs = podman("logs", stack.mounter)
                raise AssertionError(f"the container {state.strip()}: {logs.stderr[-2000:]}")
            return False

        wait_for(mounted, f"the FUSE mount at {shared_dir} on the host")
        yield stack
    finally:
        # stopped (unmounting) if a test failed before it did; a kill would leave a dead mount
        podman("stop", "--ignore", "--time", "30", stack.mounter)
        remove_containers(stack.mounter, stack.sibling)


# -- helpers over the mounted library


def manifest(directory: Path) -> list[dict[str, object]]:
    with open(directory / ".manifest.jsonl") as f:
        return [json.loads(line) for line in f]


def expected_sha1s(host_dir: Path, library: FakeLibrary) -> dict[str, str]:
    """Relative path -> SHA-1 (hex) of the asset by the library, for every video and
    a few photos; also checks the manifest's checksum is the library's."""
    chosen: dict[str, str] = {}
    for folder, limit in (("videos", None), ("photos", PHOTO_SAMPLE)):
        entries = manifest(host_dir / folder)[:limit]
        assert entries, f"no assets in {folder}/"
        for entry in entries:
            asset_id = str(entry["id"])
            assert entry["checksum"] == library.checksum(asset_id)
            chosen[f"{folder}/{entry['name']}"] = library.sha1(asset_id)
    return chosen


def sha1sum_output(output: str, root: str) -> dict[str, str]:
    """``sha1sum`` lines as relative path -> digest (names here have no newlines)."""
    sums = {}
    for line in output.splitlines():
        digest, _, path = line.partition("  ")
        sums[os.path.relpath(path, root)] = digest
    return sums


# -- the tests, in the order of a container's life (the module shares one)


def test_image_builds_and_keeps_its_healthcheck(image: str) -> None:
    inspected = podman_ok(
        "image", "inspect", "--format", "{{json .HealthCheck}}\n{{json .Config.Entrypoint}}", image
    )
    healthcheck, entrypoint = map(json.loads, inspected.splitlines())
    assert "mountpoint" in " ".join((healthcheck or {}).get("Test", [])), healthcheck
    assert entrypoint == ["/usr/local/bin/immichfs-entrypoint"]
    # both top-level packages made it into the wheel
    listed = podman_ok(
        "run", "--rm", "--no-healthcheck", "--network", "none", image,
        "python", "-c", "import immichfs.cli, immichfs_fake; print('imported')",
    )  # fmt: skip
    assert listed.strip() == "imported"


def test_mount_reaches_the_host_byte_exact(stack: Stack, fake_library: FakeLibrary) -> None:
    propagation = kernel.mount_at(str(stack.host_dir))
    assert propagation is not None and propagation.fstype == kernel.FSTYPE
    expected = expected_sha1s(stack.host_dir, fake_library)
    assert sorted(os.listdir(stack.host_dir / "videos")) == sorted(
        name.partition("/")[2] for name in expected if name.startswith("videos/")
    )
    paths = [str(stack.host_dir / name) for name in expected]
    done = subprocess.run(["sha1sum", *paths], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sha1sum_output(done.stdout, str(stack.host_dir)) == expected


def test_mount_reaches_a_sibling_started_before_it(stack: Stack, fake_library: FakeLibrary) -> None:
    mountinfo = stack.in_sibling("cat /proc/self/mountinfo")
    assert mountinfo.returncode == 0, mountinfo.stderr
    lines = [line for line in mountinfo.stdout.splitlines() if f" {SIBLING_INSIDE} " in line]
    fuse_lines = [line for line in lines if f" - {kernel.FSTYPE} " in line]
    assert fuse_lines, lines
    assert " master:" in fuse_lines[-1]  # a slave of the host's peer group: rslave

    expected = expected_sha1s(stack.host_dir, fake_library)
    quoted = " ".join(
        "'" + f"{SIBLING_INSIDE}/{name}".replace("'", "'\\''") + "'" for name in expected
    )
    done = stack.in_sibling(f"sha1sum {quoted}")
    assert done.returncode == 0, done.stderr
    assert sha1sum_output(done.stdout, SIBLING_INSIDE) == expected


def test_healthcheck_turns_healthy(stack: Stack) -> None:
    # no systemd here to run podman's healthcheck timer: run the check as the timer would
    wait_for(
        lambda: podman("healthcheck", "run", stack.mounter).returncode == 0,
        "podman healthcheck run",
    )
    status = podman_ok("inspect", "--format", "{{.State.Health.Status}}", stack.mounter)
    assert status.strip() == "healthy"


def test_healthcheck_fails_without_a_mount(image: str) -> None:
    # the same image and check, with nothing mounted: a check that always passed
    # would make `depends_on: service_healthy` meaningless
    name = f"{NAME}-idle"
    try:
        podman_ok(
            "run", "-d", "--name", name, "--network", "none",
            "--entrypoint", "sleep", image, "infinity",
        )  # fmt: skip
        checked = podman("healthcheck", "run", name)
        assert checked.returncode != 0
        assert checked.stdout.strip() == "unhealthy", checked.stderr  # ran, and failed
    finally:
        remove_containers(name)


def test_stop_unmounts_everywhere(stack: Stack, server: FakeImmich) -> None:
    stopped = podman("stop", "--time", "30", stack.mounter)
    assert stopped.returncode == 0, stopped.stderr
    state = podman_ok("inspect", "--format", "{{.State.ExitCode}}", stack.mounter)
    assert state.strip() == "0"
    # the host: the bind mount is back on top, readable, empty
    assert not fuse_mount_at(str(stack.host_dir))
    assert os.listdir(stack.host_dir) == []
    # the sibling: no dead mount ("Transport endpoint is not connected")
    after = stack.in_sibling(f"ls -A {SIBLING_INSIDE} && cat /proc/self/mountinfo")
    assert after.returncode == 0, after.stderr
    assert f" - {kernel.FSTYPE} " not in after.stdout
    logs = podman("logs", stack.mounter)
    output = logs.stdout + logs.stderr
    assert "unmounted" in output
    assert "Traceback" not in output
    assert server.api_key not in output


@pytest.mark.parametrize(
    ("missing", "options", "says"),
    [
        pytest.param(
            "/dev/fuse",
            ["--cap-add", "SYS_ADMIN", "-v", "{key}:" + SECRET + ":ro"],
            "--device /dev/fuse",
            id="no-dev-fuse",
        ),
        pytest.param(
            "SYS_ADMIN",
            ["--device", "/dev/fuse", "-v", "{key}:" + SECRET + ":ro"],
            "--cap-add SYS_ADMIN",
            id="no-capability",
        ),
        pytest.param(
            "the key",
            ["--device", "/dev/fuse", "--cap-add", "SYS_ADMIN"],
            SECRET,
            id="no-key",
        ),
    ],
)
def test_missing_piece_fails_with_one_line(
    image: str,
    server: FakeImmich,
    key_file: Path,
    missing: str,
    options: list[str],
    says: str,
) -> None:
    name = f"{NAME}-without-{missing.strip('/').replace('/', '-').replace(' ', '-')}"
    args = [option.format(key=key_file) for option in options]
    try:
        # --no-healthcheck: podman itself would complain on stderr that systemd is absent
        result = podman(*run_args(server, image, "--name", name, "--no-healthcheck", *args))
    finally:
        remove_containers(name)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    assert len(output.splitlines()) == 1, output
    assert says in output
    assert "Traceback" not in output
    assert server.api_key not in output


def test_demo_mounts_without_a_key_or_network(image: str) -> None:
    # `docker run ... IMAGE --demo`: the bundled library, for a first try
    name = f"{NAME}-demo"
    try:
        podman_ok(
            "run", "-d", "--name", name, "--no-healthcheck", "--network", "none",
            "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", image, "--demo",
        )  # fmt: skip

        def mounted() -> bool:
            if podman("exec", name, "mountpoint", "-q", INSIDE).returncode == 0:
                return True
            state = podman_ok("inspect", "--format", "{{.State.Status}}", name).strip()
            assert state in ("created", "running"), podman("logs", name).stderr[-2000:]
            return False

        wait_for(mounted, "the demo mount inside the container")
        listed = podman_ok("exec", name, "ls", f"{INSIDE}/photos")
        assert len(listed.splitlines()) > 10
        assert podman("stop", "--time", "30", name).returncode == 0
        assert podman_ok("inspect", "--format", "{{.State.ExitCode}}", name).strip() == "0"
    finally:
        remove_containers(name)
