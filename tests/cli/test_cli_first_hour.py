"""What a new user meets first on the command line: help, a refused flag, no server set.

Each runs ``immichfs`` as a subprocess, as a person types it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def immichfs(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMMICH")}
    clean["HOME"] = "/nonexistent"  # no ~/.config/immichfs/config.toml from the machine
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "immichfs", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("command", ["mount", "check", "serve"])
def test_help_names_the_usual_key_variable_and_the_file(command: str) -> None:
    result = immichfs(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    assert "$IMMICH_API_KEY (the usual way)" in text
    assert "IMMICH_API_KEY_FILE" in text


@pytest.mark.parametrize("argv", [["--api-key", "foo"], ["--api-key=foo"], ["--api-key"]])
def test_api_key_flag_is_one_sentence_and_exit_2(argv: list[str]) -> None:
    result = immichfs("mount", *argv, "/mnt/immich")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "immichfs mount: --api-key is not accepted: command lines are visible in `ps`; "
        "use $IMMICH_API_KEY (the usual way), or a file: --api-key-file / "
        "$IMMICH_API_KEY_FILE\n"
    )
    assert "foo" not in result.stderr


def test_no_url_suggests_the_demo_mount(tmp_path: os.PathLike[str]) -> None:
    result = immichfs("mount", os.fspath(tmp_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("immichfs mount: IMMICH_URL is not set")
    assert "immichfs mount --demo MOUNTPOINT" in lines[0]


def test_an_unknown_command_is_still_an_argparse_error() -> None:
    # only SOURCE MOUNTPOINT -o ... is taken as mount.fuse3's call, not any typo
    result = immichfs("mout", "/mnt/immich")
    assert result.returncode == 2
    assert "invalid choice: 'mout'" in result.stderr
