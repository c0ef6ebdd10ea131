"""Two-stage coarse-to-fine inpainting network (region-wise convolutions + non-local refinement).

After Ma et al., "Region-wise Generative Adversarial Image Inpainting for Large Missing Areas"
(IEEE Trans. Cybernetics, 2022; arXiv:1909.12507), as Taheri et al. use it to restore fringe-masked
CBIR queries, scaled down (~1.6 M parameters) so it trains and runs on a CPU:

* **stage 1** — an encoder of *region-wise* convolutions: every layer holds two filter banks, one
  for existing and one for missing regions, selected per output position by the mask downsampled
  to that layer's resolution, ``out = M ⊙ conv_known(x) + (1 − M) ⊙ conv_missing(x)``; dilated
  convolutions at 1/8 resolution; a decoder predicting the coarse image ``Î₁``;
* the composite ``I₁ = M ⊙ I + (1 − M) ⊙ Î₁``;
* **stage 2** — an encoder-decoder (U-Net skips) with a non-local (self-attention) block at the
  1/8-resolution bottleneck that refines ``I₁`` into ``Î₂``; the output is ``M ⊙ I + (1 − M) ⊙ Î₂``.

The network works on images in [-1, 1] whose sides are multiples of :data:`STRIDE`;
:class:`TwoStageInpainter` pads (reflect) any uint8 image to that, runs, crops back and composites
so that known pixels come back bit-exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ...errors import WeightsError
from ...io.files import sha256_file

log = logging.getLogger(__name__)

STRIDE = 8  # three stride-2 downsamplings
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "two_stage.pt"
DEFAULT_PROVENANCE = WEIGHTS_DIR / "two_stage.json"
DEFAULT_CONFIG = {"width": 32}


def _torch():
    import torch

    return torch


def build_two_stage(width: int = 32):
    """Construct an untrained :class:`TwoStageNet` (``width`` = channels of the first layer)."""
    return _model_classes()["TwoStageNet"](width=width)


_CLASSES: dict = {}


def _model_classes() -> dict:
    """Define the torch modules on first use, so importing this module does not import torch."""
    if _CLASSES:
        return _CLASSES
    torch = _torch()
    import torch.nn.functional as F
    from torch import nn

    def downsample_mask(mask, size):
        """Mask (N,1,H,W) in {0,1} to ``size``: a position is *known* only if its whole window is.

        Min-pooling is conservative: any output position whose receptive window touches a hole is
        handled by the missing-region filters.
        """
        if tuple(mask.shape[-2:]) == tuple(size):
            return mask
        return 1.0 - F.adaptive_max_pool2d(1.0 - mask, size)

    class RegionConv2d(nn.Module):
        """Region-wise convolution: ``M ⊙ conv_known(x) + (1 − M) ⊙ conv_missing(x)``.

        ``M`` is the known-pixel mask (N, 1, H, W) in {0, 1} min-pooled to the output resolution.
        Shapes: x (N, C_in, H, W) -> (N, C_out, H / stride, W / stride). Ma et al. (2022), Sec. III-B.
        """

        def __init__(self, c_in, c_out, kernel_size=3, stride=1, dilation=1):
            super().__init__()
            pad = dilation * (kernel_size - 1) // 2
            kw = dict(kernel_size=kernel_size, stride=stride, padding=pad, dilation=dilation)
            self.conv_known = nn.Conv2d(c_in, c_out, **kw)
            self.conv_missing = nn.Conv2d(c_in, c_out, **kw)

        def forward(self, x, mask):
            a = self.conv_known(x)
            b = self.conv_missing(x)
            m = downsample_mask(mask, a.shape[-2:])
            return m * a + (1.0 - m) * b

    class NonLocalBlock(nn.Module):
        """Embedded-Gaussian non-local block (Wang et al., CVPR 2018) with a residual connection.

        ``y = x + W_z(softmax(θ(x)ᵀ φ(x)) g(x))`` over all spatial positions; (N, C, H, W) -> same.
        """

        def __init__(self, channels):
            super().__init__()
            inner = channels // 2
            self.theta = nn.Conv2d(channels, inner, 1)
            self.phi = nn.Conv2d(channels, inner, 1)
            self.g = nn.Conv2d(channels, inner, 1)
            self.out = nn.Conv2d(inner, channels, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            self.scale = inner**-0.5

        def forward(self, x):
            n, c, h, w = x.shape
            q = self.theta(x).flatten(2).transpose(1, 2)  # N, HW, C'
            k = self.phi(x).flatten(2)  # N, C', HW
            v = self.g(x).flatten(2).transpose(1, 2)  # N, HW, C'
            attn = torch.softmax(torch.bmm(q, k) * self.scale, dim=-1)
            y = torch.bmm(attn, v).transpose(1, 2).reshape(n, -1, h, w)
            return x + self.out(y)

    def act():
        return nn.LeakyReLU(0.2, inplace=True)

    class UpConv(nn.Module):
        """Nearest ×2 upsampling then a 3×3 convolution (avoids checkerboard artefacts)."""

        def __init__(self, c_in, c_out):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

        def forward(self, x):
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    class CoarseNet(nn.Module):
        """Stage 1: region-wise-convolution encoder (to 1/8) + decoder -> coarse image Î₁ in [-1, 1]."""

        def __init__(self, w):
            super().__init__()
            self.enc = nn.ModuleList(
                [
                    RegionConv2d(4, w, 5),  # 1
                    RegionConv2d(w, 2 * w, 3, stride=2),  # 1/2
                    RegionConv2d(2 * w, 4 * w, 3, stride=2),  # 1/4
                    RegionConv2d(4 * w, 4 * w, 3, stride=2),  # 1/8
                ]
            )
            self.mid = nn.Sequential(
                nn.Conv2d(4 * w, 4 * w, 3, padding=2, dilation=2),
                act(),
                nn.Conv2d(4 * w, 4 * w, 3, padding=4, dilation=4),
                act(),
            )
            self.dec = nn.Sequential(
                UpConv(4 * w, 2 * w),
                act(),
                UpConv(2 * w, w),
                act(),
                UpConv(w, w // 2),
                act(),
                nn.Conv2d(w // 2, 3, 3, padding=1),
            )
            self.act = act()

        def forward(self, x, mask):
            for layer in self.enc:
                x = self.act(layer(x, mask))
            return torch.tanh(self.dec(self.mid(x)))

    class RefineNet(nn.Module):
        """Stage 2: U-Net encoder-decoder with a non-local block at 1/8 resolution -> Î₂ in [-1, 1]."""

        def __init__(self, w):
            super().__init__()
            self.e1 = nn.Sequential(nn.Conv2d(4, w, 5, padding=2), act())
            self.e2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), act())
            self.e3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), act())
            self.e4 = nn.Sequential(nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), act())
            self.nonlocal_block = NonLocalBlock(4 * w)
            self.mid = nn.Sequential(nn.Conv2d(4 * w, 4 * w, 3, padding=2, dilation=2), act())
            self.u3 = UpConv(4 * w, 2 * w)
            self.d3 = nn.Sequential(nn.Conv2d(6 * w, 2 * w, 3, padding=1), act())
            self.u2 = UpConv(2 * w, w)
            self.d2 = nn.Sequential(nn.Conv2d(3 * w, w, 3, padding=1), act())
            self.u1 = UpConv(w, w // 2)
            self.d1 = nn.Sequential(nn.Conv2d(w // 2 + w, w // 2, 3, padding=1), act())
            self.out = nn.Conv2d(w // 2, 3, 3, padding=1)
            self.act = act()

        def forward(self, x):
            s1 = self.e1(x)
            s2 = self.e2(s1)
            s3 = self.e3(s2)
            z = self.mid(self.nonlocal_block(self.e4(s3)))
            y = self.d3(torch.cat([self.act(self.u3(z)), s3], 1))
            y = self.d2(torch.cat([self.act(self.u2(y)), s2], 1))
            y = self.d1(torch.cat([self.act(self.u1(y)), s1], 1))
            return torch.tanh(self.out(y))

    class TwoStageNet(nn.Module):
        """Coarse-to-fine inpainting network; see the module docstring.

        ``forward(image, mask)``: image (N, 3, H, W) in [-1, 1], mask (N, 1, H, W) in {0, 1}
        (1 = known), H and W multiples of :data:`STRIDE`. Returns ``(coarse, refined, output)``,
        each (N, 3, H, W): the raw stage-1 prediction Î₁, the raw stage-2 prediction Î₂ and the
        composite ``M ⊙ I + (1 − M) ⊙ Î₂``.
        """

        def __init__(self, width=32):
            super().__init__()
            if width < 4 or width % 2:
                raise ValueError(f"width must be an even integer >= 4, got {width!r}")
            self.width = width
            self.coarse = CoarseNet(width)
            self.refine = RefineNet(width)

        def forward(self, image, mask):
            if image.shape[-1] % STRIDE or image.shape[-2] % STRIDE:
                raise ValueError(
                    f"image sides must be multiples of {STRIDE}, got {tuple(image.shape[-2:])}; "
                    "pad with cbir_dist.inpaint.two_stage.pad_to_stride first"
                )
            x = image * mask
            coarse = self.coarse(torch.cat([x, mask], 1), mask)
            i1 = x + (1.0 - mask) * coarse
            refined = self.refine(torch.cat([i1, mask], 1))
            return coarse, refined, x + (1.0 - mask) * refined

    _CLASSES.update(
        RegionConv2d=RegionConv2d,
        NonLocalBlock=NonLocalBlock,
        CoarseNet=CoarseNet,
        RefineNet=RefineNet,
        TwoStageNet=TwoStageNet,
        downsample_mask=downsample_mask,
    )
    return _CLASSES


def __getattr__(name):  # lazy access: two_stage.TwoStageNet, two_stage.RegionConv2d, ...
    if name in ("RegionConv2d", "NonLocalBlock", "CoarseNet", "RefineNet", "TwoStageNet", "downsample_mask"):
        return _model_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pad_to_stride(x, stride: int = STRIDE):
    """Pad a (N, C, H, W) tensor on the bottom/right to multiples of ``stride``; returns (padded, (H, W)).

    Reflect padding where the side allows it (pad < side), replicate otherwise.
    """
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


class TwoStageInpainter:
    """The trained network behind the ``Inpainter`` protocol: ``(uint8 HxWx3, bool HxW) -> uint8 HxWx3``.

    Known pixels (``known_mask`` True) are returned exactly; only missing pixels are predicted.
    Any image size works: the image is reflect-padded to a multiple of :data:`STRIDE`, run, cropped.
    """

    name = "two-stage"

    def __init__(self, model, device, max_side: int | None = 512):
        if max_side is not None and int(max_side) < 16:
            raise ValueError(f"max_side must be None or at least 16 pixels, got {max_side}")
        self.model = model
        self.device = device
        self.max_side = max_side

    def inpaint_batch(self, images: np.ndarray, known_masks: np.ndarray) -> np.ndarray:
        """Inpaint a stack of same-size images: (N, H, W, 3) uint8, (N, H, W) bool -> (N, H, W, 3) uint8."""
        torch = _torch()
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            m = torch.from_numpy(np.ascontiguousarray(known_masks)).to(self.device).float()[:, None]
            xp, (h, w) = pad_to_stride(x)
            mp, _ = pad_to_stride(m)
            _, refined, _ = self.model(xp, mp)
            pred = ((refined[..., :h, :w] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            pred = pred.permute(0, 2, 3, 1).cpu().numpy()
        return np.where(known_masks[..., None], images, pred)

    def __call__(self, image: np.ndarray, known_mask: np.ndarray) -> np.ndarray:
        """Fill the missing pixels of a uint8 (H, W, 3) RGB or (H, W) / (H, W, 1) grey image.

        Grey images run through the network as three equal channels; the prediction is converted
        back with the channel mean. Known pixels are copied back exactly.
        """
        from .base import check_inputs, paste_known

        image, known_mask = check_inputs(image, known_mask)
        if known_mask.all():
            return image.copy()
        rgb = image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(image.shape[:2])[..., None], 3, axis=2)
        side = max(image.shape[:2])
        if self.max_side is not None and side > self.max_side:
            filled = self._inpaint_downscaled(rgb, known_mask, self.max_side / side)
        else:
            filled = self.inpaint_batch(rgb[None], known_mask[None])[0]
        if rgb is not image:
            filled = np.round(filled.astype(np.float32).mean(axis=2)).astype(np.uint8).reshape(image.shape)
        return paste_known(filled, image, known_mask)

    def _inpaint_downscaled(self, rgb: np.ndarray, known: np.ndarray, scale: float) -> np.ndarray:
        """Run at ``scale`` (the non-local block's memory grows with the 4th power of the side), upsample back.

        A low-resolution pixel counts as known only if every full-resolution pixel under it is.
        """
        import cv2

        h, w = known.shape
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        small_known = cv2.resize(known.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.999
        pred = self.inpaint_batch(small[None], small_known[None])[0]
        return cv2.resize(pred, (w, h), interpolation=cv2.INTER_CUBIC)


def load_two_stage(weights=None, device=None, *, provenance=None, check_sha256: bool = True, max_side: int | None = 512):
    """Load the two-stage inpainter.

    Parameters
    ----------
    weights : str or path, optional
        A state dict saved by :func:`cbir_dist.train_inpainter.export_weights`. Default: the file
        shipped in ``cbir_dist/weights/two_stage.pt``.
    device : str or torch.device, optional
        Default ``"cuda"`` when a GPU is present, else ``"cpu"``.
    provenance : str or path, optional
        The JSON written beside the weights (``<weights>.json`` by default); its ``sha256`` is checked
        against the file and its ``model`` entry gives the architecture (``width``).
    check_sha256 : bool
        Refuse weights whose hash differs from the provenance (raise :class:`WeightsError`).
    max_side : int or None
        Images whose longer side exceeds this are inpainted at that size and the prediction is
        upsampled (the non-local block's memory grows as the 4th power of the side); ``None``
        always runs at full size.

    Returns
    -------
    TwoStageInpainter
        Callable ``(image uint8 (H, W, 3), known_mask bool (H, W)) -> uint8 (H, W, 3)``.
    """
    torch = _torch()
    weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if provenance is None:
        provenance = weights.with_suffix(".json")
    provenance = Path(provenance)
    if not weights.is_file():
        raise WeightsError(
            f"{weights}: two-stage inpainter weights not found; train them with "
            "`python jobs/train_inpainter.py --help` or reinstall cbir-dist (it ships cbir_dist/weights/two_stage.pt)"
        )
    config = dict(DEFAULT_CONFIG)
    if provenance.is_file():
        meta = json.loads(provenance.read_text())
        config.update(meta.get("model", {}))
        expected = meta.get("sha256")
    else:
        meta, expected = {}, None
    if check_sha256:
        if expected is None:
            raise WeightsError(
                f"{provenance}: no provenance JSON with a 'sha256' entry for {weights}; "
                "pass check_sha256=False to load unverified weights"
            )
        actual = sha256_file(weights)
        if actual != expected:
            raise WeightsError(
                f"{weights}: sha256 {actual} does not match {expected} recorded in {provenance}; "
                "the file is corrupt or was replaced — restore it or retrain"
            )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    model = build_two_stage(width=int(config["width"]))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise WeightsError(f"{weights}: not a two-stage state dict for width={config['width']} ({exc})") from exc
    model.eval().to(device)
    log.info("loaded two-stage inpainter %s on %s", weights, device)
    return TwoStageInpainter(model, device, max_side=max_side)


def count_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
