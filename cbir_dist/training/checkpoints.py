"""Checkpoints of a training run (atomic, bit-exact resume), snapshots, and the exported weights with provenance.

A checkpoint holds the model, the optimizer, the step, every RNG state, the model config and the
training key (:meth:`TrainConfig.training_key`), written to a temporary name and renamed into
place, so a run killed at any point resumes bit-for-bit from its last one. The same layout
(``model``, ``optimizer``, ``step``, ``numpy_rng`` as JSON, ``torch_rng``, ``model_config``,
``train_args``, ``elapsed_s``) as the prototype's ``train.py``, so :func:`export_weights` reads both
(resuming is refused across the two: their ``train_args`` name the settings differently).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UsageError, WeightsError
from ..io.files import sha256_file
from ..io.tables import atomic_path, write_text
from .config import TrainConfig


def _unwrap(model):
    return getattr(model, "module", model)


def save_checkpoint(path, *, model, optimizer, step: int, rng: np.random.Generator, config: TrainConfig,
                    elapsed_s: float = 0.0) -> None:
    """Write model, optimizer, step and RNG states atomically (temporary file, fsync, ``os.replace``)."""
    import torch

    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "numpy_rng": json.dumps(rng.bit_generator.state),  # JSON keeps the file loadable with weights_only=True
        "torch_rng": torch.get_rng_state(),
        "model_config": config.full_model_config,
        "train_args": json.dumps(config.training_key(), sort_keys=True),
        "config": config.to_json(),
        "elapsed_s": float(elapsed_s),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, *, model, optimizer, rng: np.random.Generator, config: TrainConfig | None = None) -> dict:
    """Restore a :func:`save_checkpoint` file in place; returns ``{"step", "elapsed_s"}``.

    With ``config``, a checkpoint written with other training settings is refused
    (:class:`~cbir_dist.errors.UsageError` naming the differences).
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if config is not None:
        saved = json.loads(state["train_args"])
        mine = config.training_key()
        diff = {k: (saved.get(k), mine.get(k)) for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)}
        if diff:
            raise UsageError(f"{path} was written with other training settings (saved, now): {diff}; "
                             "use another --out (or --checkpoint-dir) or the same settings")
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return {"step": int(state["step"]), "elapsed_s": float(state.get("elapsed_s", 0.0))}


def save_snapshot(path, *, model, config: dict, step: int) -> None:
    """The model alone at ``step`` (``{"model", "model_config", "step"}``), written atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"model": _unwrap(model).state_dict(), "model_config": dict(config), "step": int(step)}, tmp)


def export_weights(source, weights_path, *, provenance: dict | None = None) -> dict:
    """Export the model of a checkpoint or snapshot (this package's or the prototype's) as shipped weights.

    Writes ``weights_path`` (a float32 state dict) and ``<weights_path>.json``: the architecture
    and its config (which :func:`cbir_dist.damage.inpaint.two_stage.load_two_stage` builds), the
    step, the training settings found in the source, ``provenance`` (command, data, split, ...)
    and the sha256 of the written file. Returns the JSON's dict.
    """
    import torch

    source = Path(source)
    if Path(weights_path).suffix.lower() == ".json":  # the provenance goes to WEIGHTS.json beside it
        raise UsageError(f"--weights-out {weights_path}: the provenance is written beside the weights as "
                         f"{Path(weights_path).with_suffix('.json').name}; name the weights file e.g. two_stage.pt")
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise WeightsError(f"{source}: not a training checkpoint or snapshot (no 'model' and 'model_config')")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    with atomic_path(weights_path) as tmp:
        torch.save(sd, tmp)
    train_args = json.loads(state["train_args"]) if "train_args" in state else None
    meta = {
        "model": {"architecture": "ResidualTwoStageNet", "config": dict(state["model_config"]), "stride": 8,
                  "parameters": int(sum(v.numel() for v in sd.values() if v.is_floating_point()))},
        "step": int(state["step"]),
        "training_settings": train_args,
        "source": {"file": str(source), "sha256": sha256_file(source)},
        "dtype": "float32",
    }
    meta.update(provenance or {})
    meta["sha256"] = sha256_file(weights_path)
    write_text(Path(weights_path).with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta
