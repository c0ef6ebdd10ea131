"""Grey-level co-occurrence (SGLDM) texture: inverse difference moment per tile and direction.

References
----------
.. [1] R. M. Haralick, K. Shanmugam and I. Dinstein, "Textural features for image
       classification", IEEE Trans. SMC 3(6), 1973, pp. 610-621.
.. [2] Pande et al., content-based image retrieval with handcrafted descriptors (texture: SGLDM
       inverse difference moment over the eight neighbour directions of a 3 x 3 tiling).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ._validate import check_image, check_int, check_int_sequence, grey_uint8

FUNC = "glcm_idm"
N_DIRECTIONS = 8
ANGLES = tuple(k * np.pi / 4 for k in range(N_DIRECTIONS))  # 0, 45, ..., 315 degrees


def _check_params(levels, distance, grid) -> tuple[int, int, tuple[int, int]]:
    levels = check_int(levels, "levels", FUNC, 2, 256)
    distance = check_int(distance, "distance", FUNC, 1)
    gy, gx = check_int_sequence(grid, "grid", FUNC, 1, length=2)
    return levels, distance, (gy, gx)


def dim(levels: int = 32, distance: int = 1, grid: Sequence[int] = (3, 3), **_) -> int:
    """Length of the vector :func:`glcm_idm` returns: ``grid[0] * grid[1] * 8``."""
    _, _, (gy, gx) = _check_params(levels, distance, grid)
    return gy * gx * N_DIRECTIONS


def direction_offsets(distance: int = 1) -> list[tuple[int, int]]:
    """``(dy, dx)`` of the neighbour for the 8 directions, as ``skimage.feature.graycomatrix`` uses them.

    Direction ``k`` has angle ``theta = k * 45`` degrees and offset
    ``(round(distance * sin(theta)), round(distance * cos(theta)))`` in (row, column) order, rows
    growing downwards: 0 -> (0, d), 45 -> (r, r), 90 -> (d, 0), ..., 315 -> (-r, r) with
    ``r = round(d / sqrt(2))`` (Euclidean length about ``d`` on the diagonals).
    """
    return [(int(round(distance * np.sin(a))), int(round(distance * np.cos(a)))) for a in ANGLES]


def tile_edges(n: int, parts: int) -> np.ndarray:
    """Boundaries of ``parts`` near-equal tiles along an axis of length ``n``: ``floor(k * n / parts)``."""
    return (np.arange(parts + 1) * n) // parts


@lru_cache(maxsize=32)
def _tile_labels(h: int, w: int, gy: int, gx: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile row of each image row and tile column of each image column (row-major tile order)."""
    ty = np.repeat(np.arange(gy), np.diff(tile_edges(h, gy)))
    tx = np.repeat(np.arange(gx), np.diff(tile_edges(w, gx)))
    return ty, tx


@lru_cache(maxsize=32)
def _pair_layout(h: int, w: int, gy: int, gx: int, levels: int, dy: int, dx: int) -> np.ndarray:
    """Bin base per pair ``(p, p + o)`` in the overlap region: ``tile(p) * levels``, or the trash bin
    ``gy * gx * levels`` where ``p`` and ``p + o`` lie in different tiles."""
    ty, tx = _tile_labels(h, w, gy, gx)
    ya, yb = max(0, -dy), max(0, dy)
    xa, xb = max(0, -dx), max(0, dx)
    rows = np.where(ty[ya : h - yb] == ty[yb : h - ya], ty[ya : h - yb], -1)
    cols = np.where(tx[xa : w - xb] == tx[xb : w - xa], tx[xa : w - xb], -1)
    tile = rows[:, None] * gx + cols[None, :]
    tile[(rows[:, None] < 0) | (cols[None, :] < 0)] = gy * gx
    return (tile * levels).astype(np.intp)


def glcm_idm(image: np.ndarray, levels: int = 32, distance: int = 1, grid: Sequence[int] = (3, 3)) -> np.ndarray:
    """Inverse difference moment (homogeneity) of the grey-level co-occurrence matrix per tile and direction.

    The grey image is quantised to ``levels`` grey levels ``g = floor(Y * levels / 256)`` and cut
    into a ``grid[0] x grid[1]`` tiling. For each tile ``t`` and each of the 8 directions ``k``
    (``0, 45, ..., 315`` degrees, see :func:`direction_offsets`), with ``P`` the normalised
    (non-symmetric) co-occurrence matrix of the pixel pairs ``(p, p + o_k)`` lying inside the tile,

    .. math:: \\mathrm{IDM}_{t,k} = \\sum_{i,j} \\frac{P_{t,k}(i, j)}{1 + (i - j)^2}

    which equals ``graycoprops(graycomatrix(tile, [distance], [theta_k], levels,
    symmetric=False, normed=True), 'homogeneity')``. IDM only depends on ``|i - j|``, so
    opposite directions (``k`` and ``k + 4``) count the same pixel pairs and give identical
    values: the vector holds ``4 * n_tiles`` distinct numbers, kept 8 per tile for the layout of
    Pande et al.

    Parameters
    ----------
    image : (H, W, 3) or (H, W) uint8 ndarray
        RGB image (converted to ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B``, rounded
        as PIL's ``convert("L")``) or grey image (used as ``Y``). Both sides >= 16 px.
    levels : int, optional
        Number of grey levels, 2 to 256.
    distance : int, optional
        Pixel distance ``d >= 1`` between the pair members. Every tile must be at least
        ``d + 1`` px on each side.
    grid : (int, int), optional
        Tiles along the rows and columns; tile boundaries at ``floor(k * H / grid[0])`` and
        ``floor(k * W / grid[1])``.

    Returns
    -------
    (grid[0] * grid[1] * 8,) ndarray of float32
        ``out.reshape(grid[0], grid[1], 8)[ty, tx, k]``: tiles in row-major order, then the 8
        directions. Values in ``(0, 1]``; 1 for a tile of constant grey level.

    Notes
    -----
    Vectorised with one ``np.bincount`` per direction over the pair indices
    ``tile * levels + |i - j|`` (pairs crossing a tile boundary go to a discarded bin); the
    histogram of grey-level differences per tile is all IDM needs, so the full
    ``levels x levels`` matrices are never built.

    References
    ----------
    .. [1] R. M. Haralick, K. Shanmugam and I. Dinstein, "Textural features for image
           classification", IEEE Trans. SMC 3(6), 1973, pp. 610-621.
    .. [2] Pande et al., content-based image retrieval with handcrafted descriptors (texture:
           SGLDM inverse difference moment over 8 directions of a 3 x 3 tiling).
    """
    image = check_image(image, FUNC)
    levels, distance, (gy, gx) = _check_params(levels, distance, grid)
    h, w = image.shape[:2]
    if h // gy < distance + 1 or w // gx < distance + 1:
        raise ValueError(
            f"{FUNC}: a {gy} x {gx} grid on a {w} x {h} (W x H) image gives tiles of "
            f"{w // gx} x {h // gy} px, too small for distance {distance}; "
            "use a coarser grid or a smaller distance"
        )
    grey = grey_uint8(image)
    if levels == 256:
        g = grey.astype(np.intp)
    elif levels & (levels - 1) == 0:
        g = (grey >> np.uint8(8 - (levels.bit_length() - 1))).astype(np.intp)
    else:
        g = (grey.astype(np.intp) * levels) >> 8
    weights = 1.0 / (1.0 + np.arange(levels, dtype=np.float64) ** 2)
    n_tiles = gy * gx
    idm = np.empty((n_tiles, N_DIRECTIONS), np.float64)
    offsets = direction_offsets(distance)
    for k, (dy, dx) in enumerate(offsets[:4]):
        ya, yb = max(0, -dy), max(0, dy)
        xa, xb = max(0, -dx), max(0, dx)
        diff = np.abs(g[ya : h - yb, xa : w - xb] - g[yb : h - ya, xb : w - xa])
        diff += _pair_layout(h, w, gy, gx, levels, dy, dx)
        hist = np.bincount(diff.ravel(), minlength=(n_tiles + 1) * levels)[: n_tiles * levels]
        hist = hist.reshape(n_tiles, levels)
        idm[:, k] = hist @ weights / hist.sum(axis=1)
    idm[:, 4:] = idm[:, :4]  # direction k + 4 is -o_k: the same unordered pairs, the same |i - j|
    return idm.ravel().astype(np.float32)
