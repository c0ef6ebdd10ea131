"""The phased commit of specs fitted on the whole collection (the standardised shape/texture profiles).

Such a spec cannot fuse a vector before it has seen every image, so its rows are written after the
shards, in phases, each of which a rerun either trusts or redoes:

1. **features saved** — every shard's raw per-block features in ``shards/NNNNN.features.parquet``
   and its marker (phase ``features``), bound to the target like every marker;
2. **statistics fitted and stored** — one streaming pass over the saved features (the package's
   :class:`~cbir_dist.features.spec.Standardizer`, O(dim) memory) gives the fitted spec, recorded in
   ``fit.json``; the collection is then created with it, so the statistics travel with the rows
   (a collection that exists already keeps its own: rows written with them stay comparable);
3. **rows upserted and flushed** — a second pass fuses each shard's features and writes them
   (``upsert``, idempotent by id, so a concurrent or repeated commit never doubles a row), then flushes;
4. **commit marker** — ``commit.json``: the target, the shards it covers, the fitted spec's digest
   and the row count.

A rerun after a crash anywhere finds the phases done so far and redoes the rest: writes are keyed
by content id, so redone writes never duplicate a row, and the read-back check at the end of the
run (:mod:`.summary`) proves one row per valid image before the summary is printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..errors import StoreError, UsageError
from ..features.spec import FeatureSpec
from ..io import records as C
from ..io.tables import read_json, read_parquet, write_json
from .faults import fault
from .target import spec_digest

if TYPE_CHECKING:
    from .plan import RunPlan

log = logging.getLogger(__name__)

FIT_MARKER = "fit.json"
COMMIT_MARKER = "commit.json"
WRITE_BATCH = 4096  # rows fused and written per request group


def _shards_digest(run: "RunPlan") -> str:
    keys = json.dumps([s.key for s in run.shards], sort_keys=True)
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def _valid(path, expect: dict) -> dict | None:
    try:
        marker = read_json(path)
    except (OSError, ValueError):
        return None
    return marker if all(marker.get(k) == v for k, v in expect.items()) else None


def _feature_chunks(run: "RunPlan", names: list[str]) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """``(rows {id, path, label}, block name -> (n, dim))`` per shard, each id once over the whole run."""
    seen: set[int] = set()
    for shard in run.shards:
        if not shard.features.exists():
            continue
        t = read_parquet(shard.features)
        keep = [j for j, i in enumerate(t[C.ID]) if i not in seen]
        seen.update(t[C.ID][j] for j in keep)
        if not keep:
            continue
        meta = {c: [t[c][j] for j in keep] for c in (C.ID, C.PATH, C.LABEL)}
        yield meta, {n: np.asarray([t[C.block_column(n)][j] for j in keep], np.float32) for n in names}


def fit(run: "RunPlan") -> FeatureSpec:
    """Phase 2's pass: the spec with statistics fitted on every saved feature, streamed shard by shard."""
    spec = run.spec
    fitters = spec.standardizers()
    n = 0
    for meta, feats in _feature_chunks(run, list(fitters)):
        for name, st in fitters.items():
            st.update(feats[name])
        n += len(meta[C.ID])
    if n < 2:
        raise UsageError(f"fitting the feature statistics needs at least 2 valid images, {run.config.images_dir} "
                         f"has {n}")
    log.info("fitted feature statistics on %d images", n)
    return spec.with_fitted(fitters)


def commit(run: "RunPlan") -> tuple[int, FeatureSpec, str]:
    """Phases 2–4 for a fitted spec (phase 1 is the shard loop) of the run planned as ``run``.

    Returns the rows written (0 when the commit marker shows they were written already), the fitted
    spec, and the identity of the collection it created ("" when it existed): a run that fails before
    its rows are in drops that collection again."""
    store, target = run.store, run.target.as_dict()
    shards = _shards_digest(run)
    fault("features-saved")
    created, exists = "", store.exists()
    if exists:
        marker = _valid(run.run_dir / COMMIT_MARKER, {"target": target, "shards": shards})
        fitted = FeatureSpec.from_json(store.spec_json())
        if fitted.needs_fit:
            raise StoreError(f"collection {run.config.collection!r} in {run.target.uri} holds a spec without "
                             "fitted statistics; rebuild it with --overwrite")
        if marker is not None:
            if marker.get("fitted") == spec_digest(fitted, fitted=True):
                log.info("the rows of this run were committed already (%s)", run.run_dir / COMMIT_MARKER)
                return 0, fitted, ""
    else:
        marker = _valid(run.run_dir / FIT_MARKER, {"target": target, "shards": shards})
        if marker is not None:
            fitted = FeatureSpec.from_json(marker["spec"])
        else:
            fitted = fit(run)
            write_json(run.run_dir / FIT_MARKER, {"target": target, "shards": shards, "spec": fitted.to_json(),
                                                  "time": time.time()})
        fault("fitted")
        if store.create(fitted.dim, fitted.to_json(), index_type=run.config.index_type):
            created = store.identity()  # dropped again if the run fails before its rows are in
        target = {**target, "identity": store.identity()}  # the commit vouches for this very collection
        fault("collection-created")
    n = _write(run, fitted)
    store.flush()
    fault("rows-flushed")
    write_json(run.run_dir / COMMIT_MARKER, {"target": target, "shards": shards, "rows": n,
                                             "fitted": spec_digest(fitted, fitted=True), "time": time.time()})
    return n, fitted, created


def _write(run: "RunPlan", fitted: FeatureSpec) -> int:
    """Phase 3: fuse every saved feature with the fitted spec and upsert it (idempotent by id)."""
    n = 0
    for meta, feats in _feature_chunks(run, fitted.names):
        n += run.store.upsert(meta[C.ID], meta[C.PATH], meta[C.LABEL], fitted.fuse(feats))
        if n:
            fault("rows-written")
    return n
