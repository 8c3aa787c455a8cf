"""Inode table, lookup counts, directory snapshots and handles."""

from __future__ import annotations

import pytest

from immichfs.vfs.inodes import ROOT_INODE, DirSnapshot, HandleTable, InodeTable


def test_root_and_stable_numbers() -> None:
    table = InodeTable(("dir", "/"))
    assert table.inode(("dir", "/")) == ROOT_INODE
    first = table.inode(("asset", "a"))
    second = table.inode(("asset", "b"))
    assert first != second and ROOT_INODE not in (first, second)
    assert table.inode(("asset", "a")) == first
    assert table.key(first) == ("asset", "a")
    assert table.key(999) is None


def test_numbers_are_never_reused_after_forget() -> None:
    table = InodeTable(("dir", "/"))
    seen = set()
    for i in range(50):
        inode = table.inode(("asset", str(i)))
        table.remember(inode)
        table.forget(inode, 1)
        seen.add(inode)
    assert len(seen) == 50
    # a forgotten key keeps its number
    assert table.inode(("asset", "0")) == min(seen)


def test_lookup_counts_return_to_zero() -> None:
    table = InodeTable(("dir", "/"))
    inode = table.inode(("asset", "x"))
    table.remember(inode)
    table.remember(inode, 2)
    assert table.lookup_count(inode) == 3
    assert table.outstanding() == {inode: 3}
    table.forget(inode, 2)
    assert table.lookup_count(inode) == 1
    table.forget(inode, 1)
    assert table.outstanding() == {}


def test_remember_each_counts_every_occurrence() -> None:
    table = InodeTable(("dir", "/"))
    a, b = table.inode(("asset", "a")), table.inode(("asset", "b"))
    table.remember(a)
    table.remember_each([a, b, a])
    assert table.outstanding() == {a: 3, b: 1}


@pytest.mark.expect_log(r"kernel forgot inode \d+ 5 times but held 0", logger="immichfs.vfs.inodes")
def test_forget_more_than_held_does_not_raise() -> None:
    table = InodeTable(("dir", "/"))
    inode = table.inode(("asset", "x"))
    table.forget(inode, 5)
    assert table.lookup_count(inode) == 0


def test_snapshot_offsets_are_positions() -> None:
    snapshot = DirSnapshot(("dir", "/"), [("a", 1), ("b", 2), ("c", 3)])
    assert list(snapshot.since(0)) == [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    assert list(snapshot.since(2)) == [(3, "c", 3)]
    assert list(snapshot.since(3)) == []
    assert list(snapshot.since(-1)) == list(snapshot.since(0))


def test_snapshot_does_not_see_later_changes() -> None:
    entries = [("a", 1), ("b", 2)]
    snapshot = DirSnapshot(("dir", "/"), tuple(entries))
    entries.insert(0, ("0", 0))
    first = list(snapshot.since(0))[:1]
    rest = list(snapshot.since(first[-1][0]))
    assert [name for _, name, _ in first + rest] == ["a", "b"]


def test_handles() -> None:
    handles: HandleTable[str] = HandleTable()
    one = handles.add("one")
    two = handles.add("two")
    assert one != two and handles.get(two) == "two"
    assert handles.pop(one) == "one"
    assert handles.pop(one) is None
    assert len(handles) == 1 and handles.values() == ["two"]
