"""The ``two-stage`` inpainter: a Telea pre-fill corrected by a two-stage coarse-to-fine network.

The paper's two-stage idea (Ma et al. 2022, as Taheri et al. use it for fringe-masked CBIR
queries) — stage 1 region-wise convolutions, stage 2 non-local refinement — as a *residual* on a
classical pre-fill; the torch modules are in :mod:`.two_stage_net`, imported only when the network
is built, so importing this module does not import torch.

Inference has two halves, so that a job can put each where it runs best:

* :func:`prefill` — CPU only (``cv2.inpaint``): damaged image + mask -> pre-filled image. The Ray
  graph and the evaluation job run it in CPU tasks;
* :meth:`TwoStageInpainter.refine_batch` — the network on a batch of pre-filled images (a GPU
  actor when the cluster has one, under bf16/fp16 autocast).

``TwoStageInpainter(image, known)`` does both in one call (the :class:`~.base.Inpainter` protocol);
:meth:`TwoStageInpainter.inpaint_batch` does both for a batch. Known pixels always come back bit-exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import UsageError, WeightsError
from ...io.files import sha256_file
from .base import check_inputs

log = logging.getLogger(__name__)

ARCHITECTURE = "ResidualTwoStageNet"
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "two_stage.pt"
DEFAULT_PROVENANCE = WEIGHTS_DIR / "two_stage.json"
STRIDE = 8


def prefill(image: np.ndarray, known: np.ndarray, method: str = "telea", radius: float = 5.0) -> np.ndarray:
    """The classical pre-fill of a uint8 (H, W, 3) image: ``cv2.inpaint`` (Telea or Navier–Stokes), known pixels exact.

    The values under missing pixels are never read. Nothing known: all zeros; all known: a copy.
    """
    import cv2

    if known.all():
        return image.copy()
    if not known.any():
        return np.zeros_like(image)
    flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    src = np.ascontiguousarray(image).copy()
    src[~known] = 0
    out = cv2.inpaint(src, (~known).astype(np.uint8), float(radius), flags).reshape(image.shape)
    out[known] = image[known]
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    return np.repeat(image.reshape(image.shape[:2])[..., None], 3, axis=2)


def _from_rgb(rgb: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Back to ``like``'s layout: grey images get the channel mean of the three equal-input channels."""
    if rgb.shape == like.shape:
        return rgb
    return np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8).reshape(like.shape)


def autocast_dtype(device) -> "object | None":
    """The mixed-precision dtype used on ``device``: bfloat16 where CUDA supports it, else float16; None on CPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TwoStageInpainter:
    """The network behind the ``Inpainter`` protocol: ``(uint8 (H, W[, 3]), bool (H, W)) -> uint8``, same shape.

    Parameters
    ----------
    model : ResidualTwoStageNet
        In eval mode, on ``device``.
    device : str or torch.device
    max_side : int or None
        Images whose longer side exceeds this run the network at that size: the pre-fill stays at
        full resolution and the network's *correction* is upsampled onto it. ``None``: always full size.
    mixed_precision : bool
        bf16 (fp16 where bf16 is unsupported) autocast on CUDA; ignored on CPU.
    """

    name = "two-stage"
    network = True  # jobs run the network part in actors (see cbir_dist.damage.hook.is_network)

    def __init__(self, model, device="cpu", *, max_side: int | None = 1024, mixed_precision: bool = True,
                 max_batch: int = 16):
        import torch

        if max_side is not None and int(max_side) < 16:
            raise UsageError(f"max_side must be None or at least 16 pixels, got {max_side}")
        self.model = model
        self.device = torch.device(device)
        self.max_side = max_side
        self.max_batch = max(1, int(max_batch))
        cfg = getattr(model, "config", {})
        self.prefill_method = cfg.get("prefill", "telea")
        self.prefill_radius = float(cfg.get("prefill_radius", 5.0))
        self.amp_dtype = autocast_dtype(self.device) if mixed_precision else None

    # --- the CPU half ------------------------------------------------------------------------------
    def prefill(self, image: np.ndarray, known: np.ndarray) -> np.ndarray:
        """The classical pre-fill this network was trained on, as RGB uint8 (H, W, 3)."""
        image, known = check_inputs(image, known)
        return prefill(_as_rgb(image), known, self.prefill_method, self.prefill_radius)

    # --- the network half --------------------------------------------------------------------------
    def refine_batch(self, prefilled: Sequence[np.ndarray], known: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The network on pre-filled RGB uint8 images (each (H, W, 3), any sizes) with their bool masks.

        Images of one size run as batches of up to ``max_batch`` under ``torch.inference_mode()`` (and
        autocast on CUDA); returns the corrected images, RGB uint8, in input order, known pixels those of
        ``prefilled``.
        """
        out: list[np.ndarray | None] = [None] * len(prefilled)
        groups: dict[tuple, list[int]] = {}
        for i, (p, k) in enumerate(zip(prefilled, known)):
            if p.ndim != 3 or p.shape[2] != 3 or p.dtype != np.uint8 or k.shape != p.shape[:2]:
                raise ValueError(f"refine_batch takes uint8 (H, W, 3) images with (H, W) masks, got {p.shape} {k.shape}")
            if k.all() or not k.any():  # nothing to correct: the pre-fill is the answer
                out[i] = np.array(p, copy=True)
            else:
                groups.setdefault(p.shape, []).append(i)
        for same in groups.values():
            for start in range(0, len(same), self.max_batch):
                idx = same[start : start + self.max_batch]
                for i, r in zip(idx, self._refine_same_size([prefilled[i] for i in idx], [known[i] for i in idx])):
                    out[i] = r
        return out  # type: ignore[return-value]

    def _refine_same_size(self, prefilled: list[np.ndarray], known: list[np.ndarray]) -> list[np.ndarray]:
        h, w = known[0].shape
        side = max(h, w)
        if self.max_side is not None and side > self.max_side:
            return [self._refine_downscaled(p, k, self.max_side / side) for p, k in zip(prefilled, known)]
        pred = self._forward(np.stack(prefilled), np.stack(known))
        return [np.where(k[..., None], p, q) for p, k, q in zip(prefilled, known, pred)]

    def _forward(self, prefilled: np.ndarray, known: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8, (N, H, W) bool -> the network's output image, (N, H, W, 3) uint8."""
        import contextlib

        import torch

        from .two_stage_net import pad_to_multiple

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(prefilled)).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            m = torch.from_numpy(np.ascontiguousarray(known)).to(self.device).float()[:, None]
            xp, (h, w) = pad_to_multiple(x, STRIDE)
            mp, _ = pad_to_multiple(m, STRIDE)
            amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                   else contextlib.nullcontext())
            with amp:
                _, out = self.model(xp, mp)
            pred = ((out[..., :h, :w].float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            return pred.permute(0, 2, 3, 1).cpu().numpy()

    def _refine_downscaled(self, pre: np.ndarray, known: np.ndarray, scale: float) -> np.ndarray:
        """The network at ``scale``; its correction (output − pre-fill) upsampled onto the full-size pre-fill.

        A low-resolution pixel counts as known only if every full-resolution pixel under it is.
        """
        import cv2

        h, w = known.shape
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        small = cv2.resize(pre, size, interpolation=cv2.INTER_AREA)
        small_known = cv2.resize(known.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.999
        if small_known.all() or not small_known.any():
            return np.array(pre, copy=True)
        pred = self._forward(small[None], small_known[None])[0]
        delta = pred.astype(np.float32) - small.astype(np.float32)
        delta = cv2.resize(delta, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 3)
        out = np.clip(np.rint(pre.astype(np.float32) + delta), 0, 255).astype(np.uint8)
        return np.where(known[..., None], pre, out)

    # --- both halves -------------------------------------------------------------------------------
    def inpaint_batch(self, images: Sequence[np.ndarray], known: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Pre-fill and refine a batch: uint8 images (RGB or grey, any sizes) and bool masks -> list, same shapes.

        A stacked (N, H, W, 3) array is accepted as well as a list. Known pixels come back bit-exact.
        """
        checked = [check_inputs(im, k) for im, k in zip(images, known)]
        pre = [self.prefill(im, k) for im, k in checked]
        refined = self.refine_batch(pre, [k for _, k in checked])
        return [finish(im, k, r) for (im, k), r in zip(checked, refined)]

    def __call__(self, image: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Fill the missing pixels of one uint8 RGB or grey image (``known`` True = known pixel)."""
        return self.inpaint_batch([image], [known])[0]


def finish(image: np.ndarray, known: np.ndarray, refined_rgb: np.ndarray) -> np.ndarray:
    """The refined RGB image in ``image``'s layout (grey: channel mean) with ``image``'s known pixels pasted back."""
    out = _from_rgb(refined_rgb, image)
    if out is refined_rgb:
        out = out.copy()
    out[known] = image[known]
    return out


def read_provenance(path=None) -> dict:
    """The provenance JSON of the weights (``two_stage.json`` by default); ``{}`` when absent."""
    path = Path(path) if path is not None else DEFAULT_PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else {}


class Prefill:
    """The classical pre-fill a network was trained on, as an ``(image, known) -> RGB uint8`` callable (picklable)."""

    def __init__(self, method: str = "telea", radius: float = 5.0):
        self.method, self.radius = method, float(radius)

    def __call__(self, image: np.ndarray, known: np.ndarray) -> np.ndarray:
        image, known = check_inputs(image, known)
        return prefill(_as_rgb(image), known, self.method, self.radius)


def load_prefill(weights=None, *, provenance=None) -> Prefill:
    """The pre-fill of the weights' architecture (``model.config`` of the provenance JSON), without loading them."""
    weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    meta = read_provenance(Path(provenance) if provenance is not None else weights.with_suffix(".json"))
    cfg = meta.get("model", {}).get("config", {})
    return Prefill(cfg.get("prefill", "telea"), cfg.get("prefill_radius", 5.0))


def load_two_stage(weights=None, device=None, *, provenance=None, check_sha256: bool = True,
                   max_side: int | None = 1024, mixed_precision: bool = True, num_threads: int | None = None
                   ) -> TwoStageInpainter:
    """Load the two-stage inpainter.

    Parameters
    ----------
    weights : str or path, optional
        A float32 state dict (:func:`cbir_dist.training.checkpoints.export_weights`); default the
        shipped ``cbir_dist/weights/two_stage.pt``.
    device : str or torch.device, optional
        Default ``"cuda"`` when a GPU is visible, else ``"cpu"``.
    provenance : str or path, optional
        The JSON beside the weights (``<weights>.json`` by default): its ``sha256`` is checked
        against the file and ``model.config`` gives the architecture.
    check_sha256 : bool
        Refuse weights whose hash differs from the provenance (:class:`WeightsError`).
    max_side, mixed_precision
        See :class:`TwoStageInpainter`.
    num_threads : int, optional
        ``torch.set_num_threads`` (process-wide) before loading.

    Raises
    ------
    WeightsError
        Missing or corrupt weights, no provenance, a hash or architecture mismatch.
    """
    import torch

    from .two_stage_net import build_model

    if num_threads:
        torch.set_num_threads(int(num_threads))
    weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    provenance = Path(provenance) if provenance is not None else weights.with_suffix(".json")
    if not weights.is_file():
        raise WeightsError(f"{weights}: two-stage inpainter weights not found; train them with "
                           "`cbir-dist train-inpainter --help` or reinstall cbir-dist (it ships cbir_dist/weights/two_stage.pt)")
    meta = read_provenance(provenance)
    if not meta:
        raise WeightsError(f"{provenance}: no provenance JSON beside {weights} (it holds the architecture and sha256)")
    model_meta = meta.get("model", {})
    if model_meta.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise WeightsError(f"{provenance}: weights of a {model_meta.get('architecture')!r}, not a {ARCHITECTURE}; "
                           "this version of cbir-dist cannot load them")
    if check_sha256:
        expected = meta.get("sha256")
        if expected is None:
            raise WeightsError(f"{provenance}: no 'sha256' entry for {weights}; pass check_sha256=False to load unverified weights")
        actual = sha256_file(weights)
        if actual != expected:
            raise WeightsError(f"{weights}: sha256 {actual} does not match {expected} recorded in {provenance}; "
                               "the file is corrupt or was replaced — restore it or retrain")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = build_model(model_meta.get("config"))
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and "model_config" in state:
            state = state["model"]  # a training checkpoint or a prototype snapshot
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, KeyError, ValueError, TypeError, OSError, AttributeError) as exc:
        raise WeightsError(f"{weights}: not a {ARCHITECTURE} state dict for {model_meta.get('config')} ({exc})") from exc
    model.eval().to(device)
    log.info("loaded two-stage inpainter %s on %s", weights, device)
    return TwoStageInpainter(model, device, max_side=max_side, mixed_precision=mixed_precision)


def from_checkpoint(path, device="cpu", **options) -> TwoStageInpainter:
    """An inpainter from a training checkpoint or snapshot (``{"model", "model_config", ...}``), unverified.

    For evaluating a run's snapshots (``benchmarks/inpainting.py --weights``); shipped weights go
    through :func:`load_two_stage`, which checks their sha256.
    """
    import torch

    from .two_stage_net import build_model

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise WeightsError(f"{path}: not a two-stage checkpoint or snapshot (no 'model' and 'model_config')")
    cfg = dict(state["model_config"])
    cfg.setdefault("half_channels", 0)  # prototype configs from before the 1/2-resolution level
    model = build_model(cfg)
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    return TwoStageInpainter(model.eval().to(device), device, **options)
