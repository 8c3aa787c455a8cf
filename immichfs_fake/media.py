"""Deterministic, decodable media bytes for the fake Immich server.

Every asset's original is built from a small template shipped in ``media/``
(made once with Pillow and ffmpeg; neither is needed at run time) plus:

* a per-asset identity segment, so no two assets share bytes (JPEG: an EXIF
  APP1 with the capture date and a COM segment; PNG: ``eXIf`` and a private
  ``fkId`` chunk; WebP: ``EXIF`` and an unknown ``FKID`` chunk; MP4: a
  top-level ``uuid`` box);
* deterministic padding up to the asset's target size (JPEG: a trailer after
  EOI, as cameras and motion photos write; PNG: a private ``fkPd`` chunk; WebP:
  an unknown ``FKPD`` chunk; MP4: a top-level ``free`` box).

Decoders skip all of these, so the files stay valid. Content is produced as a
stream of chunks (:func:`iter_content`) so a 1 GiB video never sits in memory.
"""

from __future__ import annotations

import logging
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

log = logging.getLogger(__name__)

#: kind -> (template file, MIME type of the served file)
KINDS: dict[str, tuple[str, str]] = {
    "jpeg": ("photo.jpg", "image/jpeg"),
    "png": ("photo.png", "image/png"),
    "webp": ("photo.webp", "image/webp"),
    "mp4": ("video.mp4", "video/mp4"),
}
#: Space reserved in front of the padding for identity segments; target sizes
#: are always at least template size + this.
HEADROOM = 2048
_PAD_BLOCK_SIZE = 1 << 20
_CHUNK = 1 << 20


@cache
def template(name: str) -> bytes:
    """The bytes of a shipped template file (``photo.jpg``, ``thumbnail.webp`` ...)."""
    return (resources.files("immichfs_fake") / "media" / name).read_bytes()


@cache
def _pad_block() -> bytes:
    # One fixed pseudo-random MiB; each asset reads it from its own offset.
    return random.Random(0x1A3C1F5).randbytes(_PAD_BLOCK_SIZE)


def min_size(kind: str) -> int:
    """The smallest target size accepted for ``kind``."""
    return len(template(KINDS[kind][0])) + HEADROOM


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What goes into an asset's identity segment."""

    uid: bytes  # unique per asset and revision
    taken_local: str = "2020:01:01 12:00:00"  # EXIF "YYYY:MM:DD HH:MM:SS"
    offset: str = "+00:00"
    make: str = "Fakon"
    model: str = "F-100"
    description: str = ""


# -- EXIF (TIFF) built by hand ------------------------------------------------


def _ascii(value: str) -> bytes:
    return value.encode("ascii", "replace") + b"\x00"


def _ifd(entries: list[tuple[int, int, int, bytes]], start: int) -> tuple[bytes, bytes]:
    """One little-endian IFD at offset ``start``: (directory, data area after it).

    ``entries`` are (tag, type, count, value bytes); values longer than 4 bytes
    go to the data area that directly follows the directory.
    """
    entries = sorted(entries)
    data_at = start + 2 + 12 * len(entries) + 4
    directory = bytearray(struct.pack("<H", len(entries)))
    data = bytearray()
    for tag, typ, count, value in entries:
        if len(value) <= 4:
            directory += struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\x00")
        else:
            directory += struct.pack("<HHII", tag, typ, count, data_at + len(data))
            data += value
            if len(data) % 2:
                data += b"\x00"
    directory += struct.pack("<I", 0)
    return bytes(directory), bytes(data)


def exif_tiff(info: MediaInfo) -> bytes:
    """A TIFF-structured EXIF block with dates, camera and a unique id."""
    ascii_type = 2
    long_type = 4

    def text(tag: int, value: str) -> tuple[int, int, int, bytes]:
        raw = _ascii(value)
        return (tag, ascii_type, len(raw), raw)

    exif_entries = [
        text(0x9003, info.taken_local),  # DateTimeOriginal
        text(0x9004, info.taken_local),  # DateTimeDigitized
        text(0x9011, info.offset),  # OffsetTimeOriginal
        text(0xA420, info.uid.hex()[:32]),  # ImageUniqueID
    ]
    ifd0_entries = [
        text(0x010F, info.make),
        text(0x0110, info.model),
        text(0x0132, info.taken_local),  # DateTime
        (0x8769, long_type, 1, b"\x00\x00\x00\x00"),  # ExifIFD pointer, patched below
    ]
    if info.description:
        ifd0_entries.append(text(0x010E, info.description.encode("ascii", "replace").decode()))
    ifd0_dir, ifd0_data = _ifd(ifd0_entries, 8)
    exif_start = 8 + len(ifd0_dir) + len(ifd0_data)
    # Recompute IFD0 with the real pointer (same length, so offsets hold).
    ifd0_entries[3] = (0x8769, long_type, 1, struct.pack("<I", exif_start))
    ifd0_dir, ifd0_data = _ifd(ifd0_entries, 8)
    exif_dir, exif_data = _ifd(exif_entries, exif_start)
    return b"II*\x00" + struct.pack("<I", 8) + ifd0_dir + ifd0_data + exif_dir + exif_data


# -- per-format assembly: (prefix, padding length, trailer builder) -----------


def _padding(length: int, salt: int) -> Iterator[bytes]:
    block = _pad_block()
    offset = salt % _PAD_BLOCK_SIZE
    while length > 0:
        piece = block[offset : offset + min(length, _CHUNK)]
        offset = 0
        length -= len(piece)
        yield piece


def _jpeg_prefix(info: MediaInfo) -> bytes:
    body = template(KINDS["jpeg"][0])
    # Drop the template's JFIF APP0: camera files start with the EXIF APP1.
    rest = body[2:]
    if rest[:2] == b"\xff\xe0":
        rest = rest[2 + struct.unpack(">H", rest[2:4])[0] :]
    app1 = b"Exif\x00\x00" + exif_tiff(info)
    comment = b"immichfs fake asset " + info.uid
    return (
        b"\xff\xd8"
        + b"\xff\xe1"
        + struct.pack(">H", len(app1) + 2)
        + app1
        + b"\xff\xfe"
        + struct.pack(">H", len(comment) + 2)
        + comment
        + rest
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_parts(info: MediaInfo) -> tuple[bytes, bytes]:
    """(everything before the padding chunk's data, the chunks after it)."""
    body = template(KINDS["png"][0])
    sig, ihdr_end = body[:8], 8 + 8 + 13 + 4
    head = sig + body[8:ihdr_end]
    head += _png_chunk(b"eXIf", exif_tiff(info))
    head += _png_chunk(b"fkId", info.uid)
    return head, body[ihdr_end:]


def _webp_chunks(info: MediaInfo) -> bytes:
    """The template's chunks with our EXIF and identity chunk (no RIFF header)."""
    body = template(KINDS["webp"][0])
    out = bytearray()
    pos = 12
    while pos < len(body):
        fourcc = body[pos : pos + 4]
        length = struct.unpack("<I", body[pos + 4 : pos + 8])[0]
        if fourcc != b"EXIF":
            out += body[pos : pos + 8 + length + (length & 1)]
        pos += 8 + length + (length & 1)
    for fourcc, data in ((b"EXIF", exif_tiff(info)), (b"FKID", info.uid)):
        out += fourcc + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) & 1 else b"")
    return bytes(out)


def adjust_size(kind: str, size: int) -> int:
    """``size`` made acceptable for ``kind`` (at least :func:`min_size`; even for RIFF)."""
    size = max(size, min_size(kind))
    if kind == "webp" and size % 2:
        size += 1
    return size


def iter_content(kind: str, info: MediaInfo, size: int, salt: int) -> Iterator[bytes]:
    """The file's bytes, exactly ``size`` of them, in chunks of at most ~1 MiB.

    ``size`` must come from :func:`adjust_size`; ``salt`` varies the padding.
    """
    if size != adjust_size(kind, size):
        raise ValueError(f"size {size} is not valid for {kind}")
    if kind == "jpeg":
        prefix = _jpeg_prefix(info)
        yield prefix
        yield from _padding(size - len(prefix), salt)
    elif kind == "png":
        head, tail = _png_parts(info)
        pad = size - len(head) - 12 - len(tail)
        yield head + struct.pack(">I", pad) + b"fkPd"
        crc = zlib.crc32(b"fkPd")
        for piece in _padding(pad, salt):
            crc = zlib.crc32(piece, crc)
            yield piece
        yield struct.pack(">I", crc) + tail
    elif kind == "webp":
        chunks = _webp_chunks(info)
        pad = size - 12 - len(chunks) - 8
        yield b"RIFF" + struct.pack("<I", size - 8) + b"WEBP" + chunks
        yield b"FKPD" + struct.pack("<I", pad)
        yield from _padding(pad, salt)
    elif kind == "mp4":
        body = template(KINDS["mp4"][0])
        ident = b"immichfs-fake-id" + info.uid  # 16-byte usertype, then the payload
        uuid_box = struct.pack(">I", 8 + len(ident)) + b"uuid" + ident
        prefix = body + uuid_box
        remaining = size - len(prefix)
        if remaining < 8:
            raise ValueError("mp4 target too small")
        if remaining - 8 <= 0xFFFFFFFF - 8:
            header = struct.pack(">I", remaining) + b"free"
        else:
            header = struct.pack(">I", 1) + b"free" + struct.pack(">Q", remaining)
        yield prefix + header
        yield from _padding(remaining - len(header), salt)
    else:
        raise ValueError(f"unknown media kind {kind!r}")


def render(kind: str, info: MediaInfo, size: int, salt: int) -> bytes:
    """The whole file in memory (for small assets)."""
    return b"".join(iter_content(kind, info, size, salt))


def thumbnail(size: str, uid: bytes) -> tuple[bytes, str]:
    """A decodable thumbnail (``thumbnail`` → WebP, ``preview`` → JPEG) unique to ``uid``."""
    if size == "thumbnail":
        body = template("thumbnail.webp")
        extra = b"FKID" + struct.pack("<I", len(uid)) + uid + (b"\x00" if len(uid) & 1 else b"")
        # A simple-format WebP may not carry extra chunks; append the id after
        # the RIFF payload instead (decoders read only the declared RIFF size).
        return body + extra, "image/webp"
    body = template("preview.jpg" if size == "preview" else "person.jpg")
    comment = b"immichfs fake " + uid
    return (
        body[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + body[2:],
        "image/jpeg",
    )
