"""Training job of the two-stage inpainter: data split and cache, mask sampling, the loop, checkpoints, Ray Train.

One loop (:func:`run_training_loop`) runs either in-process (``use_ray=False``) or inside every
worker of a Ray Train ``TorchTrainer`` (``use_ray=True``: data-parallel, DDP over GPU workers on a
cluster, one CPU worker on a laptop). Batches are random crops (and flips) of images decoded once
into a uint8 cache, with masks drawn from a mixture of fringe masks (0.5–6 fringes per crop,
15–40 % missing, random angle and phase) and free-form masks. Checkpoints hold the model, the
optimizer, the step and every RNG state, written atomically (tmp file + ``os.replace``), so a run
killed at any point resumes bit-for-bit from its last checkpoint. Validation PSNR/SSIM on the
held-out split go to ``metrics.jsonl`` beside a loss-curve PNG.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .imageio import list_images, read_image

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"
VAL_FREQUENCIES = (0.5, 1.0, 2.0, 4.0)


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run (saved into checkpoints and the provenance JSON)."""

    images_dirs: tuple[str, ...]
    out: str
    steps: int = 2000
    batch_size: int = 8
    crop: int = 128
    lr: float = 3e-4
    lr_final_fraction: float = 0.1  # cosine decay to lr * this at `steps`
    warmup_steps: int = 50
    seed: int = 0
    width: int = 32
    cache_short_side: int = 192
    val_fraction: float = 0.1
    val_split_file: str | None = None
    val_every: int = 250
    val_max_images: int = 64
    log_every: int = 10
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    vgg_weights: str | None = None
    vgg_pretrained: bool = True
    vgg_every: int = 4  # VGG style/correlation terms on every k-th step only (CPU budget)
    vgg_batch: int = 4  # ... and on the first `vgg_batch` images of that batch
    hole_weight: float = 6.0
    valid_weight: float = 1.0
    style_weight: float = 120.0
    correlation_weight: float = 1.0
    adversarial: bool = False
    adversarial_weight: float = 0.01
    fringe_probability: float = 0.7
    max_minutes: float | None = None
    num_threads: int | None = None
    command: str = ""

    def __post_init__(self):
        if not self.images_dirs:
            raise ValueError("images_dirs must name at least one class-per-folder image directory")
        for name in ("steps", "batch_size", "crop", "checkpoint_every", "val_every", "log_every", "vgg_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.crop % 8:
            raise ValueError(f"crop must be a multiple of 8 (the network's stride), got {self.crop}")
        if self.cache_short_side < self.crop:
            raise ValueError(f"cache_short_side ({self.cache_short_side}) must be >= crop ({self.crop})")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir or Path(self.out) / "checkpoints") / CHECKPOINT_NAME


# ------------------------------------------------------------------------------------ data split
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
    _atomic_write_text(Path(path), "\n".join(header + list(val_files)) + "\n")


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


# ------------------------------------------------------------------------------------ data cache
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
    from .errors import ImageDecodeError

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
    from .masks import fringe_mask, irregular_mask

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
    from .masks import fringe_mask

    paths = list(paths)
    if max_images and len(paths) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths = [paths[i] for i in idx]
    images = load_cache(paths, short_side)
    masks = [fringe_mask(*im.shape[:2], VAL_FREQUENCIES[i % len(VAL_FREQUENCIES)]) for i, im in enumerate(images)]
    return images, masks


def evaluate(inpaint_batch, images, masks) -> dict:
    """Mean PSNR / SSIM (whole image, skimage) of ``inpaint_batch`` and of the masked input (``none``)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    out = {"val_psnr": [], "val_ssim": [], "val_psnr_none": []}
    for img, m in zip(images, masks):
        rec = inpaint_batch(img[None], m[None])[0]
        out["val_psnr"].append(peak_signal_noise_ratio(img, rec, data_range=255))
        out["val_ssim"].append(structural_similarity(img, rec, channel_axis=2, data_range=255))
        out["val_psnr_none"].append(peak_signal_noise_ratio(img, img * m[..., None], data_range=255))
    return {k: float(np.mean(v)) for k, v in out.items()}


# ------------------------------------------------------------------------------------ checkpoints
def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(path, *, model, optimizer, step: int, rng: np.random.Generator, config: TrainConfig,
                    discriminator=None, d_optimizer=None, extra: dict | None = None) -> None:
    """Write model, optimizer, step and RNG states atomically (``path.tmp`` then ``os.replace``)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "numpy_rng": json.dumps(rng.bit_generator.state),  # JSON keeps the file loadable with weights_only=True
        "torch_rng": torch.get_rng_state(),
        "config": asdict(config),
        "extra": extra or {},
    }
    if discriminator is not None:
        state["discriminator"] = _unwrap(discriminator).state_dict()
        state["d_optimizer"] = d_optimizer.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, *, model, optimizer, rng: np.random.Generator, discriminator=None, d_optimizer=None,
                    extra_out: dict | None = None) -> int:
    """Restore a :func:`save_checkpoint` file in place; returns the step to continue from.

    ``extra_out``, when given, is updated with the checkpoint's ``extra`` dict.
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    if extra_out is not None:
        extra_out.update(state.get("extra", {}))
    if discriminator is not None and "discriminator" in state:
        _unwrap(discriminator).load_state_dict(state["discriminator"])
        d_optimizer.load_state_dict(state["d_optimizer"])
    return int(state["step"])


def _unwrap(model):
    return getattr(model, "module", model)


# --------------------------------------------------------------------------------------- logging
def read_metrics(path) -> list[dict]:
    """Records of a ``metrics.jsonl`` (empty list when absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


class MetricsLog:
    """Append-only JSONL of training/validation records; truncated to ``<= step`` on resume."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        _atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def plot_history(records: list[dict], png, references: dict[str, float] | None = None) -> None:
    """Loss curve (train L1 terms) with validation PSNR on a second axis, saved as PNG.

    ``references`` maps a label to a validation PSNR drawn as a horizontal line (e.g. Telea's on
    the same validation pairs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["l1_refined"] for r in train], label="L1 stage 2 (6·hole + valid)", lw=1)
        ax.plot(steps, [r["l1_coarse"] for r in train], label="L1 stage 1", lw=1, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log interval)")
    ax.set_yscale("log")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", color="k", label="val PSNR")
        ax2.plot([r["step"] for r in val], [r["val_psnr_none"] for r in val], ":", color="grey", label="val PSNR, no inpainting")
        for (label, value), colour in zip((references or {}).items(), ("tab:red", "tab:purple", "tab:brown")):
            ax2.axhline(value, ls="--", lw=1, color=colour, label=f"val PSNR, {label}")
        ax2.set_ylabel("validation PSNR (dB)")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("two-stage inpainter training")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ loop
def _lr_at(cfg: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """Linear warm-up then cosine decay to ``lr · lr_final_fraction``.

    Progress is ``step / steps``, or, with a ``max_minutes`` budget, the larger of that and the
    fraction of the budget used, so that a time-limited run still ends annealed (such a run is not
    bit-reproducible: its learning rate depends on the wall clock).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.max_minutes:
        t = max(t, min(1.0, elapsed_s / (60.0 * cfg.max_minutes)))
    return cfg.lr * (cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def run_training_loop(cfg: TrainConfig, *, device=None, rank: int = 0, world_size: int = 1,
                      prepare_model=None, report=None, resume_from=None) -> dict:
    """The training loop shared by the in-process and the Ray Train paths.

    Parameters
    ----------
    cfg : TrainConfig
    device : torch.device, optional
    rank, world_size : int
        Data-parallel position; each rank draws its own batches (seed + rank) and only rank 0
        writes checkpoints, logs and validation.
    prepare_model : callable, optional
        Wraps the model for distributed training (``ray.train.torch.prepare_model``).
    report : callable, optional
        ``report(metrics: dict, checkpoint_path: Path | None)`` after every log interval / checkpoint.
    resume_from : path, optional
        A checkpoint to resume from; default ``cfg.checkpoint_path`` when it exists.

    Returns
    -------
    dict
        ``{"step": last step, "history": [...records], "val": last validation metrics}``.
    """
    import torch

    from .inpaint.losses import LossWeights, build_patch_discriminator, hinge_d_loss, total_loss, vgg_features
    from .inpaint.two_stage import TwoStageInpainter, build_two_stage

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device(device or "cpu")
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, rank])
    model = build_two_stage(cfg.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    disc = d_opt = None
    if cfg.adversarial:
        disc = build_patch_discriminator().to(device)
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
    weights = LossWeights(hole=cfg.hole_weight, valid=cfg.valid_weight, style=cfg.style_weight,
                          correlation=cfg.correlation_weight,
                          adversarial=cfg.adversarial_weight if cfg.adversarial else 0.0)
    vgg = None
    if cfg.style_weight > 0 or cfg.correlation_weight > 0:
        vgg = vgg_features(cfg.vgg_weights, pretrained=cfg.vgg_pretrained).to(device)

    ckpt_path = cfg.checkpoint_path  # where this run writes its checkpoints
    load_path = Path(resume_from) if resume_from else ckpt_path
    step = 0
    elapsed_before = 0.0  # training seconds spent before this (re)start, for the max_minutes budget
    if load_path.is_file():
        extra = {}
        step = load_checkpoint(load_path, model=model, optimizer=optimizer, rng=rng, discriminator=disc,
                               d_optimizer=d_opt, extra_out=extra)
        elapsed_before = float(extra.get("elapsed_s", 0.0))
        if world_size > 1:  # each rank continues its own stream
            rng = np.random.default_rng([cfg.seed, rank, step])
        log.info("resumed from %s at step %d", load_path, step)
    if prepare_model is not None:
        model = prepare_model(model)
        if disc is not None:
            disc = prepare_model(disc)

    train_paths, val_paths = resolve_split(cfg)
    cache = load_cache(train_paths, cfg.cache_short_side)
    log.info("cached %d training images (short side %d) in %.1f s", len(cache), cfg.cache_short_side, time.monotonic() - t_start)
    val_images, val_masks = ([], [])
    if rank == 0 and val_paths:
        val_images, val_masks = validation_set(val_paths, cfg.cache_short_side, cfg.seed, cfg.val_max_images)
    out = Path(cfg.out)
    metrics = MetricsLog(out / METRICS_NAME, resume_step=step) if rank == 0 else None

    def validate(at_step):
        model.eval()
        res = evaluate(TwoStageInpainter(_unwrap(model), device).inpaint_batch, val_images, val_masks)
        model.train()
        rec = {"kind": "val", "step": at_step, **res}
        metrics.append(rec)
        log.info("step %d validation: %s", at_step, res)
        return res

    def checkpoint(at_step):
        save_checkpoint(ckpt_path, model=model, optimizer=optimizer, step=at_step, rng=rng, config=cfg,
                        discriminator=disc, d_optimizer=d_opt, extra={"elapsed_s": elapsed()})
        plot_history(metrics.read(), out / PLOT_NAME)

    model.train()
    acc: dict[str, list[float]] = {}
    last_val: dict = {}
    t_loop = time.monotonic()

    def elapsed():
        return elapsed_before + time.monotonic() - t_loop

    t_log = time.monotonic()
    stopped_early = False
    while step < cfg.steps:
        if cfg.max_minutes and elapsed() > 60 * cfg.max_minutes:
            log.info("time budget of %.1f min reached at step %d", cfg.max_minutes, step)
            stopped_early = True
            break
        lr_now = _lr_at(cfg, step, elapsed())
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        images, masks = sample_batch(cache, rng, cfg.batch_size, cfg.crop, cfg.fringe_probability)
        x, m = to_tensors(images, masks, device)
        coarse, refined, output = model(x, m)
        use_vgg = vgg is not None and step % cfg.vgg_every == 0
        loss, terms = total_loss(x, m, coarse, refined, output, weights=replace(weights, style=0.0, correlation=0.0))
        if use_vgg:
            k = min(cfg.vgg_batch, x.shape[0])
            vgg_w = replace(weights, hole=0.0, valid=0.0, coarse=0.0, adversarial=0.0)
            lv, tv = total_loss(x[:k], m[:k], coarse[:k], refined[:k], output[:k], weights=vgg_w, vgg=vgg)
            loss = loss + lv
            terms.update({k2: v for k2, v in tv.items() if k2 in ("style", "correlation")})
        if disc is not None:
            la, ta = total_loss(x, m, coarse, refined, output, weights=replace(weights, hole=0.0, valid=0.0, coarse=0.0), discriminator=disc)
            loss = loss + la
            terms["adversarial"] = ta.get("adversarial", 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if disc is not None:
            d_loss = hinge_d_loss(disc(torch.cat([x, m], 1)), disc(torch.cat([output.detach(), m], 1)))
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            terms["d_loss"] = float(d_loss.detach())
        terms["total"] = float(loss.detach())
        for k2, v in terms.items():
            acc.setdefault(k2, []).append(v)
        step += 1

        ckpt_written = None
        if rank == 0:
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.monotonic()
                rec = {"kind": "train", "step": step, "lr": lr_now, "elapsed_s": elapsed(),
                       "sec_per_step": (now - t_log) / max(1, len(acc.get("total", [1])))}
                rec.update({k2: float(np.mean(v)) for k2, v in acc.items()})
                metrics.append(rec)
                log.info("step %d %s", step, {k2: float(f"{v:.4g}") for k2, v in rec.items() if isinstance(v, float)})
                acc, t_log = {}, now
            if val_images and (step % cfg.val_every == 0 or step == cfg.steps):
                last_val = validate(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step)
                ckpt_written = ckpt_path
        if report is not None and (step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == cfg.steps):
            # every rank reports at the same steps (Ray Train requires it); rank 0 attaches the checkpoint
            report({"step": step, "loss": terms["total"], **last_val}, ckpt_written)
    if rank == 0:
        if stopped_early:
            if val_images:
                last_val = validate(step)
            checkpoint(step)
            if report is not None:
                report({"step": step, **last_val}, ckpt_path)
        history = metrics.read()
    else:
        history = []
    return {"step": step, "history": history, "val": last_val, "checkpoint": str(ckpt_path)}


# -------------------------------------------------------------------------------------- exports
def export_weights(checkpoint_path, weights_path, *, provenance: dict | None = None, half: bool = False) -> dict:
    """Write a checkpoint's model state dict (only) and its provenance JSON ``<weights>.json``.

    The JSON records ``sha256`` of the .pt, which :func:`cbir_dist.inpaint.two_stage.load_two_stage`
    checks, and ``model: {width}``. Returns the provenance dict.
    """
    import torch

    from .inpaint.two_stage import sha256_file

    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    sd = {k: (v.half() if half and v.is_floating_point() else v) for k, v in state["model"].items()}
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, weights_path)
    cfg = state["config"]
    meta = {
        "model": {"architecture": "TwoStageNet", "width": cfg["width"], "stride": 8,
                  "parameters": int(sum(v.numel() for v in sd.values()))},
        "steps": state["step"],
        "batch_size": cfg["batch_size"],
        "crop": cfg["crop"],
        "lr": cfg["lr"],
        "seed": cfg["seed"],
        "cache_short_side": cfg["cache_short_side"],
        "data": [Path(d).name for d in cfg["images_dirs"]],
        "config": cfg,
        "dtype": "float16" if half else "float32",
    }
    meta.update(provenance or {})
    meta["sha256"] = sha256_file(weights_path)
    _atomic_write_text(weights_path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------------------------------- Ray
def _ray_train_loop(config: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: the same loop, DDP-wrapped, reporting to Ray."""
    import shutil
    import tempfile

    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = TrainConfig(**{**config, "images_dirs": tuple(config["images_dirs"])})
    ctx = ray.train.get_context()
    resume = None
    ray_ckpt = ray.train.get_checkpoint()
    staged = None
    if ray_ckpt is not None:  # Ray-managed resume (e.g. after a worker failure)
        staged = tempfile.mkdtemp()
        resume = Path(ray_ckpt.to_directory(staged)) / CHECKPOINT_NAME

    def report(metrics, ckpt_path):
        if ckpt_path is not None:
            with tempfile.TemporaryDirectory() as d:
                shutil.copyfile(ckpt_path, Path(d) / CHECKPOINT_NAME)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    run_training_loop(cfg, device=ray.train.torch.get_device(), rank=ctx.get_world_rank(),
                      world_size=ctx.get_world_size(), prepare_model=ray.train.torch.prepare_model,
                      report=report, resume_from=resume if resume and resume.is_file() else None)


def train_inpainter(
    images_dirs,
    out,
    *,
    steps: int = 2000,
    batch_size: int = 8,
    crop: int = 128,
    lr: float = 3e-4,
    seed: int = 0,
    checkpoint_dir=None,
    checkpoint_every: int = 100,
    val_split_file=None,
    use_ray: bool = True,
    num_workers: int = 1,
    use_gpu: bool = False,
    weights_out=None,
    **options,
) -> dict:
    """Train the two-stage inpainter on class-per-folder image sets; export its weights.

    Parameters
    ----------
    images_dirs : str or path or sequence of them
        Class-per-folder image sets (e.g. ``data/wang1000 data/paris6k_subset``).
    out : str or path
        Run folder: ``metrics.jsonl``, ``loss.png``, ``checkpoints/``, ``two_stage.pt`` + ``.json``.
    steps, batch_size, crop, lr, seed : training schedule (batch size per worker; crop a multiple of 8).
    checkpoint_dir : path, optional
        Where ``checkpoint.pt`` lives (default ``out/checkpoints``); an existing one is resumed.
    checkpoint_every : int
        Steps between checkpoints.
    val_split_file : path, optional
        Held-out list (relative paths): read when it exists, else written from a seeded 10 %-per-class split.
    use_ray : bool
        Run on Ray Train's ``TorchTrainer`` (``num_workers`` data-parallel workers, ``use_gpu``);
        ``False`` runs the same loop in this process.
    weights_out : path, optional
        Where to export the final state dict (default ``out/two_stage.pt``).
    **options
        Any other :class:`TrainConfig` field (``vgg_weights``, ``vgg_every``, ``max_minutes``, ...).

    Returns
    -------
    dict
        ``{"step", "val", "weights", "provenance"}``.
    """
    if isinstance(images_dirs, (str, os.PathLike)):
        images_dirs = [images_dirs]
    for d in images_dirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"{d}: no such image directory (expected class-per-folder images)")
    cfg = TrainConfig(
        images_dirs=tuple(str(Path(d).resolve()) for d in images_dirs), out=str(Path(out).resolve()),
        steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed,
        checkpoint_dir=str(Path(checkpoint_dir).resolve()) if checkpoint_dir else None,
        checkpoint_every=checkpoint_every,
        val_split_file=str(Path(val_split_file).resolve()) if val_split_file else None,
        command=options.pop("command", " ".join(sys.argv)), **options,
    )
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if use_ray:
        result = _train_with_ray(cfg, num_workers=num_workers, use_gpu=use_gpu)
    else:
        result = run_training_loop(cfg, device="cuda" if use_gpu else "cpu")
    weights_out = Path(weights_out) if weights_out else Path(cfg.out) / "two_stage.pt"
    records = read_metrics(Path(cfg.out) / METRICS_NAME)
    vals = [r for r in records if r.get("kind") == "val"]
    prov = {
        "command": cfg.command,
        "split_file": Path(cfg.val_split_file).name if cfg.val_split_file else None,
        "final_validation": vals[-1] if vals else None,
        "trained_with": "ray.train.torch.TorchTrainer" if use_ray else "in-process loop",
    }
    meta = export_weights(cfg.checkpoint_path, weights_out, provenance=prov)
    return {"step": meta["steps"], "val": prov["final_validation"], "weights": str(weights_out), "provenance": meta}


def _train_with_ray(cfg: TrainConfig, *, num_workers: int, use_gpu: bool) -> dict:
    import importlib.util

    if importlib.util.find_spec("pydantic") is None and "RAY_TRAIN_V2_ENABLED" not in os.environ:
        # Ray Train's default (v2) API needs pydantic, which ray[data] does not install; the v1
        # TorchTrainer has the same interface. Set before ray.init so that workers inherit it.
        log.warning("pydantic is not installed: using Ray Train v1 (install ray[train] for v2)")
        os.environ["RAY_TRAIN_V2_ENABLED"] = "0"
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config=asdict(cfg),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name="two_stage_inpainter", storage_path=str(Path(cfg.out) / "ray_results")),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return {"metrics": result.metrics}


# --- command line (shared by `cbir-dist train-inpainter` and jobs/train_inpainter.py) ----------------


def add_arguments(p) -> None:
    """The training options, added to an ``argparse`` parser."""
    p.add_argument("images_dirs", nargs="+", help="class-per-folder image directories")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, loss.png, checkpoints/, two_stage.pt")
    p.add_argument("--weights-out", help="where to export the final state dict (default OUT/two_stage.pt)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8, help="per worker")
    p.add_argument("--crop", type=int, default=128, help="training crop side (multiple of 8)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=32, help="channels of the first layer")
    p.add_argument("--cache-short-side", type=int, default=192, help="images are cached resized to this short side")
    p.add_argument("--checkpoint-dir", help="default OUT/checkpoints; an existing checkpoint is resumed")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--val-split-file", help="held-out list: read if present, else written")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-max-images", type=int, default=64)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--vgg-weights", help="VGG-16 features state dict (default: torchvision download)")
    p.add_argument("--vgg-every", type=int, default=4, help="compute VGG style/correlation losses every k steps")
    p.add_argument("--vgg-batch", type=int, default=4, help="... on this many images of the batch")
    p.add_argument("--style-weight", type=float, default=120.0)
    p.add_argument("--correlation-weight", type=float, default=1.0)
    p.add_argument("--hole-weight", type=float, default=6.0)
    p.add_argument("--valid-weight", type=float, default=1.0)
    p.add_argument("--adversarial", action="store_true", help="add the patch-discriminator hinge loss")
    p.add_argument("--max-minutes", type=float, help="stop (checkpoint + export) after this wall time")
    p.add_argument("--threads", type=int, help="torch.set_num_threads in the training process")
    p.add_argument("--no-ray", action="store_true", help="run in this process instead of Ray Train")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")


def run_from_args(args, command: str) -> dict:
    """Train from parsed :func:`add_arguments` options; ``command`` is recorded in the provenance."""
    result = train_inpainter(
        args.images_dirs, args.out, steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        seed=args.seed, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        val_split_file=args.val_split_file, use_ray=not args.no_ray, num_workers=args.num_workers,
        use_gpu=args.use_gpu, weights_out=args.weights_out, width=args.width,
        cache_short_side=args.cache_short_side, val_every=args.val_every, log_every=args.log_every, val_max_images=args.val_max_images,
        vgg_weights=args.vgg_weights, vgg_every=args.vgg_every, vgg_batch=args.vgg_batch,
        style_weight=args.style_weight, correlation_weight=args.correlation_weight,
        hole_weight=args.hole_weight, valid_weight=args.valid_weight, adversarial=args.adversarial,
        max_minutes=args.max_minutes, num_threads=args.threads,
        command=command,
    )
    return result
