"""The two-stage inpainting network as torch modules: a residual correction of a classical pre-fill.

Imported only by :mod:`.two_stage` (lazily) and by the training package; importing
``cbir_dist.damage.inpaint`` never imports this module, so torch loads only when a network runs.

The network never paints a hole from scratch. It receives the image already filled by a classical
inpainter (Telea's fast-marching method, :func:`cbir_dist.damage.inpaint.two_stage.prefill`) with
the known-pixel mask ``M`` (1 = known), and predicts a correction of the missing pixels only::

    P  = telea(I, M)                                        # classical pre-fill, known pixels exact
    I1 = P  + (1 - M) * up8(coarse(P, M))                   # stage 1: coarse correction at 1/8
    O  = I1 + (1 - M) * refine(I1, M, stage-1 features)     # stage 2: full-resolution correction

Both correction heads are zero-initialised, so the untrained network returns the pre-fill exactly.

* **Stage 1** keeps the region-wise convolutions of Ma et al., "Region-wise Generative Adversarial
  Image Inpainting for Large Missing Areas" (IEEE Trans. Cybernetics 2022, arXiv:1909.12507): each
  layer holds one filter bank for known and one for missing positions, chosen per output position
  by the mask min-pooled to that layer's resolution (:class:`RegionConv2d`), at 1/8 resolution
  after a space-to-depth step, with dilations 2 and 4.
* **Stage 2** is the non-local refinement: a small U-Net (1/2, 1/4, 1/8) whose 1/8 bottleneck is a
  stack of fast Fourier convolution blocks (Chi, Jiang and Mu, NeurIPS 2020, in the form of LaMa,
  Suvorov et al., WACV 2022; :class:`FFCBlock`), an image-wide receptive field for the wide 0.5 Hz
  bands and the periodic stripes of fringe masks. Depthwise-separable convolutions at 1/4 and 1/2
  resolution and a sub-pixel (pixel-shuffle) output keep it fast on one CPU thread.

Tensors: images (N, 3, H, W) in [-1, 1], masks (N, 1, H, W) in {0, 1}, H and W multiples of
:attr:`ResidualTwoStageNet.stride` (8). Parameter names are those of the prototype
(``/work/proto_inpaint/model.py`` on the development machines), so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UsageError

__all__ = [
    "DEFAULT_CONFIG",
    "DepthwiseSeparable",
    "FFCBlock",
    "RegionConv2d",
    "ResidualTwoStageNet",
    "SpectralTransform",
    "build_model",
    "min_pool_mask",
    "pad_to_multiple",
]

#: The shipped architecture (~0.77 M parameters). ``prefill``/``prefill_radius`` name the classical
#: inpainter that fills the holes before the network (read by the inpainter, unused by the module).
DEFAULT_CONFIG: dict = {
    "coarse_channels": 64,
    "coarse_blocks": 3,
    "refine_channels": 96,
    "refine_skip_channels": 32,
    "refine_blocks": 3,
    "global_ratio": 0.5,
    "half_channels": 16,
    "prefill": "telea",
    "prefill_radius": 5.0,
}


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def min_pool_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """Mask (N, 1, H, W) in {0, 1} resized to ``size`` so that a position is known only if its whole window is."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return 1.0 - F.adaptive_max_pool2d(1.0 - mask, size)


class RegionConv2d(nn.Module):
    """Region-wise convolution ``M ⊙ conv_known(x) + (1 − M) ⊙ conv_missing(x)`` (Ma et al., 2022, Sec. III-B).

    The two filter banks are one convolution with ``2 · c_out`` output channels (the first ``c_out``
    for known positions); ``M`` is the known mask min-pooled to the output resolution.
    Shapes: x (N, c_in, H, W), mask (N, 1, H0, W0) -> (N, c_out, H / stride, W / stride).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.c_out = c_out
        self.conv = nn.Conv2d(c_in, 2 * c_out, kernel_size, stride=stride, padding=pad, dilation=dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        known, missing = y[:, : self.c_out], y[:, self.c_out :]
        m = min_pool_mask(mask, y.shape[-2:]).to(y.dtype)
        return missing + m * (known - missing)


class SpectralTransform(nn.Module):
    """Global branch of a fast Fourier convolution: ``1×1 → rfft2 → 1×1 on [Re, Im] → irfft2 → (+ skip) → 1×1``.

    A point-wise operation in the frequency domain is a convolution with an image-wide kernel. The
    Fourier part always runs in float32 (cuFFT has no bfloat16 and needs powers of two in float16),
    also under mixed-precision autocast. Shapes: (N, c_in, H, W) -> (N, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        hidden = max(1, c_out // 2)
        self.reduce = nn.Sequential(nn.Conv2d(c_in, hidden, 1), _act())
        self.freq = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.expand = nn.Conv2d(hidden, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        h, w = x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            z = torch.fft.rfft2(xf, norm="ortho")
            z = torch.cat([z.real, z.imag], 1)
            z = F.leaky_relu(self.freq(z), 0.2)
            re, im = z.chunk(2, 1)
            y = torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")
            xy = xf + y
        return self.expand(xy)


class FFCBlock(nn.Module):
    """Residual block of two fast Fourier convolutions (local 3×3 and global spectral branches), as in LaMa.

    The channels split into a local part (``1 − global_ratio``) and a global part; each FFC computes
    ``local' = conv(local ⊕ global)`` and ``global' = conv_lg(local) + spectral(global)``.
    Shapes: (N, C, H, W) -> same.
    """

    def __init__(self, channels: int, global_ratio: float = 0.5):
        super().__init__()
        cg = int(round(channels * global_ratio))
        cl = channels - cg
        if cg < 2 or cl < 1:
            raise UsageError(f"channels={channels} with global_ratio={global_ratio} leaves no room for both branches")
        self.cl, self.cg = cl, cg
        self.layers = nn.ModuleList()
        for _ in range(2):
            self.layers.append(nn.ModuleDict({
                "l2l_g2l": nn.Conv2d(channels, cl, 3, padding=1),  # local output from local + global inputs
                "l2g": nn.Conv2d(cl, cg, 3, padding=1),
                "g2g": SpectralTransform(cg, cg),
            }))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i, layer in enumerate(self.layers):
            xl, xg = y[:, : self.cl], y[:, self.cl :]
            yl = layer["l2l_g2l"](y)
            yg = layer["l2g"](xl) + layer["g2g"](xg)
            y = torch.cat([yl, yg.to(yl.dtype)], 1)
            if i == 0:
                y = self.act(y)
        return self.act(x + y)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3×3 then point-wise 1×1 convolution with an activation (a MobileNet block)."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, padding=dilation, dilation=dilation, groups=c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pw(self.dw(x)))


class ResidualTwoStageNet(nn.Module):
    """Two-stage coarse-to-fine correction of a classical pre-fill (see the module docstring).

    Parameters
    ----------
    coarse_channels, coarse_blocks : int
        Channels and dilated region-wise 3×3 layers (dilations 2, 4, 2, ...) of stage 1 at 1/8.
    refine_channels, refine_blocks : int
        Channels and FFC residual blocks of stage 2's 1/8 bottleneck (0 blocks: two dilated convs).
    refine_skip_channels : int
        Channels of stage 2 at 1/4 resolution.
    global_ratio : float
        Share of the FFC channels in the spectral branch.
    half_channels : int
        Channels of the 1/2-resolution level of stage 2 (0: none; the 1/4 decoder predicts the output).
    prefill, prefill_radius
        The classical pre-fill the network was trained on (recorded; used by the inpainter).

    ``forward(prefilled, mask)`` returns ``(coarse, output)``, both (N, 3, H, W): the stage-1
    image ``I1`` and the final ``O``; their known pixels equal those of ``prefilled``.
    """

    stride = 8

    def __init__(self, coarse_channels: int = 64, coarse_blocks: int = 3, refine_channels: int = 96,
                 refine_skip_channels: int = 32, refine_blocks: int = 3, global_ratio: float = 0.5,
                 half_channels: int = 16, prefill: str = "telea", prefill_radius: float = 5.0):
        super().__init__()
        cc, rc, rs = int(coarse_channels), int(refine_channels), int(refine_skip_channels)
        # stage 1: region-wise convolutions, space-to-depth(4) input, stride 2 -> 1/8
        self.c_in = RegionConv2d(4 * 16, cc, 3, stride=2)
        self.c_mid = nn.ModuleList(
            RegionConv2d(cc, cc, 3, dilation=2 if i % 2 == 0 else 4) for i in range(int(coarse_blocks)))
        self.c_head = nn.Conv2d(cc, 3, 3, padding=1)
        # stage 2: U-Net at 1/4 and 1/8 with an FFC bottleneck fed the stage-1 features
        self.r_in = nn.Sequential(nn.Conv2d(4 * 16, rs, 1), _act(), DepthwiseSeparable(rs, rs))
        self.r_down = nn.Sequential(nn.Conv2d(rs, rc, 3, stride=2, padding=1), _act())
        self.r_fuse = nn.Sequential(nn.Conv2d(rc + cc, rc, 1), _act())
        if int(refine_blocks) > 0:
            self.r_mid = nn.Sequential(*[FFCBlock(rc, global_ratio) for _ in range(int(refine_blocks))])
        else:
            self.r_mid = nn.Sequential(nn.Conv2d(rc, rc, 3, padding=2, dilation=2), _act(),
                                       nn.Conv2d(rc, rc, 3, padding=4, dilation=4), _act())
        self.r_up = nn.Sequential(nn.Conv2d(rc, 4 * rs, 1), nn.PixelShuffle(2), _act())  # 1/8 -> 1/4
        self.r_dec = nn.Sequential(nn.Conv2d(2 * rs, rs, 1), _act(), DepthwiseSeparable(rs, rs))
        hc = int(half_channels)
        self.half = hc > 0
        if self.half:  # 1/2 level: encoder skip from the input, decoder to full resolution
            self.h_in = nn.Sequential(nn.Conv2d(4 * 4, hc, 3, padding=1), _act())
            self.h_up = nn.Sequential(nn.Conv2d(rs, 4 * hc, 1), nn.PixelShuffle(2), _act())  # 1/4 -> 1/2
            self.h_dec = DepthwiseSeparable(2 * hc, hc)
            self.r_head = nn.Sequential(nn.Conv2d(hc, 3 * 4, 3, padding=1), nn.PixelShuffle(2))  # 1/2 -> 1
        else:
            self.r_head = nn.Sequential(nn.Conv2d(rs, 3 * 16, 3, padding=1), nn.PixelShuffle(4))  # 1/4 -> 1
        for head in (self.c_head, self.r_head[0]):  # the untrained network returns the pre-fill exactly
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.act = _act()

    def forward(self, prefilled: torch.Tensor, mask: torch.Tensor):
        h, w = prefilled.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"image sides must be multiples of {self.stride}, got {(h, w)}; use pad_to_multiple")
        hole = 1.0 - mask
        # stage 1: coarse correction at 1/8
        x = F.pixel_unshuffle(torch.cat([prefilled, mask], 1), 4)
        f = self.act(self.c_in(x, mask))
        for layer in self.c_mid:
            f = self.act(layer(f, mask)) + f
        coarse_res = F.interpolate(self.c_head(f), size=(h, w), mode="bilinear", align_corners=False)
        i1 = prefilled + hole * coarse_res
        # stage 2: refinement of I1
        x2 = torch.cat([i1, mask], 1)
        s = self.r_in(F.pixel_unshuffle(x2, 4))  # 1/4
        z = self.r_fuse(torch.cat([self.r_down(s), f], 1))  # 1/8, with the stage-1 features
        z = self.r_mid(z)
        y = self.r_dec(torch.cat([self.r_up(z), s], 1))
        if self.half:
            hs = self.h_in(F.pixel_unshuffle(x2, 2))  # 1/2
            y = self.h_dec(torch.cat([self.h_up(y), hs], 1))
        out = i1 + hole * self.r_head(y)
        return i1, out


def build_model(config: dict | None = None) -> ResidualTwoStageNet:
    """An untrained :class:`ResidualTwoStageNet`; missing keys take :data:`DEFAULT_CONFIG`.

    The full config is kept as ``model.config``. Raises :class:`~cbir_dist.errors.UsageError` (a
    ``ValueError``) for unknown keys and values that make no network.
    """
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    unknown = set(cfg) - set(DEFAULT_CONFIG)
    if unknown:
        raise UsageError(f"unknown two-stage config keys {sorted(unknown)}; valid: {sorted(DEFAULT_CONFIG)}")
    if cfg["prefill"] not in ("telea", "ns"):
        raise UsageError(f"prefill must be 'telea' or 'ns', got {cfg['prefill']!r}")
    model = ResidualTwoStageNet(**cfg)
    model.config = cfg
    return model


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) on the bottom/right to multiples of ``multiple``; returns it and the original (H, W).

    Reflect padding where the side allows it (pad < side), replicate otherwise.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
