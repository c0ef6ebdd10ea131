"""The training history: an append-only JSONL of training and validation records, and its loss-curve plot."""

from __future__ import annotations

import json
from pathlib import Path

from ..io.tables import write_text

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"


def read_metrics(path) -> list[dict]:
    """Records of a ``metrics.jsonl`` (empty list when absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


class MetricsLog:
    """Append-only JSONL of training/validation records; truncated to ``<= step`` on resume."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def plot_history(records: list[dict], png, references: dict[str, float] | None = None) -> None:
    """Loss curve (train L1 terms) with validation PSNR on a second axis, saved as PNG.

    ``references`` maps a label to a validation PSNR drawn as a horizontal line (e.g. Telea's on
    the same validation pairs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["l1_refined"] for r in train], label="L1 stage 2 (6·hole + valid)", lw=1)
        ax.plot(steps, [r["l1_coarse"] for r in train], label="L1 stage 1", lw=1, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log interval)")
    ax.set_yscale("log")
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", color="k", label="val PSNR")
        ax2.plot([r["step"] for r in val], [r["val_psnr_none"] for r in val], ":", color="grey", label="val PSNR, no inpainting")
        for (label, value), colour in zip((references or {}).items(), ("tab:red", "tab:purple", "tab:brown")):
            ax2.axhline(value, ls="--", lw=1, color=colour, label=f"val PSNR, {label}")
        ax2.set_ylabel("validation PSNR (dB)")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("two-stage inpainter training")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)



