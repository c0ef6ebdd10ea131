"""The damage-and-reconstruct step: the one path of index, query, evaluate and the demo, on both backends.

An image is *damaged* by a known-pixel mask (its missing pixels zeroed: the paper's ``M ⊙ I``) and
*reconstructed* by an inpainter. The mask is a fringe pattern (``--fringe HZ``) or a per-file mask
from a folder (``--masks DIR``: the file of the same relative path, or the same name, as PNG). With
``--detect-mask`` the mask is *estimated* from the photo itself (:mod:`.detect`): the photo as it
comes, or after ``--fringe``/``--masks`` damaged it (to measure what not knowing the mask costs).
:class:`DamageTransform` is that step as one picklable object: the ``(image, path) -> image`` hook
the index backends apply to every decoded image (inside Ray CPU tasks on the Ray backend), and
:meth:`~DamageTransform.damage`, which returns the damaged image beside the reconstruction
(:class:`Damaged`) for the query job's page. :func:`apply_transform`, :func:`damage_record` and
:func:`prepare_record` apply it to a record under the one per-file rule (a failure rejects the file).

A *network* inpainter (``two-stage``) is applied in two halves on the Ray backend and in the
evaluation job: :meth:`DamageTransform.prepare` (CPU tasks: the mask, the damage and the network's
classical pre-fill) and :class:`NetworkStage` (actors: the network on batches of pre-filled images,
weights loaded once per actor, a GPU each when the cluster has them; :meth:`NetworkStage.refine_each`
retries a failed batch one image at a time). The halves compose to the same image as the one-call
step of the local backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError, UsageError
from ..io.text import os_path


@dataclass(frozen=True)
class DamageConfig:
    """How images are damaged and reconstructed; inactive (``active`` is False) when none of
    ``fringe``, ``masks_dir`` and ``detect_mask`` is given.

    ``detect_mask``: reconstruct through the mask :func:`~cbir_dist.damage.detect.estimate_known_mask`
    finds in the image (after the ``fringe``/``masks_dir`` damage, when one is given).

    ``root`` is the folder the images' paths are relative to, for finding their masks in
    ``masks_dir`` by relative path. An unknown ``inpainter`` is a usage error here, before any image.
    """

    fringe: float | None = None
    masks_dir: str | None = None
    missing_fraction: float = 0.25
    angle: float = 0.0
    phase: float = 0.0
    inpainter: str = "none"
    root: str | None = None
    detect_mask: bool = False

    def __post_init__(self):
        from .inpaint import available_inpainters

        if self.fringe is not None and self.masks_dir is not None:
            raise UsageError("give either --fringe HZ or --masks DIR, not both")
        if self.fringe is not None and not (self.fringe > 0 and math.isfinite(self.fringe)):
            raise UsageError(f"--fringe must be a positive frequency in Hz (fringes per image), got {self.fringe}")
        if not 0.0 < self.missing_fraction < 1.0:
            raise UsageError(f"--missing-fraction must lie in (0, 1), got {self.missing_fraction}")
        for name in ("angle", "phase"):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"--{name} must be a finite number, got {getattr(self, name)}")
        if self.inpainter not in available_inpainters():
            raise UsageError(f"--inpainter {self.inpainter!r} is unknown; choose one of "
                             f"{', '.join(available_inpainters())}")
        if self.masks_dir is not None and not Path(os_path(self.masks_dir)).is_dir():
            raise InputError(f"--masks {self.masks_dir}: no such folder (it should hold one mask image per "
                             "image, of the same name: white = known, black = missing)")

    @property
    def active(self) -> bool:
        return self.fringe is not None or self.masks_dir is not None or self.detect_mask

    def describe(self) -> dict:
        """What a job records of its damage step (``stats.json``, a collection's run history): the mask
        source, the inpainter and, with ``detect_mask``, the estimator's weights and their sha256."""
        out: dict = {"fringe": self.fringe, "masks": self.masks_dir, "inpainter": self.inpainter,
                     "detect_mask": self.detect_mask}
        if self.fringe is not None:
            out.update(missing_fraction=self.missing_fraction, angle=self.angle, phase=self.phase)
        if self.detect_mask:
            from .detect import estimator_identity

            out["mask_estimator"] = estimator_identity()
        return out


def known_mask(shape: tuple[int, ...], path: str, config: DamageConfig) -> np.ndarray | None:
    """The known-pixel mask of one image: a fringe pattern, a file from the masks folder, or None (intact).

    Raises :class:`~cbir_dist.errors.InputError` when ``--masks`` has no mask for ``path`` and
    ``ValueError`` (or :class:`~cbir_dist.errors.ImageDecodeError`) when the mask file is unusable:
    per-file failures that the jobs record as the file's error.
    """
    from .masks import fringe_mask, load_mask

    h, w = shape[:2]
    if config.fringe is not None:
        return fringe_mask(h, w, config.fringe, config.missing_fraction, angle=config.angle, phase=config.phase)
    if config.masks_dir is None:
        return None
    rel = _relative(path, config.root)
    base = Path(config.masks_dir)
    for candidate in (base / rel, base / rel.with_suffix(".png"), base / Path(rel.name).with_suffix(".png"),
                      base / rel.name):
        candidate = Path(os_path(str(candidate)))  # the text form of a non-UTF-8 name back to the file's
        if candidate.exists() and not candidate.is_dir():  # a FIFO is found, then refused by load_mask
            return load_mask(candidate, shape=(h, w))
    raise InputError(f"no mask for {path} in {config.masks_dir} (looked for {rel} and {rel.name} as .png)")


def _relative(path: str, root: str | None) -> Path:
    if root:
        try:
            return Path(path).relative_to(root)
        except ValueError:
            pass
    return Path(Path(path).name)


@dataclass(frozen=True)
class Damaged:
    """One image after the damage step, as values: ``damaged`` (its missing pixels zeroed, ``M ⊙ I``)
    and ``reconstructed`` (inpainted); both the image itself when it is intact (no mask). ``known`` is
    the mask it was reconstructed through (None when intact); with ``--detect-mask`` the estimated one."""

    damaged: np.ndarray
    reconstructed: np.ndarray
    known: np.ndarray | None = None

    @property
    def missing_fraction(self) -> float:
        """Share of the image's pixels that were missing (0.0 when intact)."""
        return 0.0 if self.known is None else float(1.0 - self.known.mean())


class DamageTransform:
    """The damage-and-reconstruct step: mask, damage, reconstruct, as one picklable object.

    ``hook(image, path)`` returns the reconstruction (the ``(image, path) -> image`` hook of the index
    backends); :meth:`damage` returns the damaged image as well (:class:`Damaged`, for the query page);
    :meth:`prepare` and :meth:`network_stage` are a network inpainter's two halves (CPU tasks, then
    actors), and :meth:`zero_fill` and :meth:`cpu_half` the parts of :meth:`prepare`, for a job that
    keeps the damaged image when the inpainter fails on it (the evaluation).

    ``roots`` maps an image's path to the folder its mask path is relative to (``--masks`` with
    queries from several folders); paths not in it use ``config.root``. The inpainter is built on
    first use, in the process that runs the step (a Ray worker loads a network's weights once, not
    once per image), or by :meth:`load`.
    """

    def __init__(self, config: DamageConfig, roots: Mapping[str, str | None] | None = None):
        if not config.active:
            raise UsageError("DamageTransform needs --fringe, --masks or --detect-mask")
        self.config = config
        self.roots = dict(roots or {})
        self._configs: dict[str | None, DamageConfig] = {config.root: config}
        self._inpainter = None
        self._whole = None
        self._estimator = None

    def __getstate__(self):
        return {**self.__dict__, "_inpainter": None, "_whole": None, "_estimator": None}

    @property
    def network(self) -> bool:
        """True when the inpainter is a network: jobs that batch it call :meth:`prepare`, then a :class:`NetworkStage`."""
        from .inpaint import is_network

        return is_network(self.config.inpainter)

    def load(self) -> "DamageTransform":
        """Build the inpainter now (a network's weights too), in this process: a job that runs the whole
        step here fails before its first image, not on every image, when the inpainter cannot be built."""
        self._cpu_inpainter()
        if self.network:
            self._network().load()
        if self.config.detect_mask:
            self._mask_estimator()
        return self

    def load_estimator(self) -> "DamageTransform":
        """Load the mask estimator now (with ``detect_mask``; nothing otherwise), not the inpainter: for a
        process that only finds the masks (the query job's driver on the Ray backend)."""
        if self.config.detect_mask:
            self._mask_estimator()
        return self

    def _mask_estimator(self):
        """The mask estimator, loaded once per process (in the process that runs the step)."""
        if self._estimator is None:
            from .detect import default_estimator

            self._estimator = default_estimator()
        return self._estimator

    def _cpu_inpainter(self):
        if self._inpainter is None:
            from .inpaint import get_inpainter, get_prefill

            name = self.config.inpainter
            # the CPU half of a network is only its classical pre-fill: no weights, no torch
            self._inpainter = get_prefill(name) if self.network else get_inpainter(name)
        return self._inpainter

    def _network(self) -> "NetworkStage":
        if self._whole is None:
            self._whole = self.network_stage()
        return self._whole

    def known(self, image: np.ndarray, path: str = "") -> np.ndarray | None:
        """The known-pixel mask of ``image`` (:func:`known_mask`; ``path`` finds its ``--masks`` file)."""
        root = self.roots.get(path, self.config.root)
        if root not in self._configs:
            self._configs[root] = replace(self.config, root=root)
        return known_mask(image.shape, path, self._configs[root])

    def estimate(self, image: np.ndarray) -> np.ndarray | None:
        """The mask the estimator finds in ``image``; None when it finds nothing missing."""
        known = self._mask_estimator()(image)
        return None if known.all() else known

    def zero_fill(self, image: np.ndarray, path: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        """``(damaged, known)``: ``image`` with the missing pixels of its mask zeroed, and the mask;
        ``(image, None)`` when it is intact.

        With ``detect_mask`` the mask is the one estimated in the image after the ``--fringe`` or
        ``--masks`` damage (if any); its pixels are zeroed as any other mask's."""
        from .masks import apply_mask

        known = self.known(image, path)
        damaged = image if known is None else apply_mask(image, known)
        if self.config.detect_mask:
            known = self.estimate(damaged)
            damaged = damaged if known is None else apply_mask(damaged, known)
        return damaged, known

    def cpu_half(self, damaged: np.ndarray, known: np.ndarray) -> np.ndarray:
        """What a CPU task makes of a damaged image: a classical inpainter's reconstruction, or a network's
        classical pre-fill (RGB), for :meth:`NetworkStage.refine` to finish."""
        return self._cpu_inpainter()(damaged, known)

    def damage(self, image: np.ndarray, path: str = "") -> Damaged:
        """The whole step in this process, both images as values (a network runs here, one image at a time)."""
        damaged, known = self.zero_fill(image, path)
        if known is None:
            return Damaged(damaged, damaged)
        filled = self.cpu_half(damaged, known)
        if self.network:
            filled = self._network().refine([filled], [known], [damaged])[0]
        return Damaged(damaged, filled, known)

    def __call__(self, image: np.ndarray, path: str) -> np.ndarray:
        """The reconstruction of :meth:`damage`: the ``(image, path) -> image`` hook."""
        return self.damage(image, path).reconstructed

    def prepare(self, image: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The CPU half: ``(image to hand on, known mask or None)``.

        For a network inpainter: its classical pre-fill of the damaged image (RGB) and the mask, for
        a :class:`NetworkStage` to refine; for a classical one: the reconstruction itself and None.
        An intact image (no mask) comes back unchanged with None.
        """
        damaged, known = self.zero_fill(image, path)
        if known is None:
            return damaged, None
        filled = self.cpu_half(damaged, known)
        return (filled, known) if self.network else (filled, None)

    def network_stage(self) -> "NetworkStage":
        """The network half, for an actor (picklable; loads its weights on first use)."""
        if not self.network:
            raise UsageError(f"inpainter {self.config.inpainter!r} is not a network")
        return NetworkStage(self.config.inpainter)


class NetworkStage:
    """The network half of a network inpainter: built once (an actor's ``__init__``), then batches.

    ``stage.refine(prefilled, known, originals=None)`` takes lists of pre-filled RGB uint8 images
    and their bool masks (any sizes; one batch per size) and returns the reconstructions; with
    ``originals`` (the damaged images) each result takes its original's layout (grey stays grey)
    and known pixels; without, the known pixels of the pre-fill (which are the original's).
    """

    def __init__(self, inpainter: str, *, device: str | None = None, num_threads: int | None = None, **options):
        self.inpainter, self.device, self.num_threads, self.options = inpainter, device, num_threads, options
        self._net = None

    def __getstate__(self):
        return {**self.__dict__, "_net": None}

    def load(self):
        """The network (built on first call: weights read once per process)."""
        if self._net is None:
            from .inpaint import get_inpainter

            self._net = get_inpainter(self.inpainter, device=self.device, num_threads=self.num_threads, **self.options)
        return self._net

    def refine(self, prefilled, known, originals=None) -> list[np.ndarray]:
        from .inpaint.two_stage import finish

        net = self.load()
        rgb = [p if p.ndim == 3 and p.shape[2] == 3 else np.repeat(p.reshape(p.shape[:2])[..., None], 3, axis=2)
               for p in map(np.asarray, prefilled)]
        refined = net.refine_batch(rgb, list(known))
        bases = originals if originals is not None else prefilled
        return [finish(np.asarray(b), k, r) for b, k, r in zip(bases, known, refined)]

    def refine_each(self, prefilled, known, originals=None) -> list[np.ndarray | Exception]:
        """:meth:`refine` on the whole batch (one forward per image size) or, if that fails, on one image
        at a time, so that a bad image costs only itself: its entry is then the exception it raised.

        The one batch-then-single fallback of the jobs (the Ray graph's actors, the evaluation's).
        """
        try:
            return self.refine(prefilled, known, originals)
        except Exception:  # noqa: BLE001 - find the image that fails, keep the others
            pass
        out: list[np.ndarray | Exception] = []
        for i in range(len(prefilled)):
            try:
                out.append(self.refine([prefilled[i]], [known[i]], None if originals is None else [originals[i]])[0])
            except Exception as exc:  # noqa: BLE001 - a per-image failure is a value
                out.append(exc)
        return out


def apply_transform(record, transform) -> None:
    """Apply the hook to one ok record in place; a failure on this file rejects it with the reason.

    The one per-file rule of every job: a missing or corrupt mask, or an inpainter failing on one
    image, is that file's ``errors.parquet`` row, never a failed job.
    """
    try:
        record.image = transform(record.image, record.path)
    except Exception as exc:  # noqa: BLE001 - a per-file failure is a value, not a failed job
        record.reject(f"mask/inpaint failed: {_reason(exc)}")


def damage_record(record, transform: DamageTransform | None) -> Damaged | None:
    """The whole step on one ok record, as values (:meth:`DamageTransform.damage`; the record keeps the
    image as read); with no ``transform`` the image is intact. On a failure the record is rejected
    with the reason (the rule of :func:`apply_transform`) and None returned."""
    if transform is None:
        return Damaged(record.image, record.image)
    try:
        return transform.damage(record.image, record.path)
    except Exception as exc:  # noqa: BLE001 - a per-file failure is a value, not a failed job
        record.reject(f"mask/inpaint failed: {_reason(exc)}")
        return None


def prepare_record(record, transform) -> np.ndarray | None:
    """The CPU half of the hook on one ok record in place (:meth:`DamageTransform.prepare`); returns its mask
    when a network must still refine it, else None. A failure rejects the record with the reason."""
    try:
        record.image, known = transform.prepare(record.image, record.path)
        return known
    except Exception as exc:  # noqa: BLE001 - a per-file failure is a value, not a failed job
        record.reject(f"mask/inpaint failed: {_reason(exc)}")
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    known = (OSError, ValueError, TypeError)
    return text if isinstance(exc, known) or type(exc).__module__.startswith("cbir_dist") else f"{type(exc).__name__}: {text}"


def damage_transform(config: DamageConfig, roots: Mapping[str, str | None] | None = None) -> DamageTransform | None:
    """The step for ``config`` (masks relative to ``roots[path]``, else ``config.root``), or None when
    nothing is damaged."""
    return DamageTransform(config, roots) if config.active else None
