"""The training job of the two-stage inpainter: ``cbir-dist train-inpainter`` and ``jobs/train_inpainter.py``."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from .checkpoints import export_weights
from .config import CHECKPOINT_NAME, TrainConfig
from .history import METRICS_NAME, read_metrics
from .loop import run_training_loop, worker_loop


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
            raise InputError(f"{d}: no such image directory (expected class-per-folder images)")
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
        from ..distributed.train import fit

        fit(worker_loop, asdict(cfg), num_workers=num_workers, use_gpu=use_gpu,
            storage_path=Path(cfg.out) / "ray_results", name="two_stage_inpainter", checkpoint_name=CHECKPOINT_NAME)
    else:
        run_training_loop(cfg, device="cuda" if use_gpu else "cpu")
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
