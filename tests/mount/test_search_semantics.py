"""One search: ``ls MNT/search/Q``, the gateway's ``POST /search`` and the library agree.

For each query the three answer exactly the same assets (up to ``search_limit``,
250 by default), with and without smart search on the server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from mountutil import MountProcess

from immichfs.client.connector import ImmichConnector
from immichfs.gateway.app import Gateway
from immichfs.gateway.serve import serve_gateway
from immichfs_fake import FakeImmich

#: the default ``search_limit``: what a search directory lists at most
LIMIT = 250
#: places and descriptions of the fake library, a file-name fragment, a camera, nothing
QUERIES = ["kyoto", "beach", "Kyoto", "IMG_00", "kinkaku", "Fakon", "no such thing"]


@pytest.fixture
def mounted(fake_immich: FakeImmich, tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = MountProcess(
        mountpoint,
        {"IMMICH_URL": fake_immich.url, "IMMICH_API_KEY": fake_immich.api_key},
        args=["--refresh-interval", "3600"],
    )
    try:
        process.wait_mounted()
        yield mountpoint
    finally:
        process.cleanup()


@pytest.fixture
async def gateway(
    fake_immich: FakeImmich,
) -> AsyncIterator[tuple[httpx.AsyncClient, ImmichConnector]]:
    async with ImmichConnector(fake_immich.url, fake_immich.api_key) as connector:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(
                    serve_gateway, Gateway(connector), "127.0.0.1", 0, shutdown_trigger=stop.wait
                )
            )
            try:
                async with httpx.AsyncClient(base_url=binds[0], timeout=30) as client:
                    yield client, connector
            finally:
                stop.set()


def listed_ids(directory: Path) -> set[str]:
    """The asset ids of a mount directory's files (``user.immich.id``)."""
    return {
        os.getxattr(directory / name, "user.immich.id").decode() for name in os.listdir(directory)
    }


@pytest.mark.parametrize(
    "fake_immich",
    [{"smart_search": False}, {"smart_search": True}],
    ids=["metadata", "smart"],
    indirect=True,
)
async def test_mount_gateway_and_library_search_alike(
    mounted: Path, gateway: tuple[httpx.AsyncClient, ImmichConnector], fake_immich: FakeImmich
) -> None:
    client, connector = gateway
    for query in QUERIES:
        in_mount = await trio.to_thread.run_sync(listed_ids, mounted / "search" / query)
        response = await client.post("/api/immich/search", json={"query": query, "size": LIMIT})
        assert response.status_code == 200, response.text
        in_gateway = {asset["id"] for asset in response.json()}
        in_library = {a["id"] for a in await connector.search_assets(query, size=LIMIT)}
        assert in_mount == in_gateway == in_library, query
        if query in ("kyoto", "beach", "IMG_00") or fake_immich.smart_search:
            assert in_mount, f"{query!r} finds nothing"
    if not fake_immich.smart_search:
        # the README's example: a city in lower case still finds the temple
        names = await trio.to_thread.run_sync(os.listdir, mounted / "search" / "kyoto")
        assert any("kinkaku" in name.lower() for name in names), names
