"""Handcrafted descriptors as pure functions on uint8 images, and the registry that names them.

=================  ==============================================  ==========================
name               function                                        length (defaults)
=================  ==============================================  ==========================
``correlogram``    :func:`correlogram.color_autocorrelogram`       ``n_colors * len(distances)`` (256)
``gabor``          :func:`gabor.gabor_features`                    ``2 * n_scales * n_orientations`` (48)
``glcm``           :func:`glcm.glcm_idm`                           ``grid[0] * grid[1] * 8`` (72)
``fourier_shape``  :func:`fourier_shape.fourier_shape_descriptor`  ``n_coeffs (+ 4)`` (10)
=================  ==============================================  ==========================

Modules are imported on first use, so ``import cbir_dist.descriptors`` stays cheap and a
descriptor whose module is missing does not break the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...errors import UsageError

__all__ = ["Descriptor", "available_descriptors", "compute", "default_weight", "get_descriptor"]


@dataclass(frozen=True)
class Descriptor:
    """A named descriptor: ``fn(image, **params) -> (dim(**params),) float32``.

    ``weight`` is the block's default weight in a ``balanced`` fused vector (the deep block has 1).
    """

    name: str
    fn: Callable[..., np.ndarray]
    dim: Callable[..., int]
    weight: float = 1.0


# The one list of descriptors: name -> (module under this package, function, length function,
# default fusion weight). Adding a descriptor means adding its module and one line here.
_REGISTRY: dict[str, tuple[str, str, str, float]] = {
    "correlogram": ("correlogram", "color_autocorrelogram", "dim", 0.5),
    "gabor": ("gabor", "gabor_features", "dim", 0.5),
    "glcm": ("glcm", "glcm_idm", "dim", 0.5),
    "fourier_shape": ("fourier_shape", "fourier_shape_descriptor", "dim", 1.0),
}


def default_weight(name: str) -> float:
    """The default ``balanced`` fusion weight of descriptor ``name`` (without importing its module)."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown descriptor {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name][3]


def available_descriptors() -> list[str]:
    """Names accepted by :func:`get_descriptor` and :func:`compute`, in registration order."""
    return list(_REGISTRY)


def get_descriptor(name: str) -> Descriptor:
    """The :class:`Descriptor` registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UsageError(f"unknown descriptor {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str) -> Descriptor:
    module_name, fn_name, dim_name, weight = _REGISTRY[name]
    full_name = f"{__name__}.{module_name}"
    try:
        module = importlib.import_module(full_name)
    except ModuleNotFoundError as exc:
        if exc.name != full_name:
            raise
        raise ImportError(f"descriptor {name!r} is registered but its module {full_name} is missing") from exc
    return Descriptor(name, getattr(module, fn_name), getattr(module, dim_name), weight)


def compute(name: str, image: np.ndarray, **params) -> np.ndarray:
    """``get_descriptor(name).fn(image, **params)``: the descriptor vector of one image, 1-D float32."""
    return get_descriptor(name).fn(image, **params)
