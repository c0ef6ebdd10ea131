"""Train the two-stage inpainter: ``ray job submit -- python jobs/train_inpainter.py DATA_DIR... --out RUN``.

A thin entry point over :func:`cbir_dist.training.job.train_inpainter` (the same options as
``cbir-dist train-inpainter``). On a cluster, ``--num-workers N --use-gpu`` trains data-parallel
over N GPU workers (Ray Train TorchTrainer); ``--no-ray`` runs the same loop in this process.
Rerunning with the same ``--out`` (or ``--checkpoint-dir``) resumes from the last checkpoint.

The defaults repeat the run of the shipped weights (see docs/inpainting.md)::

    OMP_NUM_THREADS=1 python jobs/train_inpainter.py ../shared/data/wang1000 ../shared/data/paris6k_subset \\
        --out runs/two_stage --val-split-file cbir_dist/weights/two_stage_split.txt --no-ray
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from cbir_dist.training.job import add_arguments

    p = argparse.ArgumentParser(
        prog="python jobs/train_inpainter.py",
        description="Train the two-stage (region-wise conv + Fourier refinement, residual on Telea) inpainting network.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cbir_dist.training.job import run_from_args

    result = run_from_args(args, "python jobs/train_inpainter.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(json.dumps({k: result[k] for k in ("step", "val", "weights")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
