"""Figure helpers shared by every report: matplotlib without a display, thumbnails, rows of retrieval hits."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def thumb(img: np.ndarray, size: int = 96) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = size / max(h, w)
    t = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    canvas = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - t.shape[0]) // 2, (size - t.shape[1]) // 2
    canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
    return canvas


def draw_hits_row(axes_row, query_image: np.ndarray, caption: str, paths: Sequence[str], labels: Sequence[str],
                  query_label: str, *, k: int, hit_caption=None) -> None:
    """One figure row: the query, then its top-``k`` results framed green (same class) or red (other).

    ``hit_caption(rank, label, ok)`` gives each result's title (default: rank and a check mark).
    """
    from ...io.images import read_image

    hit_caption = hit_caption or (lambda rank, label, ok: f"{rank} {'✓' if ok else '✗'}")
    axes_row[0].imshow(thumb(query_image))
    axes_row[0].set_title(caption, fontsize=8)
    for j in range(k):
        ax = axes_row[j + 1]
        if j < len(paths) and paths[j]:
            ok = labels[j] == query_label
            color = "tab:green" if ok else "tab:red"
            ax.imshow(thumb(read_image(paths[j])))
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
            ax.set_title(hit_caption(j + 1, labels[j], ok), fontsize=7, color=color)
    for ax in axes_row:
        ax.set_xticks([])
        ax.set_yticks([])
