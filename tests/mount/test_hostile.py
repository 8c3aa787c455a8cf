"""Hostile input from the server and from users: names, search queries, JSON.

Property tests (hypothesis) feed random server names through the naming rules
and the tree, and random queries through ``/search`` over real HTTP; broken
JSON answers come through ``httpx.MockTransport``. None of it may crash, and
every name shown must be valid, unique and stable.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import random
import tracemalloc
import unicodedata
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mountutil import MountProcess
from netutil import Proxy

from immichfs import errors
from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog, CatalogSettings
from immichfs.catalog.reader import ReaderPool
from immichfs.client import connector as connector_module
from immichfs.client.connector import ImmichConnector
from immichfs.model import Asset
from immichfs.vfs.names import (
    MAX_NAME_BYTES,
    clean,
    collision_key,
    is_valid,
    split_extension,
)
from immichfs.vfs.tree import AssetDirectory, Tree, TreeSettings, name_assets
from immichfs_fake import FakeImmich, FakeLibrary

# -- strategies ---------------------------------------------------------------------

#: pieces a hostile or merely unlucky server name is made of
PIECES = [
    "/", "\0", ".", "..", "\n", "\t", "\x1b", "\x7f", "\x85", " ", "~", "%", "*", "?",
    "é", "e\u0301", "Å", "A\u030a", "\ufb01", "🎄", "\u200b", "\ufeff", "\ud800",
    ".jpg", ".JPG", ".heic", ".tar.gz", "IMG_0001", "~aaaaaaaa",
]  # fmt: skip
piece = st.sampled_from(PIECES)
short_text = st.text(max_size=6)
built = st.lists(st.one_of(piece, short_text), max_size=10).map("".join)
long_names = st.builds(
    lambda stem, n, ext: stem * n + ext,
    st.sampled_from(["x", "é", "🎄", "a/b", "\0"]),
    st.integers(min_value=60, max_value=1000),
    st.sampled_from(["", ".jpg", ".heic", "." + "e" * 40]),
)
#: a small pool so that duplicates (and NFC/NFD twins) are frequent
pool = st.sampled_from(
    ["IMG_0001.JPG", "café.jpg", "cafe\u0301.jpg", "..", ".", "", "a/b.jpg", "a\u2215b.jpg"]
)
server_name = st.one_of(pool, built, long_names)


def asset_json(index: int, name: str, uploaded: int) -> dict[str, Any]:
    when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=uploaded)
    return {
        "id": f"{index:08x}-0000-4000-8000-{index:012x}",
        "type": "IMAGE",
        "originalFileName": name,
        "fileCreatedAt": when.isoformat(),
        "fileModifiedAt": when.isoformat(),
        "createdAt": when.isoformat(),
        "checksum": "",
        "exifInfo": {"fileSizeInByte": 100},
    }


entries = st.lists(
    st.tuples(server_name, st.integers(min_value=0, max_value=5)), min_size=1, max_size=25
)


def assets_of(drawn: list[tuple[str, int]]) -> list[Asset]:
    return [Asset.from_json(asset_json(i, name, t)) for i, (name, t) in enumerate(drawn)]


# -- names ------------------------------------------------------------------------------


def check_names(assets: list[Asset], names: dict[str, str]) -> None:
    assert set(names) == {a.id for a in assets}
    for asset in assets:
        name = names[asset.id]
        data = name.encode("utf-8")  # no lone surrogates either: this would raise
        assert 0 < len(data) <= MAX_NAME_BYTES
        assert "/" not in name and "\0" not in name
        assert name not in (".", "..")
        assert is_valid(name)
        # the extension is kept whenever the original has one that fits
        _, extension = split_extension(clean(asset.original_file_name, asset.id))
        if extension:
            assert name.endswith(extension), (asset.original_file_name, name)
    keys = [collision_key(n) for n in names.values()]
    assert len(set(keys)) == len(keys), "two names differ only in Unicode normalisation"
    # the first uploaded of each group of equal names keeps the bare name
    groups: dict[str, list[Asset]] = {}
    for asset in assets:
        groups.setdefault(collision_key(clean(asset.original_file_name, asset.id)), []).append(
            asset
        )
    for members in groups.values():
        first = min(members, key=lambda a: (a.created_at, a.id))
        assert names[first.id] == clean(first.original_file_name, first.id)


@settings(max_examples=300, deadline=None)
@given(entries, st.randoms(use_true_random=False))
@example([("a/b.jpg", 0), ("a\u2215b.jpg", 0), ("\0", 1), ("..", 1), ("", 2)], random.Random(0))
@example([("x" * 1000 + ".jpg", 0), ("x" * 1000 + ".jpg", 0)], random.Random(0))
@example([("café.jpg", 1), ("cafe\u0301.jpg", 0), ("CAFÉ.jpg", 0)], random.Random(0))
def test_server_names_become_valid_unique_stable_names(
    drawn: list[tuple[str, int]], shuffler: random.Random
) -> None:
    assets = assets_of(drawn)
    names = name_assets(assets)
    check_names(assets, names)
    # stable: the same whatever order the server lists the assets in
    shuffled = list(assets)
    shuffler.shuffle(shuffled)
    assert name_assets(shuffled) == names


@settings(max_examples=200, deadline=None)
@given(entries, st.integers(min_value=0, max_value=24))
def test_a_new_upload_renames_no_existing_file(drawn: list[tuple[str, int]], pick: int) -> None:
    assets = assets_of(drawn)
    before = name_assets(assets)
    # a later upload with the same name as an existing file
    twin = drawn[pick % len(drawn)][0]
    newcomer = Asset.from_json(asset_json(len(drawn), twin, 10))
    after = name_assets([*assets, newcomer])
    check_names([*assets, newcomer], after)
    assert {k: v for k, v in after.items() if k != newcomer.id} == before


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_clean_makes_any_text_a_valid_name(text: str) -> None:
    assert is_valid(clean(text, "fallback-id"))


def test_nfc_and_nfd_twins_get_distinct_names() -> None:
    composed = unicodedata.normalize("NFC", "Ångström.jpg")
    decomposed = unicodedata.normalize("NFD", "Ångström.jpg")
    assert composed != decomposed
    assets = assets_of([(decomposed, 1), (composed, 0)])
    names = name_assets(assets)
    assert names[assets[1].id] == composed  # first uploaded keeps the bare name
    assert names[assets[0].id].startswith(decomposed[:-4] + "~") and names[assets[0].id].endswith(
        ".jpg"
    )


# -- hostile names through the tree, over real HTTP ------------------------------------------

HOSTILE_NAMES = [
    "AC/DC.jpg",
    "nul\0byte.jpg",
    "..",
    ".",
    "bell\x07tab\tnewline\n.jpg",
    "x" * 1000 + ".jpg",
    "é" * 300 + ".heic",
    unicodedata.normalize("NFC", "Ångström.jpg"),
    unicodedata.normalize("NFD", "Ångström.jpg"),
    "",
    "100%*?.jpg",
]


@pytest.fixture
def hostile_library() -> Iterator[tuple[FakeLibrary, list[str]]]:
    library = FakeLibrary.generate(seed=3, photos=5, videos=0)
    ids = [library.add_asset(name, size=20_000 + i).id for i, name in enumerate(HOSTILE_NAMES)]
    yield library, ids
    library.close()


@asynccontextmanager
async def tree_over(server: FakeImmich, **tree_settings: Any) -> AsyncIterator[Tree]:
    async with ImmichConnector(server.url, server.api_key) as immich:
        yield Tree(
            Catalog(immich, MetadataCache(CacheSettings()), CatalogSettings(**tree_settings)),
            ReaderPool(immich.stream_full_resolution_file),
            TreeSettings(),
        )


async def test_hostile_names_from_the_server_become_valid_names(
    hostile_library: tuple[FakeLibrary, list[str]],
) -> None:
    library, ids = hostile_library
    with FakeImmich(library) as server:
        async with tree_over(server) as tree:
            photos = await tree.root.lookup("photos")
            assert isinstance(photos, AssetDirectory)
            listing = await photos.listing()
    names = [name for name, _ in listing.entries]
    assert len(names) == len(set(names)) > len(HOSTILE_NAMES)
    assert all(is_valid(name) for name in names)
    assert len({collision_key(n) for n in names}) == len(names)
    by_id = {node.asset.id: name for name, node in listing.entries}  # type: ignore[union-attr]
    shown = [by_id[i] for i in ids]
    assert shown[0] == "AC\u2215DC.jpg"
    assert shown[1] == "nul_byte.jpg"
    assert shown[2] == "_.." and shown[3] == "_."
    assert shown[4] == "bell_tab_newline_.jpg"
    assert len(shown[5].encode()) == 255 and shown[5].endswith(".jpg")
    assert len(shown[6].encode()) <= 255 and shown[6].endswith(".heic")
    # NFC/NFD twins: one keeps the bare name (the first uploaded), the other gets a suffix
    assert sorted([shown[7] in HOSTILE_NAMES[7:9], shown[8] in HOSTILE_NAMES[7:9]]) == [
        False,
        True,
    ]
    assert "~" in shown[7] + shown[8]
    assert shown[9] == ids[9]  # no name at all: the asset id
    assert shown[10] == "100%*?.jpg"


# -- hostile search queries, over real HTTP --------------------------------------------------


def fuse_name(text: str) -> bool:
    """Whether ``text`` can arrive as a FUSE lookup name under /search."""
    data = text.encode("utf-8", "surrogatepass")
    return (
        0 < len(data) <= MAX_NAME_BYTES
        and "/" not in text
        and "\0" not in text
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    )


queries = (
    st.one_of(
        st.text(min_size=1, max_size=40),
        st.lists(
            st.sampled_from(["%", "*", "%25", "_", "\\", "'", '"', "é", "🎄", " ", "?", "+"]),
            min_size=1,
            max_size=12,
        ).map("".join),
        st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "🎄", "%"]), st.integers(1, 255)),
    )
    .map(lambda q: q.encode("utf-8", "surrogatepass")[:255].decode("utf-8", "ignore"))
    .filter(fuse_name)
)


@pytest.fixture(scope="module", params=[False, True], ids=["metadata", "smart"])
def search_server(request: pytest.FixtureRequest) -> Iterator[FakeImmich]:
    library = FakeLibrary.generate(seed=0, photos=40, videos=2)
    with FakeImmich(library, smart_search=request.param) as server:
        yield server
    library.close()


def run_search(server: FakeImmich, query: str) -> list[str]:
    async def main() -> list[str]:
        async with tree_over(server, search_limit=50) as tree:
            search = await tree.root.lookup("search")
            assert search is not None
            found = await search.lookup(query)  # type: ignore[union-attr]
            if found is None:
                return []
            listing = await found.listing()  # type: ignore[union-attr]
            return [name for name, _ in listing.entries]

    return trio.run(main)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(queries)
@example("%")
@example("*")
@example("%25")
@example("é" * 127)
@example("🎄" * 63)
@example("IMG")
def test_hostile_search_queries_do_not_crash(search_server: FakeImmich, query: str) -> None:
    search_server.reset_log()
    names = run_search(search_server, query)
    kind = "/api/search/smart" if search_server.smart_search else "/api/search/metadata"
    if not query.startswith("."):
        assert search_server.requests.select("POST", kind), "the query was not searched"
    assert all(is_valid(n) for n in names)
    assert len(names) == len(set(names))
    if query.startswith("."):
        assert names == []


# -- hostile JSON from the server ------------------------------------------------------------


def mock_server(answer: Any) -> httpx.MockTransport:
    """Immich v2.7.5's version endpoint, and ``answer(request)`` for everything else."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/server/version":
            return httpx.Response(200, json={"major": 2, "minor": 7, "patch": 5})
        response: httpx.Response = answer(request)
        return response

    return httpx.MockTransport(handler)


def raw(body: bytes, status: int = 200, content_type: str = "application/json") -> Any:
    return lambda request: httpx.Response(
        status, content=body, headers={"Content-Type": content_type}
    )


BROKEN_BODIES = [
    b"<html><body>Welcome to nginx!</body></html>",
    b'{"assets": {"items": [',
    b"",
    b"null",
    b"[]",
    b'"assets"',
    b'{"assets": null}',
    b'{"assets": {"items": {}}}',
    b'{"assets": {"items": [1, 2]}}',
    b'{"assets": {"items": [], "nextPage": "soon"}}',
    b'{"assets": {"items": [], "nextPage": "1"}}',
    b'{"assets": {"items": [], "nextPage": true}}',
    b"\xff\xfe\x00garbage",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"n": ' + b"9" * 5000 + b"}",
    b'{"assets": {"items": [{"id": 1}]}}',
    b'{"assets": {"items": [{"originalFileName": "x.jpg"}]}}',
]


@pytest.mark.parametrize("body", BROKEN_BODIES, ids=range(len(BROKEN_BODIES)))
async def test_malformed_json_is_an_error_not_a_crash(body: bytes) -> None:
    async with ImmichConnector(
        "http://immich.local", "k" * 20, transport=mock_server(raw(body)), retry_policy=None
    ) as immich:
        with pytest.raises(errors.ProtocolError):
            items = await immich.get_assets()
            # what the connector passes on, the model must refuse or accept cleanly
            for item in items:
                Asset.from_json(item)
        # other endpoints: a value of the promised shape, or ProtocolError; nothing else
        for call, shape in (
            (immich.get_asset_statistics, dict),
            (immich.get_albums, list),
            (immich.get_tags, list),
            (immich.get_people, list),
        ):
            with suppress(errors.ProtocolError):
                assert isinstance(await call(), shape)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 502])
async def test_absurd_error_bodies_still_give_the_right_error(status: int) -> None:
    body = b"[" * 60_000  # nested past Python's recursion limit
    async with ImmichConnector(
        "http://immich.local", "k" * 20, transport=mock_server(raw(body, status)), retry_policy=None
    ) as immich:
        with pytest.raises(errors.ImmichError) as info:
            await immich.get_tags()
    assert info.value.status == status


#: leaving a body early leaves httpx's inner generators (BoundAsyncStream.__aiter__) to the
#: garbage collector, which trio reports; nothing outside httpx can close them
HTTPX_INNER_GENERATORS = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


@HTTPX_INNER_GENERATORS
async def test_oversized_json_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector_module, "MAX_JSON_BYTES", 1 << 20)
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"assets": {"items": ['
        while True:
            sent.append(1)
            yield b'{"id": "x"},' * 10_000

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in endless():
                yield chunk

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Endless(), headers={"Content-Type": "application/json"})

    async with ImmichConnector(
        "http://immich.local", "k" * 20, transport=mock_server(answer), retry_policy=None
    ) as immich:
        with pytest.raises(errors.ProtocolError, match="larger than"):
            await immich.get_assets()
    assert len(sent) < 20  # it stopped reading soon after the limit (~1 MiB of ~120 KiB chunks)

    def declared(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{}", headers={"Content-Length": str(10 << 30)})

    async with ImmichConnector(
        "http://immich.local", "k" * 20, transport=mock_server(declared), retry_policy=None
    ) as immich:
        with pytest.raises(errors.ProtocolError, match="too large"):
            await immich.get_asset_statistics()


@HTTPX_INNER_GENERATORS
async def test_a_gzip_bomb_is_cut_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector_module, "MAX_JSON_BYTES", 1 << 20)
    bomb = gzip.compress(b'{"assets": {"items": [' + b" " * (256 << 20), compresslevel=6)
    assert len(bomb) < 1 << 20  # it fits under the limit as sent: only decoding shows it

    class Sent(httpx.AsyncByteStream):
        # a stream, not bytes: httpx.Response(content=...) would inflate the bomb itself
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for start in range(0, len(bomb), 16384):
                yield bomb[start : start + 16384]

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return httpx.Response(200, stream=Sent(), headers=headers)

    async with ImmichConnector(
        "http://immich.local", "k" * 20, transport=mock_server(answer), retry_policy=None
    ) as immich:
        tracemalloc.start()
        try:
            with pytest.raises(errors.ProtocolError, match="larger than"):
                await immich.get_assets()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 32 << 20  # never inflated whole (256 MiB)


@HTTPX_INNER_GENERATORS
async def test_a_corrupt_or_unknown_encoding_is_an_error() -> None:
    for encoding, body in (("gzip", b"not gzip at all"), ("br", b"\x00"), ("zstd", b"x")):

        class Sent(httpx.AsyncByteStream):
            def __init__(self, body: bytes) -> None:
                self.body = body

            async def __aiter__(self) -> AsyncIterator[bytes]:
                yield self.body

        def answer(request: httpx.Request, encoding: str = encoding, body: bytes = body) -> Any:
            headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
            return httpx.Response(200, stream=Sent(body), headers=headers)

        async with ImmichConnector(
            "http://immich.local", "k" * 20, transport=mock_server(answer), retry_policy=None
        ) as immich:
            with pytest.raises(errors.ProtocolError):
                await immich.get_asset_statistics()


# -- hostile names on a real mount -----------------------------------------------------------


def test_hostile_names_on_a_real_mount(
    hostile_library: tuple[FakeLibrary, list[str]], tmp_path: Path
) -> None:
    library, ids = hostile_library
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with FakeImmich(library) as server:
        process = MountProcess(
            mountpoint, {"IMMICH_URL": server.url, "IMMICH_API_KEY": server.api_key}
        )
        try:
            process.wait_mounted()
            names = os.listdir(mountpoint / "photos")
            assert len(names) == len(set(names)) > len(HOSTILE_NAMES)
            by_id = {
                os.getxattr(mountpoint / "photos" / n, "user.immich.id").decode(): n for n in names
            }
            for asset_id in ids:
                path = mountpoint / "photos" / by_id[asset_id]
                digest = hashlib.sha1(path.read_bytes()).hexdigest()
                assert digest == library.sha1(asset_id), by_id[asset_id]
            # hostile queries as directory names under /search
            for query in ["%", "*", "100%*?", "é" * 127, "x" * 255, "IMG"]:
                listed = os.listdir(mountpoint / "search" / query)
                assert len(listed) == len(set(listed))
            with pytest.raises(OSError) as info:
                os.listdir(mountpoint / "search" / ("x" * 256))
            assert info.value.errno == errno.ENAMETOOLONG
            assert all(len(n.encode()) <= 255 for n in os.listdir(mountpoint / "search"))
            assert process.unmount() == (0, 0)
        finally:
            process.cleanup()


# -- a URL with a reverse-proxy path prefix, on a real mount ----------------------------------


def test_a_url_with_a_path_prefix_on_a_real_mount(
    fake_library: FakeLibrary, tmp_path: Path
) -> None:
    photo = fake_library.find("Kinkaku-ji.jpg")
    video = max(
        (a for a in fake_library.assets.values() if a.type == "VIDEO"), key=lambda a: a.size
    )
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with FakeImmich(fake_library) as server, Proxy(server.port, prefix="/immich") as proxy:
        # a trailing slash and the prefix: requests go to /immich/api/...
        env = {"IMMICH_URL": proxy.url, "IMMICH_API_KEY": server.api_key}
        process = MountProcess(mountpoint, env, log_path=tmp_path / "mount.log")
        try:
            process.wait_mounted()
            data = (mountpoint / "photos" / photo.original_file_name).read_bytes()
            assert hashlib.sha1(data).hexdigest() == fake_library.sha1(photo.id)
            names = {
                os.getxattr(mountpoint / "videos" / n, "user.immich.id").decode(): n
                for n in os.listdir(mountpoint / "videos")
            }
            with open(mountpoint / "videos" / names[video.id], "rb") as f:
                f.seek(video.size // 2)
                half = video.size // 2
                assert f.read(4096) == fake_library.content(video.id)[half : half + 4096]
            assert process.unmount() == (0, 0)
        finally:
            process.cleanup()
    assert proxy.refused == []
    assert any(t.startswith(b"/immich/api/assets/") for t in proxy.forwarded)
    assert all(t.startswith(b"/immich/api/") for t in proxy.forwarded)
