"""An in-memory library behind the catalog's source protocol: no sockets.

:class:`MemorySource` implements :class:`immichfs.catalog.catalog.CatalogSource`
(the connector's method names and return shapes) over plain lists of Immich
JSON, so catalog and tree logic are tested without a server. Its search filter
follows Immich's for the filters the catalog sends (``type``, ``visibility``,
``isFavorite``, ``withDeleted``, ``trashedAfter``, ``albumIds``/``personIds``/
``tagIds``, ``takenAfter``/``takenBefore``, ``updatedAfter``, and the text
fields: file name and description contain the value, case-insensitively;
city, country, make and model equal it). Every call is counted in ``calls``;
``gate``, when set, holds every search until it is set. :class:`Clock` is a
timer for the caches that moves by hand.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from immichfs.errors import NotFound


def make_asset(
    n: int,
    name: str,
    *,
    kind: str = "IMAGE",
    size: int | None = 1000,
    created: str = "2020-01-01T00:00:00.000Z",
    uploaded: str | None = None,
    trashed: bool = False,
    visibility: str = "timeline",
    favorite: bool = False,
    description: str = "",
    city: str | None = None,
    updated: str = "2021-06-01T12:00:00.000Z",
) -> dict[str, Any]:
    """An ``AssetResponseDto`` numbered ``n`` (its id and content derive from it)."""
    content = bytes([n % 256]) * (size or 777)
    exif: dict[str, Any] = {"description": description, "city": city}
    if size is not None:
        exif["fileSizeInByte"] = size
    asset: dict[str, Any] = {
        "id": f"{n:08d}-0000-4000-8000-000000000000",
        "type": kind,
        "originalFileName": name,
        "checksum": base64.b64encode(hashlib.sha1(content).digest()).decode(),
        "fileCreatedAt": created,
        "fileModifiedAt": "2021-06-01T12:00:00.000Z",
        "localDateTime": created,
        "updatedAt": updated,
        "isTrashed": trashed,
        "isFavorite": favorite,
        "visibility": visibility,
        "exifInfo": exif,
    }
    if uploaded:
        asset["createdAt"] = uploaded
    return asset


def _contains(value: Any, part: Any) -> bool:
    return isinstance(value, str) and str(part).casefold() in value.casefold()


class Clock:
    """A cache timer that moves only when a test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemorySource:
    """The catalog's source over in-memory lists, counting calls (see the module doc)."""

    def __init__(
        self,
        assets: list[dict[str, Any]],
        *,
        smart: bool = False,
        albums: Mapping[str, list[str]] | None = None,
        people: Mapping[str, list[str]] | None = None,
        tags: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.assets = assets
        self.smart = smart
        #: album / person / tag id → its asset ids (the names are the ids' upper case)
        self.albums = dict(albums or {})
        self.people = dict(people or {})
        self.tags = dict(tags or {})
        self.calls: Counter[str] = Counter()
        self.filters: list[dict[str, Any]] = []
        self.thumbnail_type = {"preview": "image/jpeg", "thumbnail": "image/webp"}
        self.gate: trio.Event | None = None

    # -- searches

    def matches(self, asset: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
        """Whether Immich's ``/search/metadata`` would answer ``asset`` for ``filters``."""
        visibility = filters.get("visibility", "timeline")
        if visibility is not None and asset["visibility"] != visibility:
            return False
        trashed_only = "trashedAfter" in filters
        if asset["isTrashed"] and not (trashed_only or filters.get("withDeleted")):
            return False
        if trashed_only and not asset["isTrashed"]:
            return False
        if filters.get("type") and asset["type"] != filters["type"]:
            return False
        if "isFavorite" in filters and asset["isFavorite"] != filters["isFavorite"]:
            return False
        for key, members in (
            ("albumIds", self.albums),
            ("personIds", self.people),
            ("tagIds", self.tags),
        ):
            for wanted in filters.get(key) or ():
                if asset["id"] not in members.get(wanted, ()):
                    return False
        if "takenAfter" in filters and asset["fileCreatedAt"] < filters["takenAfter"]:
            return False
        if "takenBefore" in filters and asset["fileCreatedAt"] > filters["takenBefore"]:
            return False
        if "updatedAfter" in filters and asset["updatedAt"] < filters["updatedAfter"]:
            return False
        exif = asset.get("exifInfo") or {}
        if "originalFileName" in filters and not _contains(
            asset["originalFileName"], filters["originalFileName"]
        ):
            return False
        if "description" in filters and not _contains(
            exif.get("description"), filters["description"]
        ):
            return False
        return all(
            exif.get(key) == filters[key]
            for key in ("city", "country", "make", "model")
            if key in filters
        )

    async def search_metadata(
        self, filters: Mapping[str, Any], *, page: int = 1, size: int = 1000
    ) -> tuple[list[dict[str, Any]], int | None]:
        self.calls["search_metadata"] += 1
        self.filters.append(dict(filters))
        if self.gate is not None:
            await self.gate.wait()
        found = [a for a in self.assets if self.matches(a, filters)]
        more = len(found) > page * size
        return found[(page - 1) * size : page * size], page + 1 if more else None

    async def iter_search_metadata(
        self, filters: Mapping[str, Any], *, page_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        page: int | None = 1
        while page is not None:
            items, page = await self.search_metadata(filters, page=page, size=page_size)
            for item in items:
                yield item

    async def search_smart(
        self, query: str, *, size: int = 100, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every asset matching ``filters``, in list order (no ranking: tests need none)."""
        self.calls["search_smart"] += 1
        return [a for a in self.assets if self.matches(a, filters or {})][:size]

    # -- the rest of the connector's face

    async def get_server_features(self) -> dict[str, Any]:
        self.calls["features"] += 1
        return {"smartSearch": self.smart}

    async def get_asset_info(self, asset_id: str) -> dict[str, Any]:
        self.calls["asset_info"] += 1
        for asset in self.assets:
            if asset["id"] == asset_id:
                return asset
        raise NotFound(f"asset {asset_id}")

    async def get_asset_statistics(self) -> dict[str, Any]:
        self.calls["statistics"] += 1
        shown = [a for a in self.assets if not a["isTrashed"]]
        images = sum(1 for a in shown if a["type"] == "IMAGE")
        return {"images": images, "videos": len(shown) - images, "total": len(shown)}

    def content(self, asset_id: str) -> bytes:
        asset = next(a for a in self.assets if a["id"] == asset_id)
        return bytes([int(asset_id[:8]) % 256]) * (asset["exifInfo"].get("fileSizeInByte") or 777)

    async def head_original(self, asset_id: str, *, edited: bool = False) -> int:
        self.calls["head"] += 1
        return len(self.content(asset_id))

    async def get_asset_files(
        self, asset_id: str, type: str | None = None, is_edited: bool | None = None
    ) -> list[dict[str, Any]]:
        """No asset has stored files here (a subclass may give some)."""
        self.calls["asset_files"] += 1
        return []

    async def get_asset_file(self, file_id: str, *, limit: int = 0) -> bytes:
        raise NotFound(f"no asset file {file_id}")

    async def get_thumbnail_response(
        self, asset_id: str, size: str = "preview", *, edited: bool = False
    ) -> tuple[bytes, str]:
        self.calls[f"thumbnail:{size}"] += 1
        if self.gate is not None:
            await self.gate.wait()
        return (size.encode() + asset_id.encode()) * 3, self.thumbnail_type[size]

    async def get_albums(self) -> list[dict[str, Any]]:
        self.calls["albums"] += 1
        return [
            {"id": i, "albumName": i.upper(), "assetCount": len(m), "createdAt": ""}
            for i, m in self.albums.items()
        ]

    async def get_people(self, *, with_hidden: bool = False) -> list[dict[str, Any]]:
        self.calls["people"] += 1
        return [{"id": i, "name": i.upper(), "isHidden": False} for i in self.people]

    async def get_tags(self) -> list[dict[str, Any]]:
        self.calls["tags"] += 1
        return [{"id": i, "value": i.upper()} for i in self.tags]

    async def get_timeline_buckets(self, **filters: Any) -> list[dict[str, Any]]:
        self.calls["buckets"] += 1
        counts: Counter[str] = Counter(
            a["localDateTime"][:7] + "-01"
            for a in self.assets
            if self.matches(a, {"visibility": filters.get("visibility", "timeline")})
        )
        return [{"timeBucket": month, "count": n} for month, n in sorted(counts.items())]

    @asynccontextmanager
    async def stream(
        self, asset_id: str, start: int, end: int
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The ranged byte source of the reader pool."""
        self.calls["range"] += 1
        data = self.content(asset_id)[start : end + 1]

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        yield chunks()


def ramp(start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file whose content depends on the position (byte p
    belongs to the 8-byte big-endian number p - p % 8), so any shifted, repeated or
    missing byte shows; the reader tests read such files."""
    if end <= start:
        return b""
    first = start - start % 8
    count = (end - first + 7) // 8
    data = struct.pack(f">{count}Q", *range(first, first + 8 * count, 8))
    return data[start - first : end - first]
