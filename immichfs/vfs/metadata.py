"""Metadata for machines: extended attributes and manifest lines of assets.

Pure: values in, strings out; no requests. Everything here is derived from an
:class:`~immichfs.model.Asset` as a listing brought it (``/search/metadata``
with ``withExif``) plus a :class:`Membership` — the albums, people and tags an
asset belongs to, which search results do not carry and which the views learn
from their own album, person and tag listings.

Extended attributes (``getfattr -d FILE``), each absent when Immich does not
know the value (never present and empty):

    user.immich.id                the asset id
    user.immich.checksum          Immich's checksum: base64 of the SHA-1 of the original
                                  (always the original's, also when the file serves an edit)
    user.immich.edited            1 if the asset was edited in Immich (2.5+), else 0
    user.immich.type              IMAGE, VIDEO, AUDIO or OTHER
    user.immich.created           capture instant, UTC, ISO 8601 (fileCreatedAt)
    user.immich.width / .height   pixels, orientation applied when the server says so
    user.immich.orientation       EXIF orientation (1-8)
    user.immich.camera            "make model" from EXIF
    user.immich.gps               "latitude,longitude" in decimal degrees
    user.immich.people            JSON array of the people's names (as under /people)
    user.immich.tags              JSON array of full tag paths ("Travel/Japan")
    user.immich.albums            JSON array of album names
    user.immich.live_photo_video  id of the motion part of a live photo

A manifest line is one JSON object per asset with the file name, the fields
above (without the prefix, lists as JSON lists) and ``size``, ``taken`` (UTC)
and ``taken_local`` (wall-clock capture time); absent values are left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from immichfs.model import Asset, iso_instant

log = logging.getLogger(__name__)

PREFIX = "user.immich."
#: the attribute names, in the order ``listxattr`` gives them
XATTR_FIELDS = (
    "id",
    "checksum",
    "type",
    "created",
    "width",
    "height",
    "orientation",
    "camera",
    "gps",
    "people",
    "tags",
    "albums",
    "live_photo_video",
    "edited",
)
_LIST_FIELDS = frozenset({"people", "tags", "albums"})


@dataclass(frozen=True, slots=True)
class Membership:
    """The collections one asset belongs to (names as Immich spells them)."""

    albums: tuple[str, ...] = ()
    people: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


NO_MEMBERSHIP = Membership()


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def camera(exif: Mapping[str, Any]) -> str | None:
    """ "make model", without repeating a make the model already starts with."""
    make, model = _text(exif.get("make")), _text(exif.get("model"))
    if make and model:
        return model if model.lower().startswith(make.lower()) else f"{make} {model}"
    return make or model


def gps(exif: Mapping[str, Any]) -> str | None:
    latitude, longitude = _number(exif.get("latitude")), _number(exif.get("longitude"))
    if latitude is None or longitude is None:
        return None
    return f"{latitude:g},{longitude:g}"


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def asset_fields(asset: Asset, membership: Membership = NO_MEMBERSHIP) -> dict[str, Any]:
    """The metadata of one asset by field name (see ``XATTR_FIELDS``); absent = unknown.

    Lists are tuples; people and tags fall back to what the asset itself carries
    (``GET /assets/{id}`` includes them) when the membership does not say.
    """
    exif = asset.exif
    fields: dict[str, Any] = {"id": asset.id}
    if asset.checksum:
        fields["checksum"] = asset.checksum
    fields["type"] = asset.type
    fields["created"] = iso_instant(asset.file_created_at)
    if asset.width is not None and asset.width > 0:
        fields["width"] = asset.width
    if asset.height is not None and asset.height > 0:
        fields["height"] = asset.height
    orientation = _text(exif.get("orientation"))
    if orientation is not None:
        fields["orientation"] = orientation
    made = camera(exif)
    if made is not None:
        fields["camera"] = made
    position = gps(exif)
    if position is not None:
        fields["gps"] = position
    people = _dedupe(membership.people or asset.people)
    if people:
        fields["people"] = people
    tags = _dedupe(membership.tags or asset.tags)
    if tags:
        fields["tags"] = tags
    albums = _dedupe(membership.albums)
    if albums:
        fields["albums"] = albums
    if asset.live_photo_video_id:
        fields["live_photo_video"] = asset.live_photo_video_id
    if asset.is_edited is not None:
        fields["edited"] = 1 if asset.is_edited else 0
    return fields


def xattrs(asset: Asset, membership: Membership = NO_MEMBERSHIP) -> dict[str, bytes]:
    """``user.immich.*`` extended attributes of an asset file, UTF-8 encoded."""
    result: dict[str, bytes] = {}
    for name, value in asset_fields(asset, membership).items():
        listed = name in _LIST_FIELDS
        text = json.dumps(list(value), ensure_ascii=False) if listed else str(value)
        result[PREFIX + name] = text.encode("utf-8")
    return result


def manifest_record(
    name: str, asset: Asset, size: int | None, membership: Membership = NO_MEMBERSHIP
) -> dict[str, Any]:
    """One manifest entry as a dict (the JSON object of its line)."""
    fields = asset_fields(asset, membership)
    record: dict[str, Any] = {"name": name, "id": asset.id}
    if size is not None:
        record["size"] = size
    record["taken"] = fields.pop("created")
    if asset.local_datetime is not None:
        record["taken_local"] = asset.local_datetime.isoformat(timespec="milliseconds")
    if asset.duration_ms:
        record["duration_ms"] = asset.duration_ms
    for key, value in fields.items():
        if key == "id":
            continue
        record[key] = list(value) if key in _LIST_FIELDS else value
    return record


def manifest_line(
    name: str, asset: Asset, size: int | None, membership: Membership = NO_MEMBERSHIP
) -> bytes:
    """One manifest line: compact JSON, UTF-8, ending in a newline."""
    record = manifest_record(name, asset, size, membership)
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8")


ManifestEntry = tuple[str, Asset]


def manifest_lines(
    entries: Iterable[ManifestEntry],
    membership: Callable[[str], Membership],
    size_of: Callable[[Asset], int | None],
) -> Iterator[bytes]:
    """The manifest of ``entries`` (file name, asset), one line at a time."""
    for name, asset in entries:
        yield manifest_line(name, asset, size_of(asset), membership(asset.id))


def manifest_size(lines: Iterable[bytes]) -> int:
    """Total bytes of a manifest (generated and counted, never held whole)."""
    return sum(len(line) for line in lines)


class ManifestStream:
    """Reads of a manifest at any offset, generating lines on demand.

    Sequential reads continue the same generator; a read before the current
    position starts again from the beginning, so memory stays one line plus one
    read whatever the directory's size.
    """

    def __init__(self, make_lines: Callable[[], Iterator[bytes]]) -> None:
        self._make_lines = make_lines
        self._lines: Iterator[bytes] | None = None
        self._position = 0  # offset of the first byte of _pending
        self._pending = b""

    def _restart(self) -> None:
        self._lines = self._make_lines()
        self._position = 0
        self._pending = b""

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0:
            return b""
        if self._lines is None or offset < self._position:
            self._restart()
        assert self._lines is not None
        # skip whole lines before the offset
        while self._position + len(self._pending) <= offset:
            line = next(self._lines, None)
            if line is None:
                self._position += len(self._pending)
                self._pending = b""
                return b""
            self._position += len(self._pending)
            self._pending = line
        self._pending = self._pending[offset - self._position :]
        self._position = offset
        pieces = [self._pending]
        held = len(self._pending)
        while held < size:
            line = next(self._lines, None)
            if line is None:
                break
            pieces.append(line)
            held += len(line)
        buffered = b"".join(pieces)
        data = buffered[:size]
        self._pending = buffered[size:]
        self._position += len(data)
        return data
