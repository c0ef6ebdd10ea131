"""The cells of the damaged-query evaluation (:mod:`.damaged`): the Ray tasks and the network's actor body.

Pure functions of their arguments, run in Ray workers or in this process by the executor of
:mod:`cbir_dist.distributed.tasks`: the fringe masks and the damaged queries (recomputed where
needed instead of shipped), one reconstruction per (frequency, inpainter, repeat)
(:func:`reconstruct_task`; a network inpainter's pre-fill, refined by :class:`NetworkActor`), its
quality scores (:func:`quality_task`, on the FSIM reference maps of :func:`fsim_references_task`)
and the query vectors of each feature cell (:func:`original_features_task`,
:func:`cell_features_task`). Each returns only what the driver needs, with its start, end and pid
for the timeline.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from ..features.spec import FeatureSpec


def fringe_masks(images: Sequence[np.ndarray], frequency: float, phase: float, missing_fraction: float) -> list:
    """The known-pixel mask of every query at one (frequency, phase): the one rule of every task."""
    from ..damage.masks import fringe_mask

    return [fringe_mask(img.shape[0], img.shape[1], frequency, missing_fraction, phase=phase) for img in images]


def damaged_images(images, frequency: float, phase: float, missing_fraction: float) -> list:
    """The zero-filled queries (the paper's ``M ⊙ I``), recomputed where needed instead of shipped."""
    from ..damage.masks import apply_mask

    return [apply_mask(img, k) for img, k in zip(images, fringe_masks(images, frequency, phase, missing_fraction))]


def reconstruct_task(images: Sequence[np.ndarray], frequency: float, inpainter: str, phase: float,
                     missing_fraction: float) -> dict:
    """Damage every query with one fringe mask and reconstruct it in this CPU task.

    A classical inpainter runs whole; for a network only its CPU half runs (its classical pre-fill:
    the network then refines it in a :class:`NetworkActor`). Returns ``{"reconstructed": [...],
    "errors": {query index: why}, "start", "end", "pid"}``; a query whose inpainting fails is scored as
    its damaged image and listed in ``errors``.
    """
    from ..damage.hook import damage_and_reconstruct
    from ..damage.inpaint import get_inpainter, get_prefill, is_network

    t0 = time.time()
    inp = get_prefill(inpainter) if is_network(inpainter) else get_inpainter(inpainter)
    restored, errors = [], {}
    for j, (img, known) in enumerate(zip(images, fringe_masks(images, frequency, phase, missing_fraction))):
        try:
            restored.append(damage_and_reconstruct(img, known, inp)[1])
        except Exception as exc:  # noqa: BLE001 - one image's failure is a recorded value, not a failed cell
            restored.append(damage_and_reconstruct(img, known, get_inpainter("none"))[0])
            errors[j] = f"inpaint failed ({type(exc).__name__}: {exc}); scored as the damaged image"
    return {"reconstructed": restored, "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid(),
            "task": f"reconstruct {inpainter}" if not is_network(inpainter) else f"pre-fill {inpainter}"}


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
        from ..damage.masks import apply_mask

        t0 = time.time()
        masks = fringe_masks(images, frequency, phase, missing_fraction)
        errors = dict(prefilled.get("errors", {}))  # a failed pre-fill stays the damaged image
        out = list(prefilled["reconstructed"])
        rows = [j for j in range(len(images)) if j not in errors]
        damaged = {j: apply_mask(images[j], masks[j]) for j in rows}
        try:
            done = self.stage.refine([out[j] for j in rows], [masks[j] for j in rows], [damaged[j] for j in rows])
        except Exception:  # noqa: BLE001 - find the image that fails, keep the others
            done = []
            for j in rows:
                try:
                    done.append(self.stage.refine([out[j]], [masks[j]], [damaged[j]])[0])
                except Exception as exc:  # noqa: BLE001 - scored as the damaged image, listed
                    done.append(damaged[j])
                    errors[j] = f"inpaint failed ({type(exc).__name__}: {exc}); scored as the damaged image"
        for j, r in zip(rows, done):
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


def features_task(spec_json: str, weights: str | None, states: dict[str, list]) -> dict:
    """Fused query vectors for each state's list of image lists (one list per repeat)."""
    from ..features.extract import Extractor

    t0 = time.time()
    ext = Extractor(FeatureSpec.from_json(spec_json), weights=weights,
                    num_threads=max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    out = {state: [ext(imgs) for imgs in per_repeat] for state, per_repeat in states.items()}
    return {"vectors": out, "start": t0, "end": time.time(), "pid": os.getpid()}


def original_features_task(spec_json: str, weights: str | None, images: list) -> dict:
    """Vectors of the intact queries (``images`` is a top-level argument so Ray resolves its reference)."""
    return features_task(spec_json, weights, {"original": [images]})


def cell_features_task(spec_json: str, weights: str | None, images: list, damage: Sequence | None,
                       *recons: dict) -> dict:
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
    return features_task(spec_json, weights, states)
