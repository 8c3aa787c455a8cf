"""A fake Immich server with a generated library: test double, demo and benchmark origin.

    from immichfs_fake import FakeLibrary, FakeImmich

    lib = FakeLibrary.generate(seed=0, photos=200, videos=10)
    with FakeImmich(lib, version="2.7.5") as srv:
        ...  # srv.url, srv.api_key, srv.faults, srv.requests

Modules by concern: ``server`` (:class:`FakeImmich`: lifecycle, auth, dispatch),
``httpd`` (sockets, parsing, sending, ranges), ``routes`` (endpoints per area),
``filters`` (the search filter language), ``library`` (:class:`FakeLibrary`),
``dto`` (JSON shapes per version), ``media`` (file bytes), ``faults`` (fault
switches and the request log), ``cli`` (``immichfs fake-server``).
"""

from __future__ import annotations

from immichfs_fake.faults import Faults, RequestLog, RequestRecord
from immichfs_fake.library import (
    FakeAlbum,
    FakeAsset,
    FakeAssetFile,
    FakeLibrary,
    FakePerson,
    FakeTag,
    FakeUser,
)
from immichfs_fake.server import (
    KEY_PREFIX,
    REALISTIC_LATENCY_MS,
    REALISTIC_STREAM_MIB_S,
    FakeImmich,
    parse_version,
)

__all__ = [
    "KEY_PREFIX",
    "REALISTIC_LATENCY_MS",
    "REALISTIC_STREAM_MIB_S",
    "FakeAlbum",
    "FakeAsset",
    "FakeAssetFile",
    "FakeImmich",
    "FakeLibrary",
    "FakePerson",
    "FakeTag",
    "FakeUser",
    "Faults",
    "RequestLog",
    "RequestRecord",
    "parse_version",
]
