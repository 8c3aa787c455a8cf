"""Operations called directly, without the kernel.

The filesystem is built by the composition root (``mount.build_operations``)
over the real connector talking HTTP to the fake server; the kernel's part is
played by a duck-typed request context and an injected ``readdir_reply`` that
can pretend the buffer is full. After each test the lookup counts must return
to zero once the kernel's ``forget`` calls are replayed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Any

import pyfuse3
import pytest
import trio
from cachetools import LRUCache
from opsutil import CTX, Replies

from immichfs.errors import AuthenticationError, NotFound, ServerError, StaleAsset
from immichfs.fuse.operations import Operations
from immichfs.vfs.inodes import ROOT_INODE

#: the organised views the composition root adds (immichfs.vfs.views)
VIEWS = {b"albums", b"people", b"tags", b"by-date", b"favorites", b"archive"}


async def forget_all(operations: Operations) -> None:
    await operations.forget(list(operations.inodes.outstanding().items()))
    assert operations.inodes.outstanding() == {}


async def lookup_path(operations: Operations, path: str) -> pyfuse3.EntryAttributes:
    inode = ROOT_INODE
    entry = None
    for part in path.strip("/").split("/"):
        entry = await operations.lookup(inode, part.encode(), CTX)
        inode = entry.st_ino
    assert entry is not None
    return entry


async def list_dir(operations: Operations, replies: Replies, inode: int) -> dict[bytes, int]:
    fh = await operations.opendir(inode, CTX)
    replies.entries.clear()
    start = 0
    while True:
        replies.next_call()
        before = len(replies.entries)
        await operations.readdir(fh, start, None)  # type: ignore[arg-type]
        if len(replies.entries) == before:
            break
        start = replies.entries[-1][2]
    await operations.releasedir(fh)
    entries = {name: ino for name, ino, _ in replies.entries}
    # . and .. come first, then the directory's entries
    assert [name for name, _, _ in replies.entries[:2]] == [b".", b".."]
    assert entries.pop(b".") == inode
    entries.pop(b"..")
    return entries


async def test_root_and_photos(ops: tuple[Operations, Replies], fake_immich: Any) -> None:
    operations, replies = ops
    root = await list_dir(operations, replies, ROOT_INODE)
    assert set(root) == {b"photos", b"videos", b"thumbs", b"search", *VIEWS}
    attrs = await operations.getattr(ROOT_INODE, CTX)
    assert stat.S_ISDIR(attrs.st_mode) and attrs.st_mode & 0o777 == 0o555
    assert attrs.st_nlink == 2 + len(root)
    photos = await list_dir(operations, replies, root[b"photos"])
    library = fake_immich.library
    expected = [
        a
        for a in library.assets.values()
        if a.type == "IMAGE"
        and a.visibility == "timeline"
        and not a.is_trashed
        and a.owner_id == library.me.id
    ]
    assert len(photos) == len(expected)
    assert all(len(name) <= 255 and b"/" not in name for name in photos)
    await forget_all(operations)


async def test_readdir_with_a_full_buffer_counts_only_accepted_entries(
    ops: tuple[Operations, Replies],
) -> None:
    operations, replies = ops
    photos = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    fh = await operations.opendir(photos, CTX)
    replies.room = 5
    replies.next_call()
    await operations.readdir(fh, 0, None)  # type: ignore[arg-type]
    assert len(replies.entries) == 5
    dots, first = replies.entries[:2], {ino for _, ino, _ in replies.entries[2:]}
    assert [(name, ino) for name, ino, _ in dots] == [(b".", photos), (b"..", ROOT_INODE)]
    assert operations.inodes.lookup_count(photos) == 1  # its lookup, not the "."
    assert all(operations.inodes.lookup_count(i) == 1 for i in first)
    # continue from the last next_id: no entry twice, none skipped
    replies.room = 1_000_000
    replies.next_call()
    await operations.readdir(fh, replies.entries[-1][2], None)  # type: ignore[arg-type]
    await operations.releasedir(fh)
    names = [name for name, _, _ in replies.entries if name not in (b".", b"..")]
    assert len(names) == len(set(names))
    all_names = await list_dir(operations, replies, photos)
    assert sorted(names) == sorted(all_names)
    counted = sum(operations.inodes.outstanding().values())
    # photos (1 lookup) + every entry twice (two full listings) - none for . and ..
    assert counted == 1 + 2 * len(all_names)
    await forget_all(operations)


async def test_readdir_reuses_entries_until_the_listing_is_replaced(
    ops: tuple[Operations, Replies], fake_immich: Any
) -> None:
    operations, replies = ops
    seen: list[pyfuse3.EntryAttributes] = []

    def reply(token: Any, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        seen.append(attr)
        return replies(token, name, attr, next_id)

    operations.readdir_reply = reply
    photos_inode = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    first = await list_dir(operations, replies, photos_inode)
    sizes = {attr.st_ino: attr.st_size for attr in seen}
    built = list(seen)  # kept alive: their ids stay theirs
    seen.clear()
    # the same listing again: the same answers, from entries built the first time
    assert await list_dir(operations, replies, photos_inode) == first
    assert {attr.st_ino: attr.st_size for attr in seen} == sizes
    ids = {id(attr) for attr in built}
    assert sum(id(attr) in ids for attr in seen) == len(first)
    # the file changes on the server and the listing is loaded again: the new size,
    # same inode
    inode = sorted(first.items())[0][1]
    key = operations.inodes.key(inode)
    assert isinstance(key, tuple) and key[0] == "asset"
    changed = fake_immich.library.change_content(key[1], size=sizes[inode] + 1000)
    photos_node = await operations.tree.node(operations.inodes.key(photos_inode))
    operations.tree.cache.listings.pop(photos_node.key)
    operations.tree.cache.queries.pop(("timeline", "IMAGE"))  # and the answer it was built from
    seen.clear()
    assert await list_dir(operations, replies, photos_inode) == first
    now = {attr.st_ino: attr.st_size for attr in seen}
    assert now[inode] == changed.size == sizes[inode] + 1000
    assert all(now[i] == sizes[i] for i in first.values() if i != inode)
    await forget_all(operations)


async def test_readdir_of_a_listing_larger_than_the_entry_cache(
    ops: tuple[Operations, Replies],
) -> None:
    operations, replies = ops
    photos_inode = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    expected = await list_dir(operations, replies, photos_inode)
    # a bound below the listing's size: nothing kept (and no error), same answers
    operations._ready = LRUCache(maxsize=10, getsizeof=len)  # type: ignore[arg-type]
    assert await list_dir(operations, replies, photos_inode) == expected
    assert len(operations._ready) == 0
    await forget_all(operations)


async def test_stat_read_and_same_inode_everywhere(
    ops: tuple[Operations, Replies], fake_immich: Any
) -> None:
    operations, replies = ops
    library = fake_immich.library
    photos = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    names = await list_dir(operations, replies, photos)
    name, inode = sorted(names.items())[0]
    entry = await operations.lookup(photos, name, CTX)
    assert entry.st_ino == inode
    asset_id = operations.inodes.key(inode)[1]  # type: ignore[index]
    content = library.content(asset_id)
    assert entry.st_size == len(content)
    assert stat.S_ISREG(entry.st_mode) and entry.st_mode & 0o777 == 0o444
    assert entry.st_blocks == (len(content) + 511) // 512
    assert 0 < entry.attr_timeout <= 5 and 0 < entry.entry_timeout <= 5
    info = await operations.open(inode, os.O_RDONLY, CTX)
    data = b""
    while len(data) < len(content) + 1:
        chunk = await operations.read(info.fh, len(data), 65536)
        if not chunk:
            break
        data += chunk
    await operations.release(info.fh)
    assert hashlib.sha1(data).hexdigest() == library.sha1(asset_id)
    # the same asset through a search is the same inode
    search = (await operations.lookup(ROOT_INODE, b"search", CTX)).st_ino
    stem = name.decode().rsplit(".", 1)[0]
    query = (await operations.lookup(search, stem.encode(), CTX)).st_ino
    found = await list_dir(operations, replies, query)
    assert inode in found.values()
    await forget_all(operations)


async def test_writes_are_erofs(ops: tuple[Operations, Replies]) -> None:
    operations, replies = ops
    photos = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    names = await list_dir(operations, replies, photos)
    inode = next(iter(names.values()))
    calls = [
        operations.open(inode, os.O_WRONLY, CTX),
        operations.open(inode, os.O_RDWR, CTX),
        operations.open(inode, os.O_RDONLY | os.O_TRUNC, CTX),
        operations.setattr(inode, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, CTX),
        operations.mkdir(photos, b"new", 0o755, CTX),
        operations.create(photos, b"new.jpg", 0o644, os.O_WRONLY, CTX),
        operations.mknod(photos, b"new", 0o644, 0, CTX),
        operations.unlink(photos, next(iter(names)), CTX),
        operations.rmdir(ROOT_INODE, b"photos", CTX),
        operations.rename(photos, b"a", photos, b"b", 0, CTX),
        operations.symlink(photos, b"l", b"target", CTX),
        operations.link(inode, photos, b"l", CTX),
        operations.setxattr(inode, b"user.x", b"1", CTX),
        operations.removexattr(inode, b"user.x", CTX),
        operations.write(1, 0, b"x"),
    ]
    for call in calls:
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await call
        assert caught.value.errno == errno.EROFS
    await forget_all(operations)


async def test_unknown_names_are_enoent(ops: tuple[Operations, Replies]) -> None:
    operations, _ = ops
    for parent, name in [(ROOT_INODE, b"no-such-view"), (ROOT_INODE, b"\xff\xfe")]:
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await operations.lookup(parent, name, CTX)
        assert caught.value.errno == errno.ENOENT
    photos = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await operations.lookup(photos, b"no such photo.jpg", CTX)
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await operations.getattr(987654, CTX)
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await operations.lookup(ROOT_INODE, b"x" * 256, CTX)
    assert caught.value.errno == errno.ENAMETOOLONG
    # dot lookups
    assert (await operations.lookup(photos, b".", CTX)).st_ino == photos
    assert (await operations.lookup(photos, b"..", CTX)).st_ino == ROOT_INODE
    await forget_all(operations)


async def test_thumbnails_report_their_size_and_type(ops: tuple[Operations, Replies]) -> None:
    operations, replies = ops
    thumbs = (await operations.lookup(ROOT_INODE, b"thumbs", CTX)).st_ino
    assert set(await list_dir(operations, replies, thumbs)) == {b"preview", b"thumbnail"}
    for size, magic in ((b"preview", b"\xff\xd8\xff"), (b"thumbnail", b"RIFF")):
        directory = (await operations.lookup(thumbs, size, CTX)).st_ino
        names = await list_dir(operations, replies, directory)
        name = sorted(names)[0]
        entry = await operations.lookup(directory, name, CTX)
        assert entry.st_size > 0 and entry.attr_timeout > 0
        info = await operations.open(entry.st_ino, os.O_RDONLY, CTX)
        data = await operations.read(info.fh, 0, entry.st_size + 100)
        await operations.release(info.fh)
        assert len(data) == entry.st_size and data.startswith(magic)
        assert name.endswith(b".jpg" if size == b"preview" else b".webp")
    await forget_all(operations)


async def test_xattrs(ops: tuple[Operations, Replies]) -> None:
    operations, replies = ops
    photos = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    names = await list_dir(operations, replies, photos)
    inode = next(iter(names.values()))
    listed = await operations.listxattr(inode, CTX)
    assert b"user.immich.id" in listed
    value = await operations.getxattr(inode, b"user.immich.id", CTX)
    assert value.decode() == operations.inodes.key(inode)[1]  # type: ignore[index]
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await operations.getxattr(inode, b"user.nothing", CTX)
    assert caught.value.errno == pyfuse3.ENOATTR
    await forget_all(operations)


# -- the errno guard, with a tree that fails on purpose


def logged(level: str, message: str) -> pytest.MarkDecorator:
    """The guard's log line for a failed lookup."""
    return pytest.mark.expect_log(
        f"^lookup: {message}$", level=level, logger="immichfs.fuse.operations"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NotFound("gone"), errno.ENOENT),
        pytest.param(StaleAsset("changed"), errno.ESTALE, marks=logged("WARNING", "changed")),
        pytest.param(
            AuthenticationError("revoked", status=401),
            errno.EACCES,
            marks=logged("ERROR", "access denied: revoked"),
        ),
        pytest.param(ServerError("502", status=502), errno.EIO, marks=logged("ERROR", "502")),
        pytest.param(RuntimeError("a bug"), errno.EIO, marks=logged("ERROR", "unexpected error")),
        pytest.param(KeyError("a bug"), errno.EIO, marks=logged("ERROR", "unexpected error")),
    ],
)
async def test_errors_become_errno(
    ops: tuple[Operations, Replies],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    expected: int,
) -> None:
    operations, _ = ops

    async def broken(*args: Any) -> Any:
        raise error

    monkeypatch.setattr(operations.tree, "lookup", broken)
    for _ in range(3):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await operations.lookup(ROOT_INODE, b"photos", CTX)
        assert caught.value.errno == expected
    assert operations.inodes.outstanding() == {}
    if isinstance(error, AuthenticationError):
        # once, not once per request
        assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
    if type(error) in (RuntimeError, KeyError):
        assert any(r.exc_info for r in caplog.records)


async def test_cancellation_is_not_swallowed(
    ops: tuple[Operations, Replies], monkeypatch: pytest.MonkeyPatch
) -> None:
    operations, _ = ops

    async def hang(*args: Any) -> Any:
        await trio.sleep_forever()

    monkeypatch.setattr(operations.tree, "lookup", hang)
    with trio.move_on_after(0.05) as scope:
        await operations.lookup(ROOT_INODE, b"photos", CTX)
    assert scope.cancelled_caught


@pytest.mark.expect_log(r"kernel forgot inode \d+ 3 times but held 0", logger="immichfs.vfs.inodes")
async def test_forget_never_raises(ops: tuple[Operations, Replies]) -> None:
    operations, _ = ops
    await operations.forget([(424242, 3)])
    assert operations.inodes.outstanding() == {}


async def test_invalidate_only_what_the_kernel_holds(ops: tuple[Operations, Replies]) -> None:
    operations, replies = ops
    calls: list[int] = []

    def invalidate_inode(inode: int, attr_only: bool) -> None:
        calls.append(inode)

    operations.invalidate_inode = invalidate_inode
    photos = (await operations.lookup(ROOT_INODE, b"photos", CTX)).st_ino
    names = await list_dir(operations, replies, photos)
    listed = next(iter(names.values()))
    keys = [operations.inodes.key(listed), operations.inodes.key(photos), ("asset", "unseen")]
    assert await operations.invalidate(keys) == 2
    assert sorted(calls) == sorted([listed, photos])
    await forget_all(operations)
    calls.clear()
    assert await operations.invalidate(keys) == 0 and calls == []
