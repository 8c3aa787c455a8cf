"""A library processed on a real ``LocalCluster`` of 2 worker processes through ``immich://``.

The workers read the bytes over HTTP from the fake server (the request log
shows one GET per processed image), write ``OUTDIR/<asset id>.png`` and the
driver appends ``results.jsonl``. Reruns skip what is done; an upload or a
changed original is processed again, and only it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")
from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngImageFile  # noqa: E402

from immichfs.dask import job  # noqa: E402
from immichfs.dask.images import CHECKSUM_CHUNK, ID_CHUNK  # noqa: E402
from immichfs.fsspec import ImmichFileSystem  # noqa: E402
from immichfs.fsspec.loop import close_all  # noqa: E402
from immichfs_fake import FakeImmich, FakeLibrary  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "depth_with_dask.py"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes, one thread each (as ``--workers 2`` starts them)."""
    with (
        # the dashboard on a free port: None means the default 8787, taken on a shared machine
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture
def library() -> Iterator[FakeLibrary]:
    lib = FakeLibrary.generate(seed=5, photos=16, videos=2, large_video_bytes=None, extra=False)
    yield lib
    lib.close()


@pytest.fixture
def server(library: FakeLibrary) -> Iterator[FakeImmich]:
    with FakeImmich(library) as srv:
        yield srv
    ImmichFileSystem.clear_instance_cache()
    close_all()


@pytest.fixture
def fs(server: FakeImmich, tmp_path: Path) -> ImmichFileSystem:
    key_file = tmp_path / "immich.key"
    key_file.write_text(server.api_key)
    key_file.chmod(0o600)
    # what travels to the workers: the URL and the key file's path, never the key
    return ImmichFileSystem(url=server.url, api_key_file=str(key_file))


def _photos(library: FakeLibrary) -> dict[str, Any]:
    return {
        a.id: a
        for a in library.assets.values()
        if a.type == "IMAGE" and a.visibility == "timeline" and not a.is_trashed
    }


async def _range_requests(tree: Any) -> int:
    return int(tree.readers.statistics()["range_requests"])


def _checksum(library: FakeLibrary, asset_id: str) -> str:
    return library.checksum(asset_id)


@pytest.mark.expect_log(
    "not really a photo.jpg: decode: UnidentifiedImageError", logger="immichfs.dask.job"
)
def test_a_library_is_processed_on_two_workers_then_only_what_changed(
    client: Any, fs: ImmichFileSystem, server: FakeImmich, library: FakeLibrary, tmp_path: Path
) -> None:
    outdir = tmp_path / "out"
    photos = _photos(library)
    assert len(photos) >= 10

    server.reset_log()
    first = job.run(fs, "photos", outdir, client)
    assert (first.processed, first.skipped, first.failed) == (len(photos), 0, 0)
    # each worker read its images itself, one whole-file GET each
    gets = server.requests.select("GET", "/api/assets/")
    assert sorted(r.path for r in gets) == sorted(f"/api/assets/{i}/original" for i in photos)
    # ... in the worker processes: this one's filesystem only listed
    assert fs._session().run(_range_requests) == 0
    for asset_id, asset in photos.items():
        with Image.open(outdir / f"{asset_id}.png") as made:
            assert isinstance(made, PngImageFile)
            assert made.mode == "L" and made.size == (asset.width, asset.height)
            assert made.text[ID_CHUNK] == asset_id
            assert made.text[CHECKSUM_CHUNK] == _checksum(library, asset_id)
            assert made.getextrema()[1] == 255  # normalised: the strongest edge is white
    lines = list(job.read_results(outdir))
    assert {line["id"] for line in lines} == set(photos)
    for line in lines:
        assert line["checksum"] == _checksum(library, line["id"])
        assert line["path"].startswith("photos/") and line["seconds"] >= 0
        assert line["status"] == "processed"

    server.reset_log()
    second = job.run(fs, "photos", outdir, client)
    assert (second.processed, second.skipped, second.failed) == (0, len(photos), 0)
    assert not server.requests.select("GET", "/api/assets/")

    added = library.add_asset("new upload.jpg", kind="jpeg", size=50_000)
    changed = library.change_content(sorted(photos)[0])
    broken = library.add_asset("not really a photo.jpg", kind="mp4", size=80_000)
    broken.type = "IMAGE"  # an image whose bytes do not decode
    third = job.run(fs, "photos", outdir, client)
    assert (third.processed, third.skipped, third.failed) == (2, len(photos) - 1, 1)
    newest = list(job.read_results(outdir))[len(lines) :]
    assert {line["id"] for line in newest} == {added.id, changed.id, broken.id}
    failure = next(line for line in newest if line["id"] == broken.id)
    assert failure["status"] == "failed" and failure["reason"].startswith("decode:")
    assert not (outdir / f"{broken.id}.png").exists()
    with Image.open(outdir / f"{changed.id}.png") as made:
        assert isinstance(made, PngImageFile)
        assert made.text[CHECKSUM_CHUNK] == _checksum(library, changed.id)


@pytest.mark.slow  # a Python process that imports Dask and runs the job: some 7 s
def test_the_example_prints_one_summary_line(
    client: Any, server: FakeImmich, library: FakeLibrary, tmp_path: Path
) -> None:
    key_file = tmp_path / "immich.key"
    key_file.write_text(server.api_key)
    key_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMMICH")}
    # the workers of this cluster know no server: URL and key file travel with the job
    env.update(IMMICH_URL=server.url, IMMICH_API_KEY_FILE=str(key_file))
    outdir = tmp_path / "depth"
    command = [sys.executable, str(EXAMPLE), "photos", str(outdir)]
    result = subprocess.run(
        [*command, "--scheduler", client.scheduler.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary.keys() == {"processed", "skipped", "failed", "seconds"}
    photos = _photos(library)
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (len(photos), 0, 0)
    assert server.api_key not in result.stdout + result.stderr
    one = next(iter(photos))
    digest = base64.b64encode(hashlib.sha1(library.content(one)).digest()).decode()
    with Image.open(outdir / f"{one}.png") as made:
        assert isinstance(made, PngImageFile)
        assert made.text[CHECKSUM_CHUNK] == digest


def test_the_example_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMMICH")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "photos", str(tmp_path / "out"), "--workers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "depth_with_dask: immich:// needs the server: set IMMICH_URL or pass url= "
        "(e.g. http://immich.local:2283)"
    ]


def test_a_view_that_does_not_exist_is_an_error(
    client: Any, fs: ImmichFileSystem, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory of the tree"):
        job.run(fs, "photoz", tmp_path / "out", client)
    with pytest.raises(FileNotFoundError):
        job.run(fs, fs.ls("photos", detail=False)[0], tmp_path / "out", client)
    assert not (tmp_path / "out").exists()
