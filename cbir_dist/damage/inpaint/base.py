"""The `Inpainter` protocol and the input checks every inpainter shares."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Inpainter", "check_inputs", "paste_known"]


@runtime_checkable
class Inpainter(Protocol):
    """Fills the missing pixels of an image.

    ``inpainter(image, known)`` takes a ``uint8`` image of shape ``(H, W, 3)`` (RGB) or ``(H, W)``
    (grey) and a ``bool`` mask ``(H, W)`` with True = known pixel, and returns a new ``uint8`` image
    of the same shape in which every known pixel is unchanged and every missing one is filled.
    The values under missing pixels of ``image`` are never read.
    """

    name: str

    def __call__(self, image: np.ndarray, known: np.ndarray) -> np.ndarray: ...


def check_inputs(image: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate an (image, known-mask) pair and return them as arrays.

    Raises
    ------
    TypeError
        If the image is not ``uint8`` or the mask not ``bool``.
    ValueError
        If the image is not ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``, or the mask's shape is not
        the image's ``(H, W)``.
    """
    image = np.asarray(image)
    known = np.asarray(known)
    if image.dtype != np.uint8:
        raise TypeError(
            f"Inpainters take uint8 images, got dtype {image.dtype}; convert with "
            "`skimage.util.img_as_ubyte(image)` or `np.clip(image, 0, 255).astype(np.uint8)`."
        )
    if image.ndim == 3 and image.shape[2] not in (1, 3) or image.ndim not in (2, 3):
        raise ValueError(f"The image must have shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}.")
    if known.dtype != bool:
        raise TypeError(
            f"The mask must be a bool array (True = known pixel), got dtype {known.dtype}; "
            "convert it with `mask.astype(bool)`."
        )
    if known.shape != image.shape[:2]:
        raise ValueError(f"The mask has shape {known.shape} but the image is {image.shape[:2]} (H, W).")
    return image, known


def paste_known(filled: np.ndarray, image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``filled`` with the known pixels of ``image`` copied back exactly (in place), returned."""
    filled[known] = image[known]
    return filled
