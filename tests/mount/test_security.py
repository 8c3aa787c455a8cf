"""Security: the API key never leaks; key files, loopback-only fake, TLS checks.

The key is looked for in the raw log records (before the log scrubber, which is
only the second line of defence), in exception messages, reprs and tracebacks,
in a debug log file and the output of a real mount, and in the mount process's
command line (what ``ps`` shows).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mountutil import MountProcess, clean_env
from netutil import Proxy

from immichfs import errors
from immichfs.client.connector import DEFAULT_RETRY_POLICY, ImmichConnector
from immichfs.client.http import read_key_file
from immichfs.client.retry import RetryPolicy
from immichfs.options import Settings, load_settings
from immichfs_fake import FakeImmich, FakeLibrary

#: a key that is easy to find anywhere it leaks
KEY = "fake-immich-key-LEAKCHECK-7f3a9c2e51d84b06a2c4e8f1"
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, budget=5.0)


class RawRecords(logging.Handler):
    """Every record, formatted with its traceback, WITHOUT the log scrubber."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def raw_log() -> Iterator[RawRecords]:
    handler = RawRecords()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def exception_text(exc: BaseException) -> str:
    """Everything a user could see of an exception: message, repr, full traceback."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# -- the key in logs and exceptions, connector level ---------------------------------


@pytest.mark.expect_log(r"; try \d+ of at most", logger="immichfs.client.retry")
async def test_a_debug_session_never_shows_the_key(
    fake_library: FakeLibrary, raw_log: RawRecords, tmp_path: Path
) -> None:
    seen: list[BaseException] = []

    async def expect(exc_type: type[BaseException], call: Any) -> None:
        with pytest.raises(exc_type) as info:
            await call()
        seen.append(info.value)

    photo = fake_library.find("Kinkaku-ji.jpg")
    with (
        FakeImmich(fake_library, api_key=KEY) as server,
        FakeImmich(fake_library, permissions=["asset.read", "asset.view"]) as narrow,
    ):
        path = f"/api/assets/{photo.id}/original"
        async with ImmichConnector(server.url, KEY, retry_policy=FAST, timeout=0.5) as immich:
            # a session's worth of successful calls
            await immich.test_connection()
            assert (await immich.get_asset_statistics())["total"] > 0
            assert await immich.get_assets(size=10)
            info = await immich.get_asset_info(photo.id)
            assert info["id"] == photo.id
            await immich.get_thumbnail_response(photo.id, "preview")
            assert await immich.head_original(photo.id) == len(fake_library.content(photo.id))
            async with immich.stream_full_resolution_file(photo.id, 100, 1099) as chunks:
                assert len(b"".join([c async for c in chunks])) == 1000
            await immich.get_albums()
            await immich.get_people()
            await immich.get_tags()
            await immich.search_assets("Kinkaku")
            # faults that are retried (and logged at rising levels)
            server.faults.fail(503, times=3, path="/api/assets/statistics")
            server.faults.fail(429, times=1, retry_after=1, path="/api/assets/statistics")
            await immich.get_asset_statistics()
            server.faults.truncate(times=1, path="/api/search/metadata")
            await immich.get_assets(size=5)
            # failures that reach the caller
            await expect(errors.NotFound, lambda: immich.get_asset_info(photo.id[:-1] + "0"))
            server.faults.fail(500, times=1, path="/api/tags")
            await expect(errors.ServerError, immich.get_tags)
            server.faults.delay(2, times=10, path="/api/albums")
            await expect(errors.RequestTimeout, immich.get_albums)
            server.faults.clear()
            server.faults.cut_after(500, path=path)
            await expect(errors.TruncatedBody, lambda: immich.get_full_resolution_file(photo.id))
            server.faults.ignore_range(path=path)

            async def ranged() -> None:
                async with immich.stream_full_resolution_file(photo.id, 10, 20) as chunks:
                    async for _ in chunks:
                        pass

            await expect(errors.ProtocolError, ranged)
            server.faults.clear()
            server.faults.revoke_key()
            await expect(errors.AuthenticationError, immich.get_tags)
            server.faults.restore_key()
            server.faults.refuse_connections()
            await expect(errors.ConnectError, immich.get_tags)
            server.faults.resume_connections()
            for text in (repr(immich), str(immich)):
                assert KEY not in text
        # a wrong key, and a key without asset.download
        async with ImmichConnector(server.url, KEY[::-1], retry_policy=None) as wrong:
            await expect(errors.AuthenticationError, wrong.test_connection)
        async with ImmichConnector(narrow.url, narrow.api_key) as limited:
            await expect(
                errors.PermissionDenied, lambda: limited.get_full_resolution_file(photo.id)
            )
            assert isinstance(seen[-1], errors.PermissionDenied)
            assert seen[-1].permission == "asset.download"
            assert "asset.download" in str(seen[-1])
            assert narrow.api_key not in exception_text(seen[-1])

    log_text = "\n".join(raw_log.lines)
    # the session really was logged at debug level, HTTP traces included
    assert "GET /api/assets/statistics" in log_text
    assert any(line.startswith("DEBUG httpcore") for line in raw_log.lines)
    assert any(line.startswith("WARNING immichfs.client.retry") for line in raw_log.lines)
    assert KEY not in log_text
    assert KEY[::-1] not in log_text
    assert len(seen) == 9
    for exc in seen:
        assert KEY not in exception_text(exc)
        assert KEY[::-1] not in exception_text(exc)


async def test_the_key_goes_only_to_the_servers_origin(fake_library: FakeLibrary) -> None:
    """A redirect to another host (a thumbnail 302 elsewhere) goes without the key."""
    import httpx

    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[str(request.url.host)] = request.headers.get("x-api-key")
        if request.url.path == "/api/server/version":
            return httpx.Response(200, json={"major": 2, "minor": 7, "patch": 5})
        if request.url.host == "immich.local":
            return httpx.Response(302, headers={"Location": "http://elsewhere.example/x.jpg"})
        return httpx.Response(200, content=b"\xff\xd8", headers={"Content-Type": "image/jpeg"})

    transport = httpx.MockTransport(handler)
    async with ImmichConnector("http://immich.local", KEY, transport=transport) as immich:
        await immich.get_thumbnail_response("a" * 8, "fullsize")
    assert seen == {"immich.local": KEY, "elsewhere.example": None}


# -- key files --------------------------------------------------------------------------


@pytest.mark.expect_log("is readable by group or others", logger="immichfs.client.http")
@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
def test_a_key_file_others_can_read_gets_a_warning(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "immich.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(mode)
    caplog.set_level(logging.WARNING)
    assert read_key_file(key_file) == KEY
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "chmod 600" in warnings[0].getMessage()
    assert KEY not in caplog.text
    # and through the settings, as the CLI reads it
    caplog.clear()
    settings = load_settings({}, env={"IMMICH_API_KEY_FILE": str(key_file)})
    assert settings.api_key == KEY
    assert any("readable by group or others" in r.getMessage() for r in caplog.records)
    assert KEY not in repr(settings)


def test_a_private_key_file_gets_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "immich.key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    assert read_key_file(key_file) == KEY
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_cli_warns_about_a_readable_key_file(fake_library: FakeLibrary, tmp_path: Path) -> None:
    key_file = tmp_path / "immich.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    with FakeImmich(fake_library, api_key=KEY) as server:
        env = clean_env(IMMICH_URL=server.url, IMMICH_API_KEY_FILE=str(key_file))
        result = subprocess.run(
            [sys.executable, "-m", "immichfs", "check"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "readable by group or others" in result.stderr and "chmod 600" in result.stderr
    assert KEY not in result.stdout + result.stderr


def test_the_key_is_refused_as_a_command_line_flag() -> None:
    from immichfs.cli import main

    with pytest.raises(SystemExit) as info:
        main(["check", "--api-key", KEY])
    assert info.value.code == 2


# -- the fake server stays on loopback ----------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_the_fake_server_refuses_non_loopback_binds(fake_library: FakeLibrary, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeImmich(fake_library, host=host)


def test_the_fake_server_listens_on_loopback_only(fake_library: FakeLibrary) -> None:
    with FakeImmich(fake_library) as server:
        assert server.url.startswith("http://127.0.0.1:")
        # nothing answers on the machine's other addresses
        for family, _, _, _, address in socket.getaddrinfo(socket.gethostname(), server.port):
            if str(address[0]).startswith("127.") or address[0] == "::1":
                continue
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(2)
                assert probe.connect_ex(address[:2]) != 0


# -- TLS ---------------------------------------------------------------------------------


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA, a server certificate for 127.0.0.1 it signed, and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=immichfs {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=d,
    )  # fmt: skip
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
        cwd=d,
    )  # fmt: skip
    return Certificates(d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")


@pytest.fixture
def tls_immich(fake_library: FakeLibrary, certificates: Certificates) -> Iterator[Proxy]:
    """TLS on a loopback port in front of the (plain HTTP) fake server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.cert, certificates.key)
    with FakeImmich(fake_library, api_key=KEY) as server, Proxy(server.port, tls=context) as p:
        yield p


async def test_tls_default_verification_fails_clearly(
    tls_immich: Proxy, raw_log: RawRecords
) -> None:
    async with ImmichConnector(tls_immich.url, KEY, retry_policy=DEFAULT_RETRY_POLICY) as immich:
        with pytest.raises(errors.ImmichError) as info:
            await immich.get_asset_statistics()
    message = str(info.value)
    assert "certificate" in message and "not trusted" in message
    assert "--ca-cert" in message and "--insecure" in message
    # the same certificate fails the same way every time: no retries
    assert not isinstance(info.value, errors.TransientError)
    assert tls_immich.handshakes == 1
    assert KEY not in exception_text(info.value)
    assert KEY not in "\n".join(raw_log.lines)


async def test_tls_with_the_ca_file_works(tls_immich: Proxy, certificates: Certificates) -> None:
    async with ImmichConnector(tls_immich.url, KEY, verify=str(certificates.ca)) as immich:
        assert (await immich.get_asset_statistics())["total"] > 0
    async with ImmichConnector(tls_immich.url, KEY, verify=str(certificates.other_ca)) as immich:
        with pytest.raises(errors.ImmichError, match="not trusted"):
            await immich.get_asset_statistics()


async def test_tls_insecure_works_only_when_asked(tls_immich: Proxy) -> None:
    async with ImmichConnector(tls_immich.url, KEY, verify=False) as immich:
        assert (await immich.get_asset_statistics())["total"] > 0
    # settings: verification is on unless --insecure / IMMICH_INSECURE says otherwise
    assert Settings().verify is True
    assert load_settings({}, env={}).verify is True
    assert load_settings({}, env={"IMMICH_INSECURE": "0"}).verify is True
    assert load_settings({}, env={"IMMICH_INSECURE": "1"}).verify is False
    assert load_settings({"insecure": True}, env={}).verify is False
    assert load_settings({}, env={"IMMICH_CA_CERT": "/etc/ca.pem"}).verify == "/etc/ca.pem"


async def test_tls_on_the_byte_path(tls_immich: Proxy, certificates: Certificates) -> None:
    """The mount's ranged-GET client honours the same three choices."""
    from immichfs.client.config import ClientConfig
    from immichfs.client.originals import RangeGetClient

    async with ImmichConnector(tls_immich.url, KEY, verify=str(certificates.ca)) as immich:
        photo = (await immich.get_assets(size=1))[0]
    size = int(photo["exifInfo"]["fileSizeInByte"])
    for verify, works in ((True, False), (str(certificates.ca), True), (False, True)):
        client = RangeGetClient(ClientConfig.create(tls_immich.url, KEY, verify=verify, timeout=5))
        try:
            if works:
                async with client(photo["id"], 0, min(size, 1000) - 1) as chunks:
                    data = b"".join([c async for c in chunks])
                assert len(data) == min(size, 1000)
            else:
                with pytest.raises(errors.ImmichError) as info:
                    async with client(photo["id"], 0, 99) as chunks:
                        async for _ in chunks:
                            pass
                assert "certif" in str(info.value).lower()
                assert KEY not in exception_text(info.value)
        finally:
            await client.aclose()


# -- a real mount at debug level ------------------------------------------------------------


def _proc_text(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def test_a_debug_mount_session_never_shows_the_key(
    fake_library: FakeLibrary, tmp_path: Path
) -> None:
    key_file = tmp_path / "immich.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    log_file = tmp_path / "debug.log"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    photo = fake_library.find("Kinkaku-ji.jpg")
    with FakeImmich(fake_library, api_key=KEY) as server:
        env = {
            "IMMICH_URL": server.url,
            "IMMICH_API_KEY_FILE": str(key_file),
            "IMMICHFS_RETRY_BUDGET": "3",
            "IMMICHFS_TIMEOUT": "2",
        }
        process = MountProcess(
            mountpoint, env, ["--debug", "--log-file", str(log_file)], tmp_path / "out.log"
        )
        try:
            process.wait_mounted()
            pid = process.process.pid
            for name in ("cmdline", "environ"):
                assert KEY not in _proc_text(pid, name)
            # nor any other process's command line (fusermount3, helpers): what `ps` shows
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        assert KEY not in _proc_text(int(proc.name), "cmdline")
            options = next(
                line.split()[3]
                for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[1] == str(mountpoint)
            ).split(",")
            assert "default_permissions" in options and "allow_other" not in options
            names = os.listdir(mountpoint / "photos")
            assert photo.original_file_name in names
            data = (mountpoint / "photos" / photo.original_file_name).read_bytes()
            assert hashlib.sha1(data).hexdigest() == fake_library.sha1(photo.id)
            with pytest.raises(FileNotFoundError):
                (mountpoint / "photos" / "no such photo.jpg").stat()
            # transient faults (retried), then a revoked key (refused)
            server.faults.fail(503, times=2, path=f"/api/assets/{photo.id}/original")
            with open(mountpoint / "photos" / photo.original_file_name, "rb", buffering=0) as f:
                f.seek(1000)
                assert f.read(100) == data[1000:1100]
            os.listdir(mountpoint / "videos")
            server.faults.revoke_key()
            with pytest.raises(OSError) as info:
                os.listdir(mountpoint / "search" / "Kinkaku")
            assert info.value.errno == errno.EACCES
            server.faults.restore_key()
            code = process.unmount()
            assert code == (0, 0)
        finally:
            process.cleanup()
    debug_log = log_file.read_text(errors="replace")
    assert " DEBUG " in debug_log and "/api/" in debug_log  # it really logged HTTP traces
    assert KEY not in debug_log
    assert KEY not in process.log_path.read_text(errors="replace")  # stdout and stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_tls_mount_checks_the_certificate(
    tls_immich: Proxy, certificates: Certificates, fake_library: FakeLibrary, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = clean_env(IMMICH_URL=tls_immich.url, IMMICH_API_KEY=KEY)
    # an untrusted certificate: one clear line, nothing mounted
    result = subprocess.run(
        [sys.executable, "-m", "immichfs", "mount", "--foreground", str(mountpoint)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not trusted" in lines[0] and "--ca-cert" in lines[0]
    assert KEY not in result.stderr + result.stdout
    assert not os.path.ismount(mountpoint)
    # --ca-cert, and --insecure: mounted, and the byte path reads over TLS too
    photo = fake_library.find("Kinkaku-ji.jpg")
    for extra in (["--ca-cert", str(certificates.ca)], ["--insecure"]):
        process = MountProcess(
            mountpoint, {"IMMICH_URL": tls_immich.url, "IMMICH_API_KEY": KEY}, extra,
            tmp_path / "mount.log",
        )  # fmt: skip
        try:
            process.wait_mounted()
            data = (mountpoint / "photos" / photo.original_file_name).read_bytes()
            assert hashlib.sha1(data).hexdigest() == fake_library.sha1(photo.id)
            assert process.unmount() == (0, 0)
        finally:
            process.cleanup()
