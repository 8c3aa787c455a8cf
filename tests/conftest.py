"""Shared fixtures: the fake Immich server over real HTTP on loopback.

``fake_library`` is generated once per session and must not be mutated (use
``mutable_library`` for freshness tests). ``fake_immich`` is a running server
per test; parametrize it indirectly with a version string, or with a dict of
``FakeImmich`` keyword arguments::

    @pytest.mark.parametrize("fake_immich", ["1.135.3", "3.1.0"], indirect=True)
    @pytest.mark.parametrize("fake_immich", [{"version": "3.1.0", "smart_search": True}],
                             indirect=True)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from immichfs.client.connector import ImmichConnector
from immichfs_fake import FakeImmich, FakeLibrary

if TYPE_CHECKING:  # only the tests that call the handlers import pyfuse3
    from opsutil import Replies

    from immichfs.fuse.operations import Operations

#: The Immich versions the fake emulates in the test suite.
FAKE_VERSIONS = ["1.135.3", "2.7.5", "3.1.0"]
DEFAULT_VERSION = "2.7.5"


def _library() -> FakeLibrary:
    # Small enough to generate in a blink, with one video above the in-memory
    # threshold so the sendfile path is exercised.
    return FakeLibrary.generate(seed=0, photos=120, videos=4, large_video_bytes=12 << 20)


@pytest.fixture(scope="session")
def fake_versions() -> list[str]:
    return list(FAKE_VERSIONS)


@pytest.fixture(scope="session")
def fake_library() -> Iterator[FakeLibrary]:
    library = _library()
    yield library
    library.close()


@pytest.fixture
def mutable_library() -> Iterator[FakeLibrary]:
    """A private library a test may change (add, trash, delete, change content)."""
    library = _library()
    yield library
    library.close()


def _server_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    param = getattr(request, "param", DEFAULT_VERSION)
    if isinstance(param, str):
        return {"version": param}
    if isinstance(param, dict):
        return {"version": DEFAULT_VERSION, **param}
    raise TypeError(f"fake_immich parameter must be a version or a dict, not {param!r}")


@pytest.fixture
def fake_immich(request: pytest.FixtureRequest, fake_library: FakeLibrary) -> Iterator[FakeImmich]:
    """A running fake Immich (default v2.7.5) serving the session library."""
    with FakeImmich(fake_library, **_server_kwargs(request)) as server:
        yield server


@pytest.fixture
def mutable_immich(
    request: pytest.FixtureRequest, mutable_library: FakeLibrary
) -> Iterator[FakeImmich]:
    """Like ``fake_immich`` but serving ``mutable_library``."""
    with FakeImmich(mutable_library, **_server_kwargs(request)) as server:
        yield server


@pytest.fixture
async def connector(fake_immich: FakeImmich) -> AsyncIterator[ImmichConnector]:
    """An ``ImmichConnector`` talking to ``fake_immich`` (inside the test's trio run)."""
    async with ImmichConnector(fake_immich.url, fake_immich.api_key) as client:
        yield client


@pytest.fixture
async def ops(fake_immich: FakeImmich) -> AsyncIterator[tuple[Operations, Replies]]:
    """The FUSE handlers built by the composition root over ``fake_immich``, without
    the kernel, and the injected ``readdir_reply`` that collects directory entries."""
    from opsutil import Replies

    from immichfs.fuse.mount import build_operations
    from immichfs.options import Settings

    replies = Replies()
    settings = Settings(url=fake_immich.url, api_key=fake_immich.api_key, listing_ttl=30)
    async with ImmichConnector(fake_immich.url, fake_immich.api_key) as connector:
        operations = build_operations(connector, settings)
        operations.readdir_reply = replies
        yield operations, replies
        # nothing leaks: every open handle was released
        assert operations.open_handles() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under ``tests/mount`` mounts: it gets the ``fuse`` mark. Every test
    with that mark is skipped, with the reason, where this machine cannot mount
    (one probe per session, :func:`mountutil.fuse_unavailable`)."""
    from mountutil import fuse_unavailable

    mount_dir = Path(__file__).parent / "mount"
    for item in items:
        if mount_dir in Path(item.path).parents:
            item.add_marker(pytest.mark.fuse)
    needs_fuse = [item for item in items if item.get_closest_marker("fuse") is not None]
    if not needs_fuse:
        return
    reason = fuse_unavailable()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"cannot mount FUSE here: {reason}")
        for item in needs_fuse:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A command run in-process (``main([...])``) sets up logging for a process: it
    replaces the root handlers (pytest's capture among them). Put them back."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
