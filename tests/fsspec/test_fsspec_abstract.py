"""fsspec's own abstract tests of ``get`` (copying into a local directory), on ``immich://``.

fsspec's abstract classes build their scenario by writing to the filesystem under test
(``touch``, ``makedirs``, ``pipe``) and remove it afterwards; a read-only filesystem
cannot. Here the scenarios are made in the fake library instead, as nested tags
(``tags/source``, ``tags/source/subdir``, ``tags/source/subdir/nesteddir``) holding
assets named ``file1``, ``subfile1``, ... The other abstract classes (copy, put, pipe,
open for writing) only write, so they do not apply.

One difference is Immich's, not immichfs's: a tag lists its descendants' assets too
(as Immich's tag page does), so ``tags/source`` also holds ``subfile1``. The two tests
that copy a directory into an existing one and then expect exactly its own files are
left out for that reason, and so are those whose scenario cannot be made of tags
(the glob edge cases: the same names in sibling directories; files of given contents).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.get import AbstractGetTests

from immichfs.fsspec import ImmichFileSystem

#: the scenario's directories (as tags) and the assets each holds itself
SCENARIO = {
    "source": ["file1", "file2"],
    "source/subdir": ["subfile1", "subfile2"],
    "source/subdir/nesteddir": ["nestedfile"],
}
#: fsspec's scenario of a directory and a file of the same name prefix
PREFIX_SCENARIO = {"source": ["subdir.txt"], "source/subdir": ["subfile.txt"]}
DESCENDANTS = "a tag lists its descendants' assets too (Immich's rule), so the copy holds more"
WRITES = "the scenario is built by writing to the filesystem under test"


def _tagged(library: Any, scenario: dict[str, list[str]]) -> str:
    """Make ``scenario`` (tag path → names of the assets it holds) in the fake library."""
    for path, names in scenario.items():
        tag = library._tag(path)  # the fake has no public way to create a tag
        for name in names:
            asset = library.add_asset(name, kind="jpeg", size=20_000)
            asset.tag_ids.append(tag.id)
    library.generation += 1
    return "tags/source"


class TestImmichGet(AbstractFixtures, AbstractGetTests):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, mutable_immich: Any) -> ImmichFileSystem:
        return ImmichFileSystem(url=mutable_immich.url, api_key=mutable_immich.api_key)

    @pytest.fixture
    def fs_path(self) -> str:
        return "tags"

    @pytest.fixture
    def fs_bulk_operations_scenario_0(self, mutable_immich: Any) -> Iterator[str]:
        yield _tagged(mutable_immich.library, SCENARIO)

    @pytest.fixture
    def fs_dir_and_file_with_same_name_prefix(self, mutable_immich: Any) -> Iterator[str]:
        yield _tagged(mutable_immich.library, PREFIX_SCENARIO)

    # -- not applicable to a read-only library --------------------------------------------

    @pytest.fixture
    def fs_glob_edge_cases_files(self) -> None:
        pytest.skip(WRITES + " (glob edge cases: files at every level of one directory)")

    @pytest.fixture
    def fs_10_files_with_hashed_names(self) -> None:
        pytest.skip(WRITES + " (files with given contents)")

    @pytest.mark.skip(reason=WRITES + " (mkdir, touch)")
    def test_get_directory_recursive(self) -> None: ...

    @pytest.mark.skip(reason=DESCENDANTS)
    def test_get_directory_to_existing_directory(self) -> None: ...

    @pytest.mark.skip(reason=DESCENDANTS)
    def test_get_glob_to_existing_directory(self) -> None: ...
