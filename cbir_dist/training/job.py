"""The training job of the two-stage inpainter: ``cbir-dist train-inpainter`` and ``jobs/train_inpainter.py``.

The defaults are those of the run that produced the shipped weights, so
``cbir-dist train-inpainter DATA/wang1000 DATA/paris6k_subset --out RUN
--val-split-file cbir_dist/weights/two_stage_split.txt --no-ray`` repeats it (see
:data:`PROTOTYPE_COMMAND` and docs/inpainting.md).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError, UsageError
from .checkpoints import export_weights
from .config import CHECKPOINT_NAME, TrainConfig, default_model_config
from .history import METRICS_NAME, read_metrics
from .loop import run_training_loop, worker_loop

#: The prototype's command that trained the shipped weights (``/work/proto_inpaint/run_long.sh``,
#: run with ``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1``); the package's loop is its port.
PROTOTYPE_COMMAND = (
    "python train.py --out /work/proto_inpaint/runs/long_H --config '" + json.dumps(default_model_config()) + "'"
    " --steps 50000 --batch-size 8 --crop-min 128 --crop-max 192 --lr 1e-3 --lr-final 0.02 --warmup 200 --seed 0"
    " --loss db --coarse-weight 0.5 --db-weight 0.25 --ssim-weight 1.0 --ssim-batch 4 --fringe-prob 0.75"
    " --checkpoint-minutes 3 --log-every 50 --val-every 1000 --full-eval-every 5000 --full-eval-phases 3"
)
#: The same training with this package (every default of ``train-inpainter`` equals an argument above).
EQUIVALENT_COMMAND = (
    "OMP_NUM_THREADS=1 cbir-dist train-inpainter /work/shared/data/wang1000 /work/shared/data/paris6k_subset"
    " --out runs/two_stage --val-split-file cbir_dist/weights/two_stage_split.txt --no-ray"
)


def train_inpainter(images_dirs, out, *, use_ray: bool = True, num_workers: int = 1, use_gpu: bool = False,
                    weights_out=None, **options) -> dict:
    """Train the two-stage inpainter on class-per-folder image sets and export its weights.

    Parameters
    ----------
    images_dirs : str or path or sequence of them
        Class-per-folder image sets (e.g. ``data/wang1000 data/paris6k_subset``).
    out : str or path
        Run folder: ``metrics.jsonl``, ``loss.png``, ``checkpoints/``, ``snapshots/``, ``two_stage.pt`` + ``.json``.
    use_ray : bool
        Run on Ray Train's ``TorchTrainer`` (``num_workers`` data-parallel workers, ``use_gpu``);
        ``False`` runs the same loop in this process (on the GPU with ``use_gpu``).
    weights_out : path, optional
        Where to export the final state dict (default ``out/two_stage.pt``).
    **options
        Any other :class:`TrainConfig` field (``steps``, ``crop_min``, ``val_split_file``, ...).

    Returns
    -------
    dict
        ``{"step", "val", "weights", "provenance", "stopped"}``.
    """
    if isinstance(images_dirs, (str, os.PathLike)):
        images_dirs = [images_dirs]
    if use_ray and num_workers < 1:
        raise UsageError(f"--num-workers must be >= 1, got {num_workers}")
    for d in images_dirs:
        if not Path(d).is_dir():
            raise InputError(f"{d}: no such image directory (expected class-per-folder images)")
    for key in ("val_split_file", "checkpoint_dir", "data_root"):
        if options.get(key):
            options[key] = str(Path(options[key]).resolve())
    options.setdefault("command", " ".join(sys.argv))
    cfg = TrainConfig(images_dirs=tuple(str(Path(d).resolve()) for d in images_dirs), out=str(Path(out).resolve()),
                      **options)
    if weights_out and Path(weights_out).suffix.lower() == ".json":  # before hours of training, not after
        raise UsageError(f"--weights-out {weights_out}: the provenance is written beside the weights as "
                         f"{Path(weights_out).with_suffix('.json').name}; name the weights file e.g. two_stage.pt")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    stopped = None
    if use_ray:
        from ..distributed.train import fit

        fit(worker_loop, asdict(cfg), num_workers=num_workers, use_gpu=use_gpu,
            storage_path=Path(cfg.out) / "ray_results", name="two_stage_inpainter", checkpoint_name=CHECKPOINT_NAME)
    else:
        stopped = run_training_loop(cfg, device="cuda" if use_gpu else "cpu")["stopped"]
    weights_out = Path(weights_out) if weights_out else Path(cfg.out) / "two_stage.pt"
    vals = [r for r in read_metrics(Path(cfg.out) / METRICS_NAME) if r.get("kind") == "val"]
    prov = {
        "command": cfg.command,
        "trained_with": "ray.train.torch.TorchTrainer" if use_ray else "in-process loop",
        "data": [Path(d).name for d in cfg.images_dirs],
        "split_file": Path(cfg.val_split_file).name if cfg.val_split_file else None,
        "final_validation": vals[-1] if vals else None,
    }
    meta = export_weights(cfg.checkpoint_path, weights_out, provenance=prov)
    return {"step": meta["step"], "val": prov["final_validation"], "weights": str(weights_out), "provenance": meta,
            "stopped": stopped}


# --- command line (shared by `cbir-dist train-inpainter` and jobs/train_inpainter.py) ----------------


def add_arguments(p) -> None:
    """The training options, added to an ``argparse`` parser; defaults = the shipped run's."""
    d = TrainConfig(images_dirs=("x",), out="x")
    p.add_argument("images_dirs", nargs="+", help="class-per-folder image directories")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, loss.png, checkpoints/, snapshots/, two_stage.pt")
    p.add_argument("--weights-out", help="where to export the final state dict (default OUT/two_stage.pt)")
    p.add_argument("--config", default="{}", help="model config JSON (keys of two_stage_net.DEFAULT_CONFIG; "
                                                  "missing keys take the shipped architecture)")
    g = p.add_argument_group("training (a resumed run must use the same values)")
    g.add_argument("--steps", type=int, default=d.steps, help="length of the cosine schedule")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per worker")
    g.add_argument("--crop-min", type=int, default=d.crop_min, help="smallest crop side (multiple of 8)")
    g.add_argument("--crop-max", type=int, default=d.crop_max, help="largest crop side (multiple of 8)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--lr-final", type=float, default=d.lr_final, help="final lr as a fraction of --lr")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--fringe-prob", type=float, default=d.fringe_prob, help="share of fringe masks (else free-form)")
    g.add_argument("--loss", choices=("db", "l1"), default=d.loss)
    g.add_argument("--coarse-weight", type=float, default=d.coarse_weight)
    g.add_argument("--db-weight", type=float, default=d.db_weight)
    g.add_argument("--ssim-weight", type=float, default=d.ssim_weight)
    g.add_argument("--ssim-batch", type=int, default=d.ssim_batch, help="SSIM term on the first k crops (0: all)")
    g.add_argument("--val-split-file", help="held-out list: read if present, else written (never trained on)")
    g.add_argument("--data-root", help="folder the split file's paths are relative to (default: the common "
                                       "parent of the image directories)")
    r = p.add_argument_group("run")
    r.add_argument("--checkpoint-dir", help="default OUT/checkpoints; an existing checkpoint is resumed")
    r.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    r.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    r.add_argument("--log-every", type=int, default=d.log_every)
    r.add_argument("--val-every", type=int, default=d.val_every, help="held-out validation every N steps (0: never)")
    r.add_argument("--val-images", type=int, default=d.val_images, help="held-out images in the validation (x 8 Hz)")
    r.add_argument("--snapshot-every", type=int, default=d.snapshot_every, help="OUT/snapshots/step_N.pt every N steps (0: never)")
    r.add_argument("--max-minutes", type=float, help="stop (checkpoint + export) after this wall time in this session")
    r.add_argument("--steps-this-session", type=int, help="stop (checkpoint + export) after this many steps")
    r.add_argument("--threads", type=int, default=d.num_threads, help="torch/cv2 threads of the training process")
    r.add_argument("--no-ray", action="store_true", help="run in this process instead of Ray Train")
    r.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    r.add_argument("--use-gpu", action="store_true", help="one GPU per worker")


def run_from_args(args, command: str) -> dict:
    """Train from parsed :func:`add_arguments` options; ``command`` is recorded in the provenance."""
    try:
        model_config = json.loads(args.config)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config is not JSON ({exc}): {args.config!r}") from exc
    if not isinstance(model_config, dict):
        raise UsageError(f"--config must be a JSON object of model settings, like '{{\"prefill\": \"ns\"}}'; "
                         f"got {args.config!r}")
    return train_inpainter(
        args.images_dirs, args.out, use_ray=not args.no_ray, num_workers=args.num_workers, use_gpu=args.use_gpu,
        weights_out=args.weights_out, model_config={**default_model_config(), **model_config},
        steps=args.steps, batch_size=args.batch_size, crop_min=args.crop_min, crop_max=args.crop_max, lr=args.lr,
        lr_final=args.lr_final, warmup=args.warmup, seed=args.seed, fringe_prob=args.fringe_prob, loss=args.loss,
        coarse_weight=args.coarse_weight, db_weight=args.db_weight, ssim_weight=args.ssim_weight,
        ssim_batch=args.ssim_batch, val_split_file=args.val_split_file, data_root=args.data_root,
        checkpoint_dir=args.checkpoint_dir, checkpoint_minutes=args.checkpoint_minutes,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, val_every=args.val_every,
        val_images=args.val_images, snapshot_every=args.snapshot_every, max_minutes=args.max_minutes,
        steps_this_session=args.steps_this_session, num_threads=args.threads, command=command,
    )
