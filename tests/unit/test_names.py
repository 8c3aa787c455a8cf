"""File-name rules: cleaning, shortening, and the duplicate rule."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from immichfs.vfs.names import (
    MAX_NAME_BYTES,
    NameRequest,
    assign_names,
    clean,
    is_valid,
    split_extension,
    with_suffix,
)

ID_A = "aaaaaaaa-1111-4111-8111-111111111111"
ID_B = "bbbbbbbb-2222-4222-8222-222222222222"
ID_C = "cccccccc-3333-4333-8333-333333333333"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("IMG_0001.JPG", "IMG_0001.JPG"),
        ("AC/DC.jpg", "AC\u2215DC.jpg"),
        ("a\0b.jpg", "a_b.jpg"),
        ("tab\there\n.jpg", "tab_here_.jpg"),
        ("del\x7f\x85.jpg", "del__.jpg"),
        (".", "_."),
        ("..", "_.."),
        ("...", "..."),
        ("lone\ud800.jpg", "lone\ufffd.jpg"),
        ("Été à Noël 🎄.jpg", "Été à Noël 🎄.jpg"),
    ],
)
def test_clean(raw: str, expected: str) -> None:
    assert clean(raw) == expected
    assert is_valid(clean(raw))


def test_empty_name_uses_fallback() -> None:
    assert clean("", ID_A) == ID_A
    assert clean("", "") == "unnamed"


def test_split_extension() -> None:
    assert split_extension("a.tar.gz") == ("a.tar", ".gz")
    assert split_extension(".bashrc") == (".bashrc", "")
    assert split_extension("noext") == ("noext", "")
    assert split_extension("trailing.") == ("trailing.", "")
    assert split_extension("x." + "e" * 40) == ("x." + "e" * 40, "")


def test_long_name_keeps_extension_and_whole_characters() -> None:
    raw = "é" * 300 + ".jpeg"
    name = clean(raw)
    data = name.encode("utf-8")
    assert len(data) <= MAX_NAME_BYTES
    assert name.endswith(".jpeg")
    assert name.startswith("é" * 100)
    data.decode("utf-8")  # no split character
    # 4-byte characters near the limit
    emoji = clean("🎄" * 100 + ".png")
    assert len(emoji.encode()) <= MAX_NAME_BYTES and emoji.endswith(".png")
    assert set(emoji[:-4]) == {"🎄"}


def test_with_suffix_stays_within_limit() -> None:
    long_stem = "x" * 260
    name = with_suffix(clean(long_stem + ".mp4"), "~abcdef12")
    assert name.endswith("~abcdef12.mp4")
    assert len(name.encode()) == MAX_NAME_BYTES


def test_duplicates_first_uploaded_keeps_bare_name() -> None:
    names = assign_names(
        [
            NameRequest(ID_B, "IMG_0001.JPG", (2, ID_B)),
            NameRequest(ID_A, "IMG_0001.JPG", (1, ID_A)),
            NameRequest(ID_C, "other.jpg", (0, ID_C)),
        ]
    )
    assert names == {
        ID_A: "IMG_0001.JPG",
        ID_B: "IMG_0001~bbbbbbbb.JPG",
        ID_C: "other.jpg",
    }


def test_names_do_not_depend_on_listing_order() -> None:
    requests = [NameRequest(f"id{i:02d}xxxxxx", "same.jpg", (i % 3, i)) for i in range(12)]
    forward = assign_names(requests)
    backward = assign_names(list(reversed(requests)))
    assert forward == backward
    assert len(set(forward.values())) == 12


def test_existing_names_stay_when_a_later_upload_collides() -> None:
    before = assign_names([NameRequest(ID_A, "IMG_0001.JPG", (1, ID_A))])
    after = assign_names(
        [
            NameRequest(ID_A, "IMG_0001.JPG", (1, ID_A)),
            NameRequest(ID_C, "IMG_0001.JPG", (5, ID_C)),  # uploaded later
        ]
    )
    assert after[ID_A] == before[ID_A] == "IMG_0001.JPG"
    assert after[ID_C] == "IMG_0001~cccccccc.JPG"


def test_unicode_normalisation_collides() -> None:
    noel = "Été à Noël.jpg"
    nfc, nfd = unicodedata.normalize("NFC", noel), unicodedata.normalize("NFD", noel)
    assert nfc != nfd
    names = assign_names([NameRequest(ID_A, nfc, (1,)), NameRequest(ID_B, nfd, (2,))])
    assert names[ID_A] == nfc
    assert names[ID_B].endswith("~bbbbbbbb.jpg")
    assert unicodedata.normalize("NFC", names[ID_B]) != unicodedata.normalize("NFC", names[ID_A])


def test_suffixed_name_that_is_taken_uses_the_whole_id() -> None:
    names = assign_names(
        [
            NameRequest(ID_A, "a.jpg", (1,)),
            NameRequest(ID_B, "a.jpg", (2,)),
            NameRequest(ID_C, "a~bbbbbbbb.jpg", (3,)),  # someone uploaded that very name
        ]
    )
    assert names[ID_C] == "a~bbbbbbbb.jpg"
    assert names[ID_B] == f"a~{ID_B}.jpg"


def test_reserved_names_are_never_given_to_assets() -> None:
    names = assign_names([NameRequest(ID_A, ".manifest.jsonl", (1,))], reserved=[".manifest.jsonl"])
    assert names[ID_A] == ".manifest~aaaaaaaa.jsonl"


def test_long_duplicates_stay_distinct_after_shortening() -> None:
    long_a = "p" * 300 + "A.jpg"
    long_b = "p" * 300 + "B.jpg"  # differs only past the cut
    names = assign_names([NameRequest(ID_A, long_a, (1,)), NameRequest(ID_B, long_b, (2,))])
    assert names[ID_A] != names[ID_B]
    assert all(len(n.encode()) <= MAX_NAME_BYTES and n.endswith(".jpg") for n in names.values())


@given(
    st.lists(
        st.tuples(st.text(max_size=300), st.integers(0, 3)),
        max_size=25,
    )
)
def test_any_server_names_give_unique_valid_names(raw: list[tuple[str, int]]) -> None:
    requests = [NameRequest(f"{i:08d}-id", name, (order,)) for i, (name, order) in enumerate(raw)]
    names = assign_names(requests)
    assert set(names) == {r.ident for r in requests}
    assert all(is_valid(n) for n in names.values())
    keys = [unicodedata.normalize("NFC", n) for n in names.values()]
    assert len(set(keys)) == len(keys)
    assert assign_names(list(reversed(requests))) == names


@given(
    st.lists(st.tuples(st.sampled_from(["a.jpg", "b.jpg", "A.jpg"]), st.integers(0, 3))),
    st.lists(st.sampled_from(["a.jpg", "b~00000001.jpg", "c.jpg"]), max_size=2),
)
def test_the_first_by_order_then_id_keeps_the_bare_name(
    raw: list[tuple[str, int]], reserved: list[str]
) -> None:
    requests = [NameRequest(f"{i:08d}", name, order) for i, (name, order) in enumerate(raw)]
    names = assign_names(requests, reserved)
    for name in {r.name for r in requests}:
        group = [r for r in requests if r.name == name]
        first = min(group, key=lambda r: (r.order, r.ident))
        bare = [r.ident for r in group if names[r.ident] == name]
        assert bare == ([] if name in reserved else [first.ident])
    assert not set(names.values()) & set(reserved)
