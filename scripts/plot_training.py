"""The training curve of a two-stage run: ``python scripts/plot_training.py RUN/metrics.jsonl docs/two_stage_loss.png``.

Reads the ``metrics.jsonl`` of ``cbir-dist train-inpainter`` or of the prototype's ``train.py``
(the same records) and draws the loss, the batch's PSNR gain over Telea and the held-out
validation gain (mean and worst of the 8 frequencies).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import argparse

    from cbir_dist.training.history import plot_history, read_metrics

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics")
    p.add_argument("png")
    p.add_argument("--title", default="two-stage inpainter training (held-out validation: 24 images x 8 Hz, phase 0)")
    args = p.parse_args(argv)
    records = read_metrics(args.metrics)
    plot_history(records, args.png, title=args.title)
    train = [r for r in records if r.get("kind") == "train"]
    print(f"wrote {args.png}: {len(train)} training records up to step {train[-1]['step'] if train else 0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
