"""Throughput of the deep backbones (images/s), against torchvision's plain pipeline in the same run.

    python benchmarks/bench_backbones.py --backbones mobilenet_v2 vgg16 --threads 2 --n 64

Ours: ``cbir_dist.features.backbones`` in torch (OpenCV uint8 resize + crop, normalisation on the device,
channels_last, inference_mode, bf16 autocast on CUDA); ``benchmarks/backbone_runtime.py`` compares it with
ONNX Runtime. Baseline: the torchvision way — ``weights.transforms()`` on
each image tensor, a contiguous fp32 batch, ``torch.no_grad()``, the same cut model. Random weights
(speed does not depend on them). Inputs: 375 x 500 synthetic photo-like images (resize + crop needed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _images(n: int, h: int = 375, w: int = 500) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=2)
    return [np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def _rate(fn, imgs, repeats: int) -> float:
    fn(imgs[: max(2, len(imgs) // 8)])  # warm-up (oneDNN / cuDNN kernel selection)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(imgs)
        best = min(best, time.perf_counter() - t0)
    return len(imgs) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "vgg16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=64, help="images per timed pass")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch
    from torchvision.transforms import v2

    from cbir_dist.features.backbones import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        load_backbone,
        preprocess,
        resize_size,
    )

    torch.set_num_threads(args.threads)
    imgs = _images(args.n)
    tf = v2.Compose([v2.Resize(resize_size(args.image_size), antialias=True), v2.CenterCrop(args.image_size),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    print(f"device={args.device or ('cuda' if torch.cuda.is_available() else 'cpu')} torch threads={args.threads} "
          f"n={args.n} batch={args.batch_size} image_size={args.image_size} input=375x500")
    t0 = time.perf_counter()
    preprocess(imgs, args.image_size)
    t1 = time.perf_counter()
    for i in imgs:
        tf(torch.from_numpy(i).permute(2, 0, 1))
    t2 = time.perf_counter()
    print(f"preprocessing only: ours {args.n / (t1 - t0):8.1f} img/s   torchvision v2 {args.n / (t2 - t1):8.1f} img/s")
    for name in args.backbones:
        model = load_backbone(name, "random", device=args.device, image_size=args.image_size,
                              batch_size=args.batch_size, runtime="torch")  # ONNX Runtime: backbone_runtime.py
        plain = model.model.to(memory_format=torch.contiguous_format)

        def baseline(images, plain=plain, dev=model.device):
            with torch.no_grad():
                for s in range(0, len(images), args.batch_size):
                    x = torch.stack([tf(torch.from_numpy(i).permute(2, 0, 1)) for i in images[s : s + args.batch_size]])
                    plain(x.to(dev)).float().cpu().numpy()

        base = _rate(baseline, imgs, args.repeats)
        model.model.to(memory_format=torch.channels_last)
        ours = _rate(model, imgs, args.repeats)
        print(f"{name:13s} ours {ours:8.1f} img/s   torchvision baseline {base:8.1f} img/s   x{ours / base:.2f}")


if __name__ == "__main__":
    main()
