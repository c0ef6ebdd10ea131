"""Checkpoints of a training run (atomic, bit-exact resume) and the exported weights with their provenance.

A checkpoint holds the model, the optimizer, the step and every RNG state, written to a temporary
name and renamed into place, so a run killed at any point resumes bit-for-bit from its last one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io.files import sha256_file
from ..io.tables import atomic_path, write_text
from .config import TrainConfig


def save_checkpoint(path, *, model, optimizer, step: int, rng: np.random.Generator, config: TrainConfig,
                    discriminator=None, d_optimizer=None, extra: dict | None = None) -> None:
    """Write model, optimizer, step and RNG states atomically (``path.tmp`` then ``os.replace``)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "numpy_rng": json.dumps(rng.bit_generator.state),  # JSON keeps the file loadable with weights_only=True
        "torch_rng": torch.get_rng_state(),
        "config": asdict(config),
        "extra": extra or {},
    }
    if discriminator is not None:
        state["discriminator"] = _unwrap(discriminator).state_dict()
        state["d_optimizer"] = d_optimizer.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, *, model, optimizer, rng: np.random.Generator, discriminator=None, d_optimizer=None,
                    extra_out: dict | None = None) -> int:
    """Restore a :func:`save_checkpoint` file in place; returns the step to continue from.

    ``extra_out``, when given, is updated with the checkpoint's ``extra`` dict.
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    if extra_out is not None:
        extra_out.update(state.get("extra", {}))
    if discriminator is not None and "discriminator" in state:
        _unwrap(discriminator).load_state_dict(state["discriminator"])
        d_optimizer.load_state_dict(state["d_optimizer"])
    return int(state["step"])


def _unwrap(model):
    return getattr(model, "module", model)


def export_weights(checkpoint_path, weights_path, *, provenance: dict | None = None, half: bool = False) -> dict:
    """Write a checkpoint's model state dict (only) and its provenance JSON ``<weights>.json``.

    The JSON records ``sha256`` of the .pt, which :func:`cbir_dist.damage.inpaint.two_stage.load_two_stage`
    checks, and ``model: {width}``. Returns the provenance dict.
    """
    import torch

    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    sd = {k: (v.half() if half and v.is_floating_point() else v) for k, v in state["model"].items()}
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights_path) as tmp:
        torch.save(sd, tmp)
    cfg = state["config"]
    meta = {
        "model": {"architecture": "TwoStageNet", "width": cfg["width"], "stride": 8,
                  "parameters": int(sum(v.numel() for v in sd.values()))},
        "steps": state["step"],
        "batch_size": cfg["batch_size"],
        "crop": cfg["crop"],
        "lr": cfg["lr"],
        "seed": cfg["seed"],
        "cache_short_side": cfg["cache_short_side"],
        "data": [Path(d).name for d in cfg["images_dirs"]],
        "config": cfg,
        "dtype": "float16" if half else "float32",
    }
    meta.update(provenance or {})
    meta["sha256"] = sha256_file(weights_path)
    write_text(weights_path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta
