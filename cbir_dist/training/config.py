"""The settings of one training run of the two-stage inpainter (saved into checkpoints and provenance).

The defaults are those of the run that produced the shipped weights (the prototype's
``run_long.sh``; see docs/inpainting.md). Fields in :data:`NON_TRAINING_FIELDS` may change between
a run and its resumption (they do not touch the trajectory); any other difference is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError

CHECKPOINT_NAME = "checkpoint.pt"

#: Fields that do not change what is trained: a resumed run may use other values.
NON_TRAINING_FIELDS = frozenset({
    "out", "checkpoint_dir", "max_minutes", "steps_this_session", "checkpoint_minutes", "checkpoint_every",
    "log_every", "val_every", "val_images", "snapshot_every", "num_threads", "command",
})


def default_model_config() -> dict:
    """The shipped architecture (``two_stage_net.DEFAULT_CONFIG``), without importing torch."""
    return {"coarse_channels": 64, "coarse_blocks": 3, "refine_channels": 96, "refine_skip_channels": 32,
            "refine_blocks": 3, "global_ratio": 0.5, "half_channels": 16, "prefill": "telea",
            "prefill_radius": 5.0}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run.

    Batches are ``batch_size`` random square crops whose side is drawn per batch from
    ``[crop_min, crop_max]`` (multiples of 8), each with its own random mask (a fringe mask with
    probability ``fringe_prob``, else free-form) and its Telea pre-fill. The loss is
    :func:`cbir_dist.training.losses.loss_fn` (``loss`` "db" or "l1"). Adam (0.9, 0.99), linear
    warm-up over ``warmup`` steps, cosine decay to ``lr · lr_final`` at ``steps``, gradient-norm
    clipping at 1.
    """

    images_dirs: tuple[str, ...]
    out: str
    model_config: dict = field(default_factory=default_model_config)
    steps: int = 50_000
    batch_size: int = 8
    crop_min: int = 128
    crop_max: int = 192
    lr: float = 1e-3
    lr_final: float = 0.02  # final lr as a fraction of lr
    warmup: int = 200
    seed: int = 0
    fringe_prob: float = 0.75
    loss: str = "db"
    coarse_weight: float = 0.5
    db_weight: float = 0.25
    ssim_weight: float = 1.0
    ssim_batch: int = 4  # SSIM term on the first k images of a batch (CPU cost); 0 = all
    data_root: str | None = None  # folder the split file's paths are relative to (default: common parent)
    val_split_file: str | None = None
    val_fraction: float = 0.1  # when the split file does not exist yet: a seeded split of each class
    # --- not part of the trajectory
    checkpoint_dir: str | None = None
    checkpoint_minutes: float = 3.0
    checkpoint_every: int | None = None  # also every N steps (deterministic; tests)
    log_every: int = 50
    val_every: int = 1000
    val_images: int = 24
    snapshot_every: int = 5000
    max_minutes: float | None = None
    steps_this_session: int | None = None
    num_threads: int | None = 1
    command: str = ""

    def __post_init__(self):
        if not self.images_dirs:
            raise UsageError("images_dirs must name at least one class-per-folder image directory")
        for name in ("steps", "batch_size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("val_every", "snapshot_every", "warmup", "ssim_batch"):
            if int(getattr(self, name)) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.crop_min % 8 or self.crop_max % 8 or not 16 <= self.crop_min <= self.crop_max:
            raise UsageError(f"crop_min and crop_max must be multiples of 8 (the network's stride) with "
                             f"16 <= crop_min <= crop_max, got {self.crop_min}, {self.crop_max}")
        if self.loss not in ("db", "l1"):
            raise UsageError(f"loss must be 'db' or 'l1', got {self.loss!r}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.fringe_prob <= 1.0:
            raise UsageError(f"fringe_prob must lie in [0, 1], got {self.fringe_prob}")
        if self.num_threads is not None and self.num_threads < 0:
            raise UsageError(f"--threads must be 1 or more (or 0: the libraries' own choice), got {self.num_threads}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        unknown = set(self.model_config) - set(default_model_config())
        if unknown:
            raise UsageError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(default_model_config())}")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir or Path(self.out) / "checkpoints") / CHECKPOINT_NAME

    @property
    def full_model_config(self) -> dict:
        return {**default_model_config(), **self.model_config}

    def training_key(self) -> dict:
        """The fields that define the trajectory (compared on resume)."""
        d = asdict(self)
        d["images_dirs"] = list(d["images_dirs"])
        d["model_config"] = self.full_model_config
        return {k: v for k, v in d.items() if k not in NON_TRAINING_FIELDS}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "images_dirs": list(self.images_dirs)}, sort_keys=True)
