"""Training data of the inpainter: the held-out split, the decoded-image cache, random masks, batches, validation.

Every image of the training folders except the held-out split is decoded once at native size into
memory. A batch is ``batch_size`` random square crops of one side drawn from ``[crop_min,
crop_max]`` (multiples of 8), randomly flipped left-right, each with its own mask — with
probability ``fringe_prob`` a fringe mask (equivalent frequency at a 256 px side log-uniform in
[0.4, 7] Hz, missing fraction uniform in [0.1, 0.5], angle 0° (50 %), 90° (15 %) or uniform, phase
uniform in [0, π)), otherwise a free-form mask — and the Telea pre-fill of its holes, exactly as
at inference. The random draws happen in a fixed order from one ``numpy`` generator, so a
checkpointed generator state resumes the same stream.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np

from ..errors import ImageDecodeError, InputError
from ..io.files import list_images
from ..io.images import read_image
from ..io.tables import write_text
from .config import TrainConfig

log = logging.getLogger(__name__)

#: Frequencies of the validation masks (the evaluation protocol's, phase 0, 25 % missing).
VAL_FREQUENCIES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)


def data_root(images_dirs) -> Path:
    """The folder that split-file paths are relative to: the common parent of ``images_dirs``."""
    parents = [Path(d).resolve().parent for d in images_dirs]
    return Path(os.path.commonpath([str(p) for p in parents]))


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def split_dataset(images_dirs, val_fraction: float = 0.1, seed: int = 0, root=None) -> tuple[list[str], list[str]]:
    """Deterministic per-class train/validation split of class-per-folder image sets.

    Within each (set, class) the sorted paths are shuffled with a generator seeded by ``seed`` and
    the class, and the first ``ceil(val_fraction · n)`` are held out. Returns ``(train, val)``
    lists of paths relative to ``root`` (default :func:`data_root`), each sorted.
    """
    root = Path(root) if root else data_root(images_dirs)
    train, val = [], []
    for d in sorted(str(Path(x).resolve()) for x in images_dirs):
        by_class: dict[str, list[str]] = {}
        for f in list_images(d):
            try:
                rel = Path(f.path).resolve().relative_to(root)
            except ValueError:
                raise InputError(f"{f.path} is not under the data root {root} (--data-root): give a folder "
                                 "that holds every image directory") from None
            by_class.setdefault(f.label, []).append(str(rel))
        for label in sorted(by_class):
            paths = sorted(by_class[label])
            order = np.random.default_rng([seed, _stable_hash(f"{Path(d).name}/{label}")]).permutation(len(paths))
            k = int(math.ceil(val_fraction * len(paths)))
            val += [paths[i] for i in order[:k]]
            train += [paths[i] for i in order[k:]]
    return sorted(train), sorted(val)


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
    """Absolute training and held-out paths, each sorted by path.

    Reads ``val_split_file`` when it exists (every listed file must be found under the image
    folders, else :class:`~cbir_dist.errors.InputError`); otherwise splits each class with
    ``val_fraction`` and writes the file when one is named.
    """
    root = Path(cfg.data_root).resolve() if cfg.data_root else data_root(cfg.images_dirs)
    train, val = split_dataset(cfg.images_dirs, cfg.val_fraction, cfg.seed, root=root)
    if not train and not val:
        raise InputError(f"no image files under {', '.join(cfg.images_dirs)} (expected class-per-folder images)")
    if cfg.val_split_file and Path(cfg.val_split_file).is_file():
        held = set(read_split_file(cfg.val_split_file))
        all_files = set(train) | set(val)
        unknown = held - all_files
        if unknown:
            raise InputError(
                f"{cfg.val_split_file}: {len(unknown)} listed files are not under {root} "
                f"(e.g. {sorted(unknown)[0]}); pass the image directories (and --data-root) the split was made from")
        val = sorted(held)
        train = sorted(all_files - held)
    elif cfg.val_split_file:
        write_split_file(cfg.val_split_file, val, images_dirs=cfg.images_dirs, val_fraction=cfg.val_fraction,
                         seed=cfg.seed)
    return sorted(root / p for p in train), sorted(root / p for p in val)


def load_cache(paths, min_side: int = 0) -> list[np.ndarray]:
    """Decode every image once into memory as uint8 (H, W, 3) at native size.

    Unreadable files, and images whose shorter side is under ``min_side`` (they cannot give a
    crop), are skipped with a warning. Raises :class:`~cbir_dist.errors.InputError` when nothing is
    left.
    """
    cache = []
    for p in paths:
        try:
            img = read_image(p)
        except ImageDecodeError as exc:
            log.warning("skipping %s", exc)
            continue
        if min(img.shape[:2]) < min_side:
            log.warning("skipping %s: %dx%d is smaller than the largest crop (%d)", p, img.shape[1], img.shape[0], min_side)
            continue
        cache.append(img)
    if not cache:
        raise InputError(f"no usable images among {len(paths)} training files (each needs a side of at least "
                         f"{min_side} px, the largest crop): check the image folders and --crop-max")
    return cache


def sample_mask(rng: np.random.Generator, side: int, fringe_prob: float) -> np.ndarray:
    """A random square known-pixel mask (True = known): a fringe mask or a free-form one."""
    from ..damage.masks import fringe_mask, irregular_mask

    if rng.random() < fringe_prob:
        f256 = float(np.exp(rng.uniform(np.log(0.4), np.log(7.0))))
        frac = float(rng.uniform(0.1, 0.5))
        u = rng.random()
        angle = 0.0 if u < 0.5 else 90.0 if u < 0.65 else float(rng.uniform(0.0, 180.0))
        phase = float(rng.uniform(0.0, math.pi))
        return fringe_mask(side, side, f256 * side / 256.0, missing_fraction=frac, angle=angle, phase=phase)
    return irregular_mask(side, side, rng)


def sample_batch(cache, rng: np.random.Generator, batch_size: int, crop_min: int, crop_max: int,
                 fringe_prob: float, prefill_method: str = "telea", prefill_radius: float = 5.0):
    """One batch: uint8 targets (B, c, c, 3), their pre-fills (B, c, c, 3) and bool masks (B, c, c)."""
    from ..damage.inpaint.two_stage import prefill

    c = 8 * int(rng.integers(crop_min // 8, crop_max // 8 + 1))
    target = np.empty((batch_size, c, c, 3), np.uint8)
    pre = np.empty_like(target)
    known = np.empty((batch_size, c, c), bool)
    for b in range(batch_size):
        img = cache[int(rng.integers(len(cache)))]
        h, w = img.shape[:2]
        y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        patch = img[y : y + c, x : x + c]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        target[b] = patch
        known[b] = sample_mask(rng, c, fringe_prob)
        pre[b] = prefill(target[b], known[b], prefill_method, prefill_radius)
    return target, pre, known


def to_tensor(images: np.ndarray, device=None):
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images))
    if device is not None:
        t = t.to(device)
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def mask_tensor(known: np.ndarray, device=None):
    """bool (B, H, W) -> float (B, 1, H, W) in {0, 1} (1 = known)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(known))
    if device is not None:
        t = t.to(device)
    return t.float()[:, None]


def stratified_subset(rel_paths, n: int | None, seed: int = 0) -> list[str]:
    """All of ``rel_paths``, or ``n`` of them taken round-robin over their classes (parent folders)
    from seeded permutations, sorted. The benchmark's ``--max-images`` and the validation set use it."""
    rel = list(rel_paths)
    if not n or n >= len(rel):
        return rel
    by_class: dict[str, list[str]] = {}
    for p in rel:
        by_class.setdefault(str(Path(p).parent), []).append(p)
    rng = np.random.default_rng(seed)
    queues = {c: [str(x) for x in rng.permutation(sorted(v))] for c, v in sorted(by_class.items())}
    chosen: list[str] = []
    while len(chosen) < n:
        for c in sorted(queues):
            if queues[c] and len(chosen) < n:
                chosen.append(queues[c].pop(0))
    return sorted(chosen)


def validation_set(val_paths, root, n_images: int, prefill_method: str = "telea", prefill_radius: float = 5.0):
    """Fixed validation cases: ``n_images`` held-out images × :data:`VAL_FREQUENCIES` at phase 0, 25 % missing.

    Returns a list of ``(frequency, image, known, prefilled, telea_psnr, telea_ssim)``.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from ..damage.inpaint.two_stage import prefill
    from ..damage.masks import fringe_mask

    root = Path(root)
    rel = [str(Path(p).relative_to(root)) for p in val_paths]
    cases = []
    for r in stratified_subset(rel, n_images):
        img = read_image(root / r)
        for f in VAL_FREQUENCIES:
            k = fringe_mask(img.shape[0], img.shape[1], f)
            pre = prefill(img, k, prefill_method, prefill_radius)
            cases.append((f, img, k, pre, peak_signal_noise_ratio(img, pre, data_range=255),
                          structural_similarity(img, pre, data_range=255, channel_axis=-1)))
    return cases


def validate(refine, cases) -> dict:
    """PSNR/SSIM gain of ``refine(prefilled (1,H,W,3), known (1,H,W)) -> (1,H,W,3)`` over Telea, per frequency.

    Keys ``dpsnr@F``, ``dssim@F`` per frequency F, ``dpsnr_mean``, ``dpsnr_min``, ``psnr_mean`` (the network's).
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    per_f: dict[float, list] = {}
    for f, img, k, pre, tp, ts in cases:
        rec = refine(pre[None], k[None])[0]
        p = peak_signal_noise_ratio(img, rec, data_range=255)
        s = structural_similarity(img, rec, data_range=255, channel_axis=-1)
        per_f.setdefault(f, []).append((p - tp, s - ts, p))
    out = {f"dpsnr@{f:g}": float(np.mean([v[0] for v in vals])) for f, vals in per_f.items()}
    out.update({f"dssim@{f:g}": float(np.mean([v[1] for v in vals])) for f, vals in per_f.items()})
    gains = [v for k, v in out.items() if k.startswith("dpsnr@")]
    out["dpsnr_mean"] = float(np.mean(gains)) if gains else 0.0
    out["dpsnr_min"] = float(np.min(gains)) if gains else 0.0
    out["psnr_mean"] = float(np.mean([v[2] for vals in per_f.values() for v in vals])) if per_f else 0.0
    return out
