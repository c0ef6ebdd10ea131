"""The feature spec: which blocks make the fused vector, how each is normalised and weighted.

A :class:`FeatureSpec` is stored with the collection it built. Queries are described with the
collection's own spec, so a query can never be compared with vectors made another way; building a
query spec that differs raises :class:`~cbir_dist.errors.SpecMismatchError` naming the difference.

Fusion modes
------------
``paper``
    Plain concatenation of the raw blocks, as Taheri et al. describe (the 2048-d deep block dominates
    Euclidean distances by its size and scale).
``balanced``
    Each block is L2-normalised and multiplied by its weight, so that a block's influence on the
    distance is set by its weight, not by its dimension or value range. With weights w_b the squared
    distance is Σ_b w_b² ‖x_b/‖x_b‖ − y_b/‖y_b‖‖².
``standardized``
    Each feature is z-scored with a mean and standard deviation fitted on the indexed collection (and
    stored in the spec), then the block is weighted. Pande et al. scale their shape/texture features
    this way before KNN; it needs a fit pass over the collection (:meth:`FeatureSpec.fit`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from ..errors import SpecMismatchError, UsageError

NORMS = ("none", "l2", "zscore", "zscore+l2")
MODES = ("paper", "balanced", "standardized")
#: Version 2 fits ``zscore`` blocks with :class:`Standardizer` (a near-constant feature gets std 1);
#: version-1 specs (std floored at 1e-6) are read as they were stored: their fitted values are used as is.
SPEC_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEEP = "deep"
DEFAULT_STD_FLOOR = 1e-8


class Standardizer:
    """Per-feature mean and standard deviation accumulated over chunks of rows (one pass, O(dim) memory).

    ``update(x)`` adds a ``(n, dim)`` chunk (Chan et al.'s pairwise merge of means and sums of squared
    deviations, in float64); :meth:`result` gives ``(mean, std)``, population std (``ddof=0``). A
    feature whose std is at most ``std_floor * max(1, |mean|)`` is treated as constant and gets
    ``std = 1``, so it standardises to 0 instead of blowing up (as scikit-learn's ``StandardScaler``
    does). This is the one standardiser of the package: the fitted feature specs and the KNN
    evaluation both use it.
    """

    def __init__(self, std_floor: float = DEFAULT_STD_FLOOR):
        if not std_floor >= 0:
            raise UsageError(f"std_floor must be >= 0, got {std_floor!r}")
        self.std_floor = float(std_floor)
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, x) -> "Standardizer":
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < 1:
            raise UsageError(f"X must be a (N, D) array, got shape {x.shape}")
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise UsageError(f"X has {x.shape[1]} features, earlier chunks had {self._mean.shape[0]}")
        if not np.isfinite(x).all():
            raise UsageError("X contains NaN or infinity; drop or repair those rows before fitting")
        n_b = x.shape[0]
        if n_b == 0:
            return self
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self._mean is None:
            self.n, self._mean, self._m2 = n_b, mean_b, m2_b
            return self
        n = self.n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n
        return self

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` as float64 ``(D,)`` arrays; ``UsageError`` before any row was added."""
        if self._mean is None or self.n < 1:
            raise UsageError("X must be a non-empty (N, D) array: no rows were added to the standardizer")
        mean = self._mean.copy()
        std = np.sqrt(np.maximum(self._m2 / self.n, 0.0))
        constant = std <= self.std_floor * np.maximum(1.0, np.abs(mean))
        return mean, np.where(constant, 1.0, std)


def fit_standardizer(X, std_floor: float = DEFAULT_STD_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of ``X`` (N, D): :class:`Standardizer` on one chunk."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise UsageError(f"X must be a non-empty (N, D) array, got shape {X.shape}")
    return Standardizer(std_floor).update(X).result()


def apply_standardizer(X, mean, std) -> np.ndarray:
    """``(X - mean) / std`` as float32, shape (N, D) (or (D,) for one vector)."""
    X = np.asarray(X, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.ndim != 1 or std.shape != mean.shape:
        raise UsageError(f"mean and std must be (D,) arrays of the same shape, got {mean.shape} and {std.shape}")
    if X.shape[-1] != mean.shape[0] or X.ndim not in (1, 2):
        raise UsageError(f"X has shape {X.shape}; its last axis must have {mean.shape[0]} features")
    if not (std > 0).all():
        raise UsageError("std must be positive; use fit_standardizer, which sets it to 1 for constant features")
    return ((X - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class Block:
    """One block of the fused vector.

    Parameters
    ----------
    name : str
        ``"deep"`` or a descriptor name from :mod:`cbir_dist.descriptors`.
    dim : int
        Length of the block's feature vector.
    weight : float
        Multiplier applied after normalisation.
    norm : {"none", "l2", "zscore", "zscore+l2"}
        Per-block normalisation; ``zscore`` needs fitted ``mean``/``std``.
    params : dict
        How to compute the block: descriptor keyword arguments, or for ``deep`` the backbone
        ``name``, ``weights`` description and ``image_size``.
    mean, std : tuple of float or None
        Fitted standardisation statistics (``zscore`` norms only).
    """

    name: str
    dim: int
    weight: float = 1.0
    norm: str = "none"
    params: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.dim <= 0:
            raise UsageError(f"block {self.name!r}: dim must be positive, got {self.dim}")
        if self.norm not in NORMS:
            raise UsageError(f"block {self.name!r}: norm must be one of {NORMS}, got {self.norm!r}")
        if not np.isfinite(self.weight) or self.weight < 0:
            raise UsageError(f"block {self.name!r}: weight must be finite and >= 0, got {self.weight}")
        for stat in (self.mean, self.std):
            if stat is not None and len(stat) != self.dim:
                raise UsageError(f"block {self.name!r}: fitted stats have length {len(stat)}, expected {self.dim}")

    @property
    def needs_fit(self) -> bool:
        return self.norm.startswith("zscore") and self.mean is None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise and weight a ``(N, dim)`` array of this block's raw features."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise SpecMismatchError(
                f"block {self.name!r} expects features of shape (N, {self.dim}), got {x.shape}"
            )
        if self.norm.startswith("zscore"):
            if self.mean is None:
                raise UsageError(f"block {self.name!r} uses zscore but has no fitted stats: call spec.fit(features) first")
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.norm.endswith("l2"):
            n = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(n, 1e-12)
        return (x * np.float32(self.weight)).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dim": self.dim, "weight": self.weight, "norm": self.norm, "params": dict(self.params)}
        if self.mean is not None:
            d["mean"] = [float(v) for v in self.mean]
            d["std"] = [float(v) for v in self.std]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Block":
        return cls(
            name=d["name"],
            dim=int(d["dim"]),
            weight=float(d.get("weight", 1.0)),
            norm=d.get("norm", "none"),
            params=dict(d.get("params", {})),
            mean=tuple(d["mean"]) if d.get("mean") is not None else None,
            std=tuple(d["std"]) if d.get("std") is not None else None,
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Ordered blocks and the fusion mode that turn per-block features into one vector."""

    blocks: tuple[Block, ...]
    mode: str = "balanced"
    profile: str = ""

    def __post_init__(self):
        if not self.blocks:
            raise UsageError("a FeatureSpec needs at least one block (a backbone or a descriptor)")
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise UsageError(f"duplicate block names in spec: {names}")
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def dim(self) -> int:
        return sum(b.dim for b in self.blocks)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r} in spec (blocks: {self.names})")

    @property
    def deep(self) -> Block | None:
        return next((b for b in self.blocks if b.name == DEEP), None)

    @property
    def needs_fit(self) -> bool:
        return any(b.needs_fit for b in self.blocks)

    def fit(self, features: Mapping[str, np.ndarray]) -> "FeatureSpec":
        """Return a copy whose ``zscore`` blocks carry mean/std fitted on ``features`` (name → (N, dim))."""
        fitters = self.standardizers()
        for name, st in fitters.items():
            x = np.asarray(features[name], dtype=np.float64)
            if x.ndim != 2 or x.shape[0] < 2:
                raise UsageError(f"fitting block {name!r} needs at least 2 rows, got shape {x.shape}")
            st.update(x)
        return self.with_fitted(fitters)

    def standardizers(self) -> dict[str, Standardizer]:
        """One empty :class:`Standardizer` per ``zscore`` block, to fit in chunks (see :meth:`with_fitted`)."""
        return {b.name: Standardizer() for b in self.blocks if b.norm.startswith("zscore")}

    def with_fitted(self, fitted: Mapping[str, Standardizer]) -> "FeatureSpec":
        """A copy whose ``zscore`` blocks carry the statistics of the given fitted standardizers."""
        blocks = []
        for b in self.blocks:
            if b.name in fitted:
                if fitted[b.name].n < 2:
                    raise UsageError(f"fitting block {b.name!r} needs at least 2 rows, got {fitted[b.name].n}")
                mean, std = fitted[b.name].result()
                b = replace(b, mean=tuple(mean.tolist()), std=tuple(std.tolist()))
            blocks.append(b)
        return replace(self, blocks=tuple(blocks))

    def fuse(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the normalised, weighted blocks: name → (N, dim) arrays to one (N, self.dim) float32 array."""
        missing = [b.name for b in self.blocks if b.name not in features]
        if missing:
            raise SpecMismatchError(f"features for blocks {missing} are missing (spec blocks: {self.names})")
        parts = [b.apply(features[b.name]) for b in self.blocks]
        n = {p.shape[0] for p in parts}
        if len(n) != 1:
            raise UsageError(f"blocks have different row counts: {sorted(n)}")
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

    # --- serialisation and comparison -------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "version": SPEC_VERSION,
            "mode": self.mode,
            "profile": self.profile,
            "dim": self.dim,
            "blocks": [b.to_dict() for b in self.blocks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecMismatchError(f"stored feature spec is not valid JSON ({exc}); re-index the collection") from exc
        if d.get("version") not in READABLE_VERSIONS:
            raise SpecMismatchError(
                f"stored feature spec has version {d.get('version')}, this cbir_dist reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-index the collection with --overwrite"
            )
        return cls(
            blocks=tuple(Block.from_dict(b) for b in d["blocks"]), mode=d["mode"], profile=d.get("profile", "")
        )

    def recipe(self) -> dict:
        """The spec without fitted statistics: what must match between an index and a query request."""
        d = self.to_dict()
        for b in d["blocks"]:
            b.pop("mean", None)
            b.pop("std", None)
        return d

    def check_compatible(self, requested: "FeatureSpec", *, job: str = "query") -> None:
        """Raise :class:`SpecMismatchError` if ``requested`` would build vectors differently from ``self``.

        ``job`` (``query`` or ``index``) words the advice: a query uses the collection's settings, an
        index job can also rebuild the collection with ``--overwrite``.
        """
        mine, theirs = self.recipe(), requested.recipe()
        if mine == theirs:
            return
        diffs = []
        if mine["mode"] != theirs["mode"]:
            diffs.append(f"fusion mode {theirs['mode']!r} != collection's {mine['mode']!r}")
        if [b["name"] for b in mine["blocks"]] != [b["name"] for b in theirs["blocks"]]:
            diffs.append(
                f"blocks {[b['name'] for b in theirs['blocks']]} != collection's {[b['name'] for b in mine['blocks']]}"
            )
        else:
            for a, b in zip(mine["blocks"], theirs["blocks"]):
                for key in ("dim", "weight", "norm", "params"):
                    if a[key] != b[key]:
                        diffs.append(f"block {a['name']!r} {key}: requested {b[key]!r}, collection has {a[key]!r}")
        found = "; ".join(diffs or ["profile differs"])
        if job == "index":
            raise SpecMismatchError(
                f"the requested feature spec differs from the one the collection was built with: {found}. "
                "Index with the collection's own settings (omit --profile/--backbone/--weights/--descriptors/"
                "--fusion), pass --overwrite to rebuild the collection with the new ones, or give another "
                "--collection.")
        raise SpecMismatchError(
            "the query's feature spec differs from the collection's: " + found
            + ". Query with the collection's own settings (omit --backbone/--descriptors/--fusion), "
            "or re-index with the new ones into another collection."
        )
