"""A thumbnail's length without its bytes: ``Range: bytes=0-0`` against the fake Immich."""

from __future__ import annotations

from typing import Any

import pytest

from immichfs_fake import FakeImmich


@pytest.mark.parametrize("fake_immich", ["1.135.3", "3.1.0"], indirect=True)
async def test_length_comes_from_content_range(connector: Any, fake_immich: FakeImmich) -> None:
    asset_id = sorted(fake_immich.library.assets)[0]
    for size in ("thumbnail", "preview"):
        data, content_type = await connector.get_thumbnail_response(asset_id, size)
        fake_immich.requests.clear()
        length, probed_type, body = await connector.get_thumbnail_length(asset_id, size)
        assert (length, probed_type, body) == (len(data), content_type, None)
        (record,) = fake_immich.requests.select(path_prefix=f"/api/assets/{asset_id}/thumbnail")
        assert record.status == 206 and record.bytes_sent == 1


async def test_a_server_that_ignores_the_range_gives_the_bytes(
    connector: Any, fake_immich: FakeImmich
) -> None:
    asset_id = sorted(fake_immich.library.assets)[0]
    data, content_type = await connector.get_thumbnail_response(asset_id, "preview")
    fake_immich.faults.ignore_range()
    assert await connector.get_thumbnail_length(asset_id, "preview") == (
        len(data),
        content_type,
        data,
    )
