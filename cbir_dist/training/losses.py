"""The training loss of the two-stage inpainter: per-sample hole L1 relative to the pre-fill, dB gain, SSIM.

All image tensors are (N, 3, H, W) in [-1, 1]; masks (N, 1, H, W) in {0, 1} with 1 = known.

``loss="db"`` (the shipped run): every sample weighs the same, measured against its own Telea
pre-fill ``P``::

    L = mean_i L1_i(O) / L1_i(P)  +  coarse_weight · mean_i L1_i(I1) / L1_i(P)
        + db_weight · mean_i 10·log10(MSE_i(O) / MSE_i(P))  +  ssim_weight · (1 − SSIM_holes(O))

where ``L1_i``/``MSE_i`` are over the hole pixels of sample i. The third term is minus the hole
PSNR gain over Telea in dB — the quantity the targets average per image — and the SSIM term
(7×7 uniform window as ``skimage``'s default, over windows that touch a hole) is computed on the
first ``ssim_batch`` samples only (CPU cost). ``loss="l1"``: hole L1 pooled over the batch.
"""

from __future__ import annotations

import math


def ssim_holes(pred, target, hole, win: int = 7):
    """Mean SSIM (``win``×``win`` uniform window, sample covariance, K1 = 0.01, K2 = 0.03) over windows touching a hole.

    ``pred``, ``target`` in [-1, 1] (N, C, H, W); ``hole`` (N, 1, H, W) in {0, 1}. Differentiable.
    """
    import torch
    import torch.nn.functional as F

    x, y = (pred + 1) * 0.5, (target + 1) * 0.5
    c1, c2 = 0.01**2, 0.03**2
    k = x.shape[1]
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)
    stats = F.avg_pool2d(F.avg_pool2d(stats, (1, win), 1), (win, 1), 1)  # separable box filter
    mu_x, mu_y, exx, eyy, exy = stats.split(k, 1)
    n = win * win
    cov = n / (n - 1)
    sxx = cov * (exx - mu_x**2)
    syy = cov * (eyy - mu_y**2)
    sxy = cov * (exy - mu_x * mu_y)
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    w = F.max_pool2d(F.max_pool2d(hole, (1, win), 1), (win, 1), 1)
    return (s * w).sum() / (w.sum() * k + 1e-8)


def per_sample_errors(a, b, hole):
    """Per-sample mean absolute and squared error over the hole pixels: two (N,) tensors."""
    n = hole.sum((1, 2, 3)) * a.shape[1] + 1.0
    d = (a - b) * hole
    return d.abs().sum((1, 2, 3)) / n, (d * d).sum((1, 2, 3)) / n


def loss_fn(target, mask, coarse, out, prefilled, *, loss: str = "db", coarse_weight: float = 0.5,
            db_weight: float = 0.25, ssim_weight: float = 1.0, ssim_batch: int = 4):
    """The training loss (see the module docstring); returns ``(loss tensor, {term: float})``.

    ``coarse`` and ``out`` are the network's stage-1 image and output, ``prefilled`` its input.
    """
    import torch

    hole = 1.0 - mask
    k = min(ssim_batch, out.shape[0]) if ssim_batch else out.shape[0]
    ss = ssim_holes(out[:k], target[:k], hole[:k])

    def d(t):
        return float(t.detach())

    if loss == "l1":
        n = hole.sum() * 3 + 1e-8
        l1 = ((out - target).abs() * hole).sum() / n
        l1c = ((coarse - target).abs() * hole).sum() / n
        total = l1 + coarse_weight * l1c + ssim_weight * (1.0 - ss)
        return total, {"l1": d(l1), "l1_coarse": d(l1c), "ssim_holes": d(ss), "loss": d(total)}
    if loss != "db":
        raise ValueError(f"loss must be 'db' or 'l1', got {loss!r}")
    l1_o, mse_o = per_sample_errors(out, target, hole)
    l1_c, _ = per_sample_errors(coarse, target, hole)
    with torch.no_grad():
        l1_p, mse_p = per_sample_errors(prefilled, target, hole)
    eps = 1e-4  # (0.64 grey levels)^2 in [-1, 1] units: no blow-up on near-perfect pre-fills
    rel = (l1_o / (l1_p + 1e-3)).mean()
    rel_c = (l1_c / (l1_p + 1e-3)).mean()
    db = (10.0 / math.log(10.0)) * torch.log((mse_o + eps) / (mse_p + eps)).mean()
    total = rel + coarse_weight * rel_c + db_weight * db + ssim_weight * (1.0 - ss)
    return total, {"l1": d(l1_o.mean()), "l1_coarse": d(l1_c.mean()), "rel_l1": d(rel), "db_gain": -d(db),
                   "ssim_holes": d(ss), "loss": d(total)}
