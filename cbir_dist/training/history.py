"""The training history: an append-only JSONL of training and validation records, and its training-curve plot."""

from __future__ import annotations

import json
from pathlib import Path

from ..io.tables import save_figure, write_text

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"


def read_metrics(path) -> list[dict]:
    """Records of a ``metrics.jsonl`` (empty list when absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


class MetricsLog:
    """Append-only JSONL of training/validation records; on resume, truncated to the records ``<= step``."""

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


def plot_history(records: list[dict], png, title: str = "two-stage inpainter training") -> None:
    """The training curve: the loss and the batch's hole-PSNR gain over Telea (train), and the held-out
    validation gain over Telea (mean and worst frequency) on a second axis; saved as PNG.

    Reads the records of this package's loop and of the prototype's ``train.py`` (the same keys).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val" and "dpsnr_mean" in r]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], lw=0.8, color="tab:blue", label="training loss (batch mean per log interval)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax2 = ax.twinx()
    if train and "db_gain" in train[0]:
        ax2.plot(steps, [r["db_gain"] for r in train], lw=0.6, alpha=0.5, color="tab:orange",
                 label="train: hole PSNR gain over Telea (dB)")
    if val:
        vs = [r["step"] for r in val]
        ax2.plot(vs, [r["dpsnr_mean"] for r in val], "o-", ms=3, color="k", label="held-out: PSNR gain over Telea, mean of 8 Hz")
        ax2.plot(vs, [r["dpsnr_min"] for r in val], "s--", ms=3, color="tab:red", label="held-out: worst frequency")
    ax2.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax2.axhline(0.5, color="tab:green", lw=0.8, ls=":", label="target: +0.5 dB")
    ax2.set_ylabel("PSNR gain over Telea (dB)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png, dpi=110)
    plt.close(fig)
