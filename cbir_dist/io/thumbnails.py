"""Small JPEG thumbnails as ``data:`` URIs, for self-contained HTML pages (no files beside the page)."""

from __future__ import annotations

import base64
import io

import numpy as np

THUMB_PX = 112  # longest side of a thumbnail
JPEG_QUALITY = 82


def thumbnail(image: np.ndarray, size: int = THUMB_PX) -> np.ndarray:
    """``image`` (uint8, H x W x 3, or H x W) scaled so its longer side is ``size`` px, aspect kept."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    s = size / max(w, h)
    if s < 1:
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    return np.asarray(im)


def jpeg_data_uri(image: np.ndarray, size: int = THUMB_PX, quality: int = JPEG_QUALITY) -> str:
    """A ``data:image/jpeg;base64,...`` URI of ``image``'s thumbnail (a few kB at 112 px)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(thumbnail(image, size)).save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def placeholder(size: int = THUMB_PX, grey: int = 225) -> np.ndarray:
    """A plain grey square, shown where an image cannot be read."""
    return np.full((size, size, 3), grey, np.uint8)
