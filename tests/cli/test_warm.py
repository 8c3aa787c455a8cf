"""``immichfs warm``: the walk itself, on a local tree (the mounted case is in test_ops_mount)."""

from __future__ import annotations

import argparse
from pathlib import Path

import deadmount
import pytest

from immichfs.cli import warm
from immichfs.fuse import kernel


def make_tree(root: Path) -> None:
    for directory in ("photos", "videos", "thumbs/preview", "thumbs/thumbnail", "search"):
        (root / directory).mkdir(parents=True)
    for i in range(30):
        (root / "photos" / f"IMG_{i:04}.jpg").write_bytes(b"p" * 10)
    (root / "videos" / "clip.mp4").write_bytes(b"v" * 10)
    for size, n in (("preview", 2000), ("thumbnail", 300)):
        for i in range(5):
            (root / "thumbs" / size / f"IMG_{i:04}.jpg").write_bytes(b"t" * n)


def test_counts_every_directory_and_file(tmp_path: Path) -> None:
    make_tree(tmp_path)
    result = warm.warm(tmp_path, jobs=3, progress=False)
    assert (result.directories, result.files, result.errors) == (7, 41, 0)
    assert result.thumbnail_bytes == 0


def test_reads_thumbnails_only_when_asked(tmp_path: Path) -> None:
    make_tree(tmp_path)
    result = warm.warm(tmp_path, thumbnails=True, jobs=2, progress=False)
    assert result.thumbnail_bytes == 5 * 2000 + 5 * 300
    # starting inside thumbs/ counts too
    inner = warm.warm(tmp_path / "thumbs" / "preview", thumbnails=True, progress=False)
    assert inner.thumbnail_bytes == 5 * 2000


@pytest.mark.expect_log(
    "cannot stat .*Transport endpoint is not connected", logger="immichfs.cli.warm"
)
@pytest.mark.fuse
def test_failing_entry_is_an_error_not_a_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path)
    # a crashed FUSE mount inside the tree: every access to it fails with ENOTCONN
    with deadmount.dead_fuse_mount(tmp_path / "videos" / "dead"):
        result = warm.warm(tmp_path, progress=False)
    assert result.errors == 1
    assert (result.directories, result.files) == (7, 41)
    assert f"cannot stat {tmp_path / 'videos' / 'dead'}" in caplog.text


@pytest.mark.expect_log("cannot list .*No such file", logger="immichfs.cli.warm")
def test_vanished_directory_is_counted_as_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = warm.warm(tmp_path / "gone", progress=False)
    assert (result.errors, result.directories) == (1, 0)
    assert "cannot list" in caplog.text


@pytest.mark.expect_log("is on a .* filesystem, not an immichfs mount", logger="immichfs.cli.warm")
def test_progress_bar_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tree(tmp_path)
    parser = argparse.ArgumentParser()
    warm.add_arguments(parser)
    assert warm.run(parser.parse_args([str(tmp_path), "--thumbnails"])) == 0
    out, err = capsys.readouterr()
    assert f"warming {tmp_path}" in err
    assert "48 entries" in err  # 7 directories + 41 files
    assert out.startswith(f"warmed {tmp_path}: 7 directories, 41 files, 0.0 MiB of thumbnails")


def test_mount_of_reads_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "90 22 0:50 / /mnt/my\\040photos rw,nosuid,nodev shared:40 - fuse.immichfs "
        "immichfs ro,user_id=0,group_id=0\n"
    )
    found = kernel.mount_of(Path("/mnt/my photos/photos/a.jpg"), mountinfo)
    assert found == kernel.MountEntry("/mnt/my photos", "fuse.immichfs", "0:50")
    assert kernel.mount_of(Path("/mnt/my"), mountinfo) == kernel.MountEntry("/", "ext4", "0:21")
    assert kernel.mount_at("/mnt/my photos", mountinfo) == found
    assert kernel.mount_at("/mnt", mountinfo) is None
