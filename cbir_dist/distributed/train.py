"""Ray Train wiring: run a training loop on a ``TorchTrainer`` (data-parallel workers, DDP over GPUs).

The loop itself knows nothing of Ray: it is a function ``loop(config: dict, worker: WorkerContext)``
(:func:`cbir_dist.training.loop.worker_loop`) that gets its rank, device, a ``prepare_model``
wrapper, a ``report(metrics, checkpoint_path)`` callback and the checkpoint to resume from
through :class:`WorkerContext`. Ray Train keeps the checkpoints a worker reports, so a worker that
dies is restarted from the last one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import PipelineError
from .connect import connect

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a training loop needs from the distributed runtime (or from nothing, in one process)."""

    rank: int = 0
    world_size: int = 1
    device: Any = None
    prepare_model: Callable | None = None
    report: Callable[[dict, Path | None], None] | None = None
    resume_from: Path | None = None


def _worker(config: dict) -> None:
    """``train_loop_per_worker``: build the :class:`WorkerContext` and call the user's loop."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    loop, checkpoint_name = config.pop("_loop"), config.pop("_checkpoint_name")
    ctx = ray.train.get_context()
    resume = None
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:  # Ray-managed resume (e.g. after a worker failure)
        resume = Path(ray_ckpt.to_directory(tempfile.mkdtemp())) / checkpoint_name

    def report(metrics: dict, ckpt_path: Path | None) -> None:
        if ckpt_path is not None:
            with tempfile.TemporaryDirectory() as d:
                shutil.copyfile(ckpt_path, Path(d) / checkpoint_name)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    loop(config, WorkerContext(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                               device=ray.train.torch.get_device(), prepare_model=ray.train.torch.prepare_model,
                               report=report, resume_from=resume if resume and resume.is_file() else None))


def fit(loop: Callable[[dict, WorkerContext], None], config: dict, *, num_workers: int, use_gpu: bool,
        storage_path: str | os.PathLike, name: str, checkpoint_name: str) -> dict:
    """Run ``loop(config, worker)`` on ``num_workers`` Ray Train workers; returns the last reported metrics.

    ``checkpoint_name`` is the file name of the checkpoints the loop writes and reports.
    Raises :class:`~cbir_dist.errors.PipelineError` when the training run fails.
    """
    if importlib.util.find_spec("pydantic") is None and "RAY_TRAIN_V2_ENABLED" not in os.environ:
        # Ray Train's default (v2) API needs pydantic, which ray[data] does not install; the v1
        # TorchTrainer has the same interface. Set before ray.init so that workers inherit it.
        log.warning("pydantic is not installed: using Ray Train v1 (install ray[train] for v2)")
        os.environ["RAY_TRAIN_V2_ENABLED"] = "0"
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={**config, "_loop": loop, "_checkpoint_name": checkpoint_name},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=name, storage_path=str(storage_path)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise PipelineError(f"training on Ray Train failed: {result.error}") from result.error
    return {"metrics": result.metrics}
