"""Render the paper's eight fringe masks (0.5 to 6 fringes per image) into one PNG grid.

Usage: python scripts/render_masks.py [--out docs/masks.png] [--size 256] [--missing 0.25]
White = known pixel, black = missing (the convention `cbir_dist.damage.masks.load_mask` reads back).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cbir_dist.damage.masks import FRINGE_FREQUENCIES, fraction_missing, fringe_mask  # noqa: E402

log = logging.getLogger("render_masks")


def render(out: Path, size: int = 256, missing: float = 0.25, angle: float = 0.0) -> Path:
    """Draw one panel per frequency of ``FRINGE_FREQUENCIES`` and save the grid to ``out``."""
    fig, axes = plt.subplots(2, 4, figsize=(12, 7))
    for ax, f in zip(axes.ravel(), FRINGE_FREQUENCIES):
        known = fringe_mask(size, size, f, missing_fraction=missing, angle=angle)
        ax.imshow(known, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{f:g} Hz — {fraction_missing(known):.1%} missing", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Fringe masks cos²(π·f·u), top {missing:.0%} intensity removed "
        f"({size}×{size} px, angle {angle:g}°; white = known, black = missing)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=2.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "docs" / "masks.png"
    parser.add_argument("--out", type=Path, default=default_out, help="PNG to write")
    parser.add_argument("--size", type=int, default=256, help="side of each square mask in pixels")
    parser.add_argument("--missing", type=float, default=0.25, help="fraction of pixels removed")
    parser.add_argument("--angle", type=float, default=0.0, help="fringe axis angle in degrees")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("wrote %s", render(args.out, args.size, args.missing, args.angle))


if __name__ == "__main__":
    main()
