"""Immich objects as values.

The connector hands out Immich's own JSON (dicts with Immich's field names) so
users can follow Immich's docs; the filesystem works on these frozen values,
parsed once, tolerant of fields that differ between server versions
(``visibility`` vs ``isArchived``, ``duration`` as a string before v3 and as
milliseconds from v3 on) and ignoring fields it does not know.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from immichfs.errors import ProtocolError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the ``exifInfo`` fields kept in ``Asset.exif`` (what ``immichfs.vfs.metadata`` shows); the
#: other twenty-odd are dropped: kept, they were about 1 KiB per asset, 100 MB for a
#: listing of 100,000 assets
EXIF_FIELDS = ("make", "model", "orientation", "latitude", "longitude")
_DURATION = re.compile(r"^(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")


def _iso(value: Any) -> datetime | None:
    """``datetime.fromisoformat`` of a non-empty string; None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def parse_instant(value: Any) -> datetime | None:
    """An ISO-8601 instant from Immich as an aware UTC datetime (None if absent/bad)."""
    parsed = _iso(value)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso_instant(value: datetime) -> str:
    """An aware datetime as ISO 8601 UTC with a ``Z`` (milliseconds, as Immich writes)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_local(value: Any) -> datetime | None:
    """Immich's ``localDateTime``: wall-clock time serialised with a misleading ``Z``.

    The Y/M/D h:m:s are taken literally (naive datetime), never converted.
    """
    parsed = _iso(value)
    return parsed.replace(tzinfo=None) if parsed is not None else None


def parse_duration_ms(value: Any) -> int | None:
    """``duration``: integer milliseconds (v3+) or "H:MM:SS.ffffff" (before v3)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match:
            return None
        seconds = int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])
        return round(seconds * 1000) or None
    return None


def checksum_hex(checksum_b64: str) -> str | None:
    """Immich's base64 SHA-1 checksum as lowercase hex (None if not a SHA-1)."""
    try:
        raw = base64.b64decode(checksum_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 20 else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class ExifText(Mapping[str, Any]):
    """An asset's ``exif`` as the catalog on disk keeps it (a JSON object), decoded
    when first read: a remount's listing of 100,000 assets needs none of them, and
    decoding them all was a third of its ``json.loads``. Text that is not a JSON
    object reads as empty (a damaged catalog shows no camera, never fails)."""

    __slots__ = ("_decoded", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._decoded: dict[str, Any] | None = None

    def _fields(self) -> dict[str, Any]:
        decoded = self._decoded
        if decoded is None:
            try:
                value = json.loads(self.text)
            except (ValueError, TypeError):
                value = None
            decoded = self._decoded = value if isinstance(value, dict) else {}
        return decoded

    def __getitem__(self, key: str) -> Any:
        return self._fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    def __repr__(self) -> str:
        return f"ExifText({self.text!r})"


@dataclass(frozen=True, slots=True)
class Asset:
    """One Immich asset (``AssetResponseDto``), as the filesystem needs it."""

    id: str
    type: str  # IMAGE, VIDEO, AUDIO, OTHER
    original_file_name: str
    checksum: str  # base64 SHA-1 as Immich sends it
    size: int | None  # exifInfo.fileSizeInByte; None when the server did not say
    file_created_at: datetime  # UTC capture instant
    file_modified_at: datetime
    local_datetime: datetime | None  # naive wall-clock capture time
    updated_at: datetime | None
    created_at: datetime | None  # upload time (v1.140+)
    is_favorite: bool = False
    is_archived: bool = False
    is_trashed: bool = False
    visibility: str = "timeline"  # timeline, archive, hidden, locked
    original_mime_type: str | None = None
    width: int | None = None
    height: int | None = None
    duration_ms: int | None = None
    live_photo_video_id: str | None = None
    owner_id: str | None = None
    #: the kept ``exifInfo`` fields (:data:`EXIF_FIELDS`): a dict, or an :class:`ExifText`
    exif: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    people: tuple[str, ...] = ()  # names (or ids of unnamed people), when the server sent them
    tags: tuple[str, ...] = ()  # full tag paths ("Travel/Japan"), when the server sent them
    #: edited in Immich (``isEdited``, v2.5+); None when the server does not say
    is_edited: bool | None = None

    @property
    def is_image(self) -> bool:
        return self.type == "IMAGE"

    @property
    def is_video(self) -> bool:
        return self.type == "VIDEO"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Asset:
        """Parse an ``AssetResponseDto``; ProtocolError if the essentials are missing."""
        if not isinstance(data, Mapping):
            raise ProtocolError("the server sent an asset that is not a JSON object")
        asset_id = data.get("id")
        if not isinstance(asset_id, str) or not asset_id:
            raise ProtocolError("the server sent an asset without an id")
        raw_exif = data.get("exifInfo")
        exif: Mapping[str, Any] = raw_exif if isinstance(raw_exif, Mapping) else {}
        visibility = data.get("visibility")
        is_archived = bool(data.get("isArchived", False))
        if not isinstance(visibility, str):
            # before v1.133 only isArchived existed
            visibility = "archive" if is_archived else "timeline"
        else:
            is_archived = visibility == "archive"
        created = parse_instant(data.get("fileCreatedAt")) or _EPOCH
        modified = parse_instant(data.get("fileModifiedAt")) or created
        width = _int_or_none(data.get("width")) or _int_or_none(exif.get("exifImageWidth"))
        height = _int_or_none(data.get("height")) or _int_or_none(exif.get("exifImageHeight"))
        people = tuple(
            str(p.get("name") or p.get("id"))
            for p in data.get("people") or ()
            if isinstance(p, Mapping) and (p.get("name") or p.get("id"))
        )
        tags = tuple(
            str(t.get("value") or t.get("name"))
            for t in data.get("tags") or ()
            if isinstance(t, Mapping) and (t.get("value") or t.get("name"))
        )
        name = data.get("originalFileName")
        checksum = data.get("checksum")
        mime = data.get("originalMimeType")
        live = data.get("livePhotoVideoId")
        owner = data.get("ownerId")
        return cls(
            id=asset_id,
            type=str(data.get("type") or "OTHER"),
            original_file_name=name if isinstance(name, str) else "",
            checksum=checksum if isinstance(checksum, str) else "",
            size=_int_or_none(exif.get("fileSizeInByte")),
            file_created_at=created,
            file_modified_at=modified,
            local_datetime=parse_local(data.get("localDateTime")),
            updated_at=parse_instant(data.get("updatedAt")),
            created_at=parse_instant(data.get("createdAt")),
            is_favorite=bool(data.get("isFavorite", False)),
            is_archived=is_archived,
            is_trashed=bool(data.get("isTrashed", False)),
            visibility=visibility,
            original_mime_type=mime if isinstance(mime, str) else None,
            width=width,
            height=height,
            duration_ms=parse_duration_ms(data.get("duration")),
            live_photo_video_id=live if isinstance(live, str) else None,
            owner_id=owner if isinstance(owner, str) else None,
            exif={k: exif[k] for k in EXIF_FIELDS if exif.get(k) is not None},
            people=people,
            tags=tags,
            is_edited=edited if isinstance(edited := data.get("isEdited"), bool) else None,
        )


def _asset_builder() -> Callable[[Sequence[Any]], Asset]:
    """A function making an :class:`Asset` of its fields' values, all of them, in
    the class's order (no defaults, no checks): what a saved listing is read back
    with. The frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; the slots' own setters take half the time (100,000
    assets of a remount's listing: a quarter of a second less)."""
    names = [f.name for f in fields(Asset)]
    env: dict[str, Any] = {"new": object.__new__, "cls": Asset, "count": len(names)}
    env.update((f"set_{name}", getattr(Asset, name).__set__) for name in names)
    body = "".join(f"    set_{name}(asset, values[{i}])\n" for i, name in enumerate(names))
    # generated from the dataclass's own fields, as dataclasses makes __init__
    exec(
        "def asset_of_fields(values):\n"
        "    if len(values) != count:\n"
        "        raise ValueError(f'{len(values)} values for {count} fields')\n"
        f"    asset = new(cls)\n{body}    return asset\n",
        env,
    )
    built: Callable[[Sequence[Any]], Asset] = env["asset_of_fields"]
    return built


#: ``Asset(*values)``, in half the time; ValueError unless there is one value per field
asset_of_fields = _asset_builder()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Album:
    """One album (``AlbumResponseDto``): what names and refreshes its directory."""

    id: str
    name: str
    created_at: str  # as sent: only compared and ordered, never computed with
    updated_at: datetime | None
    asset_count: int | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Album | None:
        """The album, or None for an entry without an id (ignored, as Immich's UI does)."""
        album_id = _text(data.get("id")) if isinstance(data, Mapping) else ""
        if not album_id:
            return None
        return cls(
            id=album_id,
            name=_text(data.get("albumName")),
            created_at=_text(data.get("createdAt")),
            updated_at=parse_instant(data.get("updatedAt")),
            asset_count=_int_or_none(data.get("assetCount")),
        )


@dataclass(frozen=True, slots=True)
class Person:
    """One person (face cluster); ``name`` is empty for an unnamed one."""

    id: str
    name: str
    is_hidden: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Person | None:
        person_id = _text(data.get("id")) if isinstance(data, Mapping) else ""
        if not person_id:
            return None
        return cls(person_id, _text(data.get("name")).strip(), data.get("isHidden") is True)


@dataclass(frozen=True, slots=True)
class Tag:
    """One tag; ``value`` is its full "/"-separated path ("Travel/Japan")."""

    id: str
    value: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tag | None:
        if not isinstance(data, Mapping):
            return None
        tag_id = _text(data.get("id"))
        value = (_text(data.get("value")) or _text(data.get("name"))).strip("/")
        if not tag_id or not value:
            return None
        return cls(tag_id, value)


@dataclass(frozen=True, slots=True)
class TimeBucket:
    """One month of the timeline (``/timeline/buckets``), by local capture date."""

    year: int
    month: int
    count: int | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TimeBucket | None:
        """The bucket ("YYYY-MM-01", or an ISO timestamp before v1.133); None if unreadable."""
        if not isinstance(data, Mapping):
            return None
        text = _text(data.get("timeBucket"))
        try:
            year, month = int(text[0:4]), int(text[5:7])
        except ValueError:
            return None
        if not 1 <= month <= 12:
            return None
        return cls(year, month, _int_or_none(data.get("count")))


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A rendition's bytes and the Content-Type the server gave them."""

    data: bytes = field(repr=False)
    content_type: str
