"""Find the missing region of a damaged photo in the photo itself: the mask estimator.

``estimate_known_mask(image)`` takes a photo as it comes (uint8 RGB or grey: a scan with a
torn-off strip, a picture with blacked-out bands, JPEG-compressed and resized on the way) and
returns its known-pixel mask (bool, True = known, the convention of every mask in the package). It
runs the shipped network (:mod:`.detect_net`, weights ``cbir_dist/weights/mask_estimator.pt`` with
provenance beside them, trained by ``cbir-dist train-mask-estimator`` on the inpainter's training
split; ``$CBIR_MASK_ESTIMATOR_WEIGHTS`` names other weights), loaded once per process. An
undamaged photo comes back all known.

The network marks candidate pixels (probability above 0.5; regions under :data:`MIN_REGION` of
the image dropped: a hole is never a speck). Then what damage makes is kept and the rest dropped:

1. the holes' fill colour is the most common colour of the candidates (:func:`fill_colour`), and only
   candidates of that colour and their blurred edges remain (:func:`filled_regions`): a shadow or a
   sky of another colour beside a hole goes;
2. when the remaining region is straight parallel stripes, it becomes whole stripes
   (:func:`snap_stripes`): a band across a black background, where the network cannot tell, follows
   its stripe;
3. a fill colour other than black or white is taken only as two or more stripes (a fringe mask), so
   a flat blue sky is never a hole.

Photos are padded to a multiple of the network's stride; one whose longer side exceeds
``max_side`` is estimated at that size and the mask scaled back up.

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
#: A fill colour other than black (every channel at most BLACK) or white (at least WHITE) is taken
#: only for parallel stripes.
BLACK, WHITE = 3, 252
#: :func:`filled_regions`: a hole's pixels are within this of its fill colour (away from its edge).
FLAT_TOLERANCE = 6
#: Stripes are taken only when they overlap (IoU) the region they were fitted to at least this much.
STRIPE_OVERLAP = 0.6
#: :func:`snap_stripes`: the lines must explain this share of the missing region's variance ...
STRIPE_EXPLAINED = 0.5
#: ... and the mean missing share of missing and known lines differ by at least this.
STRIPE_GAP = 0.5
#: ... and 0° or 90° is taken when it scores at least this share of the best angle's score.
AXIS_PREFERENCE = 0.9


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


def fill_colour(rgb: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The colour the holes were filled with: the most common colour among the candidate pixels
    (in 8-level bins per channel), as the median of the pixels of that bin (uint8 RGB)."""
    px = rgb[candidates]
    q = (px // 8).astype(np.int64)
    key = (q[:, 0] * 32 + q[:, 1]) * 32 + q[:, 2]
    mode = int(np.argmax(np.bincount(key, minlength=32 ** 3)))
    return np.median(px[key == mode], axis=0).astype(np.uint8)


def filled_regions(candidates: np.ndarray, rgb: np.ndarray, colour: np.ndarray, *,
                   tolerance: int = FLAT_TOLERANCE, reach: int = 4) -> np.ndarray:
    """The candidate pixels of one fill: those within ``tolerance`` of ``colour`` in every channel, and
    the candidates within ``reach`` px of them (a hole's edge, blurred by JPEG and resizing, is not of
    its fill's colour). A shadow or a sky of another colour next to a hole is not taken with it."""
    import cv2

    core = candidates & (np.abs(rgb.astype(np.int16) - colour.astype(np.int16)).max(axis=2) <= tolerance)
    size = 2 * reach + 1
    return candidates & cv2.dilate(core.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)


def is_fill_colour(colour: np.ndarray) -> bool:
    """True for black or white (every channel at most :data:`BLACK` or at least :data:`WHITE`)."""
    return bool((colour <= BLACK).all() or (colour >= WHITE).all())


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two missing regions (True = missing)."""
    from .masks import missing_iou

    return missing_iou(~a, ~b)


def _lines(h: int, w: int, angle: float) -> np.ndarray:
    """Each pixel's line index across the fringe axis at ``angle`` degrees (1-px wide lines, from 0)."""
    t = np.deg2rad(angle)
    c, s = np.cos(t), np.sin(t)
    c, s = (0.0 if abs(c) < 1e-9 else c), (0.0 if abs(s) < 1e-9 else s)
    p = np.arange(w)[None, :] * c + np.arange(h)[:, None] * s
    return np.rint(p - p.min()).astype(np.int64)


def _explained(values: np.ndarray, lines: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Share of the variance of ``values`` that its means along the lines explain; the means and counts."""
    counts = np.bincount(lines.ravel())
    sums = np.bincount(lines.ravel(), weights=values.ravel())
    keep = counts > 0
    means = np.zeros_like(sums)
    means[keep] = sums[keep] / counts[keep]
    total = float(((values - values.mean()) ** 2).sum())
    between = float((counts * (means - values.mean()) ** 2).sum())
    return (between / total if total > 0 else 0.0), means, counts


def _angle_scores(values: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """How well the lines at each angle (degrees) explain ``values`` (an F statistic), all angles in one pass."""
    h, w = values.shape
    t = np.deg2rad(np.asarray(angles, np.float64))[:, None]
    c, s = np.cos(t), np.sin(t)
    c[np.abs(c) < 1e-9], s[np.abs(s) < 1e-9] = 0.0, 0.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = xx.ravel()[None, :] * c.astype(np.float32) + yy.ravel()[None, :] * s.astype(np.float32)
    lines = np.rint(p - p.min(axis=1, keepdims=True)).astype(np.int32)
    width = int(lines.max()) + 1
    flat = (lines + width * np.arange(len(angles))[:, None]).ravel()
    v = np.broadcast_to(values.ravel()[None, :], lines.shape).ravel().astype(np.float64)
    counts = np.bincount(flat, minlength=width * len(angles)).reshape(len(angles), width)
    sums = np.bincount(flat, weights=v, minlength=width * len(angles)).reshape(len(angles), width)
    squares = np.bincount(flat, weights=v * v, minlength=width * len(angles)).reshape(len(angles), width)
    # only lines at least half the longest: the short lines in the corners of a tilted grid are
    # nearly pure by chance and would favour tilted angles
    full = counts >= 0.5 * counts.max(axis=1, keepdims=True)
    n = (counts * full).sum(axis=1)
    mean = (sums * full).sum(axis=1) / n
    between = (np.where(full, sums ** 2 / np.maximum(counts, 1), 0.0)).sum(axis=1) - n * mean ** 2
    total = (squares * full).sum(axis=1) - n * mean ** 2
    within = np.maximum(total - between, 1e-9 * n)
    k = full.sum(axis=1)
    # an F statistic: explained variance per line against what is left per pixel, so that angles
    # cutting the image into more (shorter) lines do not win by fitting noise
    return (between / np.maximum(k - 1, 1)) / (within / np.maximum(n - k, 1))


def snap_stripes(missing: np.ndarray, *, min_explained: float = STRIPE_EXPLAINED, step: float = 2.0) -> np.ndarray | None:
    """The missing region as whole straight stripes, when it is one (:func:`_snap_stripes`), or None."""
    return _snap_stripes(missing, min_explained=min_explained, step=step)[0]


def _snap_stripes(missing: np.ndarray, *, min_explained: float = STRIPE_EXPLAINED,
                  step: float = 2.0) -> tuple[np.ndarray | None, int]:
    """The missing region as whole straight stripes, when it is one: a fringe mask's shape, or None.

    Returns the stripes and how many there are, or ``(None, 0)``. The angle at which the missing
    share is most nearly constant along lines is found on a ≤32 px copy (the best two every
    ``step`` degrees), then refined by ``step / 4`` on a ≤64 px copy, where 0° or 90° wins when its score (an F
    statistic) is within :data:`AXIS_PREFERENCE` of the best; each line is then missing when most of it is (Otsu's threshold on the lines' missing shares). The stripes are accepted
    when the lines explain at least ``min_explained`` of the region's variance and the missing and
    known lines are well apart: then pixels the network could not judge — a band crossing a black
    background — follow their stripe, and specks off the stripes are dropped.
    """
    import cv2

    h, w = missing.shape
    if not missing.any() or missing.all() or min(h, w) < 8:
        return None, 0

    def shrunk(side):
        scale = min(1.0, side / max(h, w))
        if scale == 1.0:
            return missing.astype(np.float32)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        return cv2.resize(missing.astype(np.float32), size, interpolation=cv2.INTER_AREA)

    small, medium = shrunk(32), shrunk(64)
    grid = np.arange(0.0, 180.0, step)
    top = grid[np.argsort(_angle_scores(small, grid))[-2:]]
    fine = np.unique(np.concatenate([np.arange(a - step, a + step + 1e-9, step / 4) for a in top] + [[0.0, 90.0]]) % 180.0)
    scores = _angle_scores(medium, fine)
    angle = float(fine[int(np.argmax(scores))])
    axis = max((0.0, 90.0), key=lambda a: scores[np.searchsorted(fine, a)])
    if scores[np.searchsorted(fine, axis)] >= AXIS_PREFERENCE * scores.max():  # scans and the protocol: axis-aligned
        angle = axis
    lines = _lines(h, w, angle)
    explained, means, counts = _explained(missing.astype(np.float64), lines)
    if explained < min_explained:
        return None, 0
    used = counts > 0
    order = np.argsort(means[used])
    m, c = means[used][order], counts[used][order].astype(np.float64)
    cum_c, cum_mc = np.cumsum(c), np.cumsum(c * m)
    total_c, total_mc = cum_c[-1], cum_mc[-1]
    lo_c, hi_c = cum_c[:-1], total_c - cum_c[:-1]
    between = lo_c * hi_c * (cum_mc[:-1] / lo_c - (total_mc - cum_mc[:-1]) / hi_c) ** 2
    if between.size == 0:
        return None, 0
    cut = int(np.argmax(between))
    threshold = (m[cut] + m[cut + 1]) / 2
    low = cum_mc[cut] / cum_c[cut]
    high = (total_mc - cum_mc[cut]) / (total_c - cum_c[cut])
    if high - low < STRIPE_GAP:
        return None, 0
    on = means > threshold
    count = int(on[0]) + int(np.count_nonzero(on[1:] & ~on[:-1]))
    return on[lines], count


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
                 min_region: float = MIN_REGION, stripes: bool = True, runtime: str | None = None):
        self.model, self.max_side, self.threshold, self.min_region = model, int(max_side), threshold, min_region
        self.stripes = stripes
        self.runtime = runtime or ("onnxruntime" if hasattr(model, "run") else "torch")

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
        """The known-pixel mask of ``image``: the network's candidates, kept as the module's steps say."""
        rgb = as_rgb(image)
        candidates = drop_small_regions(self.probabilities(rgb) > self.threshold, self.min_region)
        if not candidates.any():
            return ~candidates
        colour = fill_colour(rgb, candidates)
        missing = drop_small_regions(filled_regions(candidates, rgb, colour), self.min_region)
        stripes, count = _snap_stripes(missing) if self.stripes and missing.any() else (None, 0)
        if stripes is not None and _overlap(stripes, missing) < STRIPE_OVERLAP:
            stripes, count = None, 0  # the lines do not describe the region: not stripes
        if is_fill_colour(colour):
            return ~(missing if stripes is None else stripes)
        # a flat region of another colour is a hole only as parallel stripes (a flat blue sky is not)
        return ~stripes if stripes is not None and count >= 2 else np.ones_like(candidates)

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
    sha256). The variable is read where the step runs: worker processes inherit it from the job. It
    runs on as many threads as torch uses in the process (one in the index workers and Ray tasks)."""
    global _ESTIMATOR
    with _ESTIMATOR_LOCK:
        if _ESTIMATOR is None:
            import torch

            _ESTIMATOR = load_estimator(estimator_weights(), num_threads=torch.get_num_threads())
        return _ESTIMATOR


def estimate_known_mask(image: np.ndarray) -> np.ndarray:
    """The known-pixel mask of a damaged photo (bool (H, W), True = known), found in the photo itself.

    ``image``: uint8 RGB or grey. An undamaged photo comes back all True. Uses the shipped network
    (:func:`default_estimator`); raises ``ValueError`` for an image it cannot take and
    :class:`~cbir_dist.errors.WeightsError` when the weights are missing or corrupt.
    """
    return default_estimator()(image)
