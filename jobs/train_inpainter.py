"""Train the two-stage inpainter: ``ray job submit -- python jobs/train_inpainter.py DATA_DIR... --out RUN``.

A thin entry point over :func:`cbir_dist.train_inpainter.train_inpainter`. On a cluster,
``--num-workers N --use-gpu`` trains data-parallel over N GPU workers (Ray Train TorchTrainer);
``--no-ray`` runs the same loop in this process. Rerunning with the same ``--out`` (or
``--checkpoint-dir``) resumes from the last checkpoint.

Example (the run that produced the shipped weights, see docs/inpainting.md)::

    OMP_NUM_THREADS=1 python jobs/train_inpainter.py ../shared/data/wang1000 ../shared/data/paris6k_subset \\
        --out runs/two_stage --val-split-file cbir_dist/weights/two_stage_split.txt \\
        --vgg-weights ../shared/weights/vgg16_features_imagenet.pth --no-ray --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the two-stage (region-wise conv + non-local) inpainting network on image folders.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cbir_dist.train_inpainter import train_inpainter

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
        command="python jobs/train_inpainter.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    print(json.dumps({k: result[k] for k in ("step", "val", "weights")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
