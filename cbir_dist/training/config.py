"""The settings of one training run of the two-stage inpainter (saved into checkpoints and provenance)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run (saved into checkpoints and the provenance JSON)."""

    images_dirs: tuple[str, ...]
    out: str
    steps: int = 2000
    batch_size: int = 8
    crop: int = 128
    lr: float = 3e-4
    lr_final_fraction: float = 0.1  # cosine decay to lr * this at `steps`
    warmup_steps: int = 50
    seed: int = 0
    width: int = 32
    cache_short_side: int = 192
    val_fraction: float = 0.1
    val_split_file: str | None = None
    val_every: int = 250
    val_max_images: int = 64
    log_every: int = 10
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    vgg_weights: str | None = None
    vgg_pretrained: bool = True
    vgg_every: int = 4  # VGG style/correlation terms on every k-th step only (CPU budget)
    vgg_batch: int = 4  # ... and on the first `vgg_batch` images of that batch
    hole_weight: float = 6.0
    valid_weight: float = 1.0
    style_weight: float = 120.0
    correlation_weight: float = 1.0
    adversarial: bool = False
    adversarial_weight: float = 0.01
    fringe_probability: float = 0.7
    max_minutes: float | None = None
    num_threads: int | None = None
    command: str = ""

    def __post_init__(self):
        if not self.images_dirs:
            raise UsageError("images_dirs must name at least one class-per-folder image directory")
        for name in ("steps", "batch_size", "crop", "checkpoint_every", "val_every", "log_every", "vgg_every"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.crop % 8:
            raise UsageError(f"crop must be a multiple of 8 (the network's stride), got {self.crop}")
        if self.cache_short_side < self.crop:
            raise UsageError(f"cache_short_side ({self.cache_short_side}) must be >= crop ({self.crop})")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir or Path(self.out) / "checkpoints") / CHECKPOINT_NAME
