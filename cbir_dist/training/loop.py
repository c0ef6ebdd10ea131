"""The training loop of the two-stage inpainter, shared by the in-process and the Ray Train paths.

One loop (:func:`run_training_loop`) runs either in this process or inside every worker of a Ray
Train ``TorchTrainer`` (:func:`worker_loop`, wired by :mod:`cbir_dist.distributed.train`:
data-parallel, DDP over GPU workers on a cluster, one CPU worker on a laptop). Checkpoints make a
killed run resume bit-for-bit; validation PSNR/SSIM on the held-out split go to ``metrics.jsonl``
beside a loss-curve PNG.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .checkpoints import _unwrap, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import load_cache, resolve_split, sample_batch, to_tensors, validation_set
from .history import METRICS_NAME, PLOT_NAME, MetricsLog, plot_history

log = logging.getLogger(__name__)


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

    from ..damage.inpaint.two_stage import TwoStageInpainter, build_two_stage
    from .losses import (
        LossWeights,
        build_patch_discriminator,
        hinge_d_loss,
        total_loss,
        vgg_features,
    )

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


def worker_loop(config: dict, worker) -> None:
    """The loop of one Ray Train worker: ``worker`` is a :class:`cbir_dist.distributed.train.WorkerContext`."""
    cfg = TrainConfig(**{**config, "images_dirs": tuple(config["images_dirs"])})
    run_training_loop(cfg, device=worker.device, rank=worker.rank, world_size=worker.world_size,
                      prepare_model=worker.prepare_model, report=worker.report, resume_from=worker.resume_from)
