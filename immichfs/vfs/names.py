"""File-name rules: Immich's names made into valid, unique, stable file names.

Immich stores ``originalFileName`` verbatim: it can hold ``/``, NUL, control
characters, lone surrogates, be empty, be ``..`` or run to a thousand bytes,
and it is not unique. The rules, in order:

1. Lone surrogates (not encodable as UTF-8) become U+FFFD.
2. ``/`` becomes ``∕`` (U+2215 DIVISION SLASH): it looks like the original and
   cannot split a path. NUL, other C0 controls, DEL and C1 controls become ``_``.
3. An empty name becomes the fallback (the asset id); ``.`` and ``..`` get a
   leading ``_``.
4. Names longer than 255 bytes of UTF-8 are shortened by cutting the stem on a
   character boundary; the extension (up to 32 bytes) is kept.
5. Duplicates: names are compared after Unicode NFC normalisation (``é`` typed
   two ways collides). Within each group of colliding names the asset that comes
   first by ``order`` (upload time, then id) keeps the bare name; every other one
   becomes ``stem~<first 8 characters of its id>.ext``. Because a later upload
   sorts last, an existing file's name does not change when another asset with
   the same name is uploaded. Should a suffixed name itself be taken, the whole
   id is used instead, then a counter. Names in ``reserved`` (files the view adds
   itself) always count as taken.

The result depends only on the set of assets, never on listing order, so it is
the same on every listing and every mount.
"""

from __future__ import annotations

import logging
import operator
import re
import unicodedata
from collections.abc import Iterable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255
MAX_EXTENSION_BYTES = 32
SLASH_REPLACEMENT = "\u2215"
CONTROL_REPLACEMENT = "_"
SUFFIX_SEPARATOR = "~"
SHORT_ID_LENGTH = 8


#: characters rules 1 and 2 replace (controls: C0, DEL, C1; lone surrogates)
_UNSAFE = re.compile("[/\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _replace(match: re.Match[str]) -> str:
    char = match.group()
    if char == "/":
        return SLASH_REPLACEMENT
    if "\ud800" <= char <= "\udfff":
        return "\ufffd"
    return CONTROL_REPLACEMENT


def split_extension(name: str) -> tuple[str, str]:
    """(stem, extension with its dot); dot-files and over-long extensions have none."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return name, ""
    extension = name[dot:]
    if len(extension.encode("utf-8")) > MAX_EXTENSION_BYTES:
        return name, ""
    return name[:dot], extension


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: max(limit, 0)].decode("utf-8", errors="ignore")


def fit(stem: str, tail: str, limit: int = MAX_NAME_BYTES) -> str:
    """``stem + tail`` within ``limit`` bytes, shortening the stem first."""
    budget = limit - len(tail.encode("utf-8"))
    if budget < 1:
        return _cut(stem + tail, limit)
    return _cut(stem, budget) + tail


def clean(name: str, fallback: str = "unnamed") -> str:
    """``name`` as a valid file name: rules 1–4 of the module docstring."""
    if (
        name.isascii()
        and name.isprintable()
        and "/" not in name
        and 0 < len(name) <= MAX_NAME_BYTES
        and name not in (".", "..")
    ):
        return name  # most names: nothing to replace or shorten (a listing cleans 100,000)
    text = _UNSAFE.sub(_replace, name)
    if not text:
        text = _UNSAFE.sub(_replace, fallback) or "unnamed"
    if text in (".", ".."):
        text = "_" + text
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        stem, extension = split_extension(text)
        text = fit(stem, extension)
    return text


def with_suffix(name: str, suffix: str) -> str:
    """``stem + suffix + ext`` of an already clean ``name``, within 255 bytes."""
    stem, extension = split_extension(name)
    tail = suffix + extension
    if name.isascii() and tail.isascii() and len(stem) + len(tail) <= MAX_NAME_BYTES:
        return stem + tail  # ASCII: as many bytes as characters, and few enough
    return fit(stem, tail)


def collision_key(name: str) -> str:
    """What two names must share to collide: NFC, so composed/decomposed forms clash."""
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def is_valid(name: str) -> bool:
    """A name the kernel accepts as one path component."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return (
        0 < size <= MAX_NAME_BYTES
        and "/" not in name
        and "\0" not in name
        and name
        not in (
            ".",
            "..",
        )
    )


class NameRequest(NamedTuple):
    """One entry to name: ``ident`` is unique in the directory (an asset id).

    A named tuple: a listing makes one per asset, and a frozen dataclass took
    longer to build than the naming itself.
    """

    ident: str
    name: str  # as the server sent it (cleaned here)
    order: Any  # sortable; the smallest of a colliding group keeps the bare name


#: the order of the module docstring's rule 5: ``order``, then ``ident``
_RANK = operator.itemgetter(2, 0)


def _ranks_before(a: NameRequest, b: NameRequest) -> bool:
    """``a`` comes first by rule 5 (``order``, then ``ident``; idents are unique)."""
    return a[2] < b[2] or (a[2] == b[2] and a[0] < b[0])


def assign_names(requests: Iterable[NameRequest], reserved: Iterable[str] = ()) -> dict[str, str]:
    """ident → unique file name, by the rules of the module docstring."""
    taken: set[str] = {collision_key(name) for name in reserved}
    cleaned: dict[str, str] = {}
    #: collision key -> the first of its group so far (no list per group); the others
    firsts: dict[str, NameRequest] = {}
    losers: list[NameRequest] = []
    for request in requests:
        ident = request[0]
        name = cleaned[ident] = clean(request[1], ident)
        key = collision_key(name)
        first = firsts.setdefault(key, request)
        if first is not request:
            if _ranks_before(request, first):
                firsts[key] = request
                losers.append(first)
            else:
                losers.append(request)
    # every group's first member claims its bare name, unless a reserved name holds it
    result: dict[str, str] = {}
    for key, first in firsts.items():
        if key in taken:
            losers.append(first)
        else:
            result[first[0]] = cleaned[first[0]]
    taken.update(firsts)
    # then the others get an id suffix; when no two of these names collide (nearly
    # always) the order they are given in cannot matter, and none is needed
    short = {
        r.ident: with_suffix(
            cleaned[r.ident],
            SUFFIX_SEPARATOR + clean(r.ident).replace(".", "_")[:SHORT_ID_LENGTH],
        )
        for r in losers
    }
    keys = {collision_key(name) for name in short.values()}
    if len(keys) == len(short) and taken.isdisjoint(keys):
        result.update(short)
        return result
    losers.sort(key=_RANK)
    # second pass, in the same order: the others get an id suffix
    for request in losers:
        name = cleaned[request.ident]
        ident = clean(request.ident).replace(".", "_")
        chosen = with_suffix(name, SUFFIX_SEPARATOR + ident[:SHORT_ID_LENGTH])
        if collision_key(chosen) in taken:
            chosen = with_suffix(name, SUFFIX_SEPARATOR + ident)
            counter = 2
            while collision_key(chosen) in taken:
                chosen = with_suffix(name, f"{SUFFIX_SEPARATOR}{ident}{SUFFIX_SEPARATOR}{counter}")
                counter += 1
        taken.add(collision_key(chosen))
        result[request.ident] = chosen
    return result
