"""Shared fixtures: the fake Immich server over real HTTP on loopback.

``fake_library`` is generated once per session and must not be mutated (use
``mutable_library`` for freshness tests). ``fake_immich`` is a running server
per test; parametrize it indirectly with a version string, or with a dict of
``FakeImmich`` keyword arguments::

    @pytest.mark.parametrize("fake_immich", ["1.135.3", "3.1.0"], indirect=True)
    @pytest.mark.parametrize("fake_immich", [{"version": "3.1.0", "smart_search": True}],
                             indirect=True)

Every test fails on a WARNING or ERROR log record it did not declare (s3ql's
habit): a test that provokes one says so with ``@pytest.mark.expect_log``, and
the declared record must then appear. Only records of the pytest process are
seen; a mount runs in a subprocess and its log is its own.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from immichfs.client.connector import ImmichConnector
from immichfs_fake import FakeImmich, FakeLibrary

if TYPE_CHECKING:  # only the tests that call the handlers import pyfuse3
    from opsutil import Replies

    from immichfs.fuse.operations import Operations

pytest_plugins = ["pytester"]  # tests/unit/test_checklogs.py runs pytest on this file

#: The Immich versions the fake emulates in the test suite.
FAKE_VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]
DEFAULT_VERSION = "2.7.5"


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Mounts started by tests keep their catalog and bytes in a temporary directory,
    never in the user's ~/.cache (``tests/mountutil.py`` gives each mount its own)."""
    import os

    saved = os.environ.get("IMMICHFS_CACHE_DIR")
    os.environ["IMMICHFS_CACHE_DIR"] = str(tmp_path_factory.mktemp("immichfs-cache"))
    yield
    if saved is None:
        os.environ.pop("IMMICHFS_CACHE_DIR", None)
    else:
        os.environ["IMMICHFS_CACHE_DIR"] = saved


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


# -- unexpected log records fail the test ------------------------------------------------


@dataclass
class _Expected:
    level: int
    pattern: re.Pattern[str]
    logger: str | None
    optional: bool
    seen: int = 0

    def matches(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno == self.level
            and (self.logger is None or record.name.startswith(self.logger))
            and self.pattern.search(record.getMessage()) is not None
        )


@dataclass
class _LogCheck:
    """The WARNING-and-above records of the running test (from any thread)."""

    records: list[logging.LogRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_current: _LogCheck | None = None


def _watching(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    # A record factory rather than a handler: commands run in-process
    # (``main([...])``) replace the root logger's handlers, which would blind a handler.
    def make(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        check = _current
        if check is not None and record.levelno >= logging.WARNING:
            with check.lock:
                check.records.append(record)
        return record

    return make


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expect_log(pattern, level='WARNING', logger=None, optional=False): the test "
        "provokes log records of that level whose message matches the regular expression "
        "(at least one, unless optional)",
    )
    logging.setLogRecordFactory(_watching(logging.getLogRecordFactory()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_passed] = report.passed
    return report


_passed = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A command run in-process (``main([...])``) sets up logging for a process: it
    replaces the root handlers (pytest's capture among them). Put them back."""
    root, httpx = logging.getLogger(), logging.getLogger("httpx")
    handlers, levels = list(root.handlers), (root.level, httpx.level)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(levels[0])
        httpx.setLevel(levels[1])  # quietened by setup_logging


@pytest.fixture(autouse=True)
def check_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test on a WARNING or ERROR record it did not declare with ``expect_log``."""
    global _current
    expected = [
        _Expected(
            logging.getLevelName(mark.kwargs.get("level", "WARNING")),
            re.compile(mark.args[0]),
            mark.kwargs.get("logger"),
            mark.kwargs.get("optional", False),
        )
        for mark in request.node.iter_markers("expect_log")
    ]
    check = _current = _LogCheck()
    try:
        yield
    finally:
        _current = None
    unexpected = []
    for record in check.records:
        matching = [e for e in expected if e.matches(record)]
        for e in matching:
            e.seen += 1
        if not matching:
            unexpected.append(f"{record.levelname} {record.name}: {record.getMessage()}")
    # a declared record must appear, unless the test stopped before provoking it
    passed = request.node.stash.get(_passed, False)
    missing = [
        f"{logging.getLevelName(e.level)} {e.pattern.pattern!r}"
        for e in expected
        if passed and not e.seen and not e.optional
    ]
    problems = [f"unexpected log record: {line}" for line in unexpected]
    problems += [f"declared log record did not appear: {line}" for line in missing]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


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
