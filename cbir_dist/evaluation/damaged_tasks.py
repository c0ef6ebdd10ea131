"""The cells of the damaged-query evaluation (:mod:`.damaged`): the Ray tasks and the network's actor body.

Pure functions of their arguments, run in Ray workers or in this process by the executor of
:mod:`cbir_dist.distributed.tasks`: the damaged queries (recomputed where needed instead of shipped,
by the damage step of the index and query jobs: :func:`fringe_damage`), one reconstruction per
(frequency, inpainter, repeat) (:func:`reconstruct_task`; a network inpainter's pre-fill, refined by
:class:`NetworkActor`), its quality scores (:func:`quality_task`, on the FSIM reference maps of
:func:`fsim_references_task`) and the query vectors of each feature cell
(:func:`original_features_task`, :func:`cell_features_task`). Each returns only what the driver
needs, with its start, end and pid for the timeline.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from ..features.spec import FeatureSpec


def fringe_damage(frequency: float, phase: float, missing_fraction: float, inpainter: str = "none"):
    """The damage step of one cell (:class:`~cbir_dist.damage.hook.DamageTransform`): a fringe mask at
    ``frequency`` and ``phase`` over every query, reconstructed by ``inpainter``."""
    from ..damage.hook import DamageConfig, DamageTransform

    return DamageTransform(DamageConfig(fringe=frequency, missing_fraction=missing_fraction, phase=phase,
                                        inpainter=inpainter))


def damaged_images(images, frequency: float, phase: float, missing_fraction: float) -> list:
    """The zero-filled queries (the paper's ``M ⊙ I``), recomputed where needed instead of shipped."""
    damage = fringe_damage(frequency, phase, missing_fraction)
    return [damage.zero_fill(img)[0] for img in images]


def _inpaint_failed(exc: BaseException) -> str:
    return f"inpaint failed ({type(exc).__name__}: {exc}); scored as the damaged image"


def reconstruct_task(images: Sequence[np.ndarray], frequency: float, inpainter: str, phase: float,
                     missing_fraction: float) -> dict:
    """Damage every query with one fringe mask and reconstruct it in this CPU task.

    A classical inpainter runs whole; for a network only its CPU half runs (its classical pre-fill:
    the network then refines it in a :class:`NetworkActor`). Returns ``{"reconstructed": [...],
    "errors": {query index: why}, "start", "end", "pid"}``; a query whose inpainting fails is scored as
    its damaged image and listed in ``errors``.
    """
    t0 = time.time()
    damage = fringe_damage(frequency, phase, missing_fraction, inpainter)
    restored, errors = [], {}
    for j, img in enumerate(images):
        damaged, known = damage.zero_fill(img)
        try:
            restored.append(damage.cpu_half(damaged, known))
        except Exception as exc:  # noqa: BLE001 - one image's failure is a recorded value, not a failed cell
            restored.append(damaged)
            errors[j] = _inpaint_failed(exc)
    return {"reconstructed": restored, "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid(),
            "task": f"pre-fill {inpainter}" if damage.network else f"reconstruct {inpainter}"}


class NetworkActor:
    """Actor body of a network inpainter in the evaluation: loads the weights once, refines whole cells.

    ``refine(images, prefilled, frequency, phase, missing_fraction)`` takes the intact queries and the
    result of the network's CPU half for one (frequency, repeat) (:func:`reconstruct_task`, or Telea's
    own cell when the network's pre-fill is Telea with its radius: the same images) and returns the
    reconstructions in :func:`reconstruct_task`'s format. The batch runs under
    ``torch.inference_mode()``, one forward per image size (bf16/fp16 autocast on CUDA).
    """

    def __init__(self, inpainter: str, device: str | None = None, num_threads: int | None = 1):
        from ..damage.hook import NetworkStage

        self.name = inpainter
        self.stage = NetworkStage(inpainter, device=device, num_threads=num_threads)
        self.stage.load()

    def refine(self, images, prefilled: dict, frequency: float, phase: float, missing_fraction: float) -> dict:
        t0 = time.time()
        damage = fringe_damage(frequency, phase, missing_fraction)
        errors = dict(prefilled.get("errors", {}))  # a failed pre-fill stays the damaged image
        out = list(prefilled["reconstructed"])
        rows = [j for j in range(len(images)) if j not in errors]
        damaged = {j: damage.zero_fill(images[j]) for j in rows}  # (damaged, known)
        done = self.stage.refine_each([out[j] for j in rows], [damaged[j][1] for j in rows],
                                      [damaged[j][0] for j in rows])
        for j, r in zip(rows, done):
            if isinstance(r, Exception):
                out[j], errors[j] = damaged[j][0], _inpaint_failed(r)
            else:
                out[j] = r
        return {"reconstructed": out, "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid(),
                "task": f"network {self.name}", "prefill": {k: prefilled[k] for k in ("start", "end", "pid", "task")}}


def fsim_references_task(images: Sequence[np.ndarray]) -> list:
    """The FSIM reference maps of the intact queries (:class:`~.metrics.FsimReference`), computed once for every
    cell: ``(timing, maps)``, submitted with two returns so that the driver fetches only the timing."""
    from .metrics import FsimReference

    t0 = time.time()
    refs = [FsimReference(img) for img in images]
    return {"start": t0, "end": time.time(), "pid": os.getpid(), "task": f"FSIM references ({len(images)})"}, refs


def quality_task(images: Sequence[np.ndarray], recon: dict, frequency: float, phase: float, missing_fraction: float,
                 fig6_query: int, *fsim_refs) -> dict:
    """SSIM, FSIM and PSNR of one cell's reconstructions against the intact queries, and its Fig. 6 images.

    ``fsim_refs`` are the maps of :func:`fsim_references_task` (chunks of the query list, in order).
    Returns only small values: the driver never fetches the reconstructed images themselves.
    """
    from .metrics import psnr, ssim

    t0 = time.time()
    refs = [r for chunk in fsim_refs for r in chunk]
    restored = recon["reconstructed"]
    q = {"ssim": [], "fsim": [], "psnr": []}
    for img, r, ref in zip(images, restored, refs):
        q["ssim"].append(ssim(img, r))
        q["fsim"].append(ref.score(r))
        q["psnr"].append(min(psnr(img, r), 100.0))
    j = fig6_query % len(images)
    damaged = damaged_images([images[j]], frequency, phase, missing_fraction)[0]
    timeline = [{k: recon[k] for k in ("start", "end", "pid", "task")}]
    if "prefill" in recon:
        timeline.append(recon["prefill"])
    timeline.append({"start": t0, "end": time.time(), "pid": os.getpid(), "task": "quality"})
    return {"quality": {k: np.asarray(v) for k, v in q.items()}, "errors": recon.get("errors", {}),
            "fig6": {"damaged": damaged, "reconstructed": restored[j]}, "timeline": timeline}


def features_task(spec_json: str, weights: str | None, states: dict[str, list], runtime: str = "auto") -> dict:
    """Fused query vectors for each state's list of image lists (one list per repeat); ``runtime``
    runs the backbone (see :func:`cbir_dist.features.backbones.load_backbone`)."""
    from ..features.extract import Extractor

    t0 = time.time()
    ext = Extractor(FeatureSpec.from_json(spec_json), weights=weights,
                    num_threads=max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))), runtime=runtime)
    out = {state: [ext(imgs) for imgs in per_repeat] for state, per_repeat in states.items()}
    return {"vectors": out, "start": t0, "end": time.time(), "pid": os.getpid()}


def original_features_task(spec_json: str, weights: str | None, images: list, runtime: str = "auto") -> dict:
    """Vectors of the intact queries (``images`` is a top-level argument so Ray resolves its reference)."""
    return features_task(spec_json, weights, {"original": [images]}, runtime)


def cell_features_task(spec_json: str, weights: str | None, images: list, damage: Sequence | None,
                       *recons: dict, runtime: str = "auto") -> dict:
    """Feature cell of one (frequency, inpainter, backbone): vectors of the damaged and/or reconstructed queries.

    ``damage`` is ``[(frequency, phase, missing_fraction)]`` per repeat when the damaged queries are
    described in this cell (they are recomputed here from the intact ones); ``recons`` are the cell's
    reconstructions per repeat (none when only the damaged state is needed).
    """
    states = {}
    if damage:
        states["damaged"] = [damaged_images(images, f, ph, mf) for f, ph, mf in damage]
    if recons:
        states["reconstructed"] = [r["reconstructed"] for r in recons]
    return features_task(spec_json, weights, states, runtime)
