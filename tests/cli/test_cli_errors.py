"""One-line errors: the capability check, and errors raised inside trio nurseries."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from immichfs import cli
from immichfs.cli import check, preflight
from immichfs.errors import AuthenticationError, UserError

# /proc/self/status of podman's default capability set, and with --cap-add SYS_ADMIN
WITHOUT = "Name:\tsh\nCapInh:\t0000000000000000\nCapBnd:\t00000000800405fb\n"
WITH = "Name:\tsh\nCapInh:\t0000000000000000\nCapBnd:\t00000000802425fb\n"


def status_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "status"
    path.write_text(text)
    return path


def test_capability_present_passes(tmp_path: Path) -> None:
    preflight.check_capability(container=True, status=status_file(tmp_path, WITH))


def test_capability_missing_in_container_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--cap-add SYS_ADMIN"):
        preflight.check_capability(container=True, status=status_file(tmp_path, WITHOUT))


def test_capability_missing_on_host_says_what_dropped_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="bounding set"):
        preflight.check_capability(container=False, status=status_file(tmp_path, WITHOUT))


def test_capability_unknown_is_left_to_the_mount(tmp_path: Path) -> None:
    preflight.check_capability(container=True, status=tmp_path / "absent")
    preflight.check_capability(container=True, status=status_file(tmp_path, "Name:\tsh\n"))


def test_this_process_can_mount() -> None:
    # the test suite mounts FUSE as root: the real /proc/self/status passes
    preflight.check_capability(container=False)


@pytest.mark.parametrize(
    "raised",
    [
        UserError("cannot mount at /mnt (fuse_session_mount failed)"),
        ExceptionGroup("nursery", [UserError("cannot mount at /mnt (fuse_session_mount failed)")]),
        ExceptionGroup("outer", [ExceptionGroup("inner", [UserError("cannot mount at /mnt")])]),
    ],
    ids=["bare", "in-a-nursery", "in-two-nurseries"],
)
def test_user_error_in_a_nursery_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raised: Exception
) -> None:
    def run(args: argparse.Namespace) -> int:
        raise raised

    monkeypatch.setattr(check, "run", run)
    assert cli.main(["check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("immichfs check: cannot mount at /mnt")
    assert len(err.splitlines()) == 1


def test_other_immichfs_errors_in_a_nursery_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(args: argparse.Namespace) -> int:
        raise ExceptionGroup("nursery", [AuthenticationError("the API key was refused")])

    monkeypatch.setattr(check, "run", run)
    assert cli.main(["check"]) == 1
    assert capsys.readouterr().err == "immichfs check: the API key was refused\n"


def test_several_errors_stay_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    # two failures at once are a bug to report, not one line to show
    def run(args: argparse.Namespace) -> int:
        raise ExceptionGroup("nursery", [UserError("one"), UserError("two")])

    monkeypatch.setattr(check, "run", run)
    with pytest.raises(ExceptionGroup):
        cli.main(["check"])
