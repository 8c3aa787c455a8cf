"""Reading asset bytes as ranged HTTP GETs.

This first version maps each read onto one ranged GET, clamped to the file
size (Immich answers 500/404 for a range that starts past EOF). It is correct
and memory-bounded; readahead is layered on top of the same interface.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from immichfs.errors import ProtocolError, TruncatedBody

log = logging.getLogger(__name__)

#: (asset_id, start, end_inclusive) -> async context manager yielding byte chunks
RangeFetcher = Callable[[str, int, int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


@dataclass(frozen=True)
class ReadaheadConfig:
    """Tunables of the byte path (readahead comes later; kept here so callers are stable)."""

    initial_window: int = 1024 * 1024 + 128 * 1024
    max_window: int = 16 * 1024 * 1024
    global_budget: int = 64 * 1024 * 1024


class ReaderPool:
    """Creates one AssetReader per open file handle and keeps global counters."""

    def __init__(self, fetch: RangeFetcher, config: ReadaheadConfig | None = None) -> None:
        self._fetch = fetch
        self.config = config or ReadaheadConfig()
        self._open = 0
        self._requests = 0
        self._bytes = 0

    def open(self, asset_id: str, size: int) -> AssetReader:
        self._open += 1
        return AssetReader(self, asset_id, size)

    def statistics(self) -> dict[str, Any]:
        return {
            "open_readers": self._open,
            "range_requests": self._requests,
            "bytes_fetched": self._bytes,
            "readahead_bytes": 0,
        }


class AssetReader:
    """Reads one asset; every read is one ranged GET clamped to the file size."""

    def __init__(self, pool: ReaderPool, asset_id: str, size: int) -> None:
        self._pool = pool
        self.asset_id = asset_id
        self.size = size
        self._closed = False

    async def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        end = min(offset + size, self.size) - 1
        want = end - offset + 1
        parts: list[bytes] = []
        got = 0
        self._pool._requests += 1
        async with self._pool._fetch(self.asset_id, offset, end) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
                got += len(chunk)
                if got > want:
                    raise ProtocolError(
                        f"asset {self.asset_id}: the server sent more bytes than the range asked"
                    )
        self._pool._bytes += got
        if got != want:
            raise TruncatedBody(
                f"asset {self.asset_id}: got {got} of {want} bytes at offset {offset}"
            )
        return b"".join(parts)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._open -= 1
