"""The evaluation job: the paper's protocol (Tables 1 and 2, Fig. 6) over frequencies, inpainters and backbones.

Protocol
--------
The clean data set is indexed once per backbone (one collection ``eval_<backbone>`` each, in the
milvus-lite store ``OUT/eval.db``, or on the Milvus server of ``db``, its names prefixed by
``collection_prefix``; a rerun with the same output resumes the collection it finds). The
query set (all images, or ``--queries N`` drawn per class with a seed) is damaged by a fringe mask
of each frequency, with a different mask phase in each of ``--repeats`` repeats, and reconstructed
by each inpainter. For every (frequency, inpainter, backbone) cell the queries are described with
the collection's own spec and searched:

* ``original`` — the intact query; ``damaged`` — zero-filled (the paper's destroyed image);
  ``reconstructed`` — after the inpainter (for ``none`` it equals ``damaged``).
* P@1, P@5, P@10 and mAP (AP over the top ``map_k`` results, normalised by min(R, K)); the
  query's own original is excluded from its neighbours (``exclude-self``, the default) or kept
  (``include-self``); every table says which.
* SSIM, FSIM (luminance, the paper's) and PSNR of the reconstruction against the original.
* Each figure is the mean over queries; ``*_std`` is the standard deviation over the repeats (0
  with one repeat).
* ``estimated`` (with ``--detect-mask``) — the same zero-filled queries reconstructed through the mask
  the estimator (``--mask-estimator``: the shipped network, or the classical baseline) finds in them,
  not the true one: one record beside every (frequency, inpainter, backbone) cell's true-mask records
  (for ``none``: the damaged image with the estimated holes zeroed too), so the cost of not knowing
  the mask is its difference from ``reconstructed``. A query where nothing is found is searched as
  the damaged image. Per frequency, ``results.json``'s ``mask_estimation`` gives the mean IoU of the
  estimated missing region with the true one (and the true and estimated missing fractions).

Work is split into Ray tasks (see :func:`run_evaluate`): one reconstruction task per (frequency,
inpainter, repeat) and one quality task scoring it, shared by the feature cells of every backbone;
one feature task per (frequency, inpainter, backbone) cell; the driver is the single
writer/searcher of the store and fetches only small results (scores, vectors, the Fig. 6 images).
The queries are decoded once and shared through the object store; the damaged images are
recomputed where needed (a mask and a multiplication) instead of shipped; FSIM's reference maps of
the intact queries are computed once. With ``--detect-mask`` the masks are estimated once per
(frequency, repeat) in a CPU task (:func:`~.damaged_tasks.estimate_masks_task`) and handed to a second
set of reconstruction, quality and feature cells, as references (the driver fetches only their IoU).
A network inpainter (``two-stage``) runs as in the index and
query jobs: its classical pre-fill in CPU tasks (Telea's own cells when it is Telea at the same
radius: the very same images), the network in an actor pool (:class:`~.damaged_tasks.NetworkActor`:
weights loaded once per actor, a cell's images as batches, one GPU per actor when the cluster has
GPUs). Without GPUs the one actor reserves ``network_cpus`` of a CPU, by default none: its cells
come in bursts (about a tenth of the evaluation's CPU work), and a reserved core would idle between
them while the metric and feature tasks wait for it; the operating system shares the cores while it
works. Progress: a bar of the cells on stderr with tqdm's ETA (:mod:`cbir_dist.io.progress`), and
above it one line per finished cell saying which.

This module is the driver (the configuration, the query draw, the work graph, indexing, the
outputs); the tasks and the network's actor body are in :mod:`.damaged_tasks`, the search and
scoring of the finished cells in :mod:`.damaged_results`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..damage.inpaint import available_inpainters
from ..damage.masks import FRINGE_FREQUENCIES as FREQUENCIES
from ..errors import InputError, UsageError
from ..features.spec import FeatureSpec
from ..store.lite import lite_path
from .common import PROTOCOLS, check_collection_prefix, public_config, versions
from .damaged_results import collect_results
from .damaged_tasks import (
    MASK_ESTIMATORS,
    NetworkActor,
    cell_features_task,
    estimate_masks_task,
    fsim_references_task,
    original_features_task,
    quality_task,
    reconstruct_task,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation run; ``cbir-dist evaluate`` and ``jobs/evaluate.py`` fill it."""

    dataset: str
    out: str
    frequencies: tuple[float, ...] = FREQUENCIES
    backbones: tuple[str, ...] = ("mobilenet_v2",)
    inpainters: tuple[str, ...] = ("none", "telea")
    descriptors: tuple[str, ...] = ("correlogram", "gabor")
    fusion: str = "balanced"
    profile: str | None = None
    weights: dict = field(default_factory=dict)  # backbone -> weights ("imagenet", "random", PATH)
    repeats: int = 1
    queries: int | None = 100  # per data set, drawn per class; None = all
    protocol: str = "exclude-self"
    missing_fraction: float = 0.25
    k: int = 10
    map_k: int = 100
    seed: int = 0
    backend: str = "ray"
    index_type: str = "FLAT"
    fig6_query: int = 0
    cell_cpus: float = 1.0
    # CPUs each network-inpainter actor reserves on a cluster without GPUs (None: 0, see the module docstring)
    network_cpus: float | None = None
    image_size: int = 224
    db: str | None = None  # milvus-lite path or Milvus server URI; None = OUT/eval.db
    token: str | None = field(default=None, repr=False, compare=False)  # never written to results.json
    collection_prefix: str = ""  # prepended to eval_<backbone>, so several runs can share one server
    runtime: str = "auto"  # what runs the backbones (features.backbones.load_backbone): index and cells
    detect_mask: bool = False  # also reconstruct through the estimated mask: the "estimated" records
    mask_estimator: str = "network"  # with detect_mask: "network" (the shipped one) or "classical"

    def __post_init__(self):
        from ..features.onnx_runtime import check_runtime

        check_collection_prefix(self.collection_prefix)
        check_runtime(self.runtime)
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.repeats < 1:
            raise UsageError("repeats must be >= 1")
        if self.queries is not None and self.queries < 1:
            raise UsageError("queries must be a positive number or 'all'")
        if not self.frequencies or any(f <= 0 for f in self.frequencies):
            raise UsageError(f"--frequencies must be positive (fringes per image, e.g. 0.5,1,6), got "
                             f"{','.join(f'{f:g}' for f in self.frequencies) or 'none'}")
        if not self.inpainters:
            raise UsageError("give at least one inpainter")
        if self.k > self.map_k:
            raise UsageError(f"-k {self.k} is deeper than the ranking evaluated (the top {self.map_k}, for mAP); "
                             f"give -k {self.map_k} or less")
        if not 0.0 < self.missing_fraction < 1.0:
            raise UsageError(f"--missing-fraction must lie in (0, 1), got {self.missing_fraction}")
        if self.mask_estimator not in MASK_ESTIMATORS:
            raise UsageError(f"--mask-estimator must be one of {', '.join(MASK_ESTIMATORS)}, got {self.mask_estimator!r}")
        if self.network_cpus is not None and not (math.isfinite(self.network_cpus) and self.network_cpus >= 0):
            raise UsageError(f"--network-cpus must be a number of CPUs >= 0, got {self.network_cpus}")
        unknown = [name for name in self.inpainters if name not in available_inpainters()]
        if unknown:
            raise UsageError(f"--inpainters: unknown {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(available_inpainters())}")
        if not self.backbones:
            raise UsageError("give at least one backbone (--backbones; none = descriptors only)")
        stray = sorted(set(self.weights) - set(self.backbones))
        if stray:
            raise UsageError(f"--weights names {', '.join(stray)}, which --backbones does not evaluate "
                             f"({', '.join(self.backbones)})")
        for backbone in self.backbones:  # an unknown backbone, descriptor or fusion mode: said before any work
            _spec_for(self, backbone)
        lite_path(self.resolved_db())  # a malformed --db likewise

    @property
    def exclude_self(self) -> bool:
        return self.protocol == "exclude-self"

    def resolved_db(self) -> str:
        return self.db or str(Path(self.out) / "eval.db")

    def collection(self, backbone: str) -> str:
        return f"{self.collection_prefix}eval_{backbone}"


def mask_phase(seed: int, frequency: float, repeat: int) -> float:
    """The mask phase of one repeat: deterministic, different per repeat (0 for the first)."""
    if repeat == 0:
        return 0.0
    rng = np.random.default_rng([seed, int(round(frequency * 1000)), repeat])
    return float(rng.uniform(0, np.pi))


# --- driver -------------------------------------------------------------------------------------------


def select_queries(records, n: int | None, seed: int):
    """All records, or ``n`` drawn evenly per class (seeded), in path order."""
    if n is None or n >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    labels = sorted(by_class)
    share = {c: n // len(labels) for c in labels}
    for c in rng.permutation(labels)[: n - sum(share.values())]:
        share[c] += 1
    chosen = []
    for c in labels:
        idx = rng.permutation(len(by_class[c]))[: share[c]]
        chosen.extend(by_class[c][i] for i in sorted(idx))
    return sorted(chosen, key=lambda r: r.path)


def _spec_for(cfg: EvalConfig, backbone: str) -> FeatureSpec:
    from ..features.profiles import build_spec, profile_spec

    if cfg.profile:
        return profile_spec(cfg.profile, backbone=backbone)
    return build_spec(backbone=backbone, descriptors=cfg.descriptors, mode=cfg.fusion, image_size=cfg.image_size)


def _network_pool(ex, cfg: EvalConfig, name: str):
    """The actor pool of a network inpainter: one actor per GPU (1 GPU each, bf16/fp16 autocast), else one
    CPU actor holding ``cfg.network_cpus`` of a CPU (default none: see :class:`EvalConfig`)."""
    res = ex.resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
    if gpus >= 1:
        return ex.actor_pool(NetworkActor, name, None, 1, size=int(gpus), num_gpus=1, num_cpus=1.0 if cpus >= 2 else 0.0)
    share = 0.0 if cfg.network_cpus is None else cfg.network_cpus
    threads = None if ex.name == "local" else 1  # in this process torch's threads are left alone
    return ex.actor_pool(NetworkActor, name, "cpu", threads, size=1, num_cpus=share)


def _prefill_is_telea(name: str) -> bool:
    """The network's CPU half equals the ``telea`` inpainter's output (Telea's method at the same radius)."""
    from ..damage.inpaint import get_inpainter, get_prefill

    pre, telea = get_prefill(name), get_inpainter("telea")
    return pre.method == "telea" and float(pre.radius) == float(telea.radius)


def run_evaluate(cfg: EvalConfig, *, progress: bool = True) -> dict:
    """Run the whole evaluation and write ``results.json``, the tables, plots and ``report.html`` to ``cfg.out``.

    Work graph (every box a Ray task unless said otherwise; the driver fetches only small results)::

        queries, decoded once ─ put ─┬─ FSIM reference maps (2 tasks)
                                     ├─ reconstruct (f, inpainter, repeat): a classical inpainter, or a
                                     │    network's pre-fill (Telea's own cell when they are the same)
                                     │    └─ network (f, repeat): NetworkActor pool (GPU when present)
                                     ├─ quality (f, inpainter, repeat): SSIM, FSIM, PSNR, Fig. 6 images
                                     ├─ --detect-mask: estimate masks (f, repeat), then the same
                                     │    reconstruct / network / quality cells through them
                                     ├─ (driver) index the data set once per backbone
                                     └─ features (backbone, f, inpainter): damaged + reconstructed vectors
                                          (--detect-mask: a second cell, the estimated-mask reconstructions)
    """
    from ..damage.inpaint import is_network
    from ..distributed.tasks import make_executor
    from ..index import IndexConfig, run_index
    from ..io.cpu import MachineCpu, cores_available
    from ..io.files import list_images
    from ..io.progress import progress as progress_bar
    from ..io.records import OK, mark_duplicates, read_record
    from ..store import VectorStore
    from .report.damaged import write_report

    t_start, cpu = time.time(), MachineCpu().start()  # this machine's busy cores, every process on it
    if cfg.detect_mask and cfg.mask_estimator == "network":
        from ..damage.detect import default_estimator

        default_estimator()  # missing or corrupt weights: said here, before any work (a WeightsError)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(cfg.dataset)
    if not files:
        raise InputError(f"no images found under {cfg.dataset}")
    records = [read_record(f) for f in files]
    mark_duplicates(records)
    valid = [r for r in records if r.status == OK]
    if len(valid) < 2:
        raise InputError(f"{cfg.dataset}: fewer than 2 valid images ({len(records) - len(valid)} rejected)")
    class_sizes: dict[str, int] = {}
    for r in valid:
        class_sizes[r.label] = class_sizes.get(r.label, 0) + 1
    queries = select_queries(valid, cfg.queries, cfg.seed)
    log.info("evaluating %d queries over %d images, %d classes", len(queries), len(valid), len(class_sizes))

    ex = make_executor(cfg.backend)
    pools = {}
    n_cells = (len(cfg.frequencies) * len(cfg.inpainters) * cfg.repeats
               + len(cfg.backbones) * (1 + len(cfg.frequencies) * len(cfg.inpainters)))
    if cfg.detect_mask:  # the masks per (f, repeat), then a quality and a feature cell per true-mask one
        n_cells += len(cfg.frequencies) * cfg.repeats * (1 + len(cfg.inpainters)) + \
            len(cfg.backbones) * len(cfg.frequencies) * len(cfg.inpainters)
    bar = progress_bar(n_cells, progress, "evaluate", "cell")
    try:
        query_images = [r.image for r in queries]
        query_ref = ex.put(query_images)  # decoded once; every task reads this one copy
        half = (len(queries) + 1) // 2
        fsim_parts = [ex.submit(fsim_references_task, chunk, num_cpus=cfg.cell_cpus, num_returns=2)
                      for chunk in (query_images[:half], query_images[half:]) if chunk]
        fsim_refs = [maps for _, maps in fsim_parts]
        # 1. reconstructions: backbone-independent, started first so they overlap with indexing; Telea's
        #    cells first (a network whose pre-fill is Telea's refines them)
        order = sorted(cfg.inpainters, key=lambda n: (n != "telea", is_network(n)))
        recon_refs, quality_refs, phases = {}, {}, {}
        est = {"masks": {}, "summary": {}, "recon": {}, "quality": {}, "features": {}}  # --detect-mask's cells
        for f in cfg.frequencies:
            for rep in range(cfg.repeats):
                phases[(f, rep)] = mask_phase(cfg.seed, f, rep)
                if cfg.detect_mask:
                    est["summary"][(f, rep)], est["masks"][(f, rep)] = ex.submit(
                        estimate_masks_task, query_ref, f, phases[(f, rep)], cfg.missing_fraction, cfg.mask_estimator,
                        num_cpus=cfg.cell_cpus, num_returns=2)
        for inp in order:
            reuse = is_network(inp) and "telea" in cfg.inpainters and _prefill_is_telea(inp)
            if is_network(inp) and inp not in pools:
                pools[inp] = _network_pool(ex, cfg, inp)
            for f in cfg.frequencies:
                for rep in range(cfg.repeats):
                    ph = phases[(f, rep)]
                    if reuse:
                        base = recon_refs[(f, "telea", rep)]
                    else:
                        base = ex.submit(reconstruct_task, query_ref, f, inp, ph, cfg.missing_fraction,
                                         num_cpus=cfg.cell_cpus)
                    ref = pools[inp].submit("refine", query_ref, base, f, ph, cfg.missing_fraction) if is_network(inp) else base
                    recon_refs[(f, inp, rep)] = ref
                    quality_refs[(f, inp, rep)] = ex.submit(
                        quality_task, query_ref, ref, f, ph, cfg.missing_fraction, cfg.fig6_query if rep == 0 else 0,
                        *fsim_refs, num_cpus=cfg.cell_cpus)
                    if not cfg.detect_mask:
                        continue
                    # the same cell through the estimated masks (for "none" too: the estimated holes zeroed)
                    masks = est["masks"][(f, rep)]
                    if reuse:
                        base = est["recon"][(f, "telea", rep)]
                    else:
                        base = ex.submit(reconstruct_task, query_ref, f, inp, ph, cfg.missing_fraction, masks,
                                         num_cpus=cfg.cell_cpus)
                    ref = (pools[inp].submit("refine", query_ref, base, f, ph, cfg.missing_fraction, masks)
                           if is_network(inp) else base)
                    est["recon"][(f, inp, rep)] = ref
                    est["quality"][(f, inp, rep)] = ex.submit(quality_task, query_ref, ref, f, ph, cfg.missing_fraction,
                                                              0, *fsim_refs, num_cpus=cfg.cell_cpus)
        # 2. index the clean set once per backbone (this process is the single writer)
        db = cfg.resolved_db()
        stores, specs, index_seconds = {}, {}, {}
        for bb in cfg.backbones:
            t = time.time()
            spec = _spec_for(cfg, bb)
            if cfg.db is not None:  # a store given by --db may be shared: refuse another data set's collection
                with VectorStore(db, cfg.collection(bb), token=cfg.token) as existing:
                    if existing.exists():  # (a rerun of this one resumes it, as with OUT/eval.db)
                        _check_rows(existing, valid, db)
            icfg = IndexConfig(cfg.dataset, db=db, collection=cfg.collection(bb), token=cfg.token,
                               run_dir=str(out / "runs" / bb), index_type=cfg.index_type,
                               weights_override=cfg.weights.get(bb), progress=False, runtime=cfg.runtime)
            run_index(spec, icfg)
            stores[bb] = VectorStore(db, cfg.collection(bb), token=cfg.token)
            specs[bb] = stores[bb].spec_json()
            index_seconds[bb] = round(time.time() - t, 2)
            bar.note(f"evaluate: indexed {cfg.dataset} for {bb} in {index_seconds[bb]:.0f} s")
        # 3. feature cells
        cell_refs = {}
        orig_refs = {bb: ex.submit(original_features_task, specs[bb], cfg.weights.get(bb), query_ref,
                                   runtime=cfg.runtime, num_cpus=cfg.cell_cpus) for bb in cfg.backbones}
        for bb in cfg.backbones:
            for f in cfg.frequencies:
                for i, inp in enumerate(cfg.inpainters):
                    recons = [] if inp == "none" else [recon_refs[(f, inp, rep)] for rep in range(cfg.repeats)]
                    # the damaged queries are the same for every inpainter: describe them once per (bb, f)
                    damage = ([(f, phases[(f, rep)], cfg.missing_fraction) for rep in range(cfg.repeats)]
                              if i == 0 else None)
                    cell_refs[(bb, f, inp)] = ex.submit(cell_features_task, specs[bb], cfg.weights.get(bb), query_ref,
                                                        damage, *recons, runtime=cfg.runtime,
                                                        num_cpus=cfg.cell_cpus)
                    if cfg.detect_mask:
                        est["features"][(bb, f, inp)] = ex.submit(
                            cell_features_task, specs[bb], cfg.weights.get(bb), query_ref, None,
                            *[est["recon"][(f, inp, rep)] for rep in range(cfg.repeats)], runtime=cfg.runtime,
                            num_cpus=cfg.cell_cpus)
        # 4. search and score as cells finish
        results = collect_results(ex, cfg, queries, class_sizes, stores, orig_refs, cell_refs, quality_refs,
                                  [t for t, _ in fsim_parts], bar, estimated=est if cfg.detect_mask else None)
    finally:
        bar.close()
        for pool in pools.values():
            pool.shutdown()
        ex.shutdown()
    results["config"] = {**public_config(asdict(cfg)), "db": db, "n_queries": len(queries), "n_database": len(valid),
                         "query_ids": [r.id for r in queries],
                         "classes": class_sizes, "index_seconds": index_seconds}
    _write_errors(out / "errors.parquet", records, results.pop("_inpaint_errors", []),
                  results.pop("_mask_errors", []))
    results["versions"] = versions()
    results["wall_seconds"] = round(time.time() - t_start, 2)
    from .report.damaged import timeline_summary
    from .report.html import cores_text

    cpu.stop()
    results["cores_busy"] = None if cpu.cores_busy is None else round(cpu.cores_busy, 2)
    results["cores_available"] = cores_available()
    results["concurrency"] = timeline_summary(results["timeline"])
    if progress:
        c = results["concurrency"]
        print(f"evaluate: {len(results['timeline'])} tasks on {c['workers']} processes, {c['mean_concurrency']:.2f} "
              f"running at once on average over {c['span_s']:.0f} s{cores_text(results)}", file=sys.stderr, flush=True)
    for s in stores.values():
        s.close()
    write_report(results, out, dataset=cfg.dataset)
    return results


def _check_rows(store, valid: Sequence, db: str) -> None:
    """Every row of the collection is one of this data set's images.

    Run before indexing, so that a collection of another data set (a shared server, another OUT)
    is refused before anything is written to it.
    """
    n = store.count()
    present = len(store.existing_ids([r.id for r in valid]))
    if n != present:
        raise UsageError(
            f"collection {store.collection!r} of {db} holds {n - present} rows that are not images of "
            f"{len(valid)} in this data set: it belongs to another run (a shared server?). Pass another "
            "--collection-prefix, or drop that collection"
        )


def _write_errors(path: Path, records, inpaint_errors, mask_errors=()) -> None:
    """errors.parquet of the evaluation: files not used (rejected, duplicate), per-query inpaint failures and
    (``--detect-mask``) per-query mask-estimate failures."""
    from ..io.records import OK
    from ..io.tables import write_parquet

    rows = [(r.path, r.status, r.error) for r in records if r.status != OK]
    rows += [(p, "inpaint_failed", why) for p, why in inpaint_errors]
    rows += [(p, "mask_estimate_failed", why) for p, why in mask_errors]
    write_parquet(path, {"path": [r[0] for r in rows], "status": [r[1] for r in rows], "reason": [r[2] for r in rows]})


def load_results(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "results.json").read_text())
