"""The affine repository of Pande et al.: rotated, translated, scaled and combined copies of shape images.

Each source image gets four variants drawn deterministically from a seeded generator:

* ``rotation``    — rotation by an angle in [15, 345] degrees about the image centre;
* ``translation`` — a shift of 10-30 % of the image side along each axis (random signs);
* ``scaling``     — isotropic scaling by ``s`` in [0.5, 0.8] or [1.25, 2.0] (never near 1);
* ``combined``    — a fresh rotation, scale and translation applied together.

Every warp is drawn on a canvas large enough that nothing is clipped: the canvas is the bounding box
of the warped image corners, plus a margin on each side equal to the largest shift the translation
range allows, so a translated shape moves inside the same-sized frame it would have had unshifted.
Uncovered canvas is filled with the image's background value (the most common border colour).
Binary (two-level) images are warped with bilinear interpolation and re-thresholded half-way between
their two levels, so they stay two-level; other images keep the bilinear result.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

VARIANTS = ("rotation", "translation", "scaling", "combined")
ANGLE_RANGE = (15.0, 345.0)
SCALE_RANGES = ((0.5, 0.8), (1.25, 2.0))
SHIFT_RANGE = (0.10, 0.30)  # fraction of the image side
_MARGIN = SHIFT_RANGE[1]


@dataclass(frozen=True)
class AffineParams:
    """One similarity transform: rotation ``angle`` (degrees, counter-clockwise), ``scale``, and a
    shift ``(dx, dy)`` as fractions of the source image's width and height."""

    angle: float = 0.0
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def tag(self) -> str:
        """Short text recording the parameters, e.g. ``r37.5_s1.42_t+0.12-0.25``."""
        return f"r{self.angle:.1f}_s{self.scale:.2f}_t{self.dx:+.2f}{self.dy:+.2f}"


def _angle(rng) -> float:
    return float(rng.uniform(*ANGLE_RANGE))


def _scale(rng) -> float:
    lo, hi = SCALE_RANGES[int(rng.integers(2))]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _shift(rng) -> tuple[float, float]:
    mag = rng.uniform(*SHIFT_RANGE, size=2)
    sign = rng.choice([-1.0, 1.0], size=2)
    return float(mag[0] * sign[0]), float(mag[1] * sign[1])


def draw_affine_params(rng: np.random.Generator) -> dict[str, AffineParams]:
    """Parameters of the four variants, drawn from ``rng`` in a fixed order (deterministic per seed)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    rotation = AffineParams(angle=_angle(rng))
    dx, dy = _shift(rng)
    translation = AffineParams(dx=dx, dy=dy)
    scaling = AffineParams(scale=_scale(rng))
    a, s = _angle(rng), _scale(rng)
    dx, dy = _shift(rng)
    combined = AffineParams(angle=a, scale=s, dx=dx, dy=dy)
    return {"rotation": rotation, "translation": translation, "scaling": scaling, "combined": combined}


def background_value(image: np.ndarray) -> np.ndarray:
    """The most common colour on the image's one-pixel frame, shape ``(C,)`` (``(1,)`` for grey)."""
    im = image if image.ndim == 3 else image[..., None]
    frame = np.concatenate([im[0], im[-1], im[1:-1, 0], im[1:-1, -1]], axis=0)
    colours, counts = np.unique(frame, axis=0, return_counts=True)
    return colours[np.argmax(counts)]


def _only_other_level(src: np.ndarray, bg: np.ndarray) -> np.ndarray | None:
    """The one colour other than ``bg`` if ``src`` (H, W, C) is two-level, else None (linear time, no sort)."""
    flat = src.reshape(-1, src.shape[2])
    other = flat[(flat != bg).any(axis=1)]
    if len(other) == 0 or not (other == other[0]).all():
        return None
    return other[0].copy()


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError("image must be a uint8 numpy array (H, W) or (H, W, 3)")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(f"image has shape {image.shape}; expected (H, W) or (H, W, 3)")
    if min(image.shape[:2]) < 2:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} px; too small to warp")
    return image


def apply_affine(image: np.ndarray, params: AffineParams) -> np.ndarray:
    """Warp ``image`` by ``params`` onto an unclipped canvas (see the module docstring).

    The map is ``x' = s R(angle) (x - c) + c' + (dx W, dy H)``: rotation and scaling about the image
    centre ``c``, then the result is placed at ``c'`` — the centre of a canvas that holds the warped
    image corners plus a margin of ``0.3 W`` / ``0.3 H`` per side (the largest shift drawn) — and shifted.

    Parameters
    ----------
    image : ndarray, uint8, shape (H, W) or (H, W, 3)
    params : AffineParams

    Returns
    -------
    ndarray, uint8, same number of channels as ``image``; the canvas is usually larger.
    """
    import cv2

    image = _check_image(image)
    h, w = image.shape[:2]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    m = cv2.getRotationMatrix2D((cx, cy), params.angle, params.scale)  # 2x3, about the centre
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    warped = corners @ m[:, :2].T + m[:, 2]
    lo, hi = warped.min(axis=0), warped.max(axis=0)
    mx, my = int(np.ceil(_MARGIN * w)), int(np.ceil(_MARGIN * h))
    out_w = int(np.ceil(hi[0] - lo[0])) + 2 * mx
    out_h = int(np.ceil(hi[1] - lo[1])) + 2 * my
    m = m.copy()
    m[0, 2] += -(lo[0] + 0.5) + mx + params.dx * w
    m[1, 2] += -(lo[1] + 0.5) + my + params.dy * h

    bg = background_value(image)
    src = image if image.ndim == 3 else image[..., None]
    fg = _only_other_level(src, bg)
    binary = fg is not None
    out = cv2.warpAffine(
        np.ascontiguousarray(src),
        m,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(v) for v in bg) + (0.0,) * (4 - len(bg)),
    )
    if out.ndim == 2:
        out = out[..., None]
    if binary:
        # distance along the bg->fg segment, thresholded half-way: stays exactly two-level
        span = fg.astype(np.float64) - bg.astype(np.float64)
        frac = ((out.astype(np.float64) - bg) @ span) / float(span @ span)
        out = np.where((frac >= 0.5)[..., None], fg, bg).astype(np.uint8)
    return out if image.ndim == 3 else out[..., 0]


def affine_variants(image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The four affine variants of one image, keyed by :data:`VARIANTS`; deterministic given ``rng``'s state."""
    params = draw_affine_params(rng)
    return {name: apply_affine(image, params[name]) for name in VARIANTS}


def _file_rng(seed: int, rel: str) -> np.random.Generator:
    # seeded by the file's relative path, so a file's variants do not depend on what else is listed
    return np.random.default_rng([int(seed), zlib.crc32(rel.encode("utf-8"))])


def write_affine_repository(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, seed: int = 0) -> list[str]:
    """Write the affine repository of a class-per-folder image set.

    For every image ``<class>/<name>.<ext>`` under ``src_dir`` this writes, under ``dst_dir/<class>/``,
    ``<name>__original.png`` and ``<name>__<variant>__<params>.png`` for the four :data:`VARIANTS`
    (``params`` from :meth:`AffineParams.tag`), plus ``dst_dir/affine_params.csv`` listing every file's
    source, variant and parameters. Images are decoded with :func:`cbir_dist.imageio.read_image` (RGB);
    binary silhouettes stay binary. Each file's variants are drawn from a generator seeded by
    ``(seed, crc32(relative path))``, so rerunning gives byte-identical output.

    Returns
    -------
    list of str
        Paths of the written images, in the order written.
    """
    from PIL import Image

    from ..io.files import list_images
    from ..io.images import read_image
    from ..io.tables import write_text

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    files = list_images(src_dir)
    if not files:
        raise InputError(f"{src_dir}: no images found (expected <class>/<image> files)")
    dst_dir.mkdir(parents=True, exist_ok=True)
    written, rows = [], ["source,variant,file,angle,scale,dx,dy"]
    for f in files:
        rel = Path(f.path).relative_to(src_dir).as_posix()
        image = read_image(f.path)
        if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
            image = image[..., 0]  # grey: save one channel, warp once
        params = draw_affine_params(_file_rng(seed, rel))
        out_dir = dst_dir / (f.label or "_")
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = Path(f.path).stem
        items = [("original", AffineParams(), image)]
        items += [(name, params[name], apply_affine(image, params[name])) for name in VARIANTS]
        for name, p, arr in items:
            fn = f"{stem}__original.png" if name == "original" else f"{stem}__{name}__{p.tag()}.png"
            path = out_dir / fn
            Image.fromarray(arr).save(path)
            written.append(str(path))
            rel_out = path.relative_to(dst_dir).as_posix()
            rows.append(f"{rel},{name},{rel_out},{p.angle:.4f},{p.scale:.4f},{p.dx:.4f},{p.dy:.4f}")
    write_text(dst_dir / "affine_params.csv", "\n".join(rows) + "\n")
    log.info("wrote %d images (%d sources x 5) under %s", len(written), len(files), dst_dir)
    return written
