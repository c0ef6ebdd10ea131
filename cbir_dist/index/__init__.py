"""The index job: a folder of labelled images → fused vectors in a Milvus collection, resumable.

:func:`run_index` picks a backend; both drive the same run contract (:mod:`.run`), so their
outputs are identical: ``local`` (:mod:`.local`) computes features in this process, ``ray``
(:mod:`.cluster`) streams them from the Ray Data graph of :mod:`cbir_dist.distributed.graph`.
"""

from __future__ import annotations

from ..features.spec import FeatureSpec
from .run import ImageTransform, IndexConfig, IndexSummary


def run_index(spec: FeatureSpec, config: IndexConfig, *, store=None, transform: ImageTransform | None = None,
              processor_factory=None) -> IndexSummary:
    """Index ``config.images_dir`` into the collection on ``config.backend``.

    ``transform`` is the optional damage-and-reconstruct hook (see :data:`.run.ImageTransform`; a
    :class:`~cbir_dist.damage.hook.DamageTransform` is recorded in ``stats.json`` and the run history
    as ``config.damage`` when that is not given);
    ``processor_factory`` replaces the local backend's :class:`.local.ShardProcessor` (tests).
    Raises :class:`~cbir_dist.errors.InputError` when there is nothing to index and
    :class:`~cbir_dist.errors.StoreError` when the store fails: a job-level failure. Individual bad
    files never raise; they are counted and listed in ``errors.parquet``.
    """
    describe = getattr(getattr(transform, "config", None), "describe", None)
    if config.damage is None and callable(describe):  # a DamageTransform: record what it does
        from dataclasses import replace

        config = replace(config, damage=describe())
    if config.backend == "ray" and processor_factory is None:
        from .cluster import run_index_ray

        return run_index_ray(spec, config, store=store, transform=transform)
    from .local import run_index_local

    return run_index_local(spec, config, store=store, transform=transform, processor_factory=processor_factory)


__all__ = ["IndexConfig", "IndexSummary", "run_index"]
