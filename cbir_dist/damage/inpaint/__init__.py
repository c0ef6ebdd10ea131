"""Inpainters behind one protocol, looked up by name: none, telea, ns, biharmonic, two-stage.

``get_inpainter("telea", radius=3)(image, known)`` fills the missing pixels of ``image`` (``uint8``
RGB or grey) where ``known`` (``bool``, True = known pixel) is False. Heavy libraries (cv2,
skimage, torch) are imported only when an inpainter runs or, for "two-stage", is built.

"two-stage" is a network: :func:`is_network` says so without building it, and the jobs then run
its classical pre-fill in CPU tasks and the network in actors (``TwoStageInpainter.prefill`` /
``refine_batch``); the classical inpainters run whole in CPU tasks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ...errors import UsageError
from .base import Inpainter, check_inputs, paste_known
from .classical import BiharmonicInpainter, OpenCVInpainter, ZeroFill

__all__ = [
    "BiharmonicInpainter",
    "Inpainter",
    "OpenCVInpainter",
    "ZeroFill",
    "available_inpainters",
    "check_inpainter",
    "check_inputs",
    "get_inpainter",
    "get_prefill",
    "is_network",
    "paste_known",
]

TWO_STAGE_MODULE = "cbir_dist.damage.inpaint.two_stage"


def _two_stage(**kwargs) -> Inpainter:
    """Import the two-stage network only when asked for, and build it with ``load_two_stage``."""
    try:
        module = importlib.import_module(TWO_STAGE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != TWO_STAGE_MODULE:
            raise  # a dependency of the module (e.g. torch) is missing: report that one
        raise ImportError(
            f"The 'two-stage' inpainter needs the module {TWO_STAGE_MODULE}, which is not part of "
            "this installation; use one of the classical inpainters "
            "('none', 'telea', 'ns', 'biharmonic') instead."
        ) from exc
    return module.load_two_stage(**kwargs)


def _two_stage_prefill(**kwargs):
    """The two-stage network's classical pre-fill, from its provenance JSON (no weights, no torch)."""
    from .two_stage import load_prefill

    return load_prefill(**kwargs)


_REGISTRY: dict[str, Callable[..., Inpainter]] = {
    "none": ZeroFill,
    "telea": lambda **kw: OpenCVInpainter(method="telea", **kw),
    "ns": lambda **kw: OpenCVInpainter(method="ns", **kw),
    "biharmonic": BiharmonicInpainter,
    "two-stage": _two_stage,
}


#: Registered inpainters that are networks (built with weights; batched in actors by the jobs).
NETWORKS = frozenset({"two-stage"})


def is_network(name: str) -> bool:
    """True when the inpainter registered as ``name`` is a network (``two-stage``)."""
    return name in NETWORKS


_PREFILLS = {"two-stage": _two_stage_prefill}


def get_prefill(name: str, **kwargs) -> Callable:
    """The CPU half of the network ``name``: ``prefill(image, known) -> RGB uint8`` (its classical pre-fill).

    Raises :class:`UsageError` when ``name`` is not a network (see :func:`is_network`).
    """
    if name not in _PREFILLS:
        raise UsageError(f"inpainter {name!r} is not a network; networks: {', '.join(sorted(NETWORKS))}")
    return _PREFILLS[name](**kwargs)


def available_inpainters() -> list[str]:
    """Names :func:`get_inpainter` accepts ("two-stage" is listed even before its module loads)."""
    return list(_REGISTRY)


def check_inpainter(name: str) -> None:
    """Raise :class:`UsageError` (listing the valid names) unless ``name`` is a registered inpainter."""
    try:
        _REGISTRY[name]
    except (KeyError, TypeError):
        raise UsageError(
            f"Unknown inpainter {name!r}; choose one of: {', '.join(available_inpainters())}."
        ) from None


def get_inpainter(name: str, **kwargs) -> Inpainter:
    """Build the inpainter registered as ``name``.

    Parameters
    ----------
    name : str
        One of :func:`available_inpainters`: ``"none"`` (zero fill), ``"telea"`` and ``"ns"``
        (``radius``, default 5), ``"biharmonic"`` (``max_side``, default 512), ``"two-stage"``
        (keyword arguments go to ``cbir_dist.damage.inpaint.two_stage.load_two_stage``).
    **kwargs
        Options of that inpainter; an unknown option raises ``TypeError``.

    Raises
    ------
    UsageError
        If ``name`` is not registered (a ``ValueError``); the message lists the valid names.
    ImportError
        For ``"two-stage"`` when its module is not installed.
    """
    check_inpainter(name)
    return _REGISTRY[name](**kwargs)
