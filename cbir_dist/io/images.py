"""Decoding image bytes of any common format to uint8 RGB arrays, with the limits that guard against bad files."""

from __future__ import annotations

import io
import os

import numpy as np

from ..errors import ImageDecodeError

MIN_SIDE = 16
DEFAULT_MAX_PIXELS = 100_000_000  # decompression-bomb guard: 10k x 10k


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0 and arr.min(initial=0) >= 0:
        return np.round(arr * 255).astype(np.uint8)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to a ``uint8`` array of shape ``(H, W, 3)`` in RGB order.

    Grey, palette, RGBA (composited on white), CMYK, 16-bit and float images are converted; animated
    GIF/TIFF use their first frame; an EXIF orientation is applied (the image upright, as viewers show it). Raises :class:`ImageDecodeError` for empty, corrupt, truncated or
    non-image data, for images with a side under 16 px, and for images over ``max_pixels`` pixels
    (decompression bombs; raise the limit with ``--max-pixels`` if the file is genuine).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    # --max-pixels is the one limit: PIL's own bomb check (a warning at 89 M pixels, an error at twice
    # that) must not reject an image our limit allows. The size is checked below from the header,
    # before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                    "(possible decompression bomb); raise --max-pixels if the file is genuine"
                )
            im.seek(0)
            im.load()
            arr = _pil_to_rgb(_upright(im))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        # PIL's message names the in-memory buffer's address; keep reasons reproducible across runs
        raise ImageDecodeError(f"{name}: not a readable image (unknown or unsupported format)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc
    if min(arr.shape[:2]) < MIN_SIDE:
        raise ImageDecodeError(
            f"{name}: image is {arr.shape[1]}x{arr.shape[0]} px, smaller than the minimum side of {MIN_SIDE} px"
        )
    return arr


def _upright(im):
    """The image as it is meant to be seen: a phone photo's EXIF orientation (tag 0x0112) applied, so
    a rotated shot is described upright, as every viewer shows it."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block is no orientation, not a bad image
        return im
    return ImageOps.exif_transpose(im) if orientation in (2, 3, 4, 5, 6, 7, 8) else im


def _pil_to_rgb(im) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode in ("RGB",):
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = _to_uint8(np.asarray(im))
        return np.repeat(arr[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one regular image file; see :func:`decode_image`. Raises :class:`ImageDecodeError`."""
    from .files import read_file

    try:
        data, _ = read_file(path)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({getattr(exc, 'strerror', None) or exc})") from exc
    return decode_image(data, max_pixels=max_pixels, name=str(path))
