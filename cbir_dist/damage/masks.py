"""Masks of known pixels: fringe (interference-stripe) masks, random free-form masks, mask files.

Every mask is a ``bool`` array of shape ``(H, W)`` with **True = known pixel**: it is the paper's
``M`` in the destroyed image ``M ⊙ I`` (see :func:`apply_mask`).
"""

from __future__ import annotations

import io
import math
from os import PathLike

import numpy as np

from ..errors import ImageDecodeError, UsageError

__all__ = [
    "FRINGE_FREQUENCIES",
    "MIN_SIDE",
    "apply_mask",
    "fringe_intensity",
    "fraction_missing",
    "fringe_mask",
    "irregular_mask",
    "load_mask",
]

#: The fringe frequencies (fringes per image) the paper's figures and tables use.
FRINGE_FREQUENCIES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)
MAX_MASK_BYTES = 256 << 20
#: Smallest side, in pixels, a generated mask may have.
MIN_SIDE = 8


def _check_size(height: int, width: int) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
        if value < MIN_SIDE:
            raise ValueError(f"{name} must be at least {MIN_SIDE} pixels, got {value}.")
    return int(height), int(width)


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise UsageError(f"{name} must lie strictly between 0 and 1, got {value}.")
    return value


def fringe_intensity(
    height: int, width: int, frequency: float, angle: float = 0.0, phase: float = 0.0
) -> np.ndarray:
    """Two-slit interference intensity ``cos²(π·f·u + phase)`` sampled on the pixel grid.

    Parameters
    ----------
    height, width : int
        Size of the grid, at least 8 pixels each.
    frequency : float
        ``f``, fringes per image (> 0): the intensity has period ``1/f`` in ``u``, so ``f`` bright
        fringes fit across the image.
    angle : float, optional
        Direction of the fringe axis ``u`` in **degrees**, measured from the image's x (column) axis
        towards its y (row, downward) axis. ``0`` gives vertical stripes (intensity varies along
        x), ``90`` horizontal stripes.
    phase : float, optional
        Phase offset in **radians**; ``π/2`` swaps bright and dark fringes.

    Returns
    -------
    intensity : ndarray of float64, shape (H, W)
        Values in ``[0, 1]``. ``u = (p - min p) / (max p - min p)`` with
        ``p = x·cos(angle) + y·sin(angle)`` over the pixel centres, so ``u`` spans exactly
        ``[0, 1]`` across the image at every angle.
    """
    u = _fringe_axis(height, width, frequency, angle, phase)
    return np.cos(math.pi * float(frequency) * u + float(phase)) ** 2


def _fringe_axis(height: int, width: int, frequency: float, angle: float, phase: float) -> np.ndarray:
    """The normalised fringe coordinate ``u`` in [0, 1] of every pixel, shape (H, W)."""
    height, width = _check_size(height, width)
    frequency = float(frequency)
    if not math.isfinite(frequency) or frequency <= 0:
        raise UsageError(f"frequency must be a positive number of fringes per image, got {frequency}.")
    if not (math.isfinite(float(angle)) and math.isfinite(float(phase))):
        raise UsageError(f"angle and phase must be finite, got angle={angle}, phase={phase}.")
    theta = math.radians(float(angle))
    c, s = math.cos(theta), math.sin(theta)
    # Snap cos/sin of multiples of 90 degrees to exact 0/±1 so axis-aligned stripes are exact.
    c, s = (0.0 if abs(c) < 1e-12 else c), (0.0 if abs(s) < 1e-12 else s)
    x = np.arange(width, dtype=np.float64)
    y = np.arange(height, dtype=np.float64)
    p = x[None, :] * c + y[:, None] * s
    p = p - p.min()
    # Rounding merges pixels on one line of constant p that differ only by float error, so a
    # stripe edge is a clean line rather than last-bit noise.
    return np.round(p / p.max(), 9)


def fringe_mask(
    height: int,
    width: int,
    frequency: float,
    missing_fraction: float = 0.25,
    angle: float = 0.0,
    phase: float = 0.0,
) -> np.ndarray:
    """Known-pixel mask whose missing pixels are the bright fringes of an interference pattern.

    The intensity ``I = cos²(π·f·u + phase)`` is computed by :func:`fringe_intensity`; the pixels
    whose intensity lies in the top ``missing_fraction`` are missing. The threshold is the exact
    quantile of ``I`` over the image, so the missing fraction is the requested one whatever the
    frequency, size, angle or phase: a higher ``frequency`` gives more, thinner and closer stripes
    of the same total area. At ``frequency < 1`` less than one period fits and the "stripe" is a
    single band where the intensity peaks (at the left edge for ``phase = 0``, ``angle = 0``).

    Pixels on one line of constant ``u`` (whole columns at ``angle = 0``, whole rows at ``90``) are
    never split; lines of equal intensity on either side of a fringe are ordered by ``u``. The cut
    is placed to give the pixel count closest to ``missing_fraction · H · W``, so the error is at
    most half a line: ``1 / (2·W)`` at ``angle = 0``, ``1 / (2·H)`` at 90, below 0.01 from 64 px up.

    Parameters
    ----------
    height, width : int
        Mask size, at least 8 pixels each.
    frequency : float
        Fringes per image, > 0 (the paper uses 0.5, 1, 1.5, 2, 3, 4, 5 and 6).
    missing_fraction : float, optional
        Fraction of pixels to remove, strictly between 0 and 1. Default 0.25.
    angle : float, optional
        Direction of the fringe axis in degrees (0: vertical stripes, 90: horizontal ones).
    phase : float, optional
        Phase offset in radians.

    Returns
    -------
    known : ndarray of bool, shape (H, W)
        True where the pixel is kept.

    Raises
    ------
    ValueError
        If ``frequency <= 0``, ``missing_fraction`` is outside ``(0, 1)`` or a side is under 8 px.

    References
    ----------
    The fringe masks of the reproduced paper (interference fringes of frequency 0.5–6 Hz applied
    to Paris 6K queries before retrieval).
    """
    missing_fraction = _check_fraction("missing_fraction", missing_fraction)
    u = _fringe_axis(height, width, frequency, angle, phase)
    # Pixels on one line of constant u share their intensity exactly; rank those lines by intensity
    # (brightest first, ties between distinct lines broken by u) and cut where the cumulative
    # pixel count is closest to the target, so the threshold is the exact quantile.
    levels, inverse, counts = np.unique(u, return_inverse=True, return_counts=True)
    level_intensity = np.cos(math.pi * float(frequency) * levels + float(phase)) ** 2
    order = np.lexsort((levels, -level_intensity))
    cumulative = np.concatenate(([0], np.cumsum(counts[order])))
    target = missing_fraction * u.size
    cut = int(np.argmin(np.abs(cumulative - target)))
    missing_level = np.zeros(levels.size, dtype=bool)
    missing_level[order[:cut]] = True
    missing = missing_level[inverse.reshape(u.shape)]
    return ~missing


def irregular_mask(
    height: int,
    width: int,
    rng: np.random.Generator | int | None = None,
    max_strokes: int = 10,
    max_vertices: int = 8,
    max_width_fraction: float = 0.08,
    max_ellipses: int = 3,
    min_missing: float = 0.05,
    max_missing: float = 0.45,
) -> np.ndarray:
    """Random free-form mask (strokes and blobs) for training an inpainting network.

    Shapes are drawn in rounds of 1 to ``max_strokes`` poly-line strokes and 0 to
    ``max_ellipses`` filled ellipses, in random order, one at a time until the missing fraction
    reaches a target drawn uniformly from ``[min_missing, max_missing]``; a shape that would take
    the fraction above ``max_missing`` is discarded (and later shapes are drawn smaller). A stroke
    has 1 to ``max_vertices`` segments (``cv2.line`` with a random thickness of 1 to
    ``max_width_fraction · min(H, W)`` px, round joints); an ellipse has random semi-axes of 3 to
    15 % of the image side and a random rotation. This follows the free-form masks of Yu et al.,
    "Free-Form Image Inpainting with Gated Convolution", ICCV 2019.

    Parameters
    ----------
    height, width : int
        Mask size, at least 8 pixels each.
    rng : numpy.random.Generator or int or None
        Source of randomness (an int is used as a seed); pass a generator for reproducible masks.
    max_strokes, max_vertices, max_ellipses : int, optional
        Bounds on the shapes of one drawing round.
    max_width_fraction : float, optional
        Largest stroke thickness as a fraction of the shorter side.
    min_missing, max_missing : float, optional
        The missing fraction of the result lies in ``[min_missing, max_missing]``
        (default 5 % to 45 %).

    Returns
    -------
    known : ndarray of bool, shape (H, W)
        True where the pixel is kept.
    """
    import cv2

    height, width = _check_size(height, width)
    min_missing = _check_fraction("min_missing", min_missing)
    max_missing = _check_fraction("max_missing", max_missing)
    if min_missing > max_missing:
        raise ValueError(f"min_missing ({min_missing}) must not exceed max_missing ({max_missing}).")
    for name, value in (("max_strokes", max_strokes), ("max_vertices", max_vertices)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    if int(max_ellipses) < 0:
        raise ValueError(f"max_ellipses must be >= 0, got {max_ellipses}.")
    if not 0.0 < float(max_width_fraction) <= 0.5:
        raise ValueError(f"max_width_fraction must lie in (0, 0.5], got {max_width_fraction}.")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng

    n = height * width
    target = rng.uniform(min_missing, max_missing) * n
    side = min(height, width)
    max_thick = max(1, int(round(max_width_fraction * side)))
    holes = np.zeros((height, width), dtype=np.uint8)
    count = 0
    scale = 1.0  # shrinks after rejections so small shapes can top up without overshooting
    rejected = 0
    for _ in range(1000):  # rounds; a round nearly always suffices
        kinds = [True] * int(rng.integers(1, max_strokes + 1))
        kinds += [False] * int(rng.integers(0, max_ellipses + 1))
        for is_stroke in rng.permutation(kinds):
            candidate = holes.copy()
            if is_stroke:
                _draw_stroke(cv2, candidate, rng, max_vertices, max(1, int(max_thick * scale)), side * scale)
            else:
                _draw_ellipse(cv2, candidate, rng, scale)
            new_count = int(candidate.sum())
            if new_count > max_missing * n:
                rejected += 1
                if rejected % 5 == 0:
                    scale *= 0.7
                continue
            holes, count = candidate, new_count
            if count >= target:
                break
        if count >= target:
            break
    need = int(math.ceil(min_missing * n)) - count
    if need > 0:  # unreachable in practice; keeps the documented range a guarantee
        free = np.flatnonzero(holes.reshape(-1) == 0)
        holes.reshape(-1)[rng.choice(free, need, replace=False)] = 1
    return holes == 0


def _draw_stroke(cv2, canvas: np.ndarray, rng: np.random.Generator, max_vertices: int,
                 max_thick: int, reach: float) -> None:
    height, width = canvas.shape
    thick = int(rng.integers(1, max_thick + 1))
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    for _ in range(int(rng.integers(1, max_vertices + 1))):
        ang = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.05, 0.35) * reach
        nx = int(np.clip(x + length * math.cos(ang), 0, width - 1))
        ny = int(np.clip(y + length * math.sin(ang), 0, height - 1))
        cv2.line(canvas, (x, y), (nx, ny), 1, thick, lineType=cv2.LINE_8)
        cv2.circle(canvas, (nx, ny), thick // 2, 1, -1)
        x, y = nx, ny


def _draw_ellipse(cv2, canvas: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    height, width = canvas.shape
    center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    axes = (
        max(1, int(rng.uniform(0.03, 0.15) * width * scale)),
        max(1, int(rng.uniform(0.03, 0.15) * height * scale)),
    )
    cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)


def load_mask(path: str | PathLike[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image: **white = known, black = missing**.

    The file is converted to 8-bit grey (alpha is ignored) and a pixel is known when its grey
    level is at least 128. With ``shape=(H, W)`` the mask is resized with nearest-neighbour
    sampling so it stays binary.

    Parameters
    ----------
    path : str or path-like
        Any image format Pillow reads (PNG recommended: JPEG artefacts blur the edge).
    shape : tuple of int, optional
        ``(height, width)`` of the mask to return.

    Returns
    -------
    known : ndarray of bool, shape (H, W)

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImageDecodeError
        If the file is not an image Pillow can decode.
    """
    from PIL import Image, UnidentifiedImageError

    if shape is not None:
        if len(shape) != 2 or any(int(v) < 1 for v in shape):
            raise ValueError(f"shape must be (height, width) with positive sides, got {shape}.")
    from ..io.files import read_file

    try:
        data, _ = read_file(path, max_bytes=MAX_MASK_BYTES)  # a regular file only: a FIFO never blocks
    except ValueError as exc:
        raise ImageDecodeError(f"{path}: cannot read the mask ({exc})") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            grey = im.convert("L")
            if shape is not None and grey.size != (int(shape[1]), int(shape[0])):
                grey = grey.resize((int(shape[1]), int(shape[0])), Image.Resampling.NEAREST)
            arr = np.asarray(grey)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: cannot read the mask image ({exc}); save it as a PNG.") from exc
    return arr >= 128


def _check_mask(known: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    known = np.asarray(known)
    if known.dtype != bool:
        raise TypeError(
            f"The mask must be a bool array (True = known pixel), got dtype {known.dtype}; "
            "convert it with `mask.astype(bool)` or load it with `load_mask`."
        )
    if known.shape != tuple(shape[:2]):
        raise ValueError(f"The mask has shape {known.shape} but the image is {tuple(shape[:2])} (H, W).")
    return known


def apply_mask(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The destroyed image ``M ⊙ I``: a copy of ``image`` with missing pixels set to zero.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Any dtype; the result has the same dtype and shape.
    known : ndarray of bool, shape (H, W)
        True = known pixel.

    Returns
    -------
    destroyed : ndarray, same shape and dtype as ``image``
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {image.shape}.")
    known = _check_mask(known, image.shape)
    out = image.copy()
    out[~known] = 0
    return out


def missing_iou(estimated: np.ndarray | None, true: np.ndarray) -> float:
    """IoU of the missing regions of two known-pixel masks (``estimated`` None: nothing found missing);
    1.0 when neither has a missing pixel."""
    b = ~np.asarray(true, dtype=bool)
    a = np.zeros_like(b) if estimated is None else ~np.asarray(estimated, dtype=bool)
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def fraction_missing(known: np.ndarray) -> float:
    """Fraction of missing (False) pixels of a known-pixel mask."""
    known = np.asarray(known)
    if known.dtype != bool:
        raise TypeError(f"The mask must be a bool array (True = known pixel), got dtype {known.dtype}.")
    return float(1.0 - known.mean())
