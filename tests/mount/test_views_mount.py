"""End to end: the views, extended attributes, manifests and freshness on a real mount.

The filesystem runs as ``python -m immichfs mount --foreground`` in a
subprocess against the fake server; what the mount shows is compared with what
the API answers (albums' ``assetCount``, search results, timeline buckets),
fetched here over plain HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountutil import MountProcess, poll

pytestmark = pytest.mark.fuse

VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]
#: the documented bound for a change to appear with the default settings
BOUND = 30.0


def mount(server: Any, tmp_path: Path, **env: str) -> MountProcess:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = MountProcess(
        mountpoint,
        {"IMMICH_URL": server.url, "IMMICH_API_KEY": server.api_key, **env},
        log_path=tmp_path / "mount.log",
    )
    process.wait_mounted()
    return process


@pytest.fixture
def mounted(fake_immich: Any, tmp_path: Path) -> Iterator[Path]:
    process = mount(fake_immich, tmp_path)
    try:
        yield process.mountpoint
        assert process.unmount() == (0, 0)
    finally:
        process.cleanup()


def api(server: Any, method: str, path: str, body: Any = None, **params: Any) -> Any:
    """One request to the (fake) Immich API, as any client would make it."""
    query = "?" + urllib.parse.urlencode(params) if params else ""
    request = urllib.request.Request(
        f"{server.url}/api{path}{query}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"x-api-key": server.api_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def search_ids(server: Any, **filters: Any) -> set[str]:
    ids: set[str] = set()
    page: Any = 1
    while page:
        body = {"visibility": "timeline", **filters, "page": int(page), "size": 1000}
        answer = api(server, "POST", "/search/metadata", body)["assets"]
        ids.update(item["id"] for item in answer["items"])
        page = answer["nextPage"]
    return ids


def files(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if (directory / n).is_file()]


def asset_id(path: Path) -> str:
    return os.getxattr(path, "user.immich.id").decode()


def ids_in(directory: Path) -> set[str]:
    return {asset_id(directory / name) for name in files(directory)}


def getfattr(path: Path) -> dict[str, str]:
    """``getfattr -d`` output as a dict (values as getfattr quotes them, unquoted)."""
    out = subprocess.run(
        ["getfattr", "-d", "--absolute-names", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    values = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value[1:-1] if value.startswith('"') else value
    return values


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
def test_views_on_a_real_mount(fake_immich: Any, mounted: Path) -> None:
    mnt, server, library = mounted, fake_immich, fake_immich.library
    assert {"albums", "people", "tags", "by-date", "favorites", "archive"} <= set(os.listdir(mnt))

    # albums: one directory per album, as many files as Immich's assetCount
    albums = api(server, "GET", "/albums")
    if server.version_info < (3, 0, 0):
        seen = {a["id"] for a in albums}
        albums += [a for a in api(server, "GET", "/albums", shared="true") if a["id"] not in seen]
    names = sorted(os.listdir(mnt / "albums"))
    assert len(names) == len(albums) == len(library.albums)
    assert "Best of\u2215Favourites" in names and "Shared with me" in names
    assert sum(1 for n in names if n.startswith("Family")) == 2
    by_count = sorted(len(files(mnt / "albums" / n)) for n in names)
    assert by_count == sorted(a["assetCount"] for a in albums)
    for album in albums:
        expected = search_ids(server, albumIds=[album["id"]]) | search_ids(
            server, albumIds=[album["id"]], visibility="archive"
        )
        matches = [n for n in names if ids_in(mnt / "albums" / n) == expected]
        assert matches, album["albumName"]

    # people: each named person's files are the API's search by person
    people = api(server, "GET", "/people")["people"]
    shown = [p for p in people if not p["isHidden"]]
    person_dirs = os.listdir(mnt / "people")
    assert len(person_dirs) == len(shown)
    for person in shown:
        name = person["name"] or f"unnamed-{person['id'][:8]}"
        assert ids_in(mnt / "people" / name) == search_ids(server, personIds=[person["id"]])

    # tags: nested directories; each holds the API's assets of that tag
    tags = api(server, "GET", "/tags")
    for tag in tags:
        directory = mnt / "tags" / tag["value"]
        assert directory.is_dir(), tag["value"]
        assert ids_in(directory) == search_ids(server, tagIds=[tag["id"]]), tag["value"]
    japan = mnt / "tags" / "Travel" / "Japan"
    assert [n for n in os.listdir(japan) if (japan / n).is_dir()] == ["Kyoto"]

    # by-date: every timeline bucket is a YYYY/MM directory with its count
    buckets = api(server, "GET", "/timeline/buckets", visibility="timeline")
    months = {
        f"{year}/{month}"
        for year in os.listdir(mnt / "by-date")
        for month in os.listdir(mnt / "by-date" / year)
    }
    assert months == {b["timeBucket"][:7].replace("-", "/") for b in buckets}
    for bucket in buckets:
        month = mnt / "by-date" / bucket["timeBucket"][:4] / bucket["timeBucket"][5:7]
        assert len(files(month)) == bucket["count"], month

    # favorites and archive
    assert ids_in(mnt / "favorites") == search_ids(server, isFavorite=True)
    assert ids_in(mnt / "archive") == search_ids(server, visibility="archive")
    assert not ids_in(mnt / "archive") & ids_in(mnt / "photos")

    # one inode per asset in every view
    kyoto = library.find("Kinkaku-ji.jpg")
    local = kyoto.local_date_time
    paths = [
        mnt / "photos" / "Kinkaku-ji.jpg",
        mnt / "albums" / "Our trip" / "Kinkaku-ji.jpg",
        mnt / "by-date" / f"{local.year:04d}" / f"{local.month:02d}" / "Kinkaku-ji.jpg",
        mnt / "people" / "Alice" / "Kinkaku-ji.jpg",
        mnt / "tags" / "Travel" / "Japan" / "Kyoto" / "Kinkaku-ji.jpg",
    ]
    inodes = {os.stat(p).st_ino for p in paths}
    assert len(inodes) == 1
    assert len({(p / "..").resolve() for p in paths}) == len(paths)


@pytest.mark.parametrize("fake_immich", VERSIONS, indirect=True)
def test_getfattr_and_manifest(fake_immich: Any, mounted: Path) -> None:
    mnt, server, library = mounted, fake_immich, fake_immich.library

    kyoto = library.find("Kinkaku-ji.jpg")
    photo = getfattr(mnt / "photos" / "Kinkaku-ji.jpg")
    assert photo["user.immich.id"] == kyoto.id
    assert photo["user.immich.checksum"] == library.checksum(kyoto.id)
    assert photo["user.immich.type"] == "IMAGE"
    assert photo["user.immich.width"] == str(kyoto.width)
    assert photo["user.immich.height"] == str(kyoto.height)
    assert photo["user.immich.orientation"] == "1"
    assert photo["user.immich.camera"] == f"{kyoto.make} {kyoto.model}"
    assert photo["user.immich.gps"] == f"{kyoto.latitude:g},{kyoto.longitude:g}"
    assert photo["user.immich.created"].startswith(kyoto.file_created_at.strftime("%Y-%m-%dT"))
    # getfattr escapes quotes inside values: compare after undoing it
    assert json.loads(photo["user.immich.tags"].replace('\\"', '"')) == ["Travel/Japan/Kyoto"]
    assert "Alice" in json.loads(photo["user.immich.people"].replace('\\"', '"'))
    assert "Our trip" in json.loads(photo["user.immich.albums"].replace('\\"', '"'))
    assert "user.immich.live_photo_video" not in photo

    video = library.find("large-video.mp4")
    values = getfattr(mnt / "videos" / "large-video.mp4")
    assert values["user.immich.id"] == video.id
    assert values["user.immich.type"] == "VIDEO"
    assert values["user.immich.checksum"] == library.checksum(video.id)
    # what Immich does not know is absent, never empty
    assert "user.immich.orientation" not in values and "user.immich.gps" not in values
    assert all(values.values())

    still = library.find("IMG_5000.JPG")
    live = os.getxattr(mnt / "photos" / "IMG_5000.JPG", "user.immich.live_photo_video")
    assert live.decode() == still.live_photo_video_id

    # the manifest: opens by name, never listed
    photos = mnt / "photos"
    manifest = photos / ".manifest.jsonl"
    assert ".manifest.jsonl" not in os.listdir(photos)
    listed = subprocess.run(["ls", "-a", photos], capture_output=True, text=True).stdout
    assert ".manifest.jsonl" not in listed
    data = manifest.read_bytes()
    assert os.stat(manifest).st_size == len(data)
    records = [json.loads(line) for line in data.splitlines()]
    names = sorted(files(photos))
    assert sorted(r["name"] for r in records) == names
    timeline_photos = {
        item["id"]: item
        for item in _search_items(server, {"type": "IMAGE"})
        if not item["isTrashed"]
    }
    assert {r["id"] for r in records} == set(timeline_photos)
    for record in records:
        item = timeline_photos[record["id"]]
        assert (
            record["size"]
            == item["exifInfo"]["fileSizeInByte"]
            == os.stat(photos / record["name"]).st_size
        )
        assert record["checksum"] == item["checksum"]
    by_date = mnt / "by-date" / f"{kyoto.local_date_time.year:04d}"
    month = by_date / f"{kyoto.local_date_time.month:02d}"
    assert any(
        json.loads(line)["id"] == kyoto.id
        for line in (month / ".manifest.jsonl").read_bytes().splitlines()
    )
    assert not (mnt / "albums" / ".manifest.jsonl").exists()  # not an asset directory


def _search_items(server: Any, filters: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page: Any = 1
    while page:
        body = {"visibility": "timeline", "withExif": True, **filters, "page": int(page)}
        answer = api(server, "POST", "/search/metadata", {**body, "size": 1000})["assets"]
        items += answer["items"]
        page = answer["nextPage"]
    return items


def listed(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("mutable_immich", VERSIONS, indirect=True)
def test_changes_appear_while_mounted(
    mutable_immich: Any, mutable_library: Any, tmp_path: Path
) -> None:
    # listings are trusted for 5 minutes: only the refresh task can show a change
    process = mount(
        mutable_immich,
        tmp_path,
        IMMICHFS_REFRESH_INTERVAL="1",
        IMMICHFS_LISTING_TTL="300",
        IMMICHFS_ASSET_TTL="300",
    )
    mnt = process.mountpoint
    try:
        photos, favorites = mnt / "photos", mnt / "favorites"
        assert "uploaded while mounted.jpg" not in os.listdir(photos)
        favorite_count = len(os.listdir(favorites))

        new = mutable_library.add_asset("uploaded while mounted.jpg")
        # shown by the refresh task within BOUND (poll fails after that)
        poll(
            lambda: os.listdir(photos),
            until=lambda names: "uploaded while mounted.jpg" in names,
            timeout=BOUND,
        )
        local = new.local_date_time
        month = mnt / "by-date" / f"{local.year:04d}" / f"{local.month:02d}"
        assert "uploaded while mounted.jpg" in os.listdir(month)
        path = photos / "uploaded while mounted.jpg"
        assert asset_id(path) == new.id
        assert path.read_bytes() == mutable_library.content(new.id)

        mutable_library.set_favorite(new.id, True)
        poll(
            lambda: os.listdir(favorites),
            until=lambda names: "uploaded while mounted.jpg" in names,
            timeout=BOUND,
        )
        assert len(os.listdir(favorites)) == favorite_count + 1

        mutable_library.trash(new.id)  # Immich's "delete": to the trash
        poll(
            # the month goes too when the upload was its only asset
            lambda: [listed(d) for d in (photos, favorites, month)],
            until=lambda listings: all("uploaded while mounted.jpg" not in n for n in listings),
            timeout=BOUND,
        )
        assert len(os.listdir(favorites)) == favorite_count

        # emptying the trash leaves no trace in delta queries: a forced refresh
        victim = next(n for n in sorted(os.listdir(photos)) if n.startswith("IMG_"))
        victim_id = asset_id(photos / victim)
        mutable_library.delete(victim_id)
        result = subprocess.run(
            [sys.executable, "-m", "immichfs", "refresh", str(mnt)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["removed"] >= 1 and summary["full"] is True
        assert victim_id not in ids_in(photos)

        assert process.unmount() == (0, 0)
        assert "invalidating kernel caches failed" not in process.output()
    finally:
        process.cleanup()


def test_manifest_of_ten_thousand_assets_through_the_mount(tmp_path: Path) -> None:
    from immichfs_fake import FakeImmich, FakeLibrary

    library = FakeLibrary.generate(
        seed=2, photos=11_000, videos=0, large_video_bytes=None, photo_bytes=(2000, 4000)
    )
    try:
        with FakeImmich(library) as server:
            # no refresh cycle (GET /assets/statistics) while a slow machine reads
            # the manifest: the requests counted below are the manifest's
            process = mount(server, tmp_path, IMMICHFS_REFRESH_INTERVAL="3600")
            try:
                server.reset_log()
                manifest = process.mountpoint / "photos" / ".manifest.jsonl"
                data = manifest.read_bytes()
                size = os.stat(manifest).st_size
                paths = [r.path for r in server.requests.snapshot()]
                api_items = {
                    item["id"]: item
                    for item in _search_items(server, {"type": "IMAGE"})
                    if not item["isTrashed"]
                }
                assert process.unmount() == (0, 0)
            finally:
                process.cleanup()
    finally:
        library.close()
    assert size == len(data)
    records = [json.loads(line) for line in data.splitlines()]
    assert len(records) == len(api_items) >= 10_000
    assert len({r["name"] for r in records}) == len(records)
    for record in records:
        item = api_items[record["id"]]
        assert record["size"] == item["exifInfo"]["fileSizeInByte"]
        assert record["checksum"] == item["checksum"]
        assert record["type"] == item["type"] == "IMAGE"
    # made from listings: searches and collection lists, not one request per asset
    assert not [p for p in paths if p.startswith("/api/assets/")]
    assert paths.count("/api/search/metadata") < 200
