"""Parsing Immich's asset JSON into values, across server versions."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from immichfs.errors import ProtocolError
from immichfs.model import (
    EXIF_FIELDS,
    Asset,
    asset_of_fields,
    checksum_hex,
    parse_duration_ms,
    parse_instant,
    parse_local,
)


def asset_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "3e834465-b3f4-4176-a5fc-b1a7dc28f279",
        "type": "IMAGE",
        "originalFileName": "IMG_0001.JPG",
        "checksum": base64.b64encode(hashlib.sha1(b"x").digest()).decode(),
        "fileCreatedAt": "2017-07-07T18:30:00.000Z",
        "fileModifiedAt": "2017-07-08T10:00:00.000Z",
        "localDateTime": "2017-07-07T20:30:00.000Z",
        "updatedAt": "2024-01-01T00:00:00.000Z",
        "isFavorite": True,
        "isTrashed": False,
        "exifInfo": {"fileSizeInByte": 40000, "make": "FUJIFILM", "lensModel": "XF 23mm"},
    }
    data.update(overrides)
    return data


def test_essentials_are_parsed() -> None:
    asset = Asset.from_json(asset_json())
    assert asset.size == 40000
    assert asset.file_created_at == datetime(2017, 7, 7, 18, 30, tzinfo=UTC)
    assert asset.file_modified_at == datetime(2017, 7, 8, 10, 0, tzinfo=UTC)
    assert asset.is_favorite and asset.is_image and not asset.is_video
    # fields the views do not show are dropped: memory per cached asset
    assert asset.exif == {"make": "FUJIFILM"}
    assert set(asset.exif) <= set(EXIF_FIELDS)


def test_local_date_time_is_taken_literally() -> None:
    # Immich serialises wall-clock time with a misleading Z: never convert it
    asset = Asset.from_json(asset_json())
    assert asset.local_datetime == datetime(2017, 7, 7, 20, 30)
    assert asset.local_datetime.tzinfo is None
    assert parse_local("2017-07-07T20:30:00+05:00") == datetime(2017, 7, 7, 20, 30)


def test_visibility_wins_over_is_archived_and_old_servers_fall_back() -> None:
    assert Asset.from_json(asset_json(visibility="archive", isArchived=False)).is_archived
    timeline = Asset.from_json(asset_json(visibility="timeline", isArchived=True))
    assert not timeline.is_archived and timeline.visibility == "timeline"
    legacy = Asset.from_json(asset_json(isArchived=True))  # before v1.133: no visibility
    assert legacy.is_archived and legacy.visibility == "archive"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0:01:23.456000", 83456),  # before v3
        ("00:00:05.000", 5000),
        ("0:00:00.00000", None),  # a still image before v3
        (5000, 5000),  # v3: integer milliseconds
        (None, None),  # v3: images
        ("garbage", None),
        (True, None),
    ],
)
def test_duration_in_both_shapes(value: Any, expected: int | None) -> None:
    assert parse_duration_ms(value) == expected


def test_width_height_prefer_asset_level_then_exif() -> None:
    exif = {"exifImageWidth": 4000, "exifImageHeight": 3000}
    assert Asset.from_json(asset_json(exifInfo=exif)).width == 4000
    both = Asset.from_json(asset_json(width=3000, height=4000, exifInfo=exif))
    assert (both.width, both.height) == (3000, 4000)  # orientation-corrected (v2.5+)


def test_missing_size_stays_unknown_not_zero() -> None:
    asset = Asset.from_json(asset_json(exifInfo=None))
    assert asset.size is None


def test_people_and_tags_keep_names_or_ids() -> None:
    asset = Asset.from_json(
        asset_json(
            people=[{"id": "p1", "name": "Alice"}, {"id": "p2", "name": ""}, "junk"],
            tags=[{"id": "t1", "name": "Kyoto", "value": "Travel/Japan/Kyoto"}],
        )
    )
    assert asset.people == ("Alice", "p2")
    assert asset.tags == ("Travel/Japan/Kyoto",)


@pytest.mark.parametrize("bad", [None, [], "x", {"type": "IMAGE"}, {"id": ""}, {"id": 5}])
def test_not_an_asset_is_a_protocol_error(bad: Any) -> None:
    with pytest.raises(ProtocolError):
        Asset.from_json(bad)


def test_odd_field_types_do_not_crash() -> None:
    asset = Asset.from_json(
        asset_json(
            originalFileName=None,
            checksum=17,
            fileCreatedAt="not a date",
            fileModifiedAt=None,
            exifInfo={"fileSizeInByte": "12"},
            width=True,
        )
    )
    assert asset.original_file_name == "" and asset.checksum == ""
    assert asset.file_created_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert asset.file_modified_at == asset.file_created_at
    assert asset.size == 12
    assert asset.width is None


def test_instants_are_utc() -> None:
    assert parse_instant("2020-01-01T01:00:00+01:00") == datetime(2020, 1, 1, tzinfo=UTC)
    assert parse_instant("2020-01-01T00:00:00") == datetime(2020, 1, 1, tzinfo=UTC)
    assert parse_instant("") is None and parse_instant(3) is None


def test_checksum_hex_only_for_sha1() -> None:
    digest = hashlib.sha1(b"abc").digest()
    assert checksum_hex(base64.b64encode(digest).decode()) == digest.hex()
    assert checksum_hex(base64.b64encode(b"short").decode()) is None
    assert checksum_hex("not base64!") is None


def test_asset_of_fields_is_the_constructor_with_every_field() -> None:
    asset = Asset.from_json(asset_json(people=[{"name": "Ann"}], tags=[{"value": "A/B"}]))
    values = [getattr(asset, f.name) for f in dataclasses.fields(Asset)]
    built = asset_of_fields(values)
    assert type(built) is Asset and built == Asset(*values) == asset
    assert hash(built) == hash(asset) and built.exif == asset.exif
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = "other"  # type: ignore[misc]
    for wrong in (values[:-1], [*values, None]):
        with pytest.raises(ValueError, match="fields"):
            asset_of_fields(wrong)
