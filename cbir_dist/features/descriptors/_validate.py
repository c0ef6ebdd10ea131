"""Input checks shared by the descriptors: skimage-style messages that say what to do next."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ...errors import UsageError

MIN_SIDE = 16

# ITU-R BT.601 luma in 16-bit fixed point, exactly as PIL's ``Image.convert("L")`` computes it:
# Y = (19595 R + 38470 G + 7471 B + 2**15) >> 16   (0.299, 0.587, 0.114 scaled by 2**16).
_LUMA_FIXED = (19595, 38470, 7471)


def check_image(image, func: str) -> np.ndarray:
    """Return ``image`` if it is a uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB array with sides >= 16 px.

    Raises ``TypeError`` for non-arrays and non-uint8 dtypes (floats included: convert them with
    ``skimage.util.img_as_ubyte``) and ``ValueError`` for other shapes or images that are too small.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{func} expects a numpy array, got {type(image).__name__}; "
            "wrap it with np.asarray(image, dtype=np.uint8) first."
        )
    if image.dtype != np.uint8:
        if image.dtype.kind == "f":
            hint = (
                f"Float images are not supported by {func}. Convert the image to uint8, "
                "e.g. skimage.util.img_as_ubyte(image) for values in [0, 1]."
            )
        elif image.dtype == bool:
            hint = f"Boolean images are not supported by {func}. Convert with image.astype(np.uint8) * 255."
        else:
            hint = (
                f"{image.dtype} images are not supported by {func}. Rescale to uint8 first, "
                "e.g. skimage.util.img_as_ubyte(image)."
            )
        raise TypeError(hint)
    if image.ndim == 3 and image.shape[2] != 3:
        extra = " (drop the alpha channel with image[..., :3])" if image.shape[2] == 4 else ""
        extra = " (squeeze it to (H, W) with image[..., 0])" if image.shape[2] == 1 else extra
        raise ValueError(f"{func} takes (H, W, 3) RGB or (H, W) grey images, got shape {image.shape}{extra}.")
    if image.ndim not in (2, 3):
        raise ValueError(f"{func} takes (H, W, 3) RGB or (H, W) grey images, got a {image.ndim}-D array.")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(
            f"{func} needs images of at least {MIN_SIDE} x {MIN_SIDE} px, got {w} x {h} (W x H); "
            "upscale small images first."
        )
    return image


def check_int(value, name: str, func: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``; ``TypeError`` for another type,
    :class:`~cbir_dist.errors.UsageError` (a ``ValueError``) for a value out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{func}: {name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise UsageError(f"{func}: {name} must be {bound}, got {value}")
    return value


def check_float(value, name: str, func: str, low: float, high: float, *, low_open: bool = True) -> float:
    """``value`` as a ``float`` in ``(low, high]`` (``[low, high]`` when ``low_open`` is False)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value > high or value < low or (low_open and value == low):
        left = "(" if low_open else "["
        raise UsageError(f"{func}: {name} must be in {left}{low}, {high}], got {value}")
    return value


def check_int_sequence(values, name: str, func: str, minimum: int, length: int | None = None) -> tuple[int, ...]:
    """A non-empty sequence of integers >= ``minimum`` (of ``length`` items if given) as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{func}: {name} must be a sequence of integers, got {values!r}")
    if len(values) == 0 or (length is not None and len(values) != length):
        want = f"{length} integers" if length is not None else "at least one integer"
        raise UsageError(f"{func}: {name} must hold {want}, got {tuple(values)!r}")
    return tuple(check_int(v, f"each of {name}", func, minimum) for v in values)


def grey_uint8(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of a validated uint8 image as uint8 ``(H, W)``; grey input is returned as is.

    Integer-exact and identical to PIL's ``Image.convert("L")``:
    ``Y = (19595 R + 38470 G + 7471 B + 32768) >> 16``.
    """
    if image.ndim == 2:
        return image
    r, g, b = _LUMA_FIXED
    y = image[..., 0] * np.uint32(r)
    y += image[..., 1] * np.uint32(g)
    y += image[..., 2] * np.uint32(b)
    y += np.uint32(1 << 15)
    y >>= np.uint32(16)
    return y.astype(np.uint8)
