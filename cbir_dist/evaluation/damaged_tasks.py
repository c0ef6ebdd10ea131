"""The cells of the damaged-query evaluation (:mod:`.damaged`): the Ray tasks and the network's actor body.

Pure functions of their arguments, run in Ray workers or in this process by the executor of
:mod:`cbir_dist.distributed.tasks`: the damaged queries (recomputed where needed instead of shipped,
by the damage step of the index and query jobs: :func:`fringe_damage`), one reconstruction per
(frequency, inpainter, repeat) (:func:`reconstruct_task`; a network inpainter's pre-fill, refined by
:class:`NetworkActor`), its quality scores (:func:`quality_task`, on the FSIM reference maps of
:func:`fsim_references_task`) and the query vectors of each feature cell
(:func:`original_features_task`, :func:`cell_features_task`). Each returns only what the driver
needs, with its start, end and pid for the timeline.

With ``--detect-mask`` the same damaged queries are also reconstructed through the mask an estimator
finds in them (:func:`estimate_masks_task`, once per (frequency, repeat): the masks go on to
:func:`reconstruct_task` and :class:`NetworkActor` as ``estimated``; the driver fetches only their IoU
with the true masks).
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


#: The mask estimators of ``--mask-estimator``: the shipped network, or the classical baseline.
MASK_ESTIMATORS = ("network", "classical")


def mask_estimator(name: str = "network"):
    """The estimator ``name`` as an ``image -> known`` callable (bool, True = known), in this process:
    ``network`` the shipped one (:func:`~cbir_dist.damage.detect.default_estimator`, loaded once per
    process), ``classical`` the baseline (:func:`~cbir_dist.damage.detect.classical_known_mask`)."""
    from ..damage import detect

    if name == "classical":
        return detect.classical_known_mask
    if name != "network":
        raise ValueError(f"mask estimator must be one of {MASK_ESTIMATORS}, got {name!r}")
    return detect.default_estimator()


def mask_iou(known: np.ndarray, estimated: np.ndarray | None) -> float:
    """IoU of the estimated missing region with the true one (``estimated`` None: nothing found, IoU 0
    unless nothing is missing either, then 1)."""
    from ..damage.masks import missing_iou

    return missing_iou(estimated, known)


def estimate_masks_task(images: Sequence[np.ndarray], frequency: float, phase: float, missing_fraction: float,
                        estimator: str = "network") -> tuple[dict, list]:
    """Estimate the known mask of every zero-filled query of one (frequency, repeat) in this CPU task.

    The estimator sees the damaged query as :meth:`~cbir_dist.damage.hook.DamageTransform.zero_fill`
    gives it to the index and query jobs' ``--detect-mask``, and its mask is taken as
    :meth:`~cbir_dist.damage.hook.DamageTransform.estimate` takes it (all known: None, nothing found).
    Returns ``(summary, masks)``, submitted with two returns so that the driver fetches only the
    summary (per query: ``iou`` with the true mask, true and estimated ``missing`` fractions; ``errors``
    {query index: why} for an image the estimator failed on, searched as damaged) while the masks go
    on to the reconstructions.
    """
    t0 = time.time()
    damage = fringe_damage(frequency, phase, missing_fraction)
    estimate = mask_estimator(estimator)
    masks, iou, missing, found, errors = [], [], [], [], {}
    for j, img in enumerate(images):
        damaged, known = damage.zero_fill(img)
        try:
            est = np.asarray(estimate(damaged), dtype=bool)
            if est.shape != damaged.shape[:2]:
                raise ValueError(f"estimated mask of shape {est.shape} for an image of {damaged.shape[:2]}")
            est = None if est.all() else est
        except Exception as exc:  # noqa: BLE001 - one image's failure is a recorded value, not a failed cell
            est, errors[j] = None, f"mask estimate failed ({type(exc).__name__}: {exc}); searched as the damaged image"
        masks.append(est)
        iou.append(mask_iou(known, est))
        missing.append(1.0 - float(known.mean()))
        found.append(0.0 if est is None else 1.0 - float(est.mean()))
    summary = {"iou": np.asarray(iou), "missing": np.asarray(missing), "estimated_missing": np.asarray(found),
               "found_nothing": sum(m is None for m in masks), "errors": errors,
               "start": t0, "end": time.time(), "pid": os.getpid(), "task": f"estimate masks ({estimator})"}
    return summary, masks


def damaged_pairs(images, frequency: float, phase: float, missing_fraction: float,
                  estimated: Sequence | None = None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``(damaged, known)`` per query: zero-filled by the fringe mask, and that mask; with ``estimated``
    (the masks of :func:`estimate_masks_task`) the estimated missing pixels zeroed too and the estimated
    mask, None where nothing was found (as :meth:`~cbir_dist.damage.hook.DamageTransform.zero_fill` with
    ``detect_mask``)."""
    from ..damage.masks import apply_mask

    damage = fringe_damage(frequency, phase, missing_fraction)
    pairs = [damage.zero_fill(img) for img in images]
    if estimated is None:
        return pairs
    return [(d if m is None else apply_mask(d, m), m) for (d, _), m in zip(pairs, estimated)]


def _inpaint_failed(exc: BaseException) -> str:
    return f"inpaint failed ({type(exc).__name__}: {exc}); scored as the damaged image"


def reconstruct_task(images: Sequence[np.ndarray], frequency: float, inpainter: str, phase: float,
                     missing_fraction: float, estimated: Sequence | None = None) -> dict:
    """Damage every query with one fringe mask and reconstruct it in this CPU task.

    A classical inpainter runs whole; for a network only its CPU half runs (its classical pre-fill:
    the network then refines it in a :class:`NetworkActor`). Returns ``{"reconstructed": [...],
    "errors": {query index: why}, "start", "end", "pid"}``; a query whose inpainting fails is scored as
    its damaged image and listed in ``errors``. With ``estimated`` (:func:`estimate_masks_task`'s masks)
    each query is reconstructed through its estimated mask (:func:`damaged_pairs`); one where nothing
    was found stays the damaged image, searched as it is.
    """
    t0 = time.time()
    damage = fringe_damage(frequency, phase, missing_fraction, inpainter)
    restored, errors = [], {}
    for j, (damaged, known) in enumerate(damaged_pairs(images, frequency, phase, missing_fraction, estimated)):
        if known is None:
            restored.append(damaged)
            continue
        try:
            restored.append(damage.cpu_half(damaged, known))
        except Exception as exc:  # noqa: BLE001 - one image's failure is a recorded value, not a failed cell
            restored.append(damaged)
            errors[j] = _inpaint_failed(exc)
    task = f"pre-fill {inpainter}" if damage.network else f"reconstruct {inpainter}"
    return {"reconstructed": restored, "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid(),
            "task": task + (" (estimated mask)" if estimated is not None else "")}


class NetworkActor:
    """Actor body of a network inpainter in the evaluation: loads the weights once, refines whole cells.

    ``refine(images, prefilled, frequency, phase, missing_fraction, estimated=None)`` takes the intact
    queries and the result of the network's CPU half for one (frequency, repeat) (:func:`reconstruct_task`,
    or Telea's own cell when the network's pre-fill is Telea with its radius: the same images; with
    ``estimated``, the masks the pre-fill used) and returns the reconstructions in
    :func:`reconstruct_task`'s format. The batch runs under
    ``torch.inference_mode()``, one forward per image size (bf16/fp16 autocast on CUDA).
    """

    def __init__(self, inpainter: str, device: str | None = None, num_threads: int | None = 1):
        from ..damage.hook import NetworkStage

        self.name = inpainter
        self.stage = NetworkStage(inpainter, device=device, num_threads=num_threads)
        self.stage.load()

    def refine(self, images, prefilled: dict, frequency: float, phase: float, missing_fraction: float,
               estimated: Sequence | None = None) -> dict:
        t0 = time.time()
        pairs = damaged_pairs(images, frequency, phase, missing_fraction, estimated)  # (damaged, known)
        errors = dict(prefilled.get("errors", {}))  # a failed pre-fill stays the damaged image
        out = list(prefilled["reconstructed"])
        # nothing to refine where the pre-fill failed or no mask was found (the damaged image, as it is)
        rows = [j for j in range(len(images)) if j not in errors and pairs[j][1] is not None]
        damaged = {j: pairs[j] for j in rows}
        done = self.stage.refine_each([out[j] for j in rows], [damaged[j][1] for j in rows],
                                      [damaged[j][0] for j in rows]) if rows else []
        for j, r in zip(rows, done):
            if isinstance(r, Exception):
                out[j], errors[j] = damaged[j][0], _inpaint_failed(r)
            else:
                out[j] = r
        return {"reconstructed": out, "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid(),
                "task": f"network {self.name}" + (" (estimated mask)" if estimated is not None else ""),
                "prefill": {k: prefilled[k] for k in ("start", "end", "pid", "task")}}


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
