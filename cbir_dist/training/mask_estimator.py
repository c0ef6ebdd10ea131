"""Training of the mask estimator (``cbir-dist train-mask-estimator``): photos damaged as they travel.

The estimator (:mod:`cbir_dist.damage.detect_net`) learns to mark the missing pixels of a damaged
photo. It is trained on the two-stage inpainter's training split (``--val-split-file`` names the
held-out images, never trained on: the shipped run uses ``cbir_dist/weights/two_stage_split.txt``),
on crops damaged by :func:`simulate_damage`:

* a known-pixel mask: a fringe mask (equivalent frequency at 256 px log-uniform in [0.4, 7] Hz,
  10-50 % missing, any phase, angle 0°/90°/uniform) with probability ``fringe_prob`` of the damaged
  crops, else a free-form one; ``intact_prob`` of the crops stay undamaged (the estimator must not
  invent holes);
* the holes filled with zero (65 %), white (20 %) or one random flat colour (15 %);
* with probability ``resize_prob`` the damage happens at another size (×0.5-2) and the photo is
  resized back (area or bilinear), the true mask with it (missing where more than half the pixel is);
* JPEG at quality 70-95 with probability ``jpeg_prob``; 5 % of the crops are grey.

The loss is binary cross-entropy plus a soft Dice term on the missing class. Adam, cosine decay. A
checkpoint (model, optimizer, step, RNG states) is written atomically every ``checkpoint_every``
steps and at the end, and an existing one is resumed; the final model is exported as a float32
state dict with its provenance JSON (architecture, settings, data, split, validation, sha256).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError
from ..io.files import sha256_file
from ..io.tables import atomic_path, write_text
from .data import load_cache, resolve_split, sample_mask

log = logging.getLogger(__name__)

#: Frequencies of the validation cases (the evaluation protocol's), zero-filled, JPEG q75.
VAL_FREQUENCIES = (0.5, 1.0, 2.0, 4.0, 6.0)


@dataclass(frozen=True)
class MaskTrainConfig:
    """Every setting of one training run of the mask estimator (see the module's docstring)."""

    images_dirs: tuple[str, ...]
    out: str
    model_config: dict = field(default_factory=lambda: {"channels": [8, 16, 32, 48, 64], "decoder_convs": 1,
                                                        "global_context": True})
    steps: int = 4000
    batch_size: int = 12
    crop_min: int = 128
    crop_max: int = 256
    lr: float = 2e-3
    seed: int = 0
    fringe_prob: float = 0.7
    intact_prob: float = 0.3
    resize_prob: float = 0.4
    jpeg_prob: float = 0.85
    dice_weight: float = 1.0
    data_root: str | None = None
    val_split_file: str | None = None
    val_fraction: float = 0.1
    # --- not part of the trajectory
    checkpoint_every: int = 200
    val_every: int = 500
    val_images: int = 32
    log_every: int = 50
    num_threads: int | None = 2
    steps_this_session: int | None = None
    command: str = ""

    def __post_init__(self):
        if not self.images_dirs:
            raise UsageError("name at least one class-per-folder image directory")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.crop_min % 16 or self.crop_max % 16 or not 32 <= self.crop_min <= self.crop_max:
            raise UsageError(f"crop_min and crop_max must be multiples of 16 (the network's stride) with "
                             f"32 <= crop_min <= crop_max, got {self.crop_min}, {self.crop_max}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if self.num_threads is not None and self.num_threads < 0:
            raise UsageError(f"--threads must be 1 or more (or 0: the libraries' own choice), got {self.num_threads}")
        for name in ("fringe_prob", "intact_prob", "resize_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.out) / "checkpoints" / "checkpoint.pt"

    def training_key(self) -> dict:
        skip = {"out", "checkpoint_every", "val_every", "val_images", "log_every", "num_threads",
                "steps_this_session", "command"}
        d = asdict(self)
        d["images_dirs"] = list(d["images_dirs"])
        return {k: v for k, v in d.items() if k not in skip}


def fill_holes(image: np.ndarray, known: np.ndarray, fill) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) with its missing pixels set to ``fill`` (a value or an RGB triple)."""
    out = image.copy()
    out[~known] = np.asarray(fill, np.uint8)
    return out


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (RGB uint8) after a JPEG round trip at ``quality``."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def simulate_damage(patch: np.ndarray, rng: np.random.Generator, cfg: MaskTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(damaged RGB uint8, known bool)`` of one square crop, damaged as a photo travels (module docstring)."""
    import cv2

    side = patch.shape[0]
    intact = rng.random() < cfg.intact_prob
    scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if rng.random() < cfg.resize_prob else 1.0
    work = side if scale == 1.0 else max(32, int(round(side * scale)))
    img = patch if work == side else cv2.resize(patch, (work, work), interpolation=cv2.INTER_LINEAR)
    if intact:
        known = np.ones((work, work), bool)
    else:
        known = sample_mask(rng, work, cfg.fringe_prob)
    u = rng.random()
    fill = (0, 0, 0) if u < 0.65 else (255, 255, 255) if u < 0.85 else tuple(int(v) for v in rng.integers(0, 256, 3))
    damaged = fill_holes(img, known, fill)
    if work != side:
        interp = cv2.INTER_AREA if work > side else cv2.INTER_LINEAR
        damaged = cv2.resize(damaged, (side, side), interpolation=interp)
        known = cv2.resize(known.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA if work > side
                           else cv2.INTER_LINEAR) > 0.5
    if rng.random() < 0.05:
        grey = cv2.cvtColor(damaged, cv2.COLOR_RGB2GRAY)
        damaged = np.repeat(grey[..., None], 3, axis=2)
    if rng.random() < cfg.jpeg_prob:
        damaged = jpeg(damaged, int(rng.integers(70, 96)))
    return damaged, known


def sample_batch(cache, rng: np.random.Generator, cfg: MaskTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(damaged (B, c, c, 3) uint8, known (B, c, c) bool)``: random flipped crops of one side, each damaged."""
    c = 16 * int(rng.integers(cfg.crop_min // 16, cfg.crop_max // 16 + 1))
    images = np.empty((cfg.batch_size, c, c, 3), np.uint8)
    known = np.empty((cfg.batch_size, c, c), bool)
    for b in range(cfg.batch_size):
        img = cache[int(rng.integers(len(cache)))]
        h, w = img.shape[:2]
        y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        patch = img[y:y + c, x:x + c]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        images[b], known[b] = simulate_damage(np.ascontiguousarray(patch), rng, cfg)
    return images, known


def validation_cases(val_paths, n_images: int, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Fixed held-out cases: ``n_images`` images × :data:`VAL_FREQUENCIES`, zero-filled fringe masks
    (25 % missing, a seeded phase), JPEG q75, plus each image undamaged (JPEG q75).
    Returns ``(name, damaged, known)`` triples."""
    from ..damage.masks import fringe_mask
    from ..io.images import read_image

    rng = np.random.default_rng(seed)
    paths = [val_paths[i] for i in sorted(rng.permutation(len(val_paths))[:n_images])]
    cases = []
    for p in paths:
        img = read_image(p)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        for f in VAL_FREQUENCIES:
            known = fringe_mask(img.shape[0], img.shape[1], f, 0.25, phase=float(rng.uniform(0, math.pi)))
            cases.append((f"{f:g}Hz", jpeg(fill_holes(img, known, 0), 75), known))
        cases.append(("intact", jpeg(img, 75), np.ones(img.shape[:2], bool)))
    return cases


def iou_missing(estimated_known: np.ndarray, true_known: np.ndarray) -> float:
    """IoU of the missing regions (1.0 when both are empty): :func:`~cbir_dist.damage.masks.missing_iou`."""
    from ..damage.masks import missing_iou

    return missing_iou(estimated_known, true_known)


def validate(estimate, cases) -> dict:
    """Mean and worst IoU per damage, and the share of pixels marked missing on intact photos."""
    per: dict[str, list[float]] = {}
    for name, damaged, known in cases:
        est = estimate(damaged)
        per.setdefault(name, []).append(float((~est).mean()) if name == "intact" else iou_missing(est, known))
    out = {}
    for name, vals in per.items():
        if name == "intact":
            out["intact_missing_mean"] = float(np.mean(vals))
            out["intact_missing_max"] = float(np.max(vals))
        else:
            out[f"iou@{name}"] = float(np.mean(vals))
            out[f"iou_min@{name}"] = float(np.min(vals))
    damaged = [v for k, v in out.items() if k.startswith("iou@")]
    out["iou_mean"] = float(np.mean(damaged)) if damaged else 0.0
    return out


def loss_fn(logits, known):
    """Binary cross-entropy on "missing" plus ``1 - soft Dice`` of the missing class."""
    import torch.nn.functional as F

    missing = 1.0 - known
    bce = F.binary_cross_entropy_with_logits(logits, missing)
    p = logits.sigmoid()
    inter = (p * missing).sum(dim=(1, 2, 3))
    denom = p.sum(dim=(1, 2, 3)) + missing.sum(dim=(1, 2, 3))
    dice = 1.0 - (2 * inter + 1.0) / (denom + 1.0)
    return bce, dice.mean()


def train_mask_estimator(cfg: MaskTrainConfig, weights_out=None) -> dict:
    """Train (resuming ``OUT/checkpoints/checkpoint.pt`` when present) and export the weights; returns the provenance."""
    import torch

    from ..damage.detect import MaskEstimator
    from ..damage.detect_net import build_model
    from .data import to_tensor, mask_tensor

    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_paths, val_paths = resolve_split(cfg)
    cache = load_cache(train_paths, min_side=cfg.crop_max)
    cases = validation_cases(val_paths, cfg.val_images, cfg.seed)
    log.info("training on %d images, validating on %d held-out cases", len(cache), len(cases))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    if cfg.checkpoint_path.is_file():
        state = torch.load(cfg.checkpoint_path, map_location="cpu", weights_only=True)
        if json.loads(state["train_args"]) != cfg.training_key():
            raise UsageError(f"{cfg.checkpoint_path} was written with other training settings; use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        log.info("resumed %s at step %d", cfg.checkpoint_path, step)

    def checkpoint():
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                 "model_config": dict(cfg.model_config), "train_args": json.dumps(cfg.training_key())}
        with atomic_path(cfg.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def lr_at(s):
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))

    def run_validation():
        model.eval()
        val = validate(MaskEstimator(model), cases)
        model.train()
        return val

    metrics = out / "metrics.jsonl"
    stop = cfg.steps if cfg.steps_this_session is None else min(cfg.steps, step + cfg.steps_this_session)
    t0, last = time.monotonic(), None
    model.train()
    with metrics.open("a") as mf:
        while step < stop:
            images, known = sample_batch(cache, rng, cfg)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(to_tensor(images))
            bce, dice = loss_fn(logits, mask_tensor(known))
            loss = bce + cfg.dice_weight * dice
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % cfg.log_every == 0:
                row = {"kind": "train", "step": step, "bce": float(bce), "dice": float(dice),
                       "lr": lr_at(step), "s": round(time.monotonic() - t0, 1)}
                mf.write(json.dumps(row) + "\n")
                mf.flush()
                log.info("step %d bce %.4f dice %.4f", step, float(bce), float(dice))
            if cfg.val_every and step % cfg.val_every == 0:
                last = {"kind": "val", "step": step, **run_validation()}
                mf.write(json.dumps(last) + "\n")
                mf.flush()
                log.info("step %d validation IoU %.4f (intact: %.4f%% marked)", step, last["iou_mean"],
                         100 * last["intact_missing_mean"])
            if step % cfg.checkpoint_every == 0 or step == stop:
                checkpoint()
    if last is None or last["step"] != step:
        last = {"kind": "val", "step": step, **run_validation()}
    weights_out = Path(weights_out) if weights_out else out / "mask_estimator.pt"
    return export(model, weights_out, cfg, step, last, len(cache))


def export(model, weights_out, cfg: MaskTrainConfig, step: int, val: dict, n_train: int) -> dict:
    """Write the float32 state dict and ``<weights>.json`` (architecture, settings, data, validation, sha256)."""
    import torch

    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    with atomic_path(weights_out) as tmp:
        torch.save(sd, tmp)
    meta = {
        "model": {"architecture": "MaskNet", "config": dict(cfg.model_config), "stride": 16,
                  "parameters": int(sum(v.numel() for v in sd.values()))},
        "step": int(step),
        "training_settings": cfg.training_key(),
        "data": [Path(d).name for d in cfg.images_dirs],
        "training_images": int(n_train),
        "split_file": Path(cfg.val_split_file).name if cfg.val_split_file else None,
        "final_validation": val,
        "command": cfg.command,
        "dtype": "float32",
        "sha256": sha256_file(weights_out),
    }
    write_text(Path(weights_out).with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta


def add_arguments(p) -> None:
    """The options of ``cbir-dist train-mask-estimator``; defaults = the shipped run's."""
    d = MaskTrainConfig(images_dirs=("x",), out="x")
    p.add_argument("images_dirs", nargs="+", help="class-per-folder image directories")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoints/, mask_estimator.pt + .json")
    p.add_argument("--weights-out", help="where to export the weights (default OUT/mask_estimator.pt)")
    p.add_argument("--val-split-file", help="held-out list: read if present, else written (never trained on); the "
                                            "shipped run uses cbir_dist/weights/two_stage_split.txt")
    p.add_argument("--data-root", help="folder the split file's paths are relative to")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop-min", type=int, default=d.crop_min, help="multiple of 16")
    p.add_argument("--crop-max", type=int, default=d.crop_max, help="multiple of 16")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps-this-session", type=int, help="stop (checkpoint + export) after this many steps")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--val-images", type=int, default=d.val_images)
    p.add_argument("--threads", type=int, default=d.num_threads, help="torch threads")


def run_from_args(args) -> dict:
    if args.weights_out and Path(args.weights_out).suffix.lower() == ".json":  # before the training, not after
        raise UsageError(f"--weights-out {args.weights_out}: the provenance is written beside the weights as "
                         f"{Path(args.weights_out).with_suffix('.json').name}; name the weights file e.g. mask_estimator.pt")
    for d in args.images_dirs:
        if not Path(d).is_dir():
            raise InputError(f"{d}: no such image directory (expected class-per-folder images)")
    cfg = MaskTrainConfig(
        images_dirs=tuple(str(Path(d).resolve()) for d in args.images_dirs), out=str(Path(args.out).resolve()),
        steps=args.steps, batch_size=args.batch_size, crop_min=args.crop_min, crop_max=args.crop_max, lr=args.lr,
        seed=args.seed, val_split_file=str(Path(args.val_split_file).resolve()) if args.val_split_file else None,
        data_root=args.data_root, steps_this_session=args.steps_this_session, val_every=args.val_every,
        val_images=args.val_images, num_threads=args.threads, command=" ".join(["cbir-dist"] + sys.argv[1:]))
    return train_mask_estimator(cfg, args.weights_out)
