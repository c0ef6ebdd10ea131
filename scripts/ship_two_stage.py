"""Ship trained two-stage weights: ``cbir_dist/weights/two_stage.pt`` and its provenance ``two_stage.json``.

    python scripts/ship_two_stage.py /work/proto_inpaint/runs/long_H/snapshots/step_050000.pt \\
        --metrics /work/proto_inpaint/runs/long_H/metrics.jsonl

SOURCE is a checkpoint or snapshot of the prototype's ``train.py`` or of ``cbir-dist
train-inpainter`` (both hold ``model`` and ``model_config``). The JSON records the architecture
config (what ``load_two_stage`` builds), the step, the exact training command (``--command``;
default: rebuilt from the checkpoint's training settings — for a checkpoint of ``cbir-dist
train-inpainter`` its own command; for a snapshot, which holds no settings, the long run's
``run_long.sh`` command), the equivalent ``cbir-dist train-inpainter`` command, the data, the held-out split
(name and sha256), the last validation record of ``--metrics`` at or before the step, and the
sha256 of the weights. Replacing the two files is the whole swap: nothing else names the weights.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# prototype argument -> cbir-dist train-inpainter option (same meaning, same default as run_long.sh)
_FLAGS = {"steps": "--steps", "batch_size": "--batch-size", "crop_min": "--crop-min", "crop_max": "--crop-max",
          "lr": "--lr", "lr_final": "--lr-final", "warmup": "--warmup", "seed": "--seed", "fringe_prob": "--fringe-prob",
          "loss": "--loss", "coarse_weight": "--coarse-weight", "db_weight": "--db-weight",
          "ssim_weight": "--ssim-weight", "ssim_batch": "--ssim-batch"}


def prototype_command(train_args: dict) -> str:
    """The prototype's ``train.py`` command line for its saved training arguments (run with OMP_NUM_THREADS=1)."""
    parts = ["OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python train.py", "--out", shlex.quote(train_args["out"]),
             "--config", shlex.quote(train_args["config"])]
    for key in _FLAGS:
        parts += ["--" + key.replace("_", "-"), str(train_args[key])]
    parts += ["--data-dirs", *train_args["data_dirs"], "--data-root", train_args["data_root"],
              "--split-file", train_args["split_file"]]
    return " ".join(parts)


def _changed_options(model_config: dict, settings: dict) -> list[str]:
    """``train-inpainter`` options for the model config and the ``_FLAGS`` settings that differ from its defaults."""
    from cbir_dist.training.config import TrainConfig, default_model_config

    d = TrainConfig(images_dirs=("x",), out="x")
    parts = []
    if {**default_model_config(), **model_config} != default_model_config():
        parts += ["--config", shlex.quote(json.dumps(model_config))]
    for key, flag in _FLAGS.items():
        if settings[key] != getattr(d, key):
            parts += [flag, str(settings[key])]
    return parts


def package_command(settings: dict) -> str:
    """The ``cbir-dist train-inpainter`` command of a run of this package (its checkpoint's full ``config``).

    Only options that differ from the defaults are spelled out; the threads come first as the
    environment the run had (``--threads`` sets both torch's and OpenCV's).
    """
    threads = settings.get("num_threads") or 1
    parts = [f"OMP_NUM_THREADS={threads} cbir-dist train-inpainter", *settings["images_dirs"],
             "--out", shlex.quote(settings["out"])]
    if settings.get("val_split_file"):
        parts += ["--val-split-file", settings["val_split_file"]]
    parts += _changed_options(settings["model_config"], settings)
    if threads != 1:
        parts += ["--threads", str(threads)]
    for key in ("steps_this_session", "max_minutes"):  # where the session stopped (not part of the trajectory)
        if settings.get(key):
            parts += ["--" + key.replace("_", "-"), str(settings[key])]
    parts.append("--no-ray")
    return " ".join(parts)


def equivalent_command(train_args: dict | None) -> str:
    """``cbir-dist train-inpainter ...`` training the same trajectory (only options that differ from its defaults)."""
    dirs = train_args["data_dirs"] if train_args else ["/work/shared/data/wang1000", "/work/shared/data/paris6k_subset"]
    parts = ["OMP_NUM_THREADS=1 cbir-dist train-inpainter", *dirs, "--out runs/two_stage",
             "--val-split-file cbir_dist/weights/two_stage_split.txt"]
    if train_args:
        parts += _changed_options(json.loads(train_args["config"]), train_args)
    parts.append("--no-ray")
    return " ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="checkpoint or snapshot (.pt holding model and model_config)")
    p.add_argument("--out", default=str(REPO / "cbir_dist" / "weights" / "two_stage.pt"))
    p.add_argument("--metrics", help="the run's metrics.jsonl (its last validation at or before the step is recorded)")
    p.add_argument("--command", help="the exact training command (default: from the checkpoint, else run_long.sh's)")
    p.add_argument("--split-file", default=str(REPO / "cbir_dist" / "weights" / "two_stage_split.txt"))
    p.add_argument("--note", default="", help="free text recorded as 'note' (e.g. which run and why)")
    p.add_argument("--hardware", default="1 CPU thread (OMP_NUM_THREADS=1) of a 2-core machine shared with other jobs")
    args = p.parse_args(argv)
    import torch

    from cbir_dist.io.files import sha256_file
    from cbir_dist.training.checkpoints import export_weights
    from cbir_dist.training.job import PROTOTYPE_COMMAND

    state = torch.load(args.source, map_location="cpu", weights_only=True)
    train_args = json.loads(state["train_args"]) if "train_args" in state else None
    # a checkpoint of this package's loop holds its whole TrainConfig (``config``); the prototype's does not
    package = json.loads(state["config"]) if train_args is not None and "images_dirs" in train_args else None
    if package is not None:
        train_args = None
    step = int(state["step"])
    val = None
    if args.metrics:
        vals = [json.loads(ln) for ln in Path(args.metrics).read_text().splitlines() if ln.strip()]
        vals = [r for r in vals if r.get("kind") == "val" and r.get("step", 0) <= step]
        val = vals[-1] if vals else None
    split = Path(args.split_file)
    if package is not None:
        command = args.command or package_command(package)
        prov = {
            "command": command,
            "command_cwd": "the repository root",
            "argv": package.get("command"),
            "equivalent_command": command,
            # the checkpoint does not say whether Ray Train ran the loop: name only what it records
            "trained_with": "cbir-dist train-inpainter (cbir_dist/training/loop.py), "
                            f"{package.get('num_threads') or 1} CPU thread(s) per process",
            "steps": step,
            "schedule_steps": package["steps"],
            "data": [Path(d).name for d in package["images_dirs"]],
        }
    else:
        command = args.command or (prototype_command(train_args) if train_args else "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "
                                                                                      + PROTOTYPE_COMMAND)
        prov = {
            "command": command,
            "command_cwd": "/work/proto_inpaint (the prototype; PYTHONPATH=/work/wt-proto)" if train_args or not args.command else None,
            "equivalent_command": equivalent_command(train_args),
            "trained_with": "the prototype's train.py, one CPU thread (cbir_dist/training/loop.py is its port)",
            "steps": step,
            "schedule_steps": train_args["steps"] if train_args else 50_000,
            "data": [Path(d).name for d in train_args["data_dirs"]] if train_args else ["wang1000", "paris6k_subset"],
        }
    prov.update({
        "data_note": "every image of the data folders except the held-out split, native size",
        "split_file": split.name,
        "split_sha256": sha256_file(split),
        "final_validation": val,
        "training_seconds": state.get("elapsed_s"),
        "hardware": args.hardware,
        "note": args.note,
    })
    meta = export_weights(args.source, args.out, provenance=prov)
    print(json.dumps({k: meta[k] for k in ("step", "sha256", "command", "equivalent_command")}, indent=2))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
