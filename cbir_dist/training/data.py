"""Training data of the inpainter: the held-out split, the decoded-image cache, random masks and batches.

Batches are random crops (and flips) of images decoded once into a uint8 cache, with masks drawn
from a mixture of fringe masks (0.5–6 fringes per crop, 15–40 % missing, random angle and phase)
and free-form masks. The validation pairs are fixed: each held-out image with a fringe mask.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from ..io.files import list_images
from ..io.images import read_image
from ..io.tables import write_text
from .config import TrainConfig

log = logging.getLogger(__name__)

VAL_FREQUENCIES = (0.5, 1.0, 2.0, 4.0)


def data_root(images_dirs) -> Path:
    """The folder that split-file paths are relative to: the common parent of ``images_dirs``."""
    parents = [Path(d).resolve().parent for d in images_dirs]
    return Path(os.path.commonpath([str(p) for p in parents]))


def split_dataset(images_dirs, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic per-class train/validation split of class-per-folder image sets.

    Within each (set, class) the sorted paths are shuffled with ``numpy.random.default_rng(seed)``
    and the first ``ceil(val_fraction · n)`` are held out. Returns ``(train, val)`` lists of paths
    relative to :func:`data_root`, each sorted.
    """
    root = data_root(images_dirs)
    train, val = [], []
    for d in sorted(str(Path(x).resolve()) for x in images_dirs):
        by_class: dict[str, list[str]] = {}
        for f in list_images(d):
            by_class.setdefault(f.label, []).append(str(Path(f.path).resolve().relative_to(root)))
        for label in sorted(by_class):
            paths = sorted(by_class[label])
            order = np.random.default_rng([seed, _stable_hash(f"{Path(d).name}/{label}")]).permutation(len(paths))
            k = int(math.ceil(val_fraction * len(paths)))
            val += [paths[i] for i in order[:k]]
            train += [paths[i] for i in order[k:]]
    return sorted(train), sorted(val)


def _stable_hash(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def write_split_file(path, val_files, *, images_dirs, val_fraction: float, seed: int) -> None:
    """Write the held-out list (one relative path a line, ``#`` comment header)."""
    names = ", ".join(Path(d).name for d in images_dirs)
    header = [
        "# Held-out validation images of the two-stage inpainter (never seen in training).",
        f"# Paths are relative to the data root holding: {names}.",
        f"# split_dataset(val_fraction={val_fraction}, seed={seed}): a seeded shuffle of each class's sorted paths.",
    ]
    write_text(Path(path), "\n".join(header + list(val_files)) + "\n")


def read_split_file(path) -> list[str]:
    """Relative paths listed in a split file (comments and blank lines skipped)."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def resolve_split(cfg: TrainConfig) -> tuple[list[Path], list[Path]]:
    """Absolute train and validation paths; reads ``val_split_file`` if it exists, else writes it."""
    root = data_root(cfg.images_dirs)
    train, val = split_dataset(cfg.images_dirs, cfg.val_fraction, cfg.seed)
    if cfg.val_split_file and Path(cfg.val_split_file).is_file():
        held = set(read_split_file(cfg.val_split_file))
        all_files = set(train) | set(val)
        unknown = held - all_files
        if unknown:
            raise ValueError(
                f"{cfg.val_split_file}: {len(unknown)} listed files are not under {root} "
                f"(e.g. {sorted(unknown)[0]}); pass the same image directories the split was made from"
            )
        val = sorted(held)
        train = sorted(all_files - held)
    elif cfg.val_split_file:
        write_split_file(cfg.val_split_file, val, images_dirs=cfg.images_dirs, val_fraction=cfg.val_fraction, seed=cfg.seed)
    return [root / p for p in train], [root / p for p in val]


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize (area interpolation when shrinking) so that the shorter side equals ``short_side``."""
    import cv2

    h, w = image.shape[:2]
    s = short_side / min(h, w)
    if s == 1.0:
        return image
    size = (max(short_side, int(round(w * s))), max(short_side, int(round(h * s))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)


def load_cache(paths, short_side: int) -> list[np.ndarray]:
    """Decode every image once into memory as uint8 (H, W, 3) with the shorter side = ``short_side``."""
    from ..errors import ImageDecodeError

    cache = []
    for p in paths:
        try:
            cache.append(resize_short_side(read_image(p), short_side))
        except ImageDecodeError as exc:
            log.warning("skipping %s", exc)
    if not cache:
        raise ValueError(f"no readable images among {len(paths)} files")
    return cache


def sample_mask(rng: np.random.Generator, height: int, width: int, fringe_probability: float = 0.7) -> np.ndarray:
    """A random known-pixel mask: fringe (log-uniform 0.5–6 fringes, 15–40 % missing) or free-form.

    Half the fringe masks are axis-aligned (angle 0 or 90°), the rest at a uniform angle; the
    phase is uniform in [0, π).
    """
    from ..damage.masks import fringe_mask, irregular_mask

    if rng.random() < fringe_probability:
        freq = float(np.exp(rng.uniform(np.log(0.5), np.log(6.0))))
        frac = float(rng.uniform(0.15, 0.4))
        angle = float(rng.choice([0.0, 90.0])) if rng.random() < 0.5 else float(rng.uniform(0.0, 180.0))
        phase = float(rng.uniform(0.0, np.pi))
        return fringe_mask(height, width, freq, missing_fraction=frac, angle=angle, phase=phase)
    return irregular_mask(height, width, rng)


def sample_batch(cache, rng: np.random.Generator, batch_size: int, crop: int, fringe_probability: float = 0.7):
    """Random crops (and horizontal flips) with random masks: uint8 (B, crop, crop, 3), bool (B, crop, crop)."""
    images = np.empty((batch_size, crop, crop, 3), np.uint8)
    masks = np.empty((batch_size, crop, crop), bool)
    for b in range(batch_size):
        img = cache[int(rng.integers(len(cache)))]
        h, w = img.shape[:2]
        y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        patch = img[y : y + crop, x : x + crop]
        images[b] = patch[:, ::-1] if rng.random() < 0.5 else patch
        masks[b] = sample_mask(rng, crop, crop, fringe_probability)
    return images, masks


def to_tensors(images: np.ndarray, masks: np.ndarray, device):
    """uint8 (B, H, W, 3), bool (B, H, W) -> float image (B, 3, H, W) in [-1, 1], mask (B, 1, H, W)."""
    import torch

    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    m = torch.from_numpy(masks).to(device).float()[:, None]
    return x, m


def validation_set(paths, short_side: int, seed: int, max_images: int):
    """Fixed validation pairs: each image (cached size) with a fringe mask cycling through 0.5/1/2/4 Hz.

    Masks use 25 % missing, vertical fringes and phase 0 (the evaluation protocol's masks).
    """
    from ..damage.masks import fringe_mask

    paths = list(paths)
    if max_images and len(paths) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths = [paths[i] for i in idx]
    images = load_cache(paths, short_side)
    masks = [fringe_mask(*im.shape[:2], VAL_FREQUENCIES[i % len(VAL_FREQUENCIES)]) for i, im in enumerate(images)]
    return images, masks
