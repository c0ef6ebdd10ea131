"""Gabor texture features (Manjunath & Ma, TPAMI 1996): mean and spread of a filter bank's response magnitudes.

References
----------
.. [1] B. S. Manjunath and W. Y. Ma, "Texture features for browsing and retrieval of image data",
       IEEE Trans. PAMI 18(8), 1996, pp. 837-842.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...errors import UsageError
from ._validate import check_float, check_image, check_int, grey_uint8

FUNC = "gabor_features"


@dataclass(frozen=True)
class GaborFilter:
    """One filter of the bank, in the parameters of ``skimage.filters.gabor_kernel``."""

    frequency: float  # cycles per pixel of the harmonic
    theta: float  # orientation in radians (0 = harmonic along the columns, x)
    sigma_x: float  # Gaussian std along the harmonic's direction, px
    sigma_y: float  # Gaussian std across it, px


def _check_bank(n_scales, n_orientations, min_frequency, max_frequency, n_stds) -> tuple:
    n_scales = check_int(n_scales, "n_scales", FUNC, 2)
    n_orientations = check_int(n_orientations, "n_orientations", FUNC, 1)
    max_frequency = check_float(max_frequency, "max_frequency", FUNC, 0.0, 0.5)
    min_frequency = check_float(min_frequency, "min_frequency", FUNC, 0.0, 0.5)
    if min_frequency >= max_frequency:
        raise UsageError(
            f"{FUNC}: min_frequency must be below max_frequency, got {min_frequency} >= {max_frequency}"
        )
    n_stds = check_float(n_stds, "n_stds", FUNC, 0.0, 10.0)
    return n_scales, n_orientations, min_frequency, max_frequency, n_stds


def dim(n_scales: int = 4, n_orientations: int = 6, **_) -> int:
    """Length of the vector :func:`gabor_features` returns: ``2 * n_scales * n_orientations``."""
    n_scales = check_int(n_scales, "n_scales", FUNC, 2)
    n_orientations = check_int(n_orientations, "n_orientations", FUNC, 1)
    return 2 * n_scales * n_orientations


@lru_cache(maxsize=16)
def gabor_bank(
    n_scales: int = 4, n_orientations: int = 6, min_frequency: float = 0.05, max_frequency: float = 0.4
) -> tuple[GaborFilter, ...]:
    """The Manjunath-Ma filter bank, scale-major (lowest frequency first), then orientation.

    Centre frequencies are spaced geometrically, ``f_s = U_l a**s`` with
    ``a = (U_h / U_l) ** (1 / (S - 1))``, orientations ``theta_n = n pi / K``. The frequency-domain
    widths are chosen so neighbouring filters' half-peak contours touch (Manjunath & Ma, eq. 3):

    .. math:: \\sigma_u = \\frac{(a - 1) U_h}{(a + 1)\\sqrt{2 \\ln 2}}, \\qquad
              \\sigma_v = \\tan\\left(\\frac{\\pi}{2K}\\right)
              \\frac{U_h - 2 \\ln 2 \\, \\sigma_u^2 / U_h}
                   {\\sqrt{2 \\ln 2 - (2 \\ln 2)^2 \\sigma_u^2 / U_h^2}}

    for the highest frequency; each lower scale is the same filter dilated by ``U_h / f_s``, so
    its spatial widths are ``sigma_x = U_h / (2 pi sigma_u f_s)``, ``sigma_y = U_h / (2 pi sigma_v f_s)``.
    """
    s_n, k_n, u_l, u_h, _ = _check_bank(n_scales, n_orientations, min_frequency, max_frequency, 3.0)
    a = (u_h / u_l) ** (1.0 / (s_n - 1))
    ln2 = 2.0 * math.log(2.0)
    sigma_u = (a - 1.0) * u_h / ((a + 1.0) * math.sqrt(ln2))
    sigma_v = (
        math.tan(math.pi / (2 * k_n))
        * (u_h - ln2 * sigma_u**2 / u_h)
        / math.sqrt(ln2 - ln2**2 * sigma_u**2 / u_h**2)
    )
    bank = []
    for s in range(s_n):
        f = u_l * a**s
        for n in range(k_n):
            bank.append(
                GaborFilter(
                    frequency=f,
                    theta=n * math.pi / k_n,
                    sigma_x=u_h / (2 * math.pi * sigma_u * f),
                    sigma_y=u_h / (2 * math.pi * sigma_v * f),
                )
            )
    return tuple(bank)


@lru_cache(maxsize=16)
def _kernels(bank: tuple[GaborFilter, ...], n_stds: float) -> tuple[np.ndarray, ...]:
    from skimage.filters import gabor_kernel

    return tuple(
        gabor_kernel(g.frequency, g.theta, sigma_x=g.sigma_x, sigma_y=g.sigma_y, n_stds=n_stds) for g in bank
    )


@dataclass(frozen=True)
class _Plan:
    """FFT plan of one scale: padding, DFT size and the kernels' spectra (cv2 two-channel complex)."""

    members: tuple[int, ...]  # indices into the bank
    pad_y: int
    pad_x: int
    n0: int
    n1: int
    spectra: tuple[np.ndarray, ...]  # (n0, n1, 2) float32 each: real, imaginary


@lru_cache(maxsize=4)
def _plans(bank: tuple[GaborFilter, ...], n_stds: float, h: int, w: int) -> tuple[_Plan, ...]:
    """Kernel spectra for an ``h x w`` image, grouped by scale so small kernels get small DFTs."""
    import cv2

    kernels = _kernels(bank, n_stds)
    groups: dict[float, list[int]] = {}
    for i, g in enumerate(bank):
        groups.setdefault(g.frequency, []).append(i)
    plans = []
    for members in groups.values():
        pad_y = max(kernels[i].shape[0] // 2 for i in members)
        pad_x = max(kernels[i].shape[1] // 2 for i in members)
        n0 = cv2.getOptimalDFTSize(h + 2 * pad_y)
        n1 = cv2.getOptimalDFTSize(w + 2 * pad_x)
        spectra = []
        for i in members:
            k = kernels[i]
            wrapped = np.zeros((n0, n1), np.complex128)
            wrapped[: k.shape[0], : k.shape[1]] = k
            # kernel centre to the origin: circular convolution = linear convolution around it
            wrapped = np.roll(wrapped, (-(k.shape[0] // 2), -(k.shape[1] // 2)), axis=(0, 1))
            spectrum = np.fft.fft2(wrapped)
            spectra.append(np.ascontiguousarray(np.stack([spectrum.real, spectrum.imag], axis=-1), np.float32))
        plans.append(_Plan(tuple(members), pad_y, pad_x, n0, n1, tuple(spectra)))
    return tuple(plans)


def _filter_responses(grey: np.ndarray, bank: tuple[GaborFilter, ...], n_stds: float):
    """Yield ``(bank index, complex64 response (H, W))`` for each filter of a 2-D float32 image.

    Each response equals ``skimage.filters.gabor(grey, f, theta, sigma_x=..., sigma_y=...,
    n_stds=n_stds, mode='reflect')`` as ``real + 1j * imag``: per scale, the image is
    mirror-padded ('reflect' in scipy.ndimage terms, 'symmetric' in numpy's) by the largest
    kernel half-size, zero-filled to a fast DFT size (the zeros are never reached from the
    kept pixels, so no wrap-around enters them), transformed once, and multiplied with each
    kernel's cached spectrum before one inverse DFT per filter (``cv2.dft``).
    """
    import cv2

    grey = np.asarray(grey, np.float32)
    h, w = grey.shape
    for plan in _plans(bank, n_stds, h, w):
        py, px = plan.pad_y, plan.pad_x
        padded = np.zeros((plan.n0, plan.n1), np.float32)
        padded[: h + 2 * py, : w + 2 * px] = np.pad(grey, ((py, py), (px, px)), mode="symmetric")
        spectrum = cv2.dft(padded, flags=cv2.DFT_COMPLEX_OUTPUT, nonzeroRows=h + 2 * py)
        for i, kernel_spectrum in zip(plan.members, plan.spectra):
            full = cv2.dft(cv2.mulSpectrums(spectrum, kernel_spectrum, 0), flags=cv2.DFT_INVERSE | cv2.DFT_SCALE)
            yield i, full.view(np.complex64)[py : py + h, px : px + w, 0]


def _responses(grey: np.ndarray, bank: tuple[GaborFilter, ...], n_stds: float = 3.0) -> np.ndarray:
    """Complex responses ``(len(bank), H, W)`` of a 2-D float image, in bank order."""
    out = np.empty((len(bank),) + np.shape(grey), np.complex64)
    for i, response in _filter_responses(grey, bank, n_stds):
        out[i] = response
    return out


def working_image(image: np.ndarray, size: int | None = 128) -> np.ndarray:
    """The float32 grey image in ``[0, 1]`` that :func:`gabor_features` filters.

    Luma as PIL's ``convert("L")`` for RGB (grey input used as is), divided by 255, then resized to
    ``size x size`` with ``cv2.INTER_AREA`` (``INTER_LINEAR`` when enlarging); ``size=None`` keeps
    the native resolution.
    """
    image = check_image(image, "working_image")
    grey = grey_uint8(image).astype(np.float32) * np.float32(1.0 / 255.0)
    if size is None or grey.shape == (size, size):
        return grey
    import cv2

    shrink = grey.shape[0] >= size and grey.shape[1] >= size
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def gabor_features(
    image: np.ndarray,
    n_scales: int = 4,
    n_orientations: int = 6,
    *,
    min_frequency: float = 0.05,
    max_frequency: float = 0.4,
    size: int | None = 128,
    n_stds: float = 3.0,
) -> np.ndarray:
    """Mean and standard deviation of the Gabor response magnitude for each filter of a bank.

    With ``W_{s,n}(x, y) = (I * g_{s,n})(x, y)`` the complex response of the grey image to the
    filter of scale ``s`` and orientation ``n`` (see :func:`gabor_bank`),

    .. math:: \\mu_{s,n} = \\overline{|W_{s,n}|}, \\qquad
              \\sigma_{s,n} = \\sqrt{\\overline{(|W_{s,n}| - \\mu_{s,n})^2}}

    over all pixels, as in Manjunath & Ma. Kernels are ``skimage.filters.gabor_kernel`` (Gaussian
    envelope normalised by ``1 / (2 pi sigma_x sigma_y)``, truncated at ``n_stds`` standard
    deviations); convolution is ``mode='reflect'`` at the borders, computed by DFT (the image's
    spectrum once per scale, one inverse DFT per filter).

    Parameters
    ----------
    image : (H, W, 3) or (H, W) uint8 ndarray
        RGB image (converted to ITU-R BT.601 luma, as PIL's ``convert("L")``) or grey image,
        both sides >= 16 px. Values are scaled to ``[0, 1]`` before filtering.
    n_scales : int, optional
        Number of scales ``S >= 2``, centre frequencies from ``min_frequency`` to
        ``max_frequency`` in geometric steps.
    n_orientations : int, optional
        Number of orientations ``K >= 1``, ``theta = n pi / K``.
    min_frequency, max_frequency : float, optional
        ``U_l`` and ``U_h`` of Manjunath & Ma in cycles per pixel of the working image,
        ``0 < U_l < U_h <= 0.5``.
    size : int or None, optional
        Working size: the grey image is resized to ``size x size`` first (default 128, the
        128 x 128 texture patches of Manjunath & Ma; aspect ratio is not kept), so every image
        is described at the same scale for the same cost and the kernel spectra are cached
        once. ``None`` filters the image at its native resolution (cost grows with its area;
        kernel spectra are cached for the 4 most recent shapes).
    n_stds : float, optional
        Kernel half-size in Gaussian standard deviations (``skimage.filters.gabor_kernel``).

    Returns
    -------
    (2 * n_scales * n_orientations,) ndarray of float32
        ``[mu_00, sigma_00, mu_01, sigma_01, ...]``: ``out.reshape(S, K, 2)[s, n]`` is
        ``(mu, sigma)`` of scale ``s`` (lowest frequency first) and orientation ``n``.

    References
    ----------
    .. [1] B. S. Manjunath and W. Y. Ma, "Texture features for browsing and retrieval of image
           data", IEEE Trans. PAMI 18(8), 1996, pp. 837-842.
    """
    image = check_image(image, FUNC)
    n_scales, n_orientations, min_frequency, max_frequency, n_stds = _check_bank(
        n_scales, n_orientations, min_frequency, max_frequency, n_stds
    )
    if size is not None:
        size = check_int(size, "size", FUNC, 16)
    grey = working_image(image, size)
    bank = gabor_bank(n_scales, n_orientations, min_frequency, max_frequency)
    import cv2

    out = np.empty((len(bank), 2), np.float64)
    for i, response in _filter_responses(grey, bank, n_stds):
        mean, std = cv2.meanStdDev(np.abs(response))  # population std, accumulated in float64
        out[i] = mean[0, 0], std[0, 0]
    return out.ravel().astype(np.float32)
