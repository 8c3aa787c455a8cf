"""The fake server's library: users, assets, albums, people and tags in memory.

``FakeLibrary.generate(seed=...)`` builds the same library for the same
arguments: ids, names, dates, sizes, bytes and checksums. Only metadata lives
in memory; bytes are generated on demand (:mod:`immichfs_fake.media`), kept in
a small LRU when small and written once to a private cache directory when
large, so a 100,000-asset library costs seconds and no files.

Mutations (``add_asset``, ``trash``, ``change_content`` ...) take the library
lock and bump ``updatedAt`` like Immich's database trigger does, so freshness
tests can watch a library change under a running server.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import logging
import os
import random
import shutil
import tempfile
import threading
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from xml.sax.saxutils import escape as xml_escape

from immichfs_fake import media

log = logging.getLogger(__name__)

#: Content larger than this is written to the cache directory and sent with sendfile.
FILE_THRESHOLD = 4 << 20
#: Bytes of small content kept in memory.
MEMORY_BUDGET = 64 << 20

_EXTENSION_MIME = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".heic": "image/heic",
}
_KIND_EXTENSION = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "mp4": ".mp4"}
_OFFSETS = (-420, -300, -240, 0, 60, 120, 330, 540, 600)  # minutes east of UTC
_PLACES = (  # city, state, country, latitude, longitude, IANA time zone
    ("Kyoto", "Kyoto", "Japan", 35.0116, 135.7681, "Asia/Tokyo"),
    ("Paris", "Île-de-France", "France", 48.8566, 2.3522, "Europe/Paris"),
    ("Lyon", "Auvergne-Rhône-Alpes", "France", 45.764, 4.8357, "Europe/Paris"),
    ("New York", "New York", "United States of America", 40.7128, -74.006, "America/New_York"),
    ("Reykjavík", "Capital Region", "Iceland", 64.1466, -21.9426, "Atlantic/Reykjavik"),
    (None, None, None, None, None, None),
)
_STANDARD_OFFSETS = {  # without tzdata: offsets ignoring daylight saving time
    "Asia/Tokyo": 540,
    "Europe/Paris": 60,
    "America/New_York": -300,
    "Atlantic/Reykjavik": 0,
}


def zone_offset(zone: str, instant: datetime) -> int:
    """Minutes east of UTC in ``zone`` at ``instant`` (daylight saving time included)."""
    try:
        from zoneinfo import ZoneInfo

        offset = instant.astimezone(ZoneInfo(zone)).utcoffset()
    except Exception:  # no tzdata on this machine
        return _STANDARD_OFFSETS.get(zone, 0)
    return int(offset.total_seconds() // 60) if offset is not None else 0


_CAMERAS = (
    ("Apple", "iPhone 13", "iPhone 13 back dual wide camera 5.1mm f/1.6"),
    ("Google", "Pixel 7", None),
    ("Canon", "Canon EOS R6", "RF24-105mm F4 L IS USM"),
    ("FUJIFILM", "X-T4", "XF23mmF2 R WR"),
)
_DESCRIPTIONS = (
    "Sunset over the mountains",
    "Birthday cake with candles",
    "Cat sleeping on the sofa",
    "Beach with palm trees",
    "Snowy street at night",
    "Temple garden in autumn",
    "",
    "",
    "",
)
_EPOCH_START = datetime(2015, 1, 1, tzinfo=UTC)
_SPAN_SECONDS = int((datetime(2025, 6, 30, tzinfo=UTC) - _EPOCH_START).total_seconds())
#: Fixed reference "now" of a generated library (keeps generation deterministic).
GENERATED_AT = datetime(2025, 7, 1, 9, 30, tzinfo=UTC)


def make_uuid(*parts: object) -> str:
    """A deterministic version-4 UUID derived from ``parts``."""
    raw = bytearray(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=16).digest())
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class FakeUser:
    id: str
    email: str
    name: str
    avatar_color: str = "primary"
    is_admin: bool = False
    created_at: datetime = GENERATED_AT


@dataclass(slots=True, eq=False)
class FakeAsset:
    """One asset's metadata; its bytes are derived from ``id``, ``revision`` and ``size``."""

    id: str
    owner_id: str
    type: str  # IMAGE | VIDEO
    kind: str  # media kind: jpeg | png | webp | mp4
    original_file_name: str
    file_created_at: datetime  # UTC capture instant
    local_offset_minutes: int
    size: int
    width: int
    height: int
    file_modified_at: datetime
    created_at: datetime
    updated_at: datetime
    salt: int
    extension: str = ".jpg"  # of the stored file (decides Content-Type)
    time_zone: str | None = None  # IANA zone of the place, when known
    is_favorite: bool = False
    visibility: str = "timeline"  # timeline | archive | hidden | locked
    deleted_at: datetime | None = None
    live_photo_video_id: str | None = None
    duration_ms: int | None = None
    make: str | None = None
    model: str | None = None
    lens_model: str | None = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    description: str = ""
    rating: int | None = None
    person_ids: list[str] = field(default_factory=list)
    tag_ids: list[str] = field(default_factory=list)
    revision: int = 0
    checksum_raw: bytes | None = None  # SHA-1 of the current bytes, once computed
    #: the edited rendition (a JPEG, Immich >= 2.5): its size, None when not edited
    edited_size: int | None = None
    edit_revision: int = 0  # bumped by every edit: the edited bytes change with it
    edited_at: datetime | None = None
    #: the XMP sidecar: its revision, None when the asset has none
    sidecar_revision: int | None = None
    sidecar_at: datetime | None = None

    @property
    def local_date_time(self) -> datetime:
        """Wall-clock capture time (naive), as Immich's ``localDateTime`` means it."""
        return (self.file_created_at + timedelta(minutes=self.local_offset_minutes)).replace(
            tzinfo=None
        )

    @property
    def is_trashed(self) -> bool:
        return self.deleted_at is not None

    @property
    def is_edited(self) -> bool:
        return self.edited_size is not None

    @property
    def has_sidecar(self) -> bool:
        return self.sidecar_revision is not None

    @property
    def edited_uid(self) -> bytes:
        """Identity written into the edited rendition: changes with every edit."""
        return f"{self.id}#edit{self.edit_revision}".encode()

    @property
    def sidecar_path(self) -> str:
        return self.original_path + ".xmp"

    def file_path(self, type_: str, edited: bool) -> str:
        """Where Immich keeps a generated file of this asset (``asset_file.path``)."""
        ext = {"thumbnail": ".webp", "sidecar": ".xmp"}.get(type_, ".jpeg")
        if type_ == "sidecar":
            return self.sidecar_path
        suffix = "_edited" if edited else ""
        return (
            f"/data/thumbs/{self.owner_id}/{self.id[:2]}/{self.id[2:4]}/"
            f"{self.id}_{type_}{suffix}{ext}"
        )

    @property
    def original_path(self) -> str:
        return (
            f"/data/upload/{self.owner_id}/{self.id[:2]}/{self.id[2:4]}/{self.id}{self.extension}"
        )

    @property
    def mime_type(self) -> str:
        return _EXTENSION_MIME.get(self.extension.lower(), "application/octet-stream")

    @property
    def uid(self) -> bytes:
        """Identity written into the bytes: changes with every content revision."""
        return f"{self.id}#{self.revision}".encode()

    def media_info(self) -> media.MediaInfo:
        local = self.local_date_time
        sign = "+" if self.local_offset_minutes >= 0 else "-"
        hours, minutes = divmod(abs(self.local_offset_minutes), 60)
        return media.MediaInfo(
            uid=self.uid,
            taken_local=local.strftime("%Y:%m:%d %H:%M:%S"),
            offset=f"{sign}{hours:02d}:{minutes:02d}",
            make=self.make or "Fakon",
            model=self.model or "F-100",
            description=self.description,
        )


@dataclass(frozen=True, slots=True)
class FakeAssetFile:
    """One generated file of an asset (``/asset-files``, Immich 3.2), derived from the
    asset's state: its thumbnail and preview, the edited fullsize/preview/thumbnail
    when edited, the XMP sidecar when it has one. The id is stable per (asset,
    type, edited): regenerating a file updates it in place, as Immich upserts."""

    id: str
    asset_id: str
    type: str  # thumbnail | preview | fullsize | sidecar (encoded_video: never, no transcodes)
    is_edited: bool
    path: str
    created_at: datetime
    updated_at: datetime

    @property
    def mime_type(self) -> str:
        if self.type == "thumbnail":
            return "image/webp"
        if self.type == "sidecar":
            return "application/octet-stream"  # `send` has no type for .xmp
        return "image/jpeg"


@dataclass(slots=True, eq=False)
class FakeAlbum:
    id: str
    owner_id: str
    name: str
    created_at: datetime
    updated_at: datetime
    description: str = ""
    asset_ids: list[str] = field(default_factory=list)
    members: list[tuple[str, str]] = field(default_factory=list)  # (user id, editor|viewer)
    thumbnail_asset_id: str | None = None


@dataclass(slots=True, eq=False)
class FakePerson:
    id: str
    name: str
    updated_at: datetime
    owner_id: str = ""
    birth_date: str | None = None
    is_hidden: bool = False
    is_favorite: bool = False
    color: str = "#6a9fb5"


@dataclass(slots=True, eq=False)
class FakeTag:
    id: str
    name: str  # leaf
    value: str  # full path "Travel/Japan/Kyoto"
    parent_id: str | None
    created_at: datetime
    updated_at: datetime
    color: str | None = None


def _remove_orphans() -> None:
    """Remove cache directories left by fake servers that were killed (no exit hooks ran)."""
    for path in Path(tempfile.gettempdir()).glob("immichfs-fake-*-*"):
        pid_text = path.name.split("-")[2]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            log.debug("removing %s, left by a dead process", path)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # alive (another user's process): leave it


class FakeLibrary:
    """An in-memory Immich library (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.lock = threading.RLock()
        self.me = FakeUser(
            make_uuid(seed, "user", "me"),
            "owner@example.org",
            "Fake Owner",
            avatar_color="blue",
            is_admin=True,
        )
        self.other = FakeUser(
            make_uuid(seed, "user", "other"),
            "friend@example.org",
            "Fake Friend",
            avatar_color="orange",
        )
        self.users: dict[str, FakeUser] = {self.me.id: self.me, self.other.id: self.other}
        self.assets: dict[str, FakeAsset] = {}
        self.albums: dict[str, FakeAlbum] = {}
        self.people: dict[str, FakePerson] = {}
        self.tags: dict[str, FakeTag] = {}
        #: bumped by every mutation; caches key on it
        self.generation = 0
        self._sorted: tuple[int, list[FakeAsset]] | None = None
        self._added = 0
        self._memory: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._memory_bytes = 0
        self._file_locks: dict[tuple[str, int], threading.Lock] = {}
        self._cache_dir: Path | None = None
        self._file_index: tuple[int, dict[str, FakeAssetFile]] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- construction -----------------------------------------------------------

    @classmethod
    def generate(
        cls,
        seed: int = 0,
        photos: int = 100,
        videos: int = 8,
        large_video_bytes: int | None = 32 << 20,
        extra: bool = True,
        photo_bytes: tuple[int, int] = (16 << 10, 400 << 10),
        video_bytes: tuple[int, int] = (64 << 10, 2 << 20),
        edited_share: float = 0.05,
        sidecar_share: float = 0.1,
    ) -> FakeLibrary:
        """A deterministic sample library.

        ``photos``/``videos`` regular assets spread over 2015-2025 (JPEG, PNG,
        WebP photos; MP4 videos; sizes log-uniform in ``photo_bytes`` /
        ``video_bytes``), one video of ``large_video_bytes`` (none when None)
        and, with ``extra``, the awkward cases a client must survive: duplicate
        names, NFC/NFD unicode, a name with ``/``, a name longer than 255
        bytes, archived, trashed and locked assets, a live photo and another
        user's photos seen through a shared album.

        About ``edited_share`` of the photos carry an edit (an edited rendition
        of another size, served from Immich 2.5) and ``sidecar_share`` of the
        assets an XMP sidecar (listed from 3.2); with ``extra``,
        ``Kinkaku-ji.jpg`` has both. Drawn from their own random stream: the
        rest of the library is the same whatever the shares.
        """
        lib = cls(seed)
        rng = random.Random(seed)
        me = lib.me.id
        t0 = GENERATED_AT

        # people and tags first: regular assets refer to them
        people = [
            lib._person("Alice", birth="1990-04-12", favorite=True),
            lib._person("Bob"),
            lib._person("Chloé"),
            lib._person(""),  # an unnamed face cluster
            lib._person("Hidden Harry", hidden=True),
        ]
        tag_paths = [
            "Travel",
            "Travel/Japan",
            "Travel/Japan/Kyoto",
            "Travel/France",
            "Family",
            "Screenshots",
        ]
        tags = {path: lib._tag(path) for path in tag_paths}

        lo, hi = photo_bytes
        kinds = ("jpeg",) * 7 + ("png",) * 2 + ("webp",)
        for n in range(photos):
            kind = kinds[n % len(kinds)]
            taken = _EPOCH_START + timedelta(seconds=rng.randrange(_SPAN_SECONDS))
            asset = lib._new_asset(
                f"photo-{n}",
                me,
                "IMAGE",
                kind,
                "",
                taken,
                rng,
                size=int(lo * (hi / lo) ** rng.random()) if hi > lo else lo,
            )
            if kind == "jpeg":
                asset.original_file_name = f"IMG_{n % 9999 + 1:04d}.JPG"
            elif kind == "png":
                asset.original_file_name = asset.local_date_time.strftime(
                    "Screenshot %Y-%m-%d at %H.%M.%S.png"
                )
                asset.tag_ids.append(tags["Screenshots"].id)
            else:
                asset.original_file_name = f"photo-{n}.webp"
            roll = rng.random()
            if roll < 0.04:
                asset.visibility = "archive"
            elif roll < 0.07:
                asset.deleted_at = t0 - timedelta(days=1 + n % 20)
            asset.is_favorite = rng.random() < 0.08
            if rng.random() < 0.3:
                asset.person_ids.append(people[rng.randrange(len(people))].id)
            if asset.city == "Kyoto":
                asset.tag_ids.append(tags["Travel/Japan/Kyoto"].id)
            elif asset.country == "France":
                asset.tag_ids.append(tags["Travel/France"].id)
            lib._store(asset)

        lo, hi = video_bytes
        for n in range(videos):
            taken = _EPOCH_START + timedelta(seconds=rng.randrange(_SPAN_SECONDS))
            asset = lib._new_asset(
                f"video-{n}",
                me,
                "VIDEO",
                "mp4",
                "",
                taken,
                rng,
                size=int(lo * (hi / lo) ** rng.random()) if hi > lo else lo,
            )
            asset.original_file_name = asset.local_date_time.strftime("VID_%Y%m%d_%H%M%S.mp4")
            asset.is_favorite = n % 5 == 1
            lib._store(asset)

        if extra:
            lib._add_extras(rng, people, tags, large_video_bytes)
        elif large_video_bytes:
            taken = datetime(2020, 1, 3, 18, 30, tzinfo=UTC)
            big = lib._new_asset(
                "large-video",
                me,
                "VIDEO",
                "mp4",
                "large-video.mp4",
                taken,
                rng,
                size=large_video_bytes,
            )
            big.description = "A very large video file"
            lib._store(big)
        lib._add_albums(rng)
        lib._add_renditions(edited_share, sidecar_share)
        lib._sorted = None
        return lib

    def _add_renditions(self, edited_share: float, sidecar_share: float) -> None:
        rng = random.Random(f"{self.seed}/renditions")
        featured = {a.id for a in self.assets.values() if a.original_file_name == "Kinkaku-ji.jpg"}
        for asset in sorted(self.assets.values(), key=lambda a: a.id):
            edit, sidecar = rng.random(), rng.random()
            if asset.type == "IMAGE" and (edit < edited_share or asset.id in featured):
                asset.edit_revision = 1
                asset.edited_size = self._edited_size(asset, rng.uniform(0.5, 0.9))
                asset.edited_at = min(
                    asset.created_at + timedelta(days=1 + rng.randrange(30)),
                    GENERATED_AT - timedelta(minutes=30),
                )
                asset.updated_at = max(asset.updated_at, asset.edited_at)
            if sidecar < sidecar_share or asset.id in featured:
                asset.sidecar_revision = 1
                asset.sidecar_at = asset.created_at

    @staticmethod
    def _edited_size(asset: FakeAsset, ratio: float, size: int | None = None) -> int:
        wanted = media.adjust_size("jpeg", size if size is not None else int(asset.size * ratio))
        return wanted if wanted != asset.size else wanted + 1024  # always another size

    def _person(
        self, name: str, *, birth: str | None = None, hidden: bool = False, favorite: bool = False
    ) -> FakePerson:
        person = FakePerson(
            id=make_uuid(self.seed, "person", len(self.people)),
            name=name,
            updated_at=GENERATED_AT,
            owner_id=self.me.id,
            birth_date=birth,
            is_hidden=hidden,
            is_favorite=favorite,
            color=("#6a9fb5", "#d28445", "#aa759f", "#75b5aa", "#f4bf75")[len(self.people) % 5],
        )
        self.people[person.id] = person
        return person

    def _tag(self, path: str) -> FakeTag:
        parent = path.rpartition("/")[0]
        parent_id = next((t.id for t in self.tags.values() if t.value == parent), None)
        tag = FakeTag(
            id=make_uuid(self.seed, "tag", path),
            name=path.rpartition("/")[2],
            value=path,
            parent_id=parent_id,
            created_at=GENERATED_AT - timedelta(days=400),
            updated_at=GENERATED_AT - timedelta(days=400),
            color=None if "/" in path else "#4250af",
        )
        self.tags[tag.id] = tag
        return tag

    def _new_asset(
        self,
        label: str,
        owner_id: str,
        type_: str,
        kind: str,
        name: str,
        taken: datetime,
        rng: random.Random,
        *,
        size: int,
    ) -> FakeAsset:
        make, model, lens = _CAMERAS[rng.randrange(len(_CAMERAS))]
        city, state, country, lat, lon, zone = _PLACES[rng.randrange(len(_PLACES))]
        offset = _OFFSETS[rng.randrange(len(_OFFSETS))]
        if zone is not None:
            offset = zone_offset(zone, taken)
        width, height = {
            "jpeg": (640, 480),
            "png": (320, 240),
            "webp": (480, 360),
            "mp4": (160, 120),
        }[kind]
        uploaded = taken + timedelta(hours=rng.randrange(1, 24 * 30))
        uploaded = min(uploaded, GENERATED_AT - timedelta(hours=1))
        asset = FakeAsset(
            id=make_uuid(self.seed, "asset", label),
            owner_id=owner_id,
            type=type_,
            kind=kind,
            original_file_name=name,
            file_created_at=taken.replace(microsecond=0),
            local_offset_minutes=offset,
            time_zone=zone,
            size=media.adjust_size(kind, size),
            width=width,
            height=height,
            file_modified_at=taken.replace(microsecond=0) + timedelta(seconds=rng.randrange(5)),
            created_at=uploaded,
            updated_at=uploaded,
            salt=rng.randrange(1 << 30),
            extension=_KIND_EXTENSION[kind],
            make=make,
            model=model,
            lens_model=lens,
            city=city,
            state=state,
            country=country,
            latitude=lat,
            longitude=lon,
            description=_DESCRIPTIONS[rng.randrange(len(_DESCRIPTIONS))],
            rating=None,
            duration_ms=(2000 if type_ == "VIDEO" else None),
        )
        return asset

    def _store(self, asset: FakeAsset) -> None:
        self.assets[asset.id] = asset

    def _add_extras(
        self,
        rng: random.Random,
        people: list[FakePerson],
        tags: dict[str, FakeTag],
        large_video_bytes: int | None,
    ) -> None:
        me = self.me.id
        base = datetime(2019, 12, 24, 18, 30, tzinfo=UTC)

        def add(
            label: str,
            name: str,
            *,
            kind: str = "jpeg",
            days: float = 0,
            size: int = 40_000,
            owner: str = me,
            **changes: object,
        ) -> FakeAsset:
            type_ = "VIDEO" if kind == "mp4" else "IMAGE"
            asset = self._new_asset(
                label, owner, type_, kind, name, base + timedelta(days=days), rng, size=size
            )
            for key, value in changes.items():
                setattr(asset, key, value)
            place = next(
                (p for p in _PLACES if p[0] is not None and p[0] == changes.get("city")), None
            )
            if place is not None and place[5] is not None:
                asset.time_zone = place[5]
                asset.local_offset_minutes = zone_offset(place[5], asset.file_created_at)
            self._store(asset)
            return asset

        for i in range(3):  # the same camera name from three devices
            add(f"dup-{i}", "IMG_0001.JPG", days=-300 * (i + 1))
        noel = "Été à Noël 🎄.jpg"
        add(
            "unicode-nfc",
            unicodedata.normalize("NFC", noel),
            days=0.1,
            person_ids=[people[0].id, people[1].id],
            description="Christmas dinner",
        )
        add("unicode-nfd", unicodedata.normalize("NFD", noel), days=0.2)
        add(
            "spaces",
            "  Family trip 2019 (1) copy .jpg",
            days=-100,
            tag_ids=[tags["Family"].id],
            person_ids=[people[2].id],
        )
        long_name = "Very long name " + "très-très-long-" * 18 + "end.jpg"
        assert len(long_name.encode()) > 255
        add("long-name", long_name, days=-50)
        add("slash", "AC/DC live at Wembley.jpg", days=-40, is_favorite=True)
        add("archived", "archived receipt.png", kind="png", days=-30, visibility="archive")
        add("trashed", "blurry.jpg", days=-20, deleted_at=GENERATED_AT - timedelta(days=2))
        add(
            "trashed-fav",
            "deleted favourite.webp",
            kind="webp",
            days=-21,
            is_favorite=True,
            deleted_at=GENERATED_AT - timedelta(days=3),
        )
        add("locked", "private.jpg", days=-10, visibility="locked")
        add(
            "kyoto",
            "Kinkaku-ji.jpg",
            days=-700,
            city="Kyoto",
            state="Kyoto",
            country="Japan",
            latitude=35.0394,
            longitude=135.7292,
            description="Golden temple in Kyoto",
            tag_ids=[tags["Travel/Japan/Kyoto"].id],
            person_ids=[people[0].id],
        )
        for i in range(3):  # enough faces for the unnamed cluster
            add(
                f"faces-{i}",
                f"group photo {i + 1}.jpg",
                days=-200 - i,
                person_ids=[people[3].id, people[1].id],
            )
        # live photo: the still points at a hidden motion video with the same stem
        motion = add(
            "live-motion",
            "IMG_5000.MOV",
            kind="mp4",
            days=5,
            size=120_000,
            visibility="hidden",
            extension=".mov",
            duration_ms=2000,
        )
        add("live-still", "IMG_5000.JPG", days=5, live_photo_video_id=motion.id)
        if large_video_bytes:
            add(
                "large-video",
                "large-video.mp4",
                kind="mp4",
                days=10,
                size=large_video_bytes,
                duration_ms=2000,
                description="A very large video file",
            )
        for i in range(3):  # the friend's photos, seen through a shared album only
            add(f"friend-{i}", f"friend photo {i + 1}.jpg", days=30 + i, owner=self.other.id)

    def _add_albums(self, rng: random.Random) -> None:
        mine = sorted(
            (
                a
                for a in self.assets.values()
                if a.owner_id == self.me.id
                and a.visibility in ("timeline", "archive")
                and not a.is_trashed
            ),
            key=lambda a: (a.file_created_at, a.id),
        )
        friends = [a for a in self.assets.values() if a.owner_id == self.other.id]

        def album(
            label: str,
            name: str,
            assets: Iterable[FakeAsset],
            *,
            owner: str | None = None,
            members: list[tuple[str, str]] | None = None,
            description: str = "",
        ) -> None:
            ids = [a.id for a in assets]
            created = GENERATED_AT - timedelta(days=100 + len(self.albums))
            self.albums[make_uuid(self.seed, "album", label)] = FakeAlbum(
                id=make_uuid(self.seed, "album", label),
                owner_id=owner or self.me.id,
                name=name,
                created_at=created,
                updated_at=created,
                description=description,
                asset_ids=ids,
                members=members or [],
                thumbnail_asset_id=ids[0] if ids else None,
            )

        album(
            "holidays",
            "Holidays 2019",
            [a for a in mine if a.file_created_at.year == 2019][:12],
            description="Summer and winter holidays",
        )
        album("best-of", "Best of/Favourites", [a for a in mine if a.is_favorite][:20])
        album("family-1", "Family", mine[: min(5, len(mine))])
        album("family-2", "Family", mine[-min(4, len(mine)) :])
        album(
            "shared-in",
            "Shared with me",
            friends + mine[:1],
            owner=self.other.id,
            members=[(self.me.id, "viewer")],
            description="From a friend",
        )
        album(
            "shared-out",
            "Our trip",
            [a for a in mine if a.city == "Kyoto"][:10],
            members=[(self.other.id, "editor")],
        )
        album("empty", "Empty album", [])

    # -- queries ------------------------------------------------------------------

    def sorted_assets(self) -> list[FakeAsset]:
        """Every asset ordered by (fileCreatedAt, id) ascending (cached until a mutation)."""
        with self.lock:
            cached = self._sorted
            if cached is not None and cached[0] == self.generation:
                return cached[1]
            ordered = sorted(self.assets.values(), key=lambda a: (a.file_created_at, a.id))
            self._sorted = (self.generation, ordered)
            return ordered

    def get(self, asset_id: str) -> FakeAsset | None:
        return self.assets.get(asset_id)

    def album_ids_of(self, asset_id: str) -> list[str]:
        return [album.id for album in self.albums.values() if asset_id in album.asset_ids]

    # -- bytes ----------------------------------------------------------------------

    def _asset(self, asset_id: str) -> FakeAsset:
        asset = self.assets.get(asset_id)
        if asset is None:
            raise KeyError(asset_id)
        return asset

    def is_large(self, asset_id: str) -> bool:
        return self._asset(asset_id).size > FILE_THRESHOLD

    def content(self, asset_id: str) -> bytes:
        """The asset's original bytes (any size; large ones are read from the cache file)."""
        asset = self._asset(asset_id)
        if asset.size > FILE_THRESHOLD:
            return self.content_path(asset_id).read_bytes()
        key = (asset.id, asset.revision)
        with self.lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                return data
        data = media.render(asset.kind, asset.media_info(), asset.size, asset.salt)
        with self.lock:
            if key not in self._memory and asset.revision == key[1]:
                self._memory[key] = data
                self._memory_bytes += len(data)
                while self._memory_bytes > MEMORY_BUDGET and len(self._memory) > 1:
                    _, old = self._memory.popitem(last=False)
                    self._memory_bytes -= len(old)
            if asset.checksum_raw is None and asset.revision == key[1]:
                asset.checksum_raw = hashlib.sha1(data).digest()
        return data

    def open_content(self, asset_id: str) -> BinaryIO:
        """A readable binary file of the asset's bytes, whatever the size."""
        if self.is_large(asset_id):
            return self.content_path(asset_id).open("rb")
        return io.BytesIO(self.content(asset_id))

    @property
    def cache_dir(self) -> Path:
        """Private directory for large contents, removed on :meth:`close` or exit."""
        with self.lock:
            if self._cache_dir is None:
                _remove_orphans()
                path = Path(tempfile.mkdtemp(prefix=f"immichfs-fake-{os.getpid()}-"))
                self._cache_dir = path
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), True)
            return self._cache_dir

    def content_path(self, asset_id: str) -> Path:
        """The cache file holding a large asset's bytes, written on first use."""
        asset = self._asset(asset_id)
        key = (asset.id, asset.revision)
        path = self.cache_dir / f"{asset.id}.{asset.revision}{asset.extension}"
        with self.lock:
            file_lock = self._file_locks.setdefault(key, threading.Lock())
        with file_lock:
            if path.exists():
                return path
            digest = hashlib.sha1()
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                for piece in media.iter_content(
                    asset.kind, asset.media_info(), asset.size, asset.salt
                ):
                    digest.update(piece)
                    f.write(piece)
            mtime = asset.file_modified_at.timestamp()
            os.utime(tmp, (mtime, mtime))
            tmp.rename(path)
            log.debug("materialised %s (%d bytes)", asset.id, asset.size)
            with self.lock:
                if asset.revision == key[1]:
                    asset.checksum_raw = digest.digest()
        return path

    # -- edits, sidecars and asset files ----------------------------------------------

    def _edited_info(self, asset: FakeAsset) -> media.MediaInfo:
        return dataclasses.replace(asset.media_info(), uid=asset.edited_uid)

    def edited_content(self, asset_id: str) -> bytes:
        """The edited rendition's bytes (a JPEG of ``asset.edited_size`` bytes)."""
        asset = self._asset(asset_id)
        size = asset.edited_size
        if size is None:
            raise KeyError(f"{asset_id} is not edited")
        if size > FILE_THRESHOLD:
            return self.edited_content_path(asset_id).read_bytes()
        key = (asset.id + "#edit", asset.edit_revision)
        with self.lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                return data
        data = media.render("jpeg", self._edited_info(asset), size, asset.salt ^ 0x5EED)
        with self.lock:
            if key not in self._memory and asset.edit_revision == key[1]:
                self._memory[key] = data
                self._memory_bytes += len(data)
                while self._memory_bytes > MEMORY_BUDGET and len(self._memory) > 1:
                    _, old = self._memory.popitem(last=False)
                    self._memory_bytes -= len(old)
        return data

    def edited_content_path(self, asset_id: str) -> Path:
        """A file holding the edited rendition (written on first use)."""
        asset = self._asset(asset_id)
        size = asset.edited_size
        if size is None:
            raise KeyError(f"{asset_id} is not edited")
        path = self.cache_dir / f"{asset.id}.edit{asset.edit_revision}.jpeg"
        with self.lock:
            file_lock = self._file_locks.setdefault((path.name, 0), threading.Lock())
        with file_lock:
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                with tmp.open("wb") as f:
                    for piece in media.iter_content(
                        "jpeg", self._edited_info(asset), size, asset.salt ^ 0x5EED
                    ):
                        f.write(piece)
                tmp.rename(path)
        return path

    def edited_sha1(self, asset_id: str) -> str:
        """SHA-1 (hex) of the edited rendition."""
        return hashlib.sha1(self.edited_content(asset_id)).hexdigest()

    def sidecar_content(self, asset_id: str) -> bytes:
        """The asset's XMP sidecar (changes with every :meth:`set_sidecar`)."""
        asset = self._asset(asset_id)
        if asset.sidecar_revision is None:
            raise KeyError(f"{asset_id} has no sidecar")
        rating = f"\n   <xmp:Rating>{asset.rating}</xmp:Rating>" if asset.rating else ""
        local = asset.local_date_time.strftime("%Y-%m-%dT%H:%M:%S")
        sign = "+" if asset.local_offset_minutes >= 0 else "-"
        hours, minutes = divmod(abs(asset.local_offset_minutes), 60)
        text = (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="immichfs fake">\n'
            ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
            '  <rdf:Description rdf:about=""\n'
            '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
            '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
            '    xmlns:exif="http://ns.adobe.com/exif/1.0/"\n'
            '    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/">\n'
            f"   <xmpMM:DocumentID>{asset.id}#{asset.sidecar_revision}</xmpMM:DocumentID>\n"
            f"   <exif:DateTimeOriginal>{local}{sign}{hours:02d}:{minutes:02d}"
            "</exif:DateTimeOriginal>\n"
            f"   <dc:description>{xml_escape(asset.description)}</dc:description>{rating}\n"
            "  </rdf:Description>\n"
            " </rdf:RDF>\n"
            "</x:xmpmeta>\n"
            '<?xpacket end="w"?>\n'
        )
        return text.encode()

    def asset_files(self, asset_id: str) -> list[FakeAssetFile]:
        """The files Immich keeps for the asset (see :class:`FakeAssetFile`)."""
        asset = self._asset(asset_id)

        def file(type_: str, edited: bool, created: datetime) -> FakeAssetFile:
            return FakeAssetFile(
                id=make_uuid(self.seed, "asset-file", asset.id, type_, edited),
                asset_id=asset.id,
                type=type_,
                is_edited=edited,
                path=asset.file_path(type_, edited),
                created_at=created,
                updated_at=created,
            )

        files = [
            file("preview", False, asset.created_at),
            file("thumbnail", False, asset.created_at),
        ]
        if asset.edited_at is not None and asset.is_edited:
            files += [file(t, True, asset.edited_at) for t in ("fullsize", "preview", "thumbnail")]
        if asset.sidecar_at is not None and asset.has_sidecar:
            files.append(file("sidecar", False, asset.sidecar_at))
        return files

    def asset_file(self, file_id: str) -> FakeAssetFile | None:
        """The asset file with this id, if its asset has it now."""
        with self.lock:
            cached = self._file_index
            if cached is None or cached[0] != self.generation:
                index = {
                    f.id: f for a in list(self.assets.values()) for f in self.asset_files(a.id)
                }
                cached = self._file_index = (self.generation, index)
        return cached[1].get(file_id)

    def file_content(self, file: FakeAssetFile) -> bytes | Path:
        """An asset file's bytes, or the file holding them when large."""
        asset = self._asset(file.asset_id)
        if file.type == "sidecar":
            return self.sidecar_content(asset.id)
        if file.type == "fullsize":  # only edited assets have one (fullsize generation off)
            if (asset.edited_size or 0) > FILE_THRESHOLD:
                return self.edited_content_path(asset.id)
            return self.edited_content(asset.id)
        uid = asset.edited_uid if file.is_edited else asset.uid
        return media.thumbnail(file.type, uid)[0]

    def checksum_raw(self, asset_id: str) -> bytes:
        asset = self._asset(asset_id)
        raw = asset.checksum_raw
        if raw is None:
            if asset.size > FILE_THRESHOLD:
                self.content_path(asset_id)
                raw = asset.checksum_raw
            if raw is None:
                # Hash the stream without keeping the bytes: listings need every
                # checksum, downloads need few contents.
                revision = asset.revision
                digest = hashlib.sha1()
                for piece in media.iter_content(
                    asset.kind, asset.media_info(), asset.size, asset.salt
                ):
                    digest.update(piece)
                raw = digest.digest()
                with self.lock:
                    if asset.revision == revision:
                        asset.checksum_raw = raw
        return raw

    def checksum(self, asset_id: str) -> str:
        """Immich's ``checksum``: base64 of the SHA-1 of the bytes."""
        return base64.b64encode(self.checksum_raw(asset_id)).decode()

    def sha1(self, asset_id: str) -> str:
        """The SHA-1 of the asset's bytes, hex."""
        return self.checksum_raw(asset_id).hex()

    def close(self) -> None:
        """Remove the cache directory (the library stays usable; it is recreated on demand)."""
        with self.lock:
            if self._finalizer is not None:
                self._finalizer()
            self._cache_dir = None
            self._finalizer = None

    # -- mutations (thread-safe; each bumps updatedAt like Immich's trigger) --------

    def _touch(self, asset: FakeAsset) -> None:
        asset.updated_at = max(now(), asset.updated_at + timedelta(milliseconds=1))
        self.generation += 1

    def add_asset(
        self,
        name: str = "new photo.jpg",
        *,
        kind: str = "jpeg",
        size: int = 30_000,
        taken: datetime | None = None,
        owner_id: str | None = None,
        visibility: str = "timeline",
        is_favorite: bool = False,
        album_id: str | None = None,
        description: str = "",
    ) -> FakeAsset:
        """Upload a new asset now; returns it (its id is deterministic per library)."""
        with self.lock:
            self._added += 1
            rng = random.Random(f"{self.seed}/added/{self._added}")
            uploaded = now()
            asset = self._new_asset(
                f"added-{self._added}",
                owner_id or self.me.id,
                "VIDEO" if kind == "mp4" else "IMAGE",
                kind,
                name,
                taken or uploaded.replace(microsecond=0),
                rng,
                size=size,
            )
            asset.created_at = asset.updated_at = uploaded
            asset.visibility = visibility
            asset.is_favorite = is_favorite
            asset.description = description
            self._store(asset)
            if album_id is not None:
                self.add_to_album(album_id, [asset.id])
            self.generation += 1
            return asset

    def trash(self, asset_id: str) -> None:
        with self.lock:
            asset = self._asset(asset_id)
            asset.deleted_at = now()
            self._touch(asset)

    def restore(self, asset_id: str) -> None:
        with self.lock:
            asset = self._asset(asset_id)
            asset.deleted_at = None
            self._touch(asset)

    def delete(self, asset_id: str) -> None:
        """Remove the asset entirely (emptied trash): it vanishes from every listing."""
        with self.lock:
            asset = self.assets.pop(asset_id)
            for album in self.albums.values():
                if asset_id in album.asset_ids:
                    album.asset_ids.remove(asset_id)
                    album.updated_at = now()
                    if album.thumbnail_asset_id == asset_id:
                        album.thumbnail_asset_id = album.asset_ids[0] if album.asset_ids else None
            self.generation += 1
            if self._cache_dir is not None:
                for path in self._cache_dir.glob(f"{asset.id}.*"):
                    path.unlink(missing_ok=True)

    def set_favorite(self, asset_id: str, value: bool = True) -> None:
        with self.lock:
            asset = self._asset(asset_id)
            asset.is_favorite = value
            self._touch(asset)

    def set_visibility(self, asset_id: str, visibility: str) -> None:
        with self.lock:
            asset = self._asset(asset_id)
            asset.visibility = visibility
            self._touch(asset)

    def set_rating(self, asset_id: str, rating: int | None) -> None:
        """Rate the asset 1-5 (None: unrated)."""
        if rating is not None and not 1 <= rating <= 5:
            raise ValueError(f"a rating is 1-5 or None, not {rating}")
        with self.lock:
            asset = self._asset(asset_id)
            asset.rating = rating
            self._touch(asset)

    def rename(self, asset_id: str, name: str) -> None:
        with self.lock:
            asset = self._asset(asset_id)
            asset.original_file_name = name
            self._touch(asset)

    def add_to_album(self, album_id: str, asset_ids: Iterable[str]) -> None:
        with self.lock:
            album = self.albums[album_id]
            for asset_id in asset_ids:
                self._asset(asset_id)
                if asset_id not in album.asset_ids:
                    album.asset_ids.append(asset_id)
            if album.thumbnail_asset_id is None and album.asset_ids:
                album.thumbnail_asset_id = album.asset_ids[0]
            album.updated_at = now()
            self.generation += 1

    def remove_from_album(self, album_id: str, asset_ids: Iterable[str]) -> None:
        with self.lock:
            album = self.albums[album_id]
            for asset_id in asset_ids:
                if asset_id in album.asset_ids:
                    album.asset_ids.remove(asset_id)
            album.updated_at = now()
            self.generation += 1

    def change_content(self, asset_id: str, size: int | None = None) -> FakeAsset:
        """Replace the asset's bytes (new checksum; same size unless ``size`` is given)."""
        with self.lock:
            asset = self._asset(asset_id)
            if self._cache_dir is not None:  # open handles keep serving the old file
                for path in self._cache_dir.glob(f"{asset.id}.{asset.revision}*"):
                    path.unlink(missing_ok=True)
            asset.revision += 1
            asset.checksum_raw = None
            if size is not None:
                asset.size = media.adjust_size(asset.kind, size)
            asset.file_modified_at = now().replace(microsecond=0)
            self._touch(asset)
            return asset

    def edit(self, asset_id: str, size: int | None = None) -> FakeAsset:
        """Edit a photo now (as in Immich's editor): a new edited rendition, a JPEG
        of ``size`` bytes (default: about 70% of the original; never its size)."""
        with self.lock:
            asset = self._asset(asset_id)
            if asset.type != "IMAGE":
                raise ValueError(f"only photos are edited, not a {asset.type.lower()}")
            if self._cache_dir is not None:
                for path in self._cache_dir.glob(f"{asset.id}.edit*"):
                    path.unlink(missing_ok=True)
            asset.edit_revision += 1
            asset.edited_size = self._edited_size(asset, 0.7, size)
            asset.edited_at = now()
            self._touch(asset)
            return asset

    def remove_edit(self, asset_id: str) -> FakeAsset:
        """Undo every edit: the asset serves its original again."""
        with self.lock:
            asset = self._asset(asset_id)
            asset.edited_size = None
            asset.edited_at = None
            self._touch(asset)
            return asset

    def set_sidecar(self, asset_id: str) -> FakeAsset:
        """Write (or rewrite: new bytes) the asset's XMP sidecar now."""
        with self.lock:
            asset = self._asset(asset_id)
            asset.sidecar_revision = (asset.sidecar_revision or 0) + 1
            asset.sidecar_at = now()
            self._touch(asset)
            return asset

    def remove_sidecar(self, asset_id: str) -> FakeAsset:
        with self.lock:
            asset = self._asset(asset_id)
            asset.sidecar_revision = None
            asset.sidecar_at = None
            self._touch(asset)
            return asset

    # -- conveniences for tests -------------------------------------------------------

    def find(self, name: str) -> FakeAsset:
        """The first asset (by id) whose ``originalFileName`` is exactly ``name``."""
        matches = sorted(
            (a for a in self.assets.values() if a.original_file_name == name), key=lambda a: a.id
        )
        if not matches:
            raise KeyError(name)
        return matches[0]

    def album_named(self, name: str) -> FakeAlbum:
        matches = sorted((a for a in self.albums.values() if a.name == name), key=lambda a: a.id)
        if not matches:
            raise KeyError(name)
        return matches[0]

    def __repr__(self) -> str:
        return f"<FakeLibrary seed={self.seed} assets={len(self.assets)} albums={len(self.albums)}>"
