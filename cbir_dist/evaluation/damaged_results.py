"""Scoring the damaged-query evaluation (:mod:`.damaged`): its finished cells into the records of the tables.

:func:`collect_results` waits for every quality and feature cell (a line each above the progress bar),
searches each state's query vectors in the backbone's collection (P@1/5/10 and AP per query),
takes means over the queries and means and standard deviations over the repeats, and gathers the
task timeline, the Fig. 6 images and hits, and the per-query inpaint failures. With ``--detect-mask``
it adds an ``estimated`` record beside each cell's true-mask records and, per frequency, the mean IoU
of the estimated missing region with the true one (``mask_estimation``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import IncompleteRunError

if TYPE_CHECKING:
    from .damaged import EvalConfig

STATES = ("original", "damaged", "reconstructed")
#: The state of ``--detect-mask``'s records: reconstructed through the estimated mask.
ESTIMATED = "estimated"


def _retrieval_metrics(store, vectors: np.ndarray, queries, cfg: EvalConfig, class_sizes: dict) -> dict:
    """Per-query P@1/5/10 and AP for one state (arrays of shape (Q,))."""
    from ..retrieval.search import search_vectors
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


def _mask_estimation(cfg, summaries: dict) -> list[dict]:
    """Per frequency: the mean IoU of the estimated missing region with the true one, the true and estimated
    missing fractions (mean over queries, then mean and std over repeats) and the images where nothing was found."""
    rows = []
    for f in cfg.frequencies:
        per_repeat = [summaries[(f, rep)] for rep in range(cfg.repeats)]
        row = {"frequency": f, "estimator": cfg.mask_estimator}
        row.update(_summarise([{"mask_iou": s["iou"]} for s in per_repeat], ("mask_iou",)))
        row.update(_summarise([{"missing_fraction": s["missing"], "estimated_missing_fraction": s["estimated_missing"]}
                               for s in per_repeat], ("missing_fraction", "estimated_missing_fraction")))
        row["found_nothing"] = int(sum(s["found_nothing"] for s in per_repeat))
        row["n_images"] = int(sum(len(s["iou"]) for s in per_repeat))
        rows.append(row)
    return rows


def collect_results(ex, cfg, queries, class_sizes, stores, orig_refs, cell_refs, quality_refs, fsim_timing,
                    bar, estimated: dict | None = None) -> dict:
    """Wait for every quality and feature cell (``bar``: :func:`cbir_dist.io.progress.progress`; a line
    each saying which finished), then search and score.

    ``estimated`` (``--detect-mask``): the driver's references of the estimated-mask cells, ``summary``
    per (frequency, repeat) and ``quality`` and ``features`` keyed as ``quality_refs`` and ``cell_refs``.
    """
    label = {}
    for (f, inp, rep), ref in quality_refs.items():
        label[id(ref)] = ("quality", (f, inp, rep), f"quality {f:g} Hz {inp} r{rep}")
    for bb, ref in orig_refs.items():
        label[id(ref)] = ("original", bb, f"features {bb} intact")
    for (bb, f, inp), ref in cell_refs.items():
        label[id(ref)] = ("features", (bb, f, inp), f"features {bb} {f:g} Hz {inp}")
    pending = list(quality_refs.values()) + list(orig_refs.values()) + list(cell_refs.values())
    estimated = estimated or {}
    for (f, rep), ref in estimated.get("summary", {}).items():
        label[id(ref)] = ("masks", (f, rep), f"mask estimates {f:g} Hz r{rep}")
    for (f, inp, rep), ref in estimated.get("quality", {}).items():
        label[id(ref)] = ("quality_est", (f, inp, rep), f"quality {f:g} Hz {inp} r{rep}, estimated mask")
    for (bb, f, inp), ref in estimated.get("features", {}).items():
        label[id(ref)] = ("features_est", (bb, f, inp), f"features {bb} {f:g} Hz {inp}, estimated mask")
    pending += [ref for kind in ("summary", "quality", "features") for ref in estimated.get(kind, {}).values()]
    got: dict = {"quality": {}, "original": {}, "features": {}, "masks": {}, "quality_est": {}, "features_est": {}}
    finished, total = 0, len(pending)
    while pending:
        done, pending = ex.wait_any(pending)
        for ref in done:
            kind, key, what = label[id(ref)]
            got[kind][key] = ex.get(ref)
            finished += 1
            bar.note(f"evaluate: {finished}/{total} cells done ({what})")
            bar.update(1)
    recon = got["quality"]
    orig = {bb: _retrieval_metrics(stores[bb], v["vectors"]["original"][0], queries, cfg, class_sizes)
            for bb, v in got["original"].items()}
    recon_est = got["quality_est"]
    inpaint_errors = [(queries[j].path, f"inpaint failed at {f:g} Hz, {inp}, repeat {rep}{how}: {why}")
                      for results, how in ((recon, ""), (recon_est, ", estimated mask"))
                      for (f, inp, rep), r in results.items() for j, why in sorted(r.get("errors", {}).items())]
    mask_errors = [(queries[j].path, f"at {f:g} Hz, repeat {rep}: {why}")
                   for (f, rep), s in sorted(got["masks"].items()) for j, why in sorted(s["errors"].items())]
    timeline = [dict(ex.get(ref)) for ref in fsim_timing]
    timeline += [{k: s[k] for k in ("start", "end", "pid")} | {"task": f"{s['task']} f={f:g} r={rep}"}
                 for (f, rep), s in got["masks"].items()]
    seen = set()  # a pre-fill shared by two cells (Telea's) is one task
    for results, how in ((recon, ""), (recon_est, " (estimated mask)")):
        for (f, inp, rep), r in results.items():
            for t in r["timeline"]:
                if (t["pid"], t["start"], t["end"]) not in seen:
                    seen.add((t["pid"], t["start"], t["end"]))
                    task = f"quality {inp}{how}" if t["task"] == "quality" else t["task"]
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
        if (bb, f, inp) in got["features_est"]:  # --detect-mask: beside the true-mask records
            records.append(_estimated_record(cfg, stores[bb], queries, class_sizes, (bb, f, inp), got, timeline))
        if (bb, f, inp) not in fig6:
            q = cfg.fig6_query % len(queries)
            fig6[(bb, f, inp)] = {
                "query": queries[q].path, "label": queries[q].label,
                "images": dict(recon[(f, inp, 0)]["fig6"]),
                "hits": {s: {"paths": list(per_state[s][0]["_top_paths"][q]),
                             "labels": list(per_state[s][0]["_top_labels"][q])} for s in STATES},
            }
    out = {"records": records, "timeline": timeline, "_fig6": fig6, "_inpaint_errors": inpaint_errors}
    if got["masks"]:
        out["mask_estimation"] = _mask_estimation(cfg, got["masks"])
        out["_mask_errors"] = mask_errors
    return out


def _estimated_record(cfg, store, queries, class_sizes, key, got, timeline) -> dict:
    """The ``estimated`` record of one (backbone, frequency, inpainter) cell: its queries reconstructed through
    the estimated masks, scored as the true-mask ``reconstructed`` record is, with the masks' IoU."""
    bb, f, inp = key
    cell = got["features_est"][key]
    timeline.append({"task": f"features {bb} f={f} {inp} (estimated mask)", "start": cell["start"], "end": cell["end"],
                     "pid": cell["pid"]})
    per_repeat = [_retrieval_metrics(store, v, queries, cfg, class_sizes) for v in cell["vectors"]["reconstructed"]]
    rec = {"backbone": bb, "inpainter": inp, "frequency": f, "state": ESTIMATED, "protocol": cfg.protocol,
           "n_queries": len(queries), "repeats": cfg.repeats, "mask_estimator": cfg.mask_estimator,
           "wall_seconds": round(cell["end"] - cell["start"], 3)}
    rec.update(_summarise(per_repeat, ("p_at_1", "p_at_5", "p_at_10", "map"), scale=100.0))
    rec.update(_summarise([got["quality_est"][(f, inp, rep)]["quality"] for rep in range(cfg.repeats)],
                          ("ssim", "fsim", "psnr")))
    rec.update(_summarise([{"mask_iou": got["masks"][(f, rep)]["iou"]} for rep in range(cfg.repeats)], ("mask_iou",)))
    return rec

