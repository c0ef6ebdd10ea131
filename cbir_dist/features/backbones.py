"""Deep feature extractors: ImageNet CNNs cut before their classifier, one ``(N, dim)`` row per image.

The paper's default is ResNet-50; VGG-16, VGG-19 and MobileNetV2 are the alternatives.

==============  =====  ==========================================================================
backbone        dim    feature
==============  =====  ==========================================================================
``resnet50``    2048   output of the global average pool (input of ``fc``)
``vgg16``       512    conv5 block (``features``, after the last max-pool), global average pooled
``vgg19``       512    as ``vgg16``; ``head="fc7"`` gives 4096: ``fc7`` after its ReLU
``mobilenet_v2`` 1280  last 1x1 conv (``features``), global average pooled (input of the classifier)
==============  =====  ==========================================================================

Preprocessing (the torchvision ImageNet standard, done per image on uint8 with OpenCV, then batched):

1. resize so that the shorter side is ``round(image_size * 256 / 224)`` (256 for 224) and the longer
   side ``int(short * long / short_in)``, as ``torchvision.transforms.Resize(int)`` does; with
   ``cv2.INTER_AREA`` (pixel-area averaging, i.e. antialiased) when shrinking and
   ``cv2.INTER_LINEAR`` when enlarging;
2. centre crop ``image_size x image_size`` (offsets ``round((side - image_size) / 2)``, as
   ``CenterCrop``);
3. on the model's device: scale to [0, 1] and normalise with the ImageNet mean
   ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``.

Grey ``(H, W)`` / ``(H, W, 1)`` images are replicated to three channels. The model runs in
``eval()`` mode, in ``channels_last`` memory format, under :func:`torch.inference_mode`, with
bfloat16 autocast on CUDA (fp32 on CPU); features are returned as float32 numpy arrays. On the
CPU, ``runtime="auto"`` (the default) runs the same network exported to ONNX in ONNX Runtime,
several times faster, with the normalisation inside the graph (:mod:`.onnx_runtime`: the export
is cached beside the weights file); features agree with torch's within 1e-4 (relative).

Weights (``load_backbone(..., weights=...)``):

``"imagenet"``
    torchvision's weights (``ResNet50_Weights.IMAGENET1K_V2``, ``VGG16_Weights.IMAGENET1K_V1``,
    ``VGG19_Weights.IMAGENET1K_V1``, ``MobileNet_V2_Weights.IMAGENET1K_V1``), from the torch hub cache
    ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch``), downloaded there when absent.
    A cached file whose name carries a hash prefix (``resnet50-11ad3fa6.pth``) is checked against it,
    since torch does not re-check cached files.
a path
    a ``torch.save``-d state dict (plain, or under a ``"state_dict"`` key; a ``module.`` prefix is
    stripped), loaded with ``weights_only=True``. Only the keys the extractor uses are required: a
    VGG dict holding only ``features.*`` is enough for the default head.
``"random"``
    seeded, deterministic random initialisation (torchvision's scheme), for tests and benchmarks.

References: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; Simonyan &
Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015;
Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UsageError, WeightsError, WeightsNotFoundError
from ..io.files import sha256_file
from .weights import hint as _hint
from .weights import imagenet_file as _imagenet_file
from .weights import read_state_dict as _read_state_dict

log = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("resnet50", "vgg16", "vgg19", "mobilenet_v2")
HEADS: dict[str, tuple[str, ...]] = {
    "resnet50": ("pool",),
    "vgg16": ("pool", "fc7"),
    "vgg19": ("pool", "fc7"),
    "mobilenet_v2": ("pool",),
}
_DIMS = {("resnet50", "pool"): 2048, ("vgg16", "pool"): 512, ("vgg19", "pool"): 512,
         ("vgg16", "fc7"): 4096, ("vgg19", "fc7"): 4096, ("mobilenet_v2", "pool"): 1280}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIZE = 32  # every backbone downsamples by 32


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise UsageError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def _check_head(name: str, head: str) -> None:
    if head not in HEADS[name]:
        raise UsageError(f"head {head!r} is not available for {name}; choose one of {', '.join(HEADS[name])}")


def feature_dim(name: str, head: str = "pool") -> int:
    """Length of the feature vector ``name`` gives with ``head`` (2048, 512, 4096 or 1280)."""
    _check_name(name)
    _check_head(name, head)
    return _DIMS[name, head]


# ----------------------------------------------------------------------------------------------------
# preprocessing


def _as_image_list(images: Any) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.dtype != object:
        if images.ndim != 4:
            raise UsageError(
                f"an image array must be (N, H, W, 3), got shape {images.shape}; "
                "for one image pass a list: [image]"
            )
        return list(images)
    if isinstance(images, (str, bytes)):
        raise TypeError(
            "images must be a list of uint8 arrays, not a path; read files with cbir_dist.io.images.read_image"
        )
    return list(images)


def _validate(img: Any, i: int) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"image {i} is a {type(img).__name__}, expected a numpy uint8 array (H, W, 3)")
    if img.dtype != np.uint8:
        raise TypeError(
            f"image {i} has dtype {img.dtype}; backbones take uint8 RGB images. "
            "Convert with skimage.util.img_as_ubyte (floats in [0, 1]) or np.clip(...).astype(np.uint8)."
        )
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(
            f"image {i} has shape {img.shape}; expected (H, W, 3) RGB or (H, W) grey "
            "(drop an alpha channel first, e.g. with cbir_dist.io.images.decode_image)"
        )
    if min(img.shape[:2]) < 1:
        raise UsageError(f"image {i} is empty (shape {img.shape})")
    return img


def resize_size(image_size: int) -> int:
    """Shorter side before the centre crop: ``round(image_size * 256 / 224)`` (256 for 224)."""
    return int(round(image_size * 256 / 224))


def preprocess(images: Sequence[np.ndarray] | np.ndarray, image_size: int = 224) -> np.ndarray:
    """Resize (shorter side to :func:`resize_size`) and centre crop uint8 images to one batch.

    Parameters
    ----------
    images : list of ndarray, each uint8 ``(H, W, 3)`` or ``(H, W)``; or ndarray ``(N, H, W, 3)``
    image_size : int
        Side of the square crop.

    Returns
    -------
    ndarray, uint8, shape ``(N, image_size, image_size, 3)``
        Not yet normalised: the model's device does ``(x / 255 - mean) / std``.
    """
    import cv2

    imgs = _as_image_list(images)
    out = np.empty((len(imgs), image_size, image_size, 3), np.uint8)
    short_target = resize_size(image_size)
    for i, raw in enumerate(imgs):
        img = _validate(raw, i)
        h, w = img.shape[:2]
        if h <= w:
            nh, nw = short_target, int(short_target * w / h)
        else:
            nh, nw = int(short_target * h / w), short_target
        if (nh, nw) != (h, w):
            interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
            img = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
        top = int(round((nh - image_size) / 2.0))
        left = int(round((nw - image_size) / 2.0))
        out[i] = img[top : top + image_size, left : left + image_size]
    return out


# ----------------------------------------------------------------------------------------------------
# models


def _build(name: str, head: str):
    """The torchvision model on the meta device, its classifier cut according to ``head``.

    Returns the model and the key set of the full (uncut) model's state dict.
    """
    import torch
    import torchvision.models as tvm
    from torch import nn

    with torch.device("meta"):
        model = getattr(tvm, name)(weights=None)
    full_keys = set(model.state_dict())
    if name == "resnet50":
        model.fc = nn.Identity()
    elif name == "mobilenet_v2":
        model.classifier = nn.Identity()
    elif head == "pool":  # vgg: conv5 output, global average pooled
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Identity()
    else:  # vgg fc7: Linear(25088, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU; keeps keys classifier.0/.3
        model.classifier = model.classifier[:5]
    return model, full_keys


def _random_init(model, seed: int) -> None:
    """Materialise ``model`` on the CPU and initialise it as torchvision does, from a private RNG."""
    import torch
    from torch import nn

    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)  # kaiming_normal_, fan_out, relu
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=gen)
                m.bias.zero_()


def _load_into(model, full_keys: set[str], sd: dict[str, Any], source: str, name: str, head: str) -> None:
    """Load the keys the cut model needs from ``sd``; fail on missing keys or on another architecture's keys."""
    needed = set(model.state_dict())
    missing = sorted(needed - sd.keys())
    if missing:
        extra = f" (head {head!r} needs them)" if head != "pool" else ""
        raise WeightsError(
            f"{source}: the state dict lacks {len(missing)} key(s) that {name} needs{extra}, e.g. "
            f"{', '.join(missing[:5])}. {_hint()}"
        )
    foreign = sorted(sd.keys() - full_keys)
    if foreign:
        raise WeightsError(
            f"{source}: the state dict has {len(foreign)} key(s) that torchvision's {name} does not, e.g. "
            f"{', '.join(foreign[:5])}; is it another architecture? {_hint()}"
        )
    try:
        # assign=True keeps the loaded tensors' dtype: make floating ones float32 (fp16 checkpoints)
        picked = {k: (sd[k].float() if sd[k].is_floating_point() else sd[k]).contiguous() for k in needed}
        model.load_state_dict(picked, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(f"{source}: does not fit {name}: {exc}. {_hint()}") from exc


def _resolve_device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def _normalisation(device):
    """``(255 mean, 1 / (255 std))`` as (1, 3, 1, 1) float32 tensors on ``device``: ``(x - a) * b``."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0)
    return mean, inv_std


class Backbone:
    """A loaded feature extractor: ``backbone(images) -> float32 (N, dim)``.

    Attributes
    ----------
    name, head : str
        Backbone and head (``"pool"``, or ``"fc7"`` for VGG).
    dim : int
        Feature length.
    device : torch.device
    weights_desc : str
        Where the weights came from, for the FeatureSpec: ``"imagenet:IMAGENET1K_V2"``,
        ``"file:<first 16 hex of sha256>"`` or ``"random:seed0"``.
    image_size, batch_size : int
    model : torch.nn.Module
        The cut network, in eval mode, channels_last, on ``device`` (None on ONNX Runtime).
    runtime : str
        What runs the network, for the run's records: ``"torch 2.14.1 cpu fp32"``,
        ``"torch 2.14.1 cuda bf16"`` or, for :class:`OnnxBackbone`, ``"onnxruntime 1.32.0"``.
    """

    def __init__(self, model, *, name: str, head: str, dim: int, device, weights_desc: str,
                 image_size: int, batch_size: int, runtime: str | None = None):
        from .onnx_runtime import torch_label

        self.model = model
        self.name = name
        self.head = head
        self.dim = dim
        self.device = device
        self.weights_desc = weights_desc
        self.image_size = image_size
        self.batch_size = batch_size
        self.runtime = runtime or torch_label(device)
        self._mean, self._inv_std = _normalisation(device)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, head={self.head!r}, dim={self.dim}, "
                f"device={str(self.device)!r}, weights={self.weights_desc!r}, image_size={self.image_size}, "
                f"runtime={self.runtime!r})")

    def _forward(self, batch_u8: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch_u8)
        cuda = self.device.type == "cuda"
        if cuda:
            x = x.pin_memory()
        # (N, H, W, 3) viewed as (N, 3, H, W) is already channels_last in memory: no copy
        x = x.to(self.device, non_blocking=cuda).permute(0, 3, 1, 2)
        x = (x.float() - self._mean) * self._inv_std
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            y = self.model(x)
        return y.float().reshape(len(batch_u8), -1).cpu().numpy()

    def _inference(self):
        import torch

        return torch.inference_mode()

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Features of uint8 RGB images of any sizes.

        Parameters
        ----------
        images : list of ndarray uint8 ``(H, W, 3)`` (or grey ``(H, W)``), or ndarray ``(N, H, W, 3)``

        Returns
        -------
        ndarray, float32, shape ``(N, dim)``
        """
        imgs = _as_image_list(images)
        out = np.empty((len(imgs), self.dim), np.float32)
        with self._inference():
            for start in range(0, len(imgs), self.batch_size):
                chunk = imgs[start : start + self.batch_size]
                try:
                    batch = preprocess(chunk, self.image_size)
                except (TypeError, ValueError) as exc:  # report the index in the caller's list
                    raise type(exc)(f"{exc} (batch offset {start})") from exc
                out[start : start + len(chunk)] = self._forward(batch)
        return out


class OnnxBackbone(Backbone):
    """The same extractor on ONNX Runtime, on the CPU (see :mod:`.onnx_runtime`).

    ``session`` runs the exported graph, normalisation included, on the preprocessed uint8 batch;
    ``model`` is None (the torch copy is not kept); ``source`` says where the export came from
    (``"cache"``, ``"exported"`` into the cache, or ``"memory"``).
    """

    def __init__(self, session, *, name: str, head: str, dim: int, weights_desc: str, image_size: int,
                 batch_size: int, source: str):
        import torch

        from .onnx_runtime import onnx_label

        super().__init__(None, name=name, head=head, dim=dim, device=torch.device("cpu"),
                         weights_desc=weights_desc, image_size=image_size, batch_size=batch_size,
                         runtime=onnx_label())
        self.session = session
        self.source = source
        self._input = session.get_inputs()[0].name

    def _forward(self, batch_u8: np.ndarray) -> np.ndarray:
        (y,) = self.session.run(None, {self._input: np.ascontiguousarray(batch_u8)})
        return np.asarray(y, np.float32).reshape(len(batch_u8), -1)

    def _inference(self):
        import contextlib

        return contextlib.nullcontext()


def load_backbone(
    name: str,
    weights: str | os.PathLike = "imagenet",
    *,
    device=None,
    sha256: str | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    head: str = "pool",
    seed: int = 0,
    num_threads: int | None = None,
    runtime: str = "auto",
) -> Backbone:
    """Build a backbone cut before its classifier, with its weights, ready to call on images.

    Parameters
    ----------
    name : {"resnet50", "vgg16", "vgg19", "mobilenet_v2"}
    weights : "imagenet", "random" or a path to a state dict
        See the module docstring.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    sha256 : str, optional
        Expected hex SHA-256 of the weights file (a path, or the cached ImageNet file).
    image_size : int
        Side of the centre crop fed to the network (>= 32).
    batch_size : int
        Images per forward pass.
    head : {"pool", "fc7"}
        ``"fc7"`` (VGG only) gives the 4096-d ``fc7`` activations; needs classifier weights.
    seed : int
        Seed of ``weights="random"``.
    num_threads : int, optional
        When given, calls ``torch.set_num_threads`` (a process-wide setting); otherwise the
        library leaves torch's thread settings alone. ONNX Runtime runs with this many intra-op
        threads, else with ``torch.get_num_threads()``.
    runtime : {"auto", "torch", "onnx"}
        What runs the network (:mod:`.onnx_runtime`): ``auto`` is ONNX Runtime on the CPU when
        ``onnxruntime`` is installed (an :class:`OnnxBackbone`, its export cached beside the weights
        file), torch elsewhere; ``torch`` always torch; ``onnx`` ONNX Runtime on the CPU. Features
        agree within 1e-4 (relative) across runtimes, so a collection indexed with one is queried
        with the other.

    Raises
    ------
    ValueError
        Unknown name, head or runtime, bad sizes, CUDA requested but absent, ``onnx`` asked for on
        a GPU or without onnxruntime.
    WeightsError
        Weights cannot be obtained (missing file, failed download), do not match ``sha256``, or do
        not fit the architecture. The message names ``TORCH_HOME``, ``--weights PATH`` and
        ``--backbone none``.
    """
    from .onnx_runtime import check_runtime, choose, open_session

    _check_name(name)
    _check_head(name, head)
    check_runtime(runtime)
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise UsageError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    import torch

    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    dev = _resolve_device(device)
    kind = choose(runtime, dev, device)

    path, digest = None, None
    if isinstance(weights, str) and weights == "random":
        desc = f"random:seed{seed}"
    else:
        if isinstance(weights, str) and weights == "imagenet":
            path, desc, digest = _imagenet_file(name)
        else:
            path = Path(weights)
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"weights file {str(weights)!r} does not exist (weights must be 'imagenet', 'random' "
                    f"or the path of a state dict). {_hint()}"
                )
            desc = None
        if sha256 is not None or desc is None or kind == "onnx":  # ONNX Runtime: the cache's key
            digest = digest or sha256_file(path)
            if sha256 is not None and digest.lower() != sha256.strip().lower():
                raise WeightsError(f"{path}: sha256 is {digest}, expected {sha256.strip().lower()}. {_hint()}")
            desc = desc or f"file:{digest[:16]}"

    def build():
        model, full_keys = _build(name, head)
        if path is None:
            _random_init(model, seed)
        else:
            _load_into(model, full_keys, _read_state_dict(path), str(path), name, head)
        return model.eval()

    dim = _DIMS[name, head]
    if kind == "onnx":
        threads = int(num_threads) if num_threads is not None else torch.get_num_threads()
        session, source = open_session(
            lambda: (build(), *_normalisation("cpu")), name=name, head=head, image_size=int(image_size),
            identity=f"sha256-{digest}" if path is not None else f"random-seed{seed}", num_threads=threads,
            weights_file=path, sha256=digest)
        out = OnnxBackbone(session, name=name, head=head, dim=dim, weights_desc=desc, image_size=int(image_size),
                           batch_size=int(batch_size), source=source)
    else:
        model = build().to(dev, memory_format=torch.channels_last)
        out = Backbone(model, name=name, head=head, dim=dim, device=dev, weights_desc=desc,
                       image_size=int(image_size), batch_size=int(batch_size))
    log.info("loaded %s (head %s, %d-d, weights %s) on %s", name, head, dim, desc, out.runtime)
    return out
