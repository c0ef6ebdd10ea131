"""Training losses of the two-stage inpainter: region-weighted L1, VGG-16 style and correlation, hinge GAN.

Following Ma et al., "Region-wise Generative Adversarial Image Inpainting for Large Missing Areas"
(IEEE Trans. Cybernetics, 2022): reconstruction (L1 on both stages, missing and existing regions
weighted separately), a *correlation* loss between the non-local correlation matrices of generated
and real VGG features, a *style* loss on VGG Gram matrices (Gatys et al., CVPR 2016; Liu et al.,
ECCV 2018), and an optional adversarial term (hinge loss, patch discriminator; off by default).

All image tensors are (N, 3, H, W) in [-1, 1]; masks (N, 1, H, W) in {0, 1} with 1 = known.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError
from ..io.files import sha256_file

log = logging.getLogger(__name__)

# indices of the ReLU outputs in torchvision's vgg16().features
VGG16_RELU = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of :func:`total_loss` (defaults: hole 6 : valid 1, as Liu et al. / Ma et al.)."""

    hole: float = 6.0
    valid: float = 1.0
    coarse: float = 1.0  # multiplier of the stage-1 L1 terms
    style: float = 120.0
    correlation: float = 1.0
    adversarial: float = 0.0  # > 0 turns the hinge GAN term on

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if not v >= 0:
                raise ValueError(f"loss weight {k} must be >= 0, got {v!r}")


def _expected_sha256(path: Path) -> str | None:
    sums = path.parent / "SHA256SUMS"
    if not sums.is_file():
        return None
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and Path(parts[1]).name == path.name:
            return parts[0]
    return None


def vgg_features(weights=None, layers=("relu1_2", "relu2_2", "relu3_3"), *, pretrained=True):
    """A frozen, truncated VGG-16 returning the requested ReLU activations.

    Parameters
    ----------
    weights : str or path, optional
        A state dict of ``features.*`` keys (e.g. ``../shared/weights/vgg16_features_imagenet.pth``),
        checked against a ``SHA256SUMS`` file beside it when one exists. Without it and with
        ``pretrained=True``, torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (downloaded once).
    layers : sequence of str
        Subset of ``relu1_2, relu2_2, relu3_3, relu4_3``; the network is cut after the deepest one.
    pretrained : bool
        ``False`` gives random weights (tests: nothing downloads).

    Returns
    -------
    torch.nn.Module
        ``module(x)`` with x (N, 3, H, W) in [-1, 1] returns ``{layer: (N, C, H', W')}``.
    """
    import torch
    from torch import nn
    from torchvision.models import VGG16_Weights, vgg16
    from torchvision.models.vgg import cfgs, make_layers

    unknown = set(layers) - set(VGG16_RELU)
    if unknown or not layers:
        raise ValueError(f"layers must be a non-empty subset of {sorted(VGG16_RELU)}, got {list(layers)}")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: VGG-16 weights not found; pass --vgg-weights PATH or omit it to download")
        expected = _expected_sha256(path)
        if expected is not None and sha256_file(path) != expected:
            raise WeightsError(f"{path}: sha256 does not match {path.parent / 'SHA256SUMS'}; the file is corrupt")
        # vgg16().load_state_dict(sd, strict=False) on the conv part only: the 120 M-parameter
        # classifier is never needed, so it is never built
        features = make_layers(cfgs["D"], batch_norm=False)
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        missing, _ = features.load_state_dict(sd, strict=False)
        if missing:
            raise WeightsError(f"{path}: not a VGG-16 features state dict (missing {missing[:3]}...)")
    elif pretrained:
        features = vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features
    else:
        features = make_layers(cfgs["D"], batch_norm=False)
    depth = max(VGG16_RELU[name] for name in layers)

    class _Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features[: depth + 1]
            self.taps = {VGG16_RELU[name]: name for name in layers}
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, x):
            x = ((x + 1.0) * 0.5 - self.mean) / self.std
            out = {}
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i in self.taps:
                    out[self.taps[i]] = x
            return out

    trunk = _Trunk().eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    for m in trunk.modules():  # in-place ReLUs would overwrite tapped activations
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return trunk


def region_l1(pred, target, mask, *, hole: float = 6.0, valid: float = 1.0):
    """``hole · mean(|(1−M)⊙(P−T)|) + valid · mean(|M⊙(P−T)|)`` — L1 weighted per region (scalar)."""
    diff = (pred - target).abs()
    return hole * ((1.0 - mask) * diff).mean() + valid * (mask * diff).mean()


def gram_matrix(feat):
    """Gram matrix ``F Fᵀ / (C H W)`` over spatial positions: (N, C, H, W) -> (N, C, C)."""
    n, c, h, w = feat.shape
    f = feat.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def correlation_matrix(feat, eps: float = 1e-6):
    """Non-local correlation of positions, softmax-free: cosine similarity (N, C, H, W) -> (N, HW, HW).

    ``R_ij = f_iᵀ f_j / (‖f_i‖ ‖f_j‖)`` for the channel vectors ``f_i`` of positions i, j.
    """
    n, c, h, w = feat.shape
    f = feat.reshape(n, c, h * w)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    return f.transpose(1, 2) @ f


def style_loss(feats_pred: dict, feats_target: dict):
    """Σ over layers of ``mean |G(φ(P)) − G(φ(T))|`` (Gram matrices, :func:`gram_matrix`)."""
    total = 0.0
    for name, fp in feats_pred.items():
        total = total + (gram_matrix(fp) - gram_matrix(feats_target[name])).abs().mean()
    return total


def correlation_loss(feat_pred, feat_target):
    """``mean |R(φ(P)) − R(φ(T))|`` of the correlation matrices (:func:`correlation_matrix`), Ma et al. Eq. 6."""
    return (correlation_matrix(feat_pred) - correlation_matrix(feat_target)).abs().mean()


def build_patch_discriminator(width: int = 32):
    """A small spectral-normalised PatchGAN: (N, 4, H, W) image + mask -> (N, 1, H/16, W/16) logits."""
    from torch import nn
    from torch.nn.utils import spectral_norm

    layers, c = [], 4
    for i in range(4):
        out = width * 2 ** min(i, 2)
        layers += [spectral_norm(nn.Conv2d(c, out, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        c = out
    layers.append(spectral_norm(nn.Conv2d(c, 1, 3, 1, 1)))
    return nn.Sequential(*layers)


def hinge_d_loss(real_logits, fake_logits):
    """Discriminator hinge loss ``mean relu(1 − D(real)) + mean relu(1 + D(fake))``."""
    import torch.nn.functional as F

    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits):
    """Generator hinge loss ``−mean D(fake)``."""
    return -fake_logits.mean()


def total_loss(
    target,
    mask,
    coarse,
    refined,
    output,
    *,
    weights: LossWeights = LossWeights(),
    vgg=None,
    correlation_layer: str = "relu3_3",
    discriminator=None,
):
    """Weighted sum of the generator's losses; returns ``(loss, {term: float})``.

    ``L = w_c · L1(Î₁) + L1(Î₂) + w_s · L_style(output) + w_r · L_corr(output) + w_a · L_adv(output)``,
    each L1 being :func:`region_l1` with the hole/valid weights. VGG terms are computed when ``vgg``
    is given (a :func:`vgg_features` module), the adversarial one when ``discriminator`` is given and
    ``weights.adversarial > 0``. Inputs: (N, 3, H, W) in [-1, 1] and mask (N, 1, H, W).
    """
    import torch

    terms = {}
    l1_c = region_l1(coarse, target, mask, hole=weights.hole, valid=weights.valid)
    l1_r = region_l1(refined, target, mask, hole=weights.hole, valid=weights.valid)
    loss = weights.coarse * l1_c + l1_r
    terms["l1_coarse"], terms["l1_refined"] = float(l1_c.detach()), float(l1_r.detach())
    if vgg is not None and (weights.style > 0 or weights.correlation > 0):
        fp = vgg(output)
        with torch.no_grad():
            ft = vgg(target)
        if weights.style > 0:
            ls = style_loss(fp, ft)
            loss = loss + weights.style * ls
            terms["style"] = float(ls.detach())
        if weights.correlation > 0:
            if correlation_layer not in fp:
                raise ValueError(f"correlation_layer {correlation_layer!r} is not among the VGG taps {list(fp)}")
            lr = correlation_loss(fp[correlation_layer], ft[correlation_layer])
            loss = loss + weights.correlation * lr
            terms["correlation"] = float(lr.detach())
    if discriminator is not None and weights.adversarial > 0:
        la = hinge_g_loss(discriminator(torch.cat([output, mask], 1)))
        loss = loss + weights.adversarial * la
        terms["adversarial"] = float(la.detach())
    terms["total"] = float(loss.detach())
    return loss, terms
