"""The mask estimator's network as torch modules: a small U-Net that marks the missing pixels of a photo.

Imported only by :mod:`.detect` (lazily, when the network runs) and by the training package;
importing ``cbir_dist.damage.detect`` never imports torch.

Input: an RGB image (N, 3, H, W) in [-1, 1], H and W multiples of :data:`STRIDE`; output: logits
(N, 1, H, W) of "this pixel is missing". A hole as damage makes it is flat (one fill colour, then
blurred by JPEG and resizing) and shaped (fringe bands, brush strokes); a shadow is dark but
textured and shaped like the scene. The network sees both: a full-resolution stem for the edges and
the flatness, four downsampling levels (to 1/16, a 16-pixel receptive step) for the shape, and a
decoder with skip connections back to full resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

__all__ = ["DEFAULT_CONFIG", "MaskNet", "STRIDE", "build_model"]

#: Height and width of the input must be multiples of this (four stride-2 levels).
STRIDE = 16

#: The architecture: channels per level (full resolution first), 3×3 convolutions per decoder level
#: (one: measured 0.73× the time of two in ONNX Runtime on one thread), and whether the bottleneck
#: adds a summary of the whole image (its mean features through a linear layer: image-wide context,
#: e.g. a night photo's dark sky against a hole).
DEFAULT_CONFIG: dict = {"channels": [8, 16, 32, 48, 64], "decoder_convs": 1, "global_context": False}


def _block(cin: int, cout: int, stride: int = 1, convs: int = 2) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]
    for _ in range(convs - 1):
        layers += [nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MaskNet(nn.Module):
    """U-Net: 5 levels, stride 2 between them, two 3×3 convolutions per encoder level and
    ``decoder_convs`` per decoder level, additive skips, one logit per pixel; with
    ``global_context`` the bottleneck adds its mean features through a linear layer."""

    def __init__(self, channels=(8, 16, 32, 48, 64), decoder_convs: int = 1, global_context: bool = False):
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != 5 or min(channels) < 1:
            raise UsageError(f"MaskNet needs 5 positive channel counts (full resolution to 1/16), got {channels}")
        if int(decoder_convs) < 1:
            raise UsageError(f"decoder_convs must be 1 or more, got {decoder_convs}")
        self.channels = channels
        self.enc = nn.ModuleList([_block(3, channels[0])] +
                                 [_block(channels[i - 1], channels[i], stride=2) for i in range(1, 5)])
        self.up = nn.ModuleList([nn.Conv2d(channels[i], channels[i - 1], 1) for i in range(4, 0, -1)])
        self.dec = nn.ModuleList([_block(channels[i - 1], channels[i - 1], convs=int(decoder_convs))
                                  for i in range(4, 0, -1)])
        self.head = nn.Conv2d(channels[0], 1, 1)
        self.context = nn.Linear(channels[4], channels[4]) if global_context else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.enc:
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        if self.context is not None:
            x = x + F.relu(self.context(x.mean(dim=(2, 3))))[:, :, None, None]
        for up, dec in zip(self.up, self.dec):
            skip = skips.pop()
            x = F.interpolate(up(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = dec(x + skip)
        return self.head(x)


def build_model(config: dict | None = None) -> MaskNet:
    """A :class:`MaskNet` for ``config`` (keys of :data:`DEFAULT_CONFIG`; missing keys take its values)."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    unknown = set(cfg) - set(DEFAULT_CONFIG)
    if unknown:
        raise UsageError(f"unknown mask-estimator config keys {sorted(unknown)}; valid: {sorted(DEFAULT_CONFIG)}")
    return MaskNet(cfg["channels"], cfg["decoder_convs"], bool(cfg["global_context"]))
