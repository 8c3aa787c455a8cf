"""``immichfs check`` as a user runs it: the installed command against the fake server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mountutil import clean_env
from netutil import free_port

from immichfs_fake import FakeImmich, FakeLibrary

REPO = Path(__file__).resolve().parents[2]
IMMICHFS = Path(sys.executable).parent / "immichfs"


def run_check(
    url: str | None, key: str | None, *args: str, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    if url is not None:
        env["IMMICH_URL"] = url
    if key is not None:
        env["IMMICH_API_KEY"] = key
    env.update(extra)
    command = [str(IMMICHFS)] if IMMICHFS.exists() else [sys.executable, "-m", "immichfs"]
    return subprocess.run(
        [*command, "check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.parametrize("fake_immich", ["1.135.3", "2.7.5", "3.1.0"], indirect=True)
def test_check_passes_against_the_fake(fake_immich: FakeImmich) -> None:
    result = run_check(fake_immich.url, fake_immich.api_key)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    major, minor, patch = (int(x) for x in fake_immich.version.split("."))
    assert f"✓ connect: Immich v{major}.{minor}.{patch} at {fake_immich.url}" in out
    assert "✓ API key: accepted" in out
    assert "✓ statistics: " in out
    # the numbers printed are the server's: the owner's timeline and archive, not trashed
    lib = fake_immich.library
    mine = [
        a
        for a in lib.assets.values()
        if a.owner_id == lib.me.id and a.visibility in ("timeline", "archive") and not a.is_trashed
    ]
    images = sum(a.type == "IMAGE" for a in mine)
    videos = sum(a.type == "VIDEO" for a in mine)
    assert f"✓ statistics: {images} images, {videos} videos, {len(mine)} assets" in out
    for step in ("permissions", "list assets", "asset info", "thumbnail", "original"):
        assert f"✓ {step}: " in out
    assert "✓ original: first 1024 of " in out
    assert fake_immich.api_key not in out + result.stderr
    if (major, minor) < (1, 139):
        assert "not reported by this server" in out
    else:
        assert "✓ permissions: all" in out


def test_wrong_key_fails_with_one_line_and_no_key(fake_immich: FakeImmich) -> None:
    wrong = "fake-wrong-" + "Z" * 30
    result = run_check(fake_immich.url, wrong)
    assert result.returncode == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('immichfs check: step "API key" failed: the API key was rejected')
    assert "IMMICH_API_KEY" in lines[0]
    assert wrong not in result.stdout + result.stderr
    assert fake_immich.api_key not in result.stdout + result.stderr


def test_dead_url_fails_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_check(url, "fake-some-key-123456")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f'immichfs check: step "connect" failed: cannot reach {url} — ')
    assert "is the server running and the URL right?" in lines[0]
    assert "fake-some-key-123456" not in result.stdout + result.stderr
    assert result.stdout == ""


def test_missing_permission_names_the_step_and_permission(fake_library: FakeLibrary) -> None:
    permissions = ["asset.read", "asset.view", "asset.download"]
    with FakeImmich(fake_library, version="2.7.5", permissions=permissions) as srv:
        result = run_check(srv.url, srv.api_key)
    assert result.returncode == 5
    assert "✓ permissions: asset.download, asset.read, asset.view" in result.stdout
    assert "immichfs also needs: asset.statistics" in result.stdout
    assert result.stderr.strip() == (
        'immichfs check: step "statistics" failed: the key lacks permission asset.statistics'
        " — add it to the API key in Immich (Account Settings → API Keys)"
    )


def test_no_url_says_what_to_set() -> None:
    result = run_check(None, None)
    assert result.returncode == 2
    assert "set IMMICH_URL" in result.stderr
    assert "immichfs fake-server" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_malformed_url_and_key_are_named(tmp_path: Path) -> None:
    result = run_check("immich.local:2283", "fake-some-key-123456")
    assert result.returncode == 2
    assert "IMMICH_URL 'immich.local:2283' has no scheme" in result.stderr
    result = run_check("http://127.0.0.1:1", "fake-some key")
    assert result.returncode == 2
    assert "IMMICH_API_KEY contains whitespace" in result.stderr
    assert "fake-some key" not in result.stderr
    # the key may come from a file; its name is shown, never its content
    key_file = tmp_path / "key"
    key_file.write_text("fake-bad\nkey\n")
    key_file.chmod(0o600)
    result = run_check("http://127.0.0.1:1", None, IMMICH_API_KEY_FILE=str(key_file))
    assert result.returncode == 2
    assert str(key_file) in result.stderr
    assert "fake-bad" not in result.stderr


def test_key_file_and_debug_log_never_show_the_key(fake_immich: FakeImmich, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(fake_immich.api_key + "\n")
    key_file.chmod(0o600)
    log_file = tmp_path / "check.log"
    result = run_check(
        fake_immich.url + "/api/",  # as pasted from the API docs
        None,
        "--debug",
        "--log-file",
        str(log_file),
        IMMICH_API_KEY_FILE=str(key_file),
    )
    assert result.returncode == 0, result.stderr
    log_text = log_file.read_text()
    assert "/api/assets/statistics" in log_text  # the debug log did record requests
    assert fake_immich.api_key not in log_text + result.stdout + result.stderr


def test_old_server_is_refused(fake_library: FakeLibrary) -> None:
    try:
        srv = FakeImmich(fake_library, version="1.123.0")
    except (ValueError, KeyError) as exc:
        pytest.skip(f"the fake does not emulate v1.123: {exc}")
    with srv:
        result = run_check(srv.url, srv.api_key)
    assert result.returncode == 6
    assert result.stderr.strip() == (
        'immichfs check: step "connect" failed: '
        "Immich v1.123.0 is too old: immichfs needs v1.135 or newer"
    )


@pytest.mark.parametrize("version", ["2.7.5", "3.2.0"])
def test_asset_file_permissions_are_asked_for_from_32(
    fake_library: FakeLibrary, version: str
) -> None:
    permissions = ["asset.read", "asset.view", "asset.download", "asset.statistics"]
    with FakeImmich(fake_library, version=version, permissions=permissions) as srv:
        result = run_check(srv.url, srv.api_key)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "permissions:" in x)
    if version == "3.2.0":
        assert "assetFile.read (without it --sidecars lists no NAME.xmp files)" in line
        assert "assetFile.download (without it --sidecars' NAME.xmp files answer" in line
    else:  # the server has no such permissions: a key cannot have them
        assert "assetFile" not in line
