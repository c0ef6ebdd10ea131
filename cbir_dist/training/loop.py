"""The training loop of the two-stage inpainter, shared by the in-process and the Ray Train paths.

One loop (:func:`run_training_loop`) runs either in this process or inside every worker of a Ray
Train ``TorchTrainer`` (:func:`worker_loop`, wired by :mod:`cbir_dist.distributed.train`:
data-parallel, DDP over GPU workers on a cluster). It is a port of the prototype's ``train.py``
(the run that produced the shipped weights): the same random draws in the same order, the same
loss, schedule and clipping, so that on one thread it reproduces the prototype's per-step losses
for the same seed (``tests/test_two_stage.py`` pins them). Checkpoints are written atomically
every ``checkpoint_minutes`` (and every ``checkpoint_every`` steps when set), on SIGTERM/SIGINT
and at the end; rerunning the same command resumes bit-for-bit from the last one.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from .checkpoints import _unwrap, load_checkpoint, save_checkpoint, save_snapshot
from .config import TrainConfig
from .data import load_cache, mask_tensor, resolve_split, sample_batch, to_tensor, validate, validation_set
from .history import METRICS_NAME, PLOT_NAME, MetricsLog, plot_history
from .losses import loss_fn

log = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``lr · lr_final`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * t)))


def _set_threads(n: int | None) -> None:
    if not n:
        return
    import cv2
    import torch

    torch.set_num_threads(int(n))
    try:
        torch.set_num_interop_threads(int(n))
    except RuntimeError:  # only settable before the first parallel work of the process
        pass
    cv2.setNumThreads(int(n))


class _StopFlag:
    """SIGTERM/SIGINT set a flag (main thread only); the loop then checkpoints and returns."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_training_loop(cfg: TrainConfig, *, device=None, rank: int = 0, world_size: int = 1,
                      prepare_model=None, report=None, resume_from=None) -> dict:
    """Train (or resume) the two-stage network as ``cfg`` says.

    Parameters
    ----------
    cfg : TrainConfig
    device : torch.device or str, optional
        Default CPU.
    rank, world_size : int
        Data-parallel position; rank 0 draws from ``default_rng(seed)`` (the prototype's stream),
        other ranks from ``default_rng([seed, rank])``; only rank 0 writes checkpoints, logs,
        snapshots and validates.
    prepare_model : callable, optional
        Wraps the model for distributed training (``ray.train.torch.prepare_model``).
    report : callable, optional
        ``report(metrics: dict, checkpoint_path: Path | None)`` after every log interval / checkpoint.
    resume_from : path, optional
        A checkpoint to resume from; default ``cfg.checkpoint_path`` when it exists.

    Returns
    -------
    dict
        ``{"step", "history" (rank 0's records), "val" (last validation), "checkpoint", "stopped"}``.
    """
    import torch

    from ..damage.inpaint.two_stage import TwoStageInpainter
    from ..damage.inpaint.two_stage_net import build_model

    _set_threads(cfg.num_threads)
    device = torch.device(device or "cpu")
    model_cfg = cfg.full_model_config
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed if rank == 0 else [cfg.seed, rank])
    model = build_model(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    ckpt_path = cfg.checkpoint_path
    load_path = Path(resume_from) if resume_from else ckpt_path
    step, elapsed_before = 0, 0.0
    if load_path.is_file():
        state = load_checkpoint(load_path, model=model, optimizer=optimizer, rng=rng, config=cfg)
        step, elapsed_before = state["step"], state["elapsed_s"]
        if world_size > 1 and rank > 0:  # each rank continues a stream of its own
            rng = np.random.default_rng([cfg.seed, rank, step])
        log.info("resumed from %s at step %d", load_path, step)
    if prepare_model is not None:
        model = prepare_model(model)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out / METRICS_NAME, resume_step=step) if rank == 0 else None
    t0 = time.monotonic()
    train_paths, val_paths = resolve_split(cfg)
    cache = load_cache(train_paths, min_side=cfg.crop_max)
    log.info("cached %d training images in %.1f s (%d parameters)", len(cache), time.monotonic() - t0,
             sum(p.numel() for p in model.parameters()))
    root = Path(cfg.data_root).resolve() if cfg.data_root else None
    val_cases = []
    if rank == 0 and cfg.val_every and val_paths:
        from .data import data_root

        val_cases = validation_set(val_paths, root or data_root(cfg.images_dirs), cfg.val_images,
                                   model_cfg["prefill"], model_cfg["prefill_radius"])
    t_session = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t_session

    def do_validate(at_step: int) -> dict:
        net = TwoStageInpainter(_unwrap(model).eval(), device, max_side=None, mixed_precision=False)
        res = validate(lambda p, k: np.stack(net.refine_batch(list(p), list(k))), val_cases)
        _unwrap(model).train()
        metrics.append({"kind": "val", "step": at_step, **res})
        log.info("step %d validation: PSNR gain over Telea %.3f dB (worst frequency %.3f)", at_step,
                 res["dpsnr_mean"], res["dpsnr_min"])
        return res

    def checkpoint(at_step: int) -> None:
        save_checkpoint(ckpt_path, model=model, optimizer=optimizer, step=at_step, rng=rng, config=cfg,
                        elapsed_s=elapsed())
        plot_history(metrics.read(), out / PLOT_NAME)

    acc: dict[str, list[float]] = {}
    last_val: dict = {}
    t_log = last_ckpt = time.monotonic()
    start_step = step
    stopped = None
    unreported = None  # a checkpoint written since the last report
    model.train()
    with _StopFlag() as stop:
        while step < cfg.steps:
            if stop.set:
                stopped = "signal"
                break
            if cfg.max_minutes and time.monotonic() - t_session > 60 * cfg.max_minutes:
                stopped = "max_minutes"
                break
            if cfg.steps_this_session and step - start_step >= cfg.steps_this_session:
                stopped = "steps_this_session"
                break
            lr = lr_at(cfg, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            tgt, pre, known = sample_batch(cache, rng, cfg.batch_size, cfg.crop_min, cfg.crop_max, cfg.fringe_prob,
                                           model_cfg["prefill"], model_cfg["prefill_radius"])
            x, p_in, m = to_tensor(tgt, device), to_tensor(pre, device), mask_tensor(known, device)
            coarse, o = model(p_in, m)
            loss, terms = loss_fn(x, m, coarse, o, p_in, loss=cfg.loss, coarse_weight=cfg.coarse_weight,
                                  db_weight=cfg.db_weight, ssim_weight=cfg.ssim_weight, ssim_batch=cfg.ssim_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            terms["grad_norm"] = float(gn)
            hole = 1.0 - m  # L1 of the Telea pre-fill itself on the same holes, to read the gain off the log
            terms["l1_telea"] = float(((p_in - x).abs() * hole).sum() / (hole.sum() * 3 + 1e-8))
            for k, v in terms.items():
                acc.setdefault(k, []).append(v)
            step += 1
            if rank == 0:
                if step % cfg.log_every == 0:
                    now = time.monotonic()
                    rec = {"kind": "train", "step": step, "lr": lr, "elapsed_s": round(elapsed(), 1),
                           "sec_per_step": (now - t_log) / len(acc["loss"])}
                    rec.update({k: float(np.mean(v)) for k, v in acc.items()})
                    metrics.append(rec)
                    log.info("step %d loss %.5f db_gain %s lr %.3g", step, rec["loss"], rec.get("db_gain"), lr)
                    acc, t_log = {}, now
                if val_cases and step % cfg.val_every == 0:
                    last_val = do_validate(step)
                if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                    save_snapshot(out / SNAPSHOTS / f"step_{step:06d}.pt", model=model, config=model_cfg, step=step)
                due = time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes
                if due or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    checkpoint(step)
                    last_ckpt = time.monotonic()
                    unreported = ckpt_path
            # every rank reports at the same steps (Ray Train requires it); rank 0 attaches its newest checkpoint
            if report is not None and step % cfg.log_every == 0:
                report({"step": step, "loss": terms["loss"], **last_val}, unreported)
                unreported = None
    if rank == 0:
        checkpoint(step)
        unreported = ckpt_path
    if report is not None:
        report({"step": step, **last_val}, unreported)
    history = metrics.read() if rank == 0 else []
    if stopped:
        log.info("stopped at step %d (%s); rerun the same command to resume", step, stopped)
    return {"step": step, "history": history, "val": last_val, "checkpoint": str(ckpt_path), "stopped": stopped}


def worker_loop(config: dict, worker) -> None:
    """The loop of one Ray Train worker: ``worker`` is a :class:`cbir_dist.distributed.train.WorkerContext`."""
    cfg = TrainConfig(**{**config, "images_dirs": tuple(config["images_dirs"])})
    run_training_loop(cfg, device=worker.device, rank=worker.rank, world_size=worker.world_size,
                      prepare_model=worker.prepare_model, report=worker.report, resume_from=worker.resume_from)
