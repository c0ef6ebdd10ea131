"""Find the missing region of a damaged photo in the photo itself: the mask estimator.

``estimate_known_mask(image)`` takes a photo as it comes (uint8 RGB or grey: a scan with a
torn-off strip, a picture with blacked-out bands, JPEG-compressed and resized on the way) and
returns its known-pixel mask (bool, True = known, the convention of every mask in the package). It
runs the shipped network (:mod:`.detect_net`, weights ``cbir_dist/weights/mask_estimator.pt`` with
provenance beside them, trained by ``cbir-dist train-mask-estimator`` on the inpainter's training
split; ``$CBIR_MASK_ESTIMATOR_WEIGHTS`` names other weights), loaded once per process. An undamaged photo comes back all known.

The network's probabilities are thresholded at 0.5, then missing regions smaller than
:data:`MIN_REGION` of the image are dropped (a hole is a band or a stroke, never a speck), so a
photo with nothing to fill has no invented holes. Photos are padded to a multiple of the network's
stride; one whose longer side exceeds ``max_side`` is estimated at that size and the mask scaled
back up.

:func:`classical_known_mask` is the baseline the network is measured against
(benchmarks/mask_detection.py): "dark in every channel, opened by 3×3", which cannot tell a hole
from a shadow.

On the CPU the network runs in ONNX Runtime (exported in memory once per process; measured faster
than eager torch for this network), in torch when ``runtime="torch"``, on a GPU, or when
``onnxruntime`` is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import WeightsError, WeightsNotFoundError
from ..io.files import sha256_file

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "mask_estimator.pt"
ARCHITECTURE = "MaskNet"

#: Missing regions smaller than this fraction of the image are dropped (specks are not holes).
MIN_REGION = 0.001
#: Probability above which a pixel is missing.
THRESHOLD = 0.5


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8 (H, W, 3): grey repeated, a single channel or an alpha channel dropped.

    Raises ``ValueError`` for anything that is not a uint8 grey, RGB or RGBA image of at least one pixel.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"the mask estimator takes uint8 images, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = image[..., 0] if image.shape[2] == 1 else image[..., :3]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"the mask estimator takes a grey (H, W) or RGB (H, W, 3) image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def drop_small_regions(missing: np.ndarray, min_fraction: float = MIN_REGION) -> np.ndarray:
    """``missing`` (bool) without its connected regions smaller than ``min_fraction`` of the image."""
    import cv2

    if not missing.any():
        return missing
    n, labels, stats, _ = cv2.connectedComponentsWithStats(missing.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= max(1.0, min_fraction * missing.size)
    keep[0] = False
    return keep[labels]


def classical_known_mask(image: np.ndarray, dark: int = 20) -> np.ndarray:
    """The baseline: a pixel is missing when every channel is at most ``dark``, the region opened by 3×3."""
    import cv2

    rgb = as_rgb(image)
    missing = (rgb.max(axis=2) <= dark).astype(np.uint8)
    missing = cv2.morphologyEx(missing, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return ~missing.astype(bool)


class MaskEstimator:
    """The network with its pre- and post-processing: ``estimator(image) -> known`` (bool, True = known).

    ``model`` is a torch :class:`~cbir_dist.damage.detect_net.MaskNet` or an ONNX Runtime session
    of one (input ``x``, output ``logits``). :meth:`probabilities` gives the per-pixel probability
    that a pixel is missing; :meth:`estimate_batch` runs a list of images (one forward per image).
    """

    def __init__(self, model, *, max_side: int = 1024, threshold: float = THRESHOLD,
                 min_region: float = MIN_REGION, runtime: str | None = None):
        self.model, self.max_side, self.threshold, self.min_region = model, int(max_side), threshold, min_region
        self.runtime = runtime or ("onnxruntime" if hasattr(model, "run") else "torch")
        self._lock = threading.Lock()

    def _logits(self, x: np.ndarray) -> np.ndarray:
        if self.runtime == "onnxruntime":
            return self.model.run(None, {"x": x})[0]
        import torch

        p = next(self.model.parameters())
        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(p.device, p.dtype)).float().cpu().numpy()

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """float32 (H, W): the probability that each pixel of ``image`` is missing."""
        import cv2

        from .detect_net import STRIDE

        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        work = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                   interpolation=cv2.INTER_AREA)
        wh, ww = work.shape[:2]
        ph, pw = max(STRIDE, -(-wh // STRIDE) * STRIDE), max(STRIDE, -(-ww // STRIDE) * STRIDE)
        padded = np.pad(work, ((0, ph - wh), (0, pw - ww), (0, 0)), mode="edge")
        x = (padded.transpose(2, 0, 1)[None].astype(np.float32) / 127.5) - 1.0
        logits = self._logits(np.ascontiguousarray(x))[0, 0, :wh, :ww]
        prob = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        if scale != 1.0:
            prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        return prob

    def __call__(self, image: np.ndarray) -> np.ndarray:
        missing = drop_small_regions(self.probabilities(image) > self.threshold, self.min_region)
        return ~missing

    def estimate_batch(self, images) -> list[np.ndarray]:
        return [self(im) for im in images]


def read_provenance(weights: Path) -> dict:
    path = Path(weights).with_suffix(".json")
    if not path.is_file():
        raise WeightsError(f"{path}: no provenance JSON beside {weights} (it holds the architecture and sha256)")
    return json.loads(path.read_text())


def load_estimator(weights=None, *, device: str | None = None, runtime: str = "auto",
                   num_threads: int | None = None, check_sha256: bool = True) -> MaskEstimator:
    """Load the mask estimator: the shipped weights by default, verified against their provenance.

    ``runtime``: "auto" (ONNX Runtime on the CPU when installed, else torch), "onnx" or "torch".
    ``num_threads`` sets ONNX Runtime's intra-op threads (torch's are the process's own).
    Raises :class:`~cbir_dist.errors.WeightsError` for missing, corrupt or foreign weights.
    """
    import torch

    from .detect_net import build_model

    weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if not weights.is_file():
        raise WeightsError(f"{weights}: mask estimator weights not found; train them with "
                           "`cbir-dist train-mask-estimator --help` or reinstall cbir-dist "
                           "(it ships cbir_dist/weights/mask_estimator.pt)")
    meta = read_provenance(weights)
    model_meta = meta.get("model", {})
    if model_meta.get("architecture") != ARCHITECTURE:
        raise WeightsError(f"{weights}: weights of a {model_meta.get('architecture')!r}, not a {ARCHITECTURE}")
    if check_sha256 and sha256_file(weights) != meta.get("sha256"):
        raise WeightsError(f"{weights}: sha256 does not match the one recorded in its provenance JSON; "
                           "the file is corrupt or was replaced — restore it or retrain")
    try:
        model = build_model(model_meta.get("config"))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError, ValueError, TypeError, OSError) as exc:
        raise WeightsError(f"{weights}: not a {ARCHITECTURE} state dict for {model_meta.get('config')} ({exc})") from exc
    model.eval()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if runtime not in ("auto", "onnx", "torch"):
        raise ValueError(f"runtime must be auto, onnx or torch, got {runtime!r}")
    if device == "cpu" and runtime != "torch":
        session = _onnx_session(model, num_threads, required=runtime == "onnx")
        if session is not None:
            return MaskEstimator(session, runtime="onnxruntime")
    return MaskEstimator(model.to(device), runtime="torch")


def _onnx_session(model, num_threads: int | None, required: bool):
    """An ONNX Runtime session of ``model`` exported in memory (None when onnxruntime is missing and not required)."""
    import io
    import warnings

    try:
        import onnxruntime as ort
    except ImportError:
        if required:
            raise
        return None
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 64, 64), buf, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}})
    so = ort.SessionOptions()
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


_ESTIMATOR: MaskEstimator | None = None
_ESTIMATOR_LOCK = threading.Lock()

#: Environment variable naming the weights :func:`default_estimator` loads instead of the shipped ones.
WEIGHTS_ENV = "CBIR_MASK_ESTIMATOR_WEIGHTS"


def estimator_weights() -> Path:
    """The weights :func:`default_estimator` loads: ``$CBIR_MASK_ESTIMATOR_WEIGHTS`` when set, else the
    shipped :data:`DEFAULT_WEIGHTS`.

    Raises :class:`~cbir_dist.errors.WeightsNotFoundError` (exit status 2) when the variable names
    no file. Cheap (no torch): jobs call it before their first image.
    """
    value = os.environ.get(WEIGHTS_ENV)
    if not value:
        return DEFAULT_WEIGHTS
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"${WEIGHTS_ENV}={value}: no such file (it names the mask estimator's weights, "
                                   "a MaskNet state dict with its provenance JSON beside it; unset it to use the "
                                   "shipped ones)")
    return path


def check_estimator_weights() -> Path:
    """The weights of :func:`estimator_weights` when the file is there, else
    :class:`~cbir_dist.errors.WeightsError` saying how to get them (cheap: no torch, no load)."""
    weights = estimator_weights()
    if not weights.is_file():
        raise WeightsError(f"{weights}: mask estimator weights not found (--detect-mask needs them); train them "
                           f"with `cbir-dist train-mask-estimator --help` and point ${WEIGHTS_ENV} at the .pt file, "
                           "or reinstall cbir-dist (it ships cbir_dist/weights/mask_estimator.pt)")
    return weights


def estimator_identity() -> dict:
    """What identifies the estimator :func:`default_estimator` loads, for run records: its weights path
    and the sha256 its provenance records (None when unreadable). Reads no weights."""
    weights = estimator_weights()
    try:
        sha = read_provenance(weights).get("sha256")
    except (WeightsError, OSError, ValueError):
        sha = None
    return {"weights": str(weights), "sha256": sha}


def default_estimator() -> MaskEstimator:
    """The estimator, loaded once per process: the shipped weights, or those ``$CBIR_MASK_ESTIMATOR_WEIGHTS``
    names (a ``.pt`` state dict of a MaskNet with its provenance JSON beside it: architecture, config,
    sha256). The variable is read where the step runs: worker processes inherit it from the job."""
    global _ESTIMATOR
    with _ESTIMATOR_LOCK:
        if _ESTIMATOR is None:
            _ESTIMATOR = load_estimator(estimator_weights())
        return _ESTIMATOR


def estimate_known_mask(image: np.ndarray) -> np.ndarray:
    """The known-pixel mask of a damaged photo (bool (H, W), True = known), found in the photo itself.

    ``image``: uint8 RGB or grey. An undamaged photo comes back all True. Uses the shipped network
    (:func:`default_estimator`); raises ``ValueError`` for an image it cannot take and
    :class:`~cbir_dist.errors.WeightsError` when the weights are missing or corrupt.
    """
    return default_estimator()(image)
