"""Extended attributes and manifests: pure rules, then over the real connector.

The manifest test lists a directory of more than 10,000 assets from the fake
server and checks every line against the API's own answer, with the fake's
request log proving that no per-asset request was made.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog
from immichfs.catalog.reader import ReaderPool
from immichfs.client.connector import ImmichConnector
from immichfs.model import Asset, iso_instant
from immichfs.vfs import metadata
from immichfs.vfs.metadata import ManifestStream, Membership
from immichfs.vfs.tree import AssetFile, Directory, Tree, TreeSettings
from immichfs.vfs.views import MANIFEST_NAME, ManifestFile, Views, install_views
from immichfs_fake import FakeImmich, FakeLibrary

PHOTO: dict[str, Any] = {
    "id": "0b5c1f4e-0000-4000-8000-000000000001",
    "type": "IMAGE",
    "originalFileName": "Kinkaku-ji.jpg",
    "checksum": "L2FjbWUvY2hlY2tzdW0vdmFsdWUxMjM=",
    "fileCreatedAt": "2018-01-24T09:30:00.000Z",
    "fileModifiedAt": "2018-01-24T09:30:00.000Z",
    "localDateTime": "2018-01-24T18:30:00.000Z",
    "livePhotoVideoId": None,
    "width": 4032,
    "height": 3024,
    "exifInfo": {
        "make": "Canon",
        "model": "Canon EOS R5",
        "orientation": "6",
        "latitude": 35.0394,
        "longitude": 135.7292,
        "fileSizeInByte": 123456,
    },
}


def photo(**changes: Any) -> Asset:
    data = {**PHOTO, **changes}
    return Asset.from_json(data)


# -- pure rules ------------------------------------------------------------------------


def test_photo_xattrs() -> None:
    membership = Membership(albums=("Our trip",), people=("Alice",), tags=("Travel/Japan",))
    values = {k: v.decode() for k, v in metadata.xattrs(photo(), membership).items()}
    assert values == {
        "user.immich.id": PHOTO["id"],
        "user.immich.checksum": PHOTO["checksum"],
        "user.immich.type": "IMAGE",
        "user.immich.created": "2018-01-24T09:30:00.000Z",
        "user.immich.width": "4032",
        "user.immich.height": "3024",
        "user.immich.orientation": "6",
        "user.immich.camera": "Canon EOS R5",  # the model already names the make
        "user.immich.gps": "35.0394,135.729",
        "user.immich.people": '["Alice"]',
        "user.immich.tags": '["Travel/Japan"]',
        "user.immich.albums": '["Our trip"]',
    }


def test_missing_values_are_absent_not_empty() -> None:
    bare = photo(exifInfo={"make": "  ", "model": None}, width=None, height=None, checksum="")
    values = metadata.xattrs(bare)
    assert set(values) == {"user.immich.id", "user.immich.type", "user.immich.created"}
    assert all(values.values())
    camera_only = photo(exifInfo={"make": "Fakon", "model": "F-100", "latitude": 1.5})
    fields = metadata.asset_fields(camera_only)
    assert fields["camera"] == "Fakon F-100"
    assert "gps" not in fields  # a latitude alone is no position


def test_people_and_tags_fall_back_to_the_asset() -> None:
    detailed = photo(people=[{"id": "p1", "name": "Bob"}], tags=[{"value": "A/B", "name": "B"}])
    fields = metadata.asset_fields(detailed)
    assert fields["people"] == ("Bob",) and fields["tags"] == ("A/B",)


def test_manifest_line_round_trips() -> None:
    asset = photo(livePhotoVideoId="motion-id")
    line = metadata.manifest_line("IMG 1.jpg", asset, 123456, Membership(people=("Zoë",)))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record == {
        "name": "IMG 1.jpg",
        "id": PHOTO["id"],
        "size": 123456,
        "taken": "2018-01-24T09:30:00.000Z",
        "taken_local": "2018-01-24T18:30:00.000",
        "checksum": PHOTO["checksum"],
        "type": "IMAGE",
        "width": 4032,
        "height": 3024,
        "orientation": "6",
        "camera": "Canon EOS R5",
        "gps": "35.0394,135.729",
        "people": ["Zoë"],
        "live_photo_video": "motion-id",
    }


@pytest.mark.parametrize("size", [1, 7, 100, 4096, 1 << 20])
def test_manifest_stream_reads_any_offset(size: int) -> None:
    lines = [f'{{"n":{i},"pad":"{"x" * (i % 37)}"}}\n'.encode() for i in range(500)]
    whole = b"".join(lines)
    assert metadata.manifest_size(iter(lines)) == len(whole)
    made = []

    def make() -> Any:
        made.append(1)
        return iter(lines)

    stream = ManifestStream(make)
    out = bytearray()
    offset = 0
    while chunk := stream.read(offset, size):
        out += chunk
        offset += len(chunk)
    assert bytes(out) == whole
    assert len(made) == 1  # sequential reads never restart the generator
    # random access, backwards included
    for start, length in [(0, 10), (len(whole) - 5, 100), (123, 456), (50, 3), (len(whole), 9)]:
        assert stream.read(start, length) == whole[start : start + length]


# -- over the real connector ----------------------------------------------------------


def build(connector: ImmichConnector) -> tuple[Tree, Views]:
    cache = MetadataCache(CacheSettings(listing_ttl=300, asset_ttl=300))
    tree = Tree(
        Catalog(connector, cache), ReaderPool(connector.stream_full_resolution_file), TreeSettings()
    )
    return tree, install_views(tree)


@pytest.fixture
async def views(fake_immich: FakeImmich) -> AsyncIterator[tuple[Tree, Views]]:
    async with ImmichConnector(fake_immich.url, fake_immich.api_key) as client:
        yield build(client)


async def node_named(tree: Tree, key: Any, name: str) -> AssetFile:
    node = (await tree.listdir(key)).get(name)
    assert isinstance(node, AssetFile), name
    return node


def expected_membership(lib: FakeLibrary, asset_id: str) -> dict[str, list[str]]:
    asset = lib.assets[asset_id]
    values = sorted(lib.tags[t].value for t in asset.tag_ids)
    return {
        "albums": sorted(a.name for a in lib.albums.values() if asset_id in a.asset_ids),
        "people": sorted(
            lib.people[p].name or f"unnamed-{p[:8]}"
            for p in asset.person_ids
            if not lib.people[p].is_hidden
        ),
        "tags": [v for v in values if not any(o.startswith(v + "/") for o in values)],
    }


@pytest.mark.parametrize("fake_immich", ["1.135.3", "2.7.5", "3.1.0"], indirect=True)
async def test_xattrs_of_a_photo_and_a_video(
    views: tuple[Tree, Views], fake_library: FakeLibrary
) -> None:
    tree, v = views
    kyoto = fake_library.find("Kinkaku-ji.jpg")
    node = await node_named(tree, ("dir", "photos"), "Kinkaku-ji.jpg")
    values = {k: x.decode() for k, x in (await v.xattrs(node)).items()}
    want = expected_membership(fake_library, kyoto.id)
    assert want["albums"] and want["people"] and want["tags"] == ["Travel/Japan/Kyoto"]
    assert json.loads(values.pop("user.immich.albums")) == want["albums"]
    assert json.loads(values.pop("user.immich.people")) == want["people"]
    assert json.loads(values.pop("user.immich.tags")) == want["tags"]
    # edited in Immich (the fake's library always edits it); servers before 2.5 do not say
    assert values.pop("user.immich.edited", "1") == "1"
    assert values == {
        "user.immich.id": kyoto.id,
        "user.immich.checksum": fake_library.checksum(kyoto.id),
        "user.immich.type": "IMAGE",
        "user.immich.created": iso_instant(kyoto.file_created_at),
        "user.immich.width": str(kyoto.width),
        "user.immich.height": str(kyoto.height),
        "user.immich.orientation": "1",
        "user.immich.camera": f"{kyoto.make} {kyoto.model}",
        "user.immich.gps": f"{kyoto.latitude:g},{kyoto.longitude:g}",
    }
    assert await v.getxattr(node, "user.immich.id") == kyoto.id.encode()
    assert await v.getxattr(node, "user.immich.nothing") is None


@pytest.mark.parametrize("fake_immich", ["2.7.5"], indirect=True)
async def test_xattrs_of_a_video_and_a_live_photo(
    views: tuple[Tree, Views], fake_library: FakeLibrary
) -> None:
    tree, v = views
    video = fake_library.find("large-video.mp4")
    node = await node_named(tree, ("dir", "videos"), "large-video.mp4")
    values = {k: x.decode() for k, x in (await v.xattrs(node)).items()}
    assert values["user.immich.type"] == "VIDEO"
    assert values["user.immich.id"] == video.id
    assert values["user.immich.checksum"] == fake_library.checksum(video.id)
    assert "user.immich.orientation" not in values  # videos have none in Immich
    assert "user.immich.gps" not in values and "user.immich.albums" not in values
    assert all(values.values())
    still = fake_library.find("IMG_5000.JPG")
    node = await node_named(tree, ("dir", "photos"), "IMG_5000.JPG")
    live = await v.getxattr(node, "user.immich.live_photo_video")
    assert live == still.live_photo_video_id.encode()  # type: ignore[union-attr]


async def test_manifest_of_ten_thousand_assets_makes_no_per_asset_request() -> None:
    lib = FakeLibrary.generate(
        seed=1, photos=11_000, videos=0, large_video_bytes=None, photo_bytes=(2000, 4000)
    )
    try:
        with FakeImmich(lib) as server:
            async with ImmichConnector(server.url, server.api_key) as client:
                tree, v = build(client)
                photos = tree.directory(("dir", "photos"))
                assert isinstance(photos, Directory)
                manifest = v.manifest(photos, MANIFEST_NAME)
                assert isinstance(manifest, ManifestFile)
                server.reset_log()
                size = await manifest.size()
                handle = await manifest.open()
                data = bytearray()
                while chunk := await handle.read(len(data), 128 * 1024):
                    data += chunk
                await handle.aclose()
                requests = [r.path for r in server.requests.snapshot()]
                api = [
                    item
                    async for item in client.iter_search_metadata(
                        {"type": "IMAGE", "visibility": "timeline"}
                    )
                ]
    finally:
        lib.close()
    assert len(data) == size  # st_size is exact
    records = [json.loads(line) for line in bytes(data).splitlines()]
    api_assets = {item["id"]: item for item in api if not item["isTrashed"]}
    assert len(records) == len(api_assets) >= 10_000
    assert len({r["name"] for r in records}) == len(records)
    for record in records:
        item = api_assets[record["id"]]
        assert record["size"] == item["exifInfo"]["fileSizeInByte"]
        assert record["checksum"] == item["checksum"]
        assert record["type"] == item["type"]
        assert record["taken"] == iso_instant(
            datetime.fromisoformat(item["fileCreatedAt"]).astimezone(UTC)
        )
        assert (record.get("width"), record.get("height")) == (
            item["exifInfo"]["exifImageWidth"],
            item["exifInfo"]["exifImageHeight"],
        )
        want = expected_membership(lib, record["id"])
        for field in ("albums", "people", "tags"):
            assert record.get(field, []) == want[field], (field, record)
    # listings only: searches plus the collection lists, never /assets/{id}
    assert requests and not [p for p in requests if p.startswith("/api/assets/")]
    assert set(requests) <= {
        "/api/search/metadata",
        "/api/albums",
        "/api/people",
        "/api/tags",
        "/api/server/version",
    }
    searches = requests.count("/api/search/metadata")
    collections = len(lib.albums) * 2 + len(lib.people) + len(lib.tags)
    # one page per 1000 assets of /photos, plus a few pages per collection
    assert searches <= len(api_assets) // 1000 + 1 + collections * 4
