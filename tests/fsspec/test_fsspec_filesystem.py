"""``immich://`` against the fake server: listings, reads, settings, pickling, secrecy.

What the filesystem shows is checked against the fake library itself (sizes,
checksums, bytes, times); the request log checks what went over the wire.
"""

from __future__ import annotations

import ast
import base64
import errno
import fnmatch
import hashlib
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import fsspec
import pytest
from mountutil import VIEWS

from immichfs.errors import ConfigError
from immichfs.fsspec import ImmichFileSystem
from immichfs.fsspec.loop import close_all


def _checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def _path_of(fs: ImmichFileSystem, view: str, asset_id: str) -> str:
    return str(next(p for p, e in fs.find(view, detail=True).items() if e["asset_id"] == asset_id))


def _large(fake_immich: Any) -> Any:
    library = fake_immich.library
    return max(library.assets.values(), key=lambda a: a.size)


# -- registration and the one-liner -----------------------------------------------------


def test_the_protocol_is_registered_through_the_entry_point() -> None:
    assert fsspec.get_filesystem_class("immich") is ImmichFileSystem


def test_the_readme_one_liner_lists_photos_from_the_environment(fake_immich: Any) -> None:
    env = {**os.environ, "IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key}
    code = "import fsspec; print(fsspec.filesystem('immich').ls('photos')[:3])"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    listed = ast.literal_eval(result.stdout)  # a list of fsspec info dicts, as printed
    assert len(listed) == 3
    assert all(entry["name"].startswith("photos/") and entry["type"] == "file" for entry in listed)
    assert fake_immich.api_key not in result.stdout + result.stderr


# -- listings ------------------------------------------------------------------------


def test_ls_detail_shows_each_asset_as_the_library_has_it(
    immich_fs: ImmichFileSystem, fake_immich: Any
) -> None:
    library = fake_immich.library
    entries = immich_fs.ls("photos", detail=True)
    assert len(entries) > 50
    for entry in entries:
        asset = library.get(entry["asset_id"])
        assert asset is not None and asset.kind != "mp4"
        assert entry["type"] == "file"
        assert entry["name"].startswith("photos/")
        assert entry["size"] == asset.size
        assert entry["checksum"] == library.checksum(asset.id)
        assert entry["mtime"] == asset.file_modified_at.timestamp()
    names = immich_fs.ls("immich://photos/", detail=False)
    assert names == [entry["name"] for entry in entries]


def test_root_lists_the_views(immich_fs: ImmichFileSystem) -> None:
    assert set(immich_fs.ls("", detail=False)) == VIEWS
    assert immich_fs.info("")["type"] == "directory"


def test_info_names_the_asset_and_its_checksum(
    immich_fs: ImmichFileSystem, fake_immich: Any
) -> None:
    path = immich_fs.ls("videos", detail=False)[0]
    info = immich_fs.info(f"immich://{path}")
    asset = fake_immich.library.get(info["asset_id"])
    assert info["name"] == path
    assert info["asset_type"] == "VIDEO"
    assert info["checksum"] == fake_immich.library.checksum(asset.id)
    assert immich_fs.ukey(path) == info["checksum"]
    assert immich_fs.modified(path) == asset.file_modified_at
    assert immich_fs.xattrs(path)["user.immich.id"] == asset.id.encode()
    assert immich_fs.isfile(path) and not immich_fs.isdir(path)
    assert immich_fs.isdir("albums")


def test_missing_paths_are_file_not_found(immich_fs: ImmichFileSystem) -> None:
    assert not immich_fs.exists("photos/no such photo.jpg")
    assert not immich_fs.exists("nowhere/at/all")
    assert immich_fs.exists("photos")
    with pytest.raises(FileNotFoundError):
        immich_fs.info("photos/no such photo.jpg")
    with pytest.raises(FileNotFoundError):
        immich_fs.cat_file("albums/no such album/x.jpg")
    path = immich_fs.ls("photos", detail=False)[0]
    with pytest.raises(FileNotFoundError):
        immich_fs.ls(f"{path}/inside")


def test_find_walk_and_glob_follow_fsspec_conventions(immich_fs: ImmichFileSystem) -> None:
    found = immich_fs.find("tags", detail=True)
    assert found and all(entry["type"] == "file" for entry in found.values())
    walked: dict[str, list[str]] = {}
    for root, dirs, files in immich_fs.walk("tags"):
        walked[root] = sorted(dirs)
        for name in files:
            assert f"{root}/{name}" in found
    assert walked["tags/Travel"] == ["France", "Japan"]
    assert walked["tags/Travel/Japan"] == ["Kyoto"]
    assert sum(len(immich_fs.ls(root, detail=False)) for root in walked) == len(found) + sum(
        len(dirs) for dirs in walked.values()
    )
    assert set(immich_fs.find("tags", withdirs=True)) >= {"tags/Travel/Japan/Kyoto"}
    assert immich_fs.find("tags", maxdepth=1) == []  # no file sits directly in /tags

    names = immich_fs.ls("photos", detail=False)
    expected = sorted(n for n in names if fnmatch.fnmatch(n, "photos/IMG_*.JPG"))
    assert expected and immich_fs.glob("immich://photos/IMG_*.JPG") == expected
    assert immich_fs.glob("tags/Travel/*/") == ["tags/Travel/France", "tags/Travel/Japan"]
    assert immich_fs.glob("tags/**/Kyoto") == ["tags/Travel/Japan/Kyoto"]


def test_search_is_a_directory_made_by_looking_it_up(immich_fs: ImmichFileSystem) -> None:
    hits = immich_fs.ls("search/IMG_00", detail=True)
    assert hits and all("IMG_00" in entry["name"].split("/")[-1] for entry in hits)
    assert "search/IMG_00" in immich_fs.ls("search", detail=False)


# -- reads -------------------------------------------------------------------------------


def test_a_ranged_cat_file_is_one_ranged_get_of_those_bytes(
    immich_fs: ImmichFileSystem, fake_immich: Any
) -> None:
    asset = _large(fake_immich)
    path = _path_of(immich_fs, "videos", asset.id)
    content = fake_immich.library.content(asset.id)
    for start, end, first, last in [
        (0, 100, 0, 99),
        (5_000_000, 5_000_000 + 4096, 5_000_000, 5_000_000 + 4095),
        (-1000, None, asset.size - 1000, asset.size - 1),
    ]:
        fake_immich.reset_log()
        data = immich_fs.cat_file(path, start, end)
        assert data == content[first : last + 1]
        gets = fake_immich.requests.select("GET", "/api/assets/")
        assert [(r.path, r.range) for r in gets] == [
            (f"/api/assets/{asset.id}/original", f"bytes={first}-{last}")
        ]
        assert fake_immich.bytes_sent("/api/assets/") == last + 1 - first
    fake_immich.reset_log()
    assert immich_fs.cat_file(path, 10, 10) == b""
    assert immich_fs.cat_file(path, asset.size, asset.size + 10) == b""
    assert not fake_immich.requests.select("GET", "/api/assets/")


def test_every_photo_reads_byte_exact(immich_fs: ImmichFileSystem) -> None:
    entries = immich_fs.ls("photos")
    for entry in entries:
        assert _checksum(immich_fs.cat_file(entry["name"])) == entry["checksum"], entry["name"]
    contents = immich_fs.cat([e["name"] for e in entries[:5]])
    assert [_checksum(contents[e["name"]]) for e in entries[:5]] == [
        e["checksum"] for e in entries[:5]
    ]


def test_open_is_seekable_and_reads_ahead(immich_fs: ImmichFileSystem, fake_immich: Any) -> None:
    asset = _large(fake_immich)
    path = _path_of(immich_fs, "videos", asset.id)
    content = fake_immich.library.content(asset.id)
    fake_immich.reset_log()
    digest = hashlib.sha1()
    reads = 0
    with fsspec.open(
        f"immich://{path}",
        "rb",
        url=immich_fs.url,
        api_key_file=str(immich_fs.settings.api_key_file),
    ) as handle:
        assert handle.seekable() and handle.size == asset.size
        while chunk := handle.read(256 * 1024):
            digest.update(chunk)
            reads += 1
        assert digest.hexdigest() == fake_immich.library.sha1(asset.id)
        gets = fake_immich.count("GET", f"/api/assets/{asset.id}/original")
        # the reader fetches windows that grow ahead of the reads: far fewer requests
        assert reads == -(-asset.size // (256 * 1024))
        assert 0 < gets < asset.size // (1024 * 1024)
        handle.seek(3_000_001)
        assert handle.read(5000) == content[3_000_001:3_005_001]
        handle.seek(-10, os.SEEK_END)
        assert handle.read() == content[-10:]
        assert handle.tell() == asset.size


def test_thumbnails_and_manifests_read_as_on_the_mount(
    immich_fs: ImmichFileSystem, fake_immich: Any
) -> None:
    thumbnail = immich_fs.ls("thumbs/preview")[0]
    data = immich_fs.cat_file(thumbnail["name"])
    assert len(data) == thumbnail["size"] > 0
    assert data[:2] == b"\xff\xd8"  # a JPEG preview
    manifest = immich_fs.cat_file("favorites/.manifest.jsonl").decode().splitlines()
    assert len(manifest) == len(immich_fs.ls("favorites", detail=False))


def test_get_copies_a_view_into_a_local_directory(
    immich_fs: ImmichFileSystem, tmp_path: Path
) -> None:
    target = tmp_path / "copy"
    immich_fs.get("tags/Travel/Japan", str(target), recursive=True)
    remote = immich_fs.find("tags/Travel/Japan", detail=True)
    local = {p.relative_to(target).as_posix(): p for p in target.rglob("*") if p.is_file()}
    assert set(local) == {path.removeprefix("tags/Travel/Japan/") for path in remote}
    for path, entry in remote.items():
        assert (
            _checksum(local[path.removeprefix("tags/Travel/Japan/")].read_bytes())
            == (entry["checksum"])
        )
    one = next(iter(remote))
    immich_fs.get(one, str(tmp_path / "single.jpg"))
    assert _checksum((tmp_path / "single.jpg").read_bytes()) == remote[one]["checksum"]


def test_it_is_read_only(immich_fs: ImmichFileSystem, tmp_path: Path) -> None:
    path = immich_fs.ls("photos", detail=False)[0]
    for attempt in (
        lambda: immich_fs.open(path, "wb"),
        lambda: immich_fs.rm(path),
        lambda: immich_fs.mkdir("photos/new"),
        lambda: immich_fs.pipe_file("photos/new.jpg", b"x"),
        lambda: immich_fs.touch("photos/new.jpg"),
        lambda: immich_fs.mv(path, "photos/renamed.jpg"),
    ):
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS
    assert immich_fs.exists(path)


# -- settings --------------------------------------------------------------------------------


def test_settings_come_from_the_environment_the_config_file_and_arguments(
    fake_immich: Any, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'url = "{fake_immich.url}"\napi_key_file = "{key_file}"\nlisting_ttl = 3.5\n'
    )
    from_file = ImmichFileSystem(config=str(config))
    assert from_file.settings.listing_ttl == 3.5
    assert from_file.ls("albums", detail=False)

    monkeypatch.setenv("IMMICH_URL", fake_immich.url)
    monkeypatch.setenv("IMMICH_API_KEY", "wrong-key-from-the-environment")
    monkeypatch.setenv("IMMICHFS_LISTING_TTL", "7")
    # an argument wins over the environment, and a key file argument over an env key
    given = ImmichFileSystem(api_key_file=str(key_file), listing_ttl=1.5)
    assert given.settings.listing_ttl == 1.5
    assert given.settings.api_key == fake_immich.api_key
    assert given.ls("people", detail=False)
    from_env = ImmichFileSystem()
    assert from_env.settings.listing_ttl == 7
    with pytest.raises(PermissionError):
        from_env.ls("photos")


def test_missing_or_unknown_settings_fail_with_one_clear_message(fake_immich: Any) -> None:
    with pytest.raises(ConfigError, match="IMMICH_URL"):
        ImmichFileSystem()
    with pytest.raises(ConfigError, match="IMMICH_API_KEY"):
        ImmichFileSystem(url=fake_immich.url)
    with pytest.raises(ConfigError, match=r"unknown setting.*colour"):
        ImmichFileSystem(url=fake_immich.url, api_key_file="/nonexistent", colour="red")
    with pytest.raises(ConfigError, match="does not exist"):
        ImmichFileSystem(url=fake_immich.url, api_key_file="/nonexistent")


# -- the key, pickling, processes ---------------------------------------------------------------


def test_the_key_is_never_shown(
    fake_immich: Any,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = fake_immich.api_key
    caplog.set_level(logging.DEBUG)
    from_file = ImmichFileSystem(url=fake_immich.url, api_key_file=str(key_file))
    monkeypatch.setenv("IMMICH_URL", fake_immich.url)
    monkeypatch.setenv("IMMICH_API_KEY", key)
    from_env = ImmichFileSystem()
    for fs in (from_file, from_env):
        fs.ls("photos")
        for shown in (repr(fs), str(fs), repr(fs.settings), fs.to_json(), pickle.dumps(fs)):
            assert (key.encode() if isinstance(shown, bytes) else key) not in shown
    fake_immich.api_key = "a-different-key-now"  # the server no longer accepts ours
    with pytest.raises(PermissionError) as raised:
        from_env.ls("videos")
    text = "".join(
        str(e) + repr(e) for e in (raised.value, raised.value.__cause__) if e is not None
    )
    assert key not in text
    assert key not in caplog.text


def test_a_pickled_filesystem_works_again(immich_fs: ImmichFileSystem) -> None:
    path = immich_fs.ls("photos", detail=False)[3]
    copy = pickle.loads(pickle.dumps(immich_fs))
    assert copy.settings == immich_fs.settings
    assert copy.cat_file(path) == immich_fs.cat_file(path)


def _read_in_child(fs: ImmichFileSystem, path: str, queue: Any) -> None:
    queue.put(_checksum(fs.cat_file(path)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_process_reads_through_the_same_filesystem(
    immich_fs: ImmichFileSystem, method: str
) -> None:
    entry = immich_fs.ls("photos")[7]  # the loop thread runs in this process now
    context: Any = multiprocessing.get_context(method)  # a fork or spawn context
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(immich_fs, entry["name"], queue))
    child.start()
    try:
        assert queue.get(timeout=60) == entry["checksum"]
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert _checksum(immich_fs.cat_file(entry["name"])) == entry["checksum"]


def test_a_process_exits_with_files_still_open(fake_immich: Any, key_file: Path) -> None:
    # the garbage collector closes the file during shutdown, after the loop has ended:
    # that must not start a new loop (and wait for it forever)
    code = (
        "import sys\n"
        "from immichfs.fsspec import ImmichFileSystem\n"
        "fs = ImmichFileSystem(url=sys.argv[1], api_key_file=sys.argv[2])\n"
        "handle = fs.open(fs.ls('photos', detail=False)[0])\n"
        "print(len(handle.read(100)), flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, fake_immich.url, str(key_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "100\n", "")


def test_an_upload_is_seen_by_name_at_once_and_in_listings_after_invalidate_cache(
    mutable_immich: Any,
) -> None:
    library = mutable_immich.library
    fs = ImmichFileSystem(url=mutable_immich.url, api_key=mutable_immich.api_key)
    before = fs.ls("photos", detail=False)
    added = library.add_asset("just uploaded.jpg", kind="jpeg", size=40_000)
    # the cached listing is kept (listing_ttl) ...
    assert fs.ls("photos", detail=False) == before
    # ... but a name it lacks is looked for in a reloaded one: a path another process
    # listed just now opens here
    assert fs.info("photos/just uploaded.jpg")["asset_id"] == added.id
    assert not fs.exists("photos/never uploaded.jpg")
    changed = library.change_content(library.get(fs.info(before[0])["asset_id"]).id)
    fs.invalidate_cache()
    after = fs.ls("photos", detail=True)
    assert {e["name"] for e in after} == {*before, "photos/just uploaded.jpg"}
    assert next(e for e in after if e["asset_id"] == changed.id)["checksum"] == (
        library.checksum(changed.id)
    )


def test_a_file_closed_after_its_loop_ended_starts_no_loop(immich_fs: ImmichFileSystem) -> None:
    def loops() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "immichfs-fsspec"]

    handle = immich_fs.open(immich_fs.ls("photos", detail=False)[0])
    assert len(handle.read(10)) == 10 and len(loops()) == 1
    close_all()
    assert loops() == []
    handle.close()  # as the garbage collector would, later
    assert loops() == []
    assert immich_fs.ls("albums")  # the filesystem itself starts a new loop when used
    assert len(loops()) == 1
