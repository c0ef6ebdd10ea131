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

Work is split into Ray tasks (see :func:`run_evaluate`): one reconstruction task per (frequency,
inpainter, repeat) and one quality task scoring it, shared by the feature cells of every backbone;
one feature task per (frequency, inpainter, backbone) cell; the driver is the single
writer/searcher of the store and fetches only small results (scores, vectors, the Fig. 6 images).
The queries are decoded once and shared through the object store; the damaged images are
recomputed where needed (a mask and a multiplication) instead of shipped; FSIM's reference maps of
the intact queries are computed once. A network inpainter (``two-stage``) runs as in the index and
query jobs: its classical pre-fill in CPU tasks (Telea's own cells when it is Telea at the same
radius: the very same images), the network in an actor pool (:class:`NetworkActor`: weights loaded
once per actor, a cell's images as batches, one GPU per actor when the cluster has GPUs). Without
GPUs the one actor reserves ``network_cpus`` of a CPU, by default none: its cells come in bursts
(about a tenth of the evaluation's CPU work), and a reserved core would idle between them while
the metric and feature tasks wait for it; the operating system shares the cores while it works.
Progress: one line per finished cell on stderr (done/total, elapsed, ETA).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..damage.masks import FRINGE_FREQUENCIES as FREQUENCIES
from ..errors import IncompleteRunError, InputError, UsageError
from ..features.spec import FeatureSpec
from .common import PROTOCOLS, check_collection_prefix, public_config, versions

log = logging.getLogger(__name__)

STATES = ("original", "damaged", "reconstructed")


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

    def __post_init__(self):
        check_collection_prefix(self.collection_prefix)
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.repeats < 1:
            raise UsageError("repeats must be >= 1")
        if self.queries is not None and self.queries < 1:
            raise UsageError("queries must be a positive number or 'all'")
        if not self.frequencies or any(f <= 0 for f in self.frequencies):
            raise UsageError(f"frequencies must be positive, got {self.frequencies}")
        if not self.inpainters:
            raise UsageError("give at least one inpainter")
        if self.k > self.map_k:
            raise UsageError("map_k must be >= k")

    @property
    def exclude_self(self) -> bool:
        return self.protocol == "exclude-self"

    def resolved_db(self) -> str:
        return self.db or str(Path(self.out) / "eval.db")

    def collection(self, backbone: str) -> str:
        return f"{self.collection_prefix}eval_{backbone}"


# --- tasks (pure functions of their arguments; run in Ray workers or locally) -------------------------


def mask_phase(seed: int, frequency: float, repeat: int) -> float:
    """The mask phase of one repeat: deterministic, different per repeat (0 for the first)."""
    if repeat == 0:
        return 0.0
    rng = np.random.default_rng([seed, int(round(frequency * 1000)), repeat])
    return float(rng.uniform(0, np.pi))


def fringe_masks(images: Sequence[np.ndarray], frequency: float, phase: float, missing_fraction: float) -> list:
    """The known-pixel mask of every query at one (frequency, phase): the one rule of every task."""
    from ..damage.masks import fringe_mask

    return [fringe_mask(img.shape[0], img.shape[1], frequency, missing_fraction, phase=phase) for img in images]


def damaged_images(images, frequency: float, phase: float, missing_fraction: float) -> list:
    """The zero-filled queries (the paper's ``M ⊙ I``), recomputed where needed instead of shipped."""
    from ..damage.masks import apply_mask

    return [apply_mask(img, k) for img, k in zip(images, fringe_masks(images, frequency, phase, missing_fraction))]


def reconstruct_task(images: Sequence[np.ndarray], frequency: float, inpainter: str, phase: float,
                     missing_fraction: float) -> dict:
    """Damage every query with one fringe mask and reconstruct it in this CPU task.

    A classical inpainter runs whole; for a network only its CPU half runs (its classical pre-fill:
    the network then refines it in a :class:`NetworkActor`). Returns ``{"reconstructed": [...],
    "errors": {query index: why}, "start", "end", "pid"}``; a query whose inpainting fails is scored as
    its damaged image and listed in ``errors``.
    """
    from ..damage.hook import damage_and_reconstruct
    from ..damage.inpaint import get_inpainter, get_prefill, is_network

    t0 = time.time()
    inp = get_prefill(inpainter) if is_network(inpainter) else get_inpainter(inpainter)
    restored, errors = [], {}
    for j, (img, known) in enumerate(zip(images, fringe_masks(images, frequency, phase, missing_fraction))):
        try:
            restored.append(damage_and_reconstruct(img, known, inp)[1])
        except Exception as exc:  # noqa: BLE001 - one image's failure is a recorded value, not a failed cell
            restored.append(damage_and_reconstruct(img, known, get_inpainter("none"))[0])
            errors[j] = f"inpaint failed ({type(exc).__name__}: {exc}); scored as the damaged image"
    return {"reconstructed": restored, "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid(),
            "task": f"reconstruct {inpainter}" if not is_network(inpainter) else f"pre-fill {inpainter}"}


class NetworkActor:
    """Actor body of a network inpainter in the evaluation: loads the weights once, refines whole cells.

    ``refine(images, prefilled, frequency, phase, missing_fraction)`` takes the intact queries and the
    result of the network's CPU half for one (frequency, repeat) (:func:`reconstruct_task`, or Telea's
    own cell when the network's pre-fill is Telea with its radius: the same images) and returns the
    reconstructions in :func:`reconstruct_task`'s format. The batch runs under
    ``torch.inference_mode()``, one forward per image size (bf16/fp16 autocast on CUDA).
    """

    def __init__(self, inpainter: str, device: str | None = None, num_threads: int | None = 1):
        from ..damage.hook import NetworkStage

        self.name = inpainter
        self.stage = NetworkStage(inpainter, device=device, num_threads=num_threads)
        self.stage.load()

    def refine(self, images, prefilled: dict, frequency: float, phase: float, missing_fraction: float) -> dict:
        from ..damage.masks import apply_mask

        t0 = time.time()
        masks = fringe_masks(images, frequency, phase, missing_fraction)
        errors = dict(prefilled.get("errors", {}))  # a failed pre-fill stays the damaged image
        out = list(prefilled["reconstructed"])
        rows = [j for j in range(len(images)) if j not in errors]
        damaged = {j: apply_mask(images[j], masks[j]) for j in rows}
        try:
            done = self.stage.refine([out[j] for j in rows], [masks[j] for j in rows], [damaged[j] for j in rows])
        except Exception:  # noqa: BLE001 - find the image that fails, keep the others
            done = []
            for j in rows:
                try:
                    done.append(self.stage.refine([out[j]], [masks[j]], [damaged[j]])[0])
                except Exception as exc:  # noqa: BLE001 - scored as the damaged image, listed
                    done.append(damaged[j])
                    errors[j] = f"inpaint failed ({type(exc).__name__}: {exc}); scored as the damaged image"
        for j, r in zip(rows, done):
            out[j] = r
        return {"reconstructed": out, "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid(),
                "task": f"network {self.name}", "prefill": {k: prefilled[k] for k in ("start", "end", "pid", "task")}}


def fsim_references_task(images: Sequence[np.ndarray]) -> list:
    """The FSIM reference maps of the intact queries (:class:`~.metrics.FsimReference`), computed once for every
    cell: ``(timing, maps)``, submitted with two returns so that the driver fetches only the timing."""
    from .metrics import FsimReference

    t0 = time.time()
    refs = [FsimReference(img) for img in images]
    return {"start": t0, "end": time.time(), "pid": os.getpid(), "task": f"FSIM references ({len(images)})"}, refs


def quality_task(images: Sequence[np.ndarray], recon: dict, frequency: float, phase: float, missing_fraction: float,
                 fig6_query: int, *fsim_refs) -> dict:
    """SSIM, FSIM and PSNR of one cell's reconstructions against the intact queries, and its Fig. 6 images.

    ``fsim_refs`` are the maps of :func:`fsim_references_task` (chunks of the query list, in order).
    Returns only small values: the driver never fetches the reconstructed images themselves.
    """
    from .metrics import psnr, ssim

    t0 = time.time()
    refs = [r for chunk in fsim_refs for r in chunk]
    restored = recon["reconstructed"]
    q = {"ssim": [], "fsim": [], "psnr": []}
    for img, r, ref in zip(images, restored, refs):
        q["ssim"].append(ssim(img, r))
        q["fsim"].append(ref.score(r))
        q["psnr"].append(min(psnr(img, r), 100.0))
    j = fig6_query % len(images)
    damaged = damaged_images([images[j]], frequency, phase, missing_fraction)[0]
    timeline = [{k: recon[k] for k in ("start", "end", "pid", "task")}]
    if "prefill" in recon:
        timeline.append(recon["prefill"])
    timeline.append({"start": t0, "end": time.time(), "pid": os.getpid(), "task": "quality"})
    return {"quality": {k: np.asarray(v) for k, v in q.items()}, "errors": recon.get("errors", {}),
            "fig6": {"damaged": damaged, "reconstructed": restored[j]}, "timeline": timeline}


def features_task(spec_json: str, weights: str | None, states: dict[str, list]) -> dict:
    """Fused query vectors for each state's list of image lists (one list per repeat)."""
    from ..features.extract import Extractor

    t0 = time.time()
    ext = Extractor(FeatureSpec.from_json(spec_json), weights=weights,
                    num_threads=max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    out = {state: [ext(imgs) for imgs in per_repeat] for state, per_repeat in states.items()}
    return {"vectors": out, "start": t0, "end": time.time(), "pid": os.getpid()}


def original_features_task(spec_json: str, weights: str | None, images: list) -> dict:
    """Vectors of the intact queries (``images`` is a top-level argument so Ray resolves its reference)."""
    return features_task(spec_json, weights, {"original": [images]})


def cell_features_task(spec_json: str, weights: str | None, images: list, damage: Sequence | None,
                       *recons: dict) -> dict:
    """Feature cell of one (frequency, inpainter, backbone): vectors of the damaged and/or reconstructed queries.

    ``damage`` is ``[(frequency, phase, missing_fraction)]`` per repeat when the damaged queries are
    described in this cell (they are recomputed here from the intact ones); ``recons`` are the cell's
    reconstructions per repeat (none when only the damaged state is needed).
    """
    states = {}
    if damage:
        states["damaged"] = [damaged_images(images, f, ph, mf) for f, ph, mf in damage]
    if recons:
        states["reconstructed"] = [r["reconstructed"] for r in recons]
    return features_task(spec_json, weights, states)


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


def _retrieval_metrics(store, vectors: np.ndarray, queries, cfg: EvalConfig, class_sizes: dict) -> dict:
    """Per-query P@1/5/10 and AP for one state (arrays of shape (Q,))."""
    from ..query.search import search_vectors
    from .metrics import average_precision, precision_at_k

    k = min(cfg.map_k, store.count() - (1 if cfg.exclude_self else 0))
    ids, _dist, _paths, labels = search_vectors(store, vectors, [r.id for r in queries], k, cfg.exclude_self)
    short = int(np.sum((ids < 0).any(axis=1))) if ids.size else 0
    if ids.shape[1] < k or short:  # read back: every query has its k neighbours, or the cell is not scored
        raise IncompleteRunError(f"the store returned fewer than {k} neighbours for {short or len(queries)} of "
                                 f"{len(queries)} queries in collection {store.collection!r}; rerun the evaluation")
    qlabels = np.asarray([r.label for r in queries], dtype=object)
    n_rel = np.asarray([class_sizes[r.label] - (1 if cfg.exclude_self else 0) for r in queries])
    labels = np.asarray(labels, dtype=object)
    return {
        "p_at_1": precision_at_k(labels, qlabels, 1),
        "p_at_5": precision_at_k(labels, qlabels, min(5, k)),
        "p_at_10": precision_at_k(labels, qlabels, min(10, k)),
        "map": average_precision(labels, qlabels, np.maximum(n_rel, 0)),
        "_top_ids": ids[:, : cfg.k],
        "_top_labels": labels[:, : cfg.k],
        "_top_paths": np.asarray(_paths, dtype=object)[:, : cfg.k],
    }


def _summarise(per_repeat: list[dict], keys: Sequence[str], scale: float = 1.0) -> dict:
    """Mean over queries per repeat, then mean and std over repeats."""
    out = {}
    for key in keys:
        means = np.asarray([np.nanmean(m[key]) for m in per_repeat]) * scale
        out[key] = float(np.mean(means))
        out[f"{key}_std"] = float(np.std(means))
    return out


class Progress:
    """One line on stderr per finished cell: ``done/total``, what finished, elapsed time and a linear ETA."""

    def __init__(self, total: int, *, enabled: bool = True, stream=None, clock=time.monotonic):
        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.t0 = clock()

    @staticmethod
    def _fmt(seconds: float) -> str:
        seconds = int(round(seconds))
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def step(self, what: str) -> str:
        self.done += 1
        elapsed = self.clock() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        line = f"evaluate: {self.done}/{self.total} cells done ({what}), {self._fmt(elapsed)} elapsed, ETA {self._fmt(eta)}"
        if self.enabled:
            print(line, file=self.stream, flush=True)
        return line


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
                                     ├─ (driver) index the data set once per backbone
                                     └─ features (backbone, f, inpainter): damaged + reconstructed vectors
    """
    from ..damage.inpaint import is_network
    from ..distributed.tasks import make_executor
    from ..index import IndexConfig, run_index
    from ..io.files import list_images
    from ..io.records import OK, mark_duplicates, read_record
    from ..store import VectorStore
    from .report.damaged import write_report

    t_start = time.time()
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
    bar = Progress(n_cells, enabled=progress)
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
        for f in cfg.frequencies:
            for rep in range(cfg.repeats):
                phases[(f, rep)] = mask_phase(cfg.seed, f, rep)
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
                               weights_override=cfg.weights.get(bb), progress=False)
            run_index(spec, icfg)
            stores[bb] = VectorStore(db, cfg.collection(bb), token=cfg.token)
            specs[bb] = stores[bb].spec_json()
            index_seconds[bb] = round(time.time() - t, 2)
            if progress:
                print(f"evaluate: indexed {cfg.dataset} for {bb} in {index_seconds[bb]:.0f} s", file=sys.stderr, flush=True)
        # 3. feature cells
        cell_refs = {}
        orig_refs = {bb: ex.submit(original_features_task, specs[bb], cfg.weights.get(bb), query_ref,
                                   num_cpus=cfg.cell_cpus) for bb in cfg.backbones}
        for bb in cfg.backbones:
            for f in cfg.frequencies:
                for i, inp in enumerate(cfg.inpainters):
                    recons = [] if inp == "none" else [recon_refs[(f, inp, rep)] for rep in range(cfg.repeats)]
                    # the damaged queries are the same for every inpainter: describe them once per (bb, f)
                    damage = ([(f, phases[(f, rep)], cfg.missing_fraction) for rep in range(cfg.repeats)]
                              if i == 0 else None)
                    cell_refs[(bb, f, inp)] = ex.submit(cell_features_task, specs[bb], cfg.weights.get(bb), query_ref,
                                                        damage, *recons, num_cpus=cfg.cell_cpus)
        # 4. search and score as cells finish
        results = _collect(ex, cfg, queries, class_sizes, stores, orig_refs, cell_refs, quality_refs,
                           [t for t, _ in fsim_parts], bar)
    finally:
        for pool in pools.values():
            pool.shutdown()
        ex.shutdown()
    results["config"] = {**public_config(asdict(cfg)), "db": db, "n_queries": len(queries), "n_database": len(valid),
                         "query_ids": [r.id for r in queries],
                         "classes": class_sizes, "index_seconds": index_seconds}
    _write_errors(out / "errors.parquet", records, results.pop("_inpaint_errors", []))
    results["versions"] = versions()
    results["wall_seconds"] = round(time.time() - t_start, 2)
    from .report.damaged import timeline_summary

    results["concurrency"] = timeline_summary(results["timeline"])
    if progress:
        c = results["concurrency"]
        print(f"evaluate: {len(results['timeline'])} tasks on {c['workers']} processes, {c['mean_concurrency']:.2f} "
              f"running at once on average over {c['span_s']:.0f} s", file=sys.stderr, flush=True)
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


def _collect(ex, cfg, queries, class_sizes, stores, orig_refs, cell_refs, quality_refs, fsim_timing, bar) -> dict:
    """Wait for every quality and feature cell (one progress line each), then search and score."""
    label = {}
    for (f, inp, rep), ref in quality_refs.items():
        label[id(ref)] = ("quality", (f, inp, rep), f"quality {f:g} Hz {inp} r{rep}")
    for bb, ref in orig_refs.items():
        label[id(ref)] = ("original", bb, f"features {bb} intact")
    for (bb, f, inp), ref in cell_refs.items():
        label[id(ref)] = ("features", (bb, f, inp), f"features {bb} {f:g} Hz {inp}")
    pending = list(quality_refs.values()) + list(orig_refs.values()) + list(cell_refs.values())
    got: dict = {"quality": {}, "original": {}, "features": {}}
    while pending:
        done, pending = ex.wait_any(pending)
        for ref in done:
            kind, key, what = label[id(ref)]
            got[kind][key] = ex.get(ref)
            bar.step(what)
    recon = got["quality"]
    orig = {bb: _retrieval_metrics(stores[bb], v["vectors"]["original"][0], queries, cfg, class_sizes)
            for bb, v in got["original"].items()}
    inpaint_errors = [(queries[j].path, f"inpaint failed at {f:g} Hz, {inp}, repeat {rep}: {why}")
                      for (f, inp, rep), r in recon.items() for j, why in sorted(r.get("errors", {}).items())]
    timeline = [dict(ex.get(ref)) for ref in fsim_timing]
    seen = set()  # a pre-fill shared by two cells (Telea's) is one task
    for (f, inp, rep), r in recon.items():
        for t in r["timeline"]:
            if (t["pid"], t["start"], t["end"]) not in seen:
                seen.add((t["pid"], t["start"], t["end"]))
                task = f"quality {inp}" if t["task"] == "quality" else t["task"]
                timeline.append({**t, "task": f"{task} f={f:g} r={rep}"})
    for bb, cell in got["original"].items():
        timeline.append({"task": f"features {bb} intact", "start": cell["start"], "end": cell["end"], "pid": cell["pid"]})
    done_cells = got["features"]
    metric_keys = ("p_at_1", "p_at_5", "p_at_10", "map")
    records, fig6 = [], {}
    for (bb, f, inp), cell in sorted(done_cells.items(), key=lambda kv: (kv[0][0], kv[0][1], cfg.inpainters.index(kv[0][2]))):
        timeline.append({"task": f"features {bb} f={f} {inp}", "start": cell["start"], "end": cell["end"],
                         "pid": cell["pid"]})
        vec = cell["vectors"]
        damaged_vec = vec.get("damaged") or done_cells[(bb, f, cfg.inpainters[0])]["vectors"]["damaged"]
        per_state = {
            "original": [orig[bb]] * cfg.repeats,
            "damaged": [_retrieval_metrics(stores[bb], v, queries, cfg, class_sizes) for v in damaged_vec],
        }
        per_state["reconstructed"] = (per_state["damaged"] if inp == "none" else
                                      [_retrieval_metrics(stores[bb], v, queries, cfg, class_sizes)
                                       for v in vec["reconstructed"]])
        quality = [recon[(f, inp, rep)]["quality"] for rep in range(cfg.repeats)]
        qsum = _summarise(quality, ("ssim", "fsim", "psnr"))
        # quality of the destroyed image itself is known when "none" is one of the inpainters
        qsum_damaged = (_summarise([recon[(f, "none", rep)]["quality"] for rep in range(cfg.repeats)],
                                   ("ssim", "fsim", "psnr")) if "none" in cfg.inpainters else None)
        for state in STATES:
            rec = {"backbone": bb, "inpainter": inp, "frequency": f, "state": state, "protocol": cfg.protocol,
                   "n_queries": len(queries), "repeats": cfg.repeats,
                   "wall_seconds": round(cell["end"] - cell["start"], 3)}
            rec.update(_summarise(per_state[state], metric_keys, scale=100.0))
            if state == "reconstructed":
                rec.update(qsum)
            elif state == "damaged" and qsum_damaged:
                rec.update(qsum_damaged)
            records.append(rec)
        if (bb, f, inp) not in fig6:
            q = cfg.fig6_query % len(queries)
            fig6[(bb, f, inp)] = {
                "query": queries[q].path, "label": queries[q].label,
                "images": dict(recon[(f, inp, 0)]["fig6"]),
                "hits": {s: {"paths": list(per_state[s][0]["_top_paths"][q]),
                             "labels": list(per_state[s][0]["_top_labels"][q])} for s in STATES},
            }
    return {"records": records, "timeline": timeline, "_fig6": fig6, "_inpaint_errors": inpaint_errors}


def _write_errors(path: Path, records, inpaint_errors) -> None:
    """errors.parquet of the evaluation: files not used (rejected, duplicate) and per-query inpaint failures."""
    from ..io.records import OK
    from ..io.tables import write_parquet

    rows = [(r.path, r.status, r.error) for r in records if r.status != OK]
    rows += [(p, "inpaint_failed", why) for p, why in inpaint_errors]
    write_parquet(path, {"path": [r[0] for r in rows], "status": [r[1] for r in rows], "reason": [r[2] for r in rows]})


def load_results(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "results.json").read_text())
