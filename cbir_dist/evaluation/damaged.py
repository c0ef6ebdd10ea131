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

Work is split into Ray tasks: one reconstruction task per (frequency, inpainter, repeat), shared
by the feature cells of every backbone; one feature task per (frequency, inpainter, backbone)
cell; the driver is the single writer/searcher of the store.
"""

from __future__ import annotations

import json
import logging
import os
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


def reconstruct_task(images: Sequence[np.ndarray], frequency: float, inpainter: str, phase: float,
                     missing_fraction: float) -> dict:
    """Damage every query with one fringe mask and reconstruct it; image-quality metrics per query."""
    from ..damage.hook import damage_and_reconstruct
    from ..damage.inpaint import get_inpainter
    from ..damage.masks import fringe_mask
    from .metrics import fsim, psnr, ssim

    t0 = time.time()
    inp = get_inpainter(inpainter)
    damaged, restored, q = [], [], {"ssim": [], "fsim": [], "psnr": []}
    errors = {}  # query index -> why its reconstruction failed (it is then scored as the damaged image)
    for j, img in enumerate(images):
        known = fringe_mask(img.shape[0], img.shape[1], frequency, missing_fraction, phase=phase)
        try:
            d, r = damage_and_reconstruct(img, known, inp)
        except Exception as exc:  # noqa: BLE001 - one image's failure is a recorded value, not a failed cell
            d = r = damage_and_reconstruct(img, known, get_inpainter("none"))[0]
            errors[j] = f"inpaint failed ({type(exc).__name__}: {exc}); scored as the damaged image"
        damaged.append(d)
        restored.append(r)
        q["ssim"].append(ssim(img, r))
        q["fsim"].append(fsim(img, r))
        q["psnr"].append(min(psnr(img, r), 100.0))
    return {"damaged": damaged, "reconstructed": restored, "quality": {k: np.asarray(v) for k, v in q.items()},
            "errors": errors, "start": t0, "end": time.time(), "pid": os.getpid()}


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


def cell_features_task(spec_json: str, weights: str | None, with_damaged: bool, with_reconstructed: bool,
                       *recons: dict) -> dict:
    """Feature cell of one (frequency, inpainter, backbone): vectors of the damaged/reconstructed queries."""
    states = {}
    if with_damaged:
        states["damaged"] = [r["damaged"] for r in recons]
    if with_reconstructed:
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


def run_evaluate(cfg: EvalConfig, *, progress: bool = True) -> dict:
    """Run the whole evaluation and write ``results.json``, the tables, plots and ``report.html`` to ``cfg.out``."""
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
    try:
        query_ref = ex.put([r.image for r in queries])
        # 1. reconstructions: backbone-independent, started first so they overlap with indexing
        recon_refs, phases = {}, {}
        for f in cfg.frequencies:
            for rep in range(cfg.repeats):
                phases[(f, rep)] = mask_phase(cfg.seed, f, rep)
                for inp in cfg.inpainters:
                    recon_refs[(f, inp, rep)] = ex.submit(reconstruct_task, query_ref, f, inp, phases[(f, rep)],
                                                          cfg.missing_fraction, num_cpus=cfg.cell_cpus)
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
                               weights_override=cfg.weights.get(bb), progress=progress)
            run_index(spec, icfg)
            stores[bb] = VectorStore(db, cfg.collection(bb), token=cfg.token)
            specs[bb] = stores[bb].spec_json()
            index_seconds[bb] = round(time.time() - t, 2)
        # 3. feature cells
        cell_refs = {}
        orig_refs = {bb: ex.submit(original_features_task, specs[bb], cfg.weights.get(bb), query_ref,
                                   num_cpus=cfg.cell_cpus) for bb in cfg.backbones}
        for bb in cfg.backbones:
            for f in cfg.frequencies:
                for i, inp in enumerate(cfg.inpainters):
                    recons = [recon_refs[(f, inp, rep)] for rep in range(cfg.repeats)]
                    # the damaged queries are the same for every inpainter: describe them once per (bb, f)
                    cell_refs[(bb, f, inp)] = ex.submit(cell_features_task, specs[bb], cfg.weights.get(bb), i == 0,
                                                        inp != "none", *recons, num_cpus=cfg.cell_cpus)
        # 4. search and score as cells finish
        results = _collect(ex, cfg, queries, class_sizes, stores, orig_refs, cell_refs, recon_refs, progress)
    finally:
        ex.shutdown()
    results["config"] = {**public_config(asdict(cfg)), "db": db, "n_queries": len(queries), "n_database": len(valid),
                         "query_ids": [r.id for r in queries],
                         "classes": class_sizes, "index_seconds": index_seconds}
    _write_errors(out / "errors.parquet", records, results.pop("_inpaint_errors", []))
    results["versions"] = versions()
    results["wall_seconds"] = round(time.time() - t_start, 2)
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


def _collect(ex, cfg, queries, class_sizes, stores, orig_refs, cell_refs, recon_refs, progress) -> dict:
    from tqdm.auto import tqdm

    orig = {}
    for bb, ref in orig_refs.items():
        v = ex.get(ref)["vectors"]["original"][0]
        orig[bb] = _retrieval_metrics(stores[bb], v, queries, cfg, class_sizes)
    recon = {key: ex.get(ref) for key, ref in recon_refs.items()}
    inpaint_errors = [(queries[j].path, f"inpaint failed at {f:g} Hz, {inp}, repeat {rep}: {why}")
                      for (f, inp, rep), r in recon.items() for j, why in sorted(r.get("errors", {}).items())]
    timeline = [{"task": f"reconstruct f={f} {inp} r={rep}", "start": r["start"], "end": r["end"], "pid": r["pid"]}
                for (f, inp, rep), r in recon.items()]
    pending = list(cell_refs.values())
    key_of = {id(ref): key for key, ref in cell_refs.items()}
    done_cells = {}
    bar = tqdm(total=len(pending), desc="cells", disable=not progress)
    while pending:
        done, pending = ex.wait_any(pending)
        for ref in done:
            done_cells[key_of[id(ref)]] = ex.get(ref)
            bar.update(1)
    bar.close()
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
                "images": {s: recon[(f, inp, 0)][s][q] for s in ("damaged", "reconstructed")},
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
