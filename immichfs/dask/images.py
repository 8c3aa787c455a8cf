"""The per-image work: decode, estimate a map, write it as a PNG that names its source.

:func:`gradient_magnitude` is a real image operation standing in for a depth
model: the normalised magnitude of the luminance gradient (Sobel-like central
differences), 0-255. Any function ``PIL.Image.Image -> PIL.Image.Image`` can
take its place; docs/DASK.md shows Depth-Anything through transformers.

The output PNG carries the source asset's checksum in a text chunk
(``immich.checksum``): a rerun skips an asset whose output already holds the
checksum it has now, and redoes one whose bytes changed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

#: PNG text chunk holding the source asset's checksum
CHECKSUM_CHUNK = "immich.checksum"
#: PNG text chunk holding the source asset's id
ID_CHUNK = "immich.asset_id"

Estimator = Callable[[Image.Image], Image.Image]


def decode(data: bytes) -> Image.Image:
    """The picture in ``data``, upright (EXIF orientation applied), fully loaded.

    Raises ``PIL.UnidentifiedImageError``/``OSError`` for bytes that are no image.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    return upright


def gradient_magnitude(image: Image.Image) -> Image.Image:
    """Normalised gradient magnitude of the luminance, as an 8-bit grey image."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    peak = float(magnitude.max())
    if peak > 0:
        magnitude *= 255.0 / peak
    return Image.fromarray(np.rint(magnitude).astype(np.uint8), mode="L")


def output_path(outdir: str | os.PathLike[str], asset_id: str) -> Path:
    """``OUTDIR/<asset id>.png``: keyed by asset id, as ImmichVR keys its depth maps."""
    return Path(outdir) / f"{asset_id}.png"


def write_map(path: Path, image: Image.Image, *, asset_id: str, checksum: str) -> None:
    """Write ``image`` as PNG with its source's id and checksum, atomically (a crash
    leaves no half-written output that a rerun would take as done)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(ID_CHUNK, asset_id)
    info.add_text(CHECKSUM_CHUNK, checksum)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info, compress_level=1)  # 3x faster than 6
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def recorded_checksum(path: Path) -> str | None:
    """The source checksum an existing output was made from (None: absent or unreadable)."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {})
            value = text.get(CHECKSUM_CHUNK)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None
