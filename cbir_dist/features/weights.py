"""Where backbone weights come from: the torch hub cache (downloaded when absent), local files, ``$CBIR_WEIGHTS``.

``imagenet`` resolves to ``$CBIR_WEIGHTS`` when it names the backbone (air-gapped machines:
``CBIR_WEIGHTS=vgg16=/models/vgg16_features.pth``), else to torchvision's file in
``$TORCH_HOME/hub/checkpoints/``, downloaded there when absent. A cached file whose name carries a
hash prefix (``resnet50-11ad3fa6.pth``) is checked against it, since torch does not re-check
cached files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import WeightsError, WeightsNotFoundError
from ..io.files import sha256_file

log = logging.getLogger(__name__)

WEIGHTS_ENV = "CBIR_WEIGHTS"
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, so an unreachable host fails instead of hanging
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
# torchvision weights enum class and member used for weights="imagenet"
_IMAGENET = {
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
    "vgg16": ("VGG16_Weights", "IMAGENET1K_V1"),
    "vgg19": ("VGG19_Weights", "IMAGENET1K_V1"),
    "mobilenet_v2": ("MobileNet_V2_Weights", "IMAGENET1K_V1"),
}


def imagenet_weights_name(backbone: str) -> str | None:
    """torchvision's name of the ImageNet weights ``--weights imagenet`` means for ``backbone``, e.g.
    ``MobileNet_V2_Weights.IMAGENET1K_V1`` (None for an unknown backbone). Imports nothing heavy."""
    enum = _IMAGENET.get(backbone)
    return f"{enum[0]}.{enum[1]}" if enum else None


def local_weights(backbone: str) -> str | None:
    """A local file holding ``backbone``'s ImageNet weights, from ``$CBIR_WEIGHTS`` (``name=PATH,...``).

    For air-gapped machines: ``CBIR_WEIGHTS=vgg16=/models/vgg16_features.pth`` makes ``imagenet``
    resolve to that file instead of torchvision's download. The stored spec still says ``imagenet``.
    """
    for item in os.environ.get(WEIGHTS_ENV, "").split(","):
        name, sep, path = item.partition("=")
        if sep and name.strip() == backbone and path.strip():
            return path.strip()
    return None


def check_weights_file(weights: str | os.PathLike | None, option: str) -> None:
    """A weights value other than ``imagenet`` and ``random`` is the path of a state dict: it must name a
    file, else :class:`~cbir_dist.errors.WeightsNotFoundError` naming ``option`` (said before any work)."""
    if weights is None or weights in ("imagenet", "random") or Path(weights).is_file():
        return
    raise WeightsNotFoundError(f"{option} {weights}: no such file; give the path of a state dict, "
                               "imagenet or random")


def hint() -> str:
    return (
        "Set TORCH_HOME to a folder holding hub/checkpoints/<file> (the torch hub cache), pass a local "
        "state dict with --weights PATH, or index without deep features with --backbone none."
    )




def read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise WeightsError(f"{path}: not a loadable torch state dict ({type(exc).__name__}: {exc}). {hint()}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path}: expected a state dict (str -> tensor), got {type(obj).__name__}. {hint()}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _download(url: str, dest: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` to ``dest`` atomically (a temp file renamed into place) with a socket timeout.

    When the file name carries a hash prefix (``name-<sha256 prefix>.pth``, torchvision's convention)
    the bytes are checked against it before the rename. Raises ``OSError`` (``URLError`` included) on
    network failure and :class:`WeightsError` on a hash mismatch.
    """
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    m = _HASH_IN_NAME.search(dest.name)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        got = digest.hexdigest()
        if m and not got.startswith(m.group(1)):
            raise WeightsError(
                f"downloaded {url} has sha256 {got}, its name says {m.group(1)}...; try again. {hint()}"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def imagenet_file(name: str) -> tuple[Path, str, str | None]:
    """The torch hub cache file of ``name``'s ImageNet weights (downloading it when absent), its tag,
    and its sha256 when it was computed (to check the hash prefix of its name; else None)."""
    import urllib.parse

    import torch
    import torchvision.models as tvm

    enum_name, member = _IMAGENET[name]
    weights = getattr(getattr(tvm, enum_name), member)
    url = weights.url
    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)
    if not dest.is_file():
        log.info("%s ImageNet weights not in the torch hub cache; downloading %s to %s", name, url, dest)
        try:
            _download(url, dest)
        except WeightsError:
            raise
        except Exception as exc:  # URLError, timeouts, HTTP errors, disk errors: all mean "no weights"
            raise WeightsError(
                f"could not obtain ImageNet weights for {name}: {dest} is not in the torch hub cache "
                f"(TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}) and downloading {url} failed "
                f"({type(exc).__name__}: {exc}). {hint()}"
            ) from exc
    m = _HASH_IN_NAME.search(dest.name)
    got = None
    if m:
        got = sha256_file(dest)
        if not got.startswith(m.group(1)):
            raise WeightsError(
                f"{dest} is corrupt: sha256 {got} does not start with {m.group(1)} as its name says; "
                f"delete it to download it again. {hint()}"
            )
    return dest, f"imagenet:{member}", got
