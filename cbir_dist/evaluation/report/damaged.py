"""The damaged-query evaluation's outputs: results.json, table1.md / table2.md, PNG plots, a Fig. 6 grid, report.html."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...io.tables import save_figure, write_json, write_text
from .figures import draw_hits_row
from .figures import plt as _plt
from .html import cores_text, write_html
from .html import json_default as _json_default


def _pm(rec: dict, key: str, digits: int = 1) -> str:
    v = rec.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = rec.get(f"{key}_std", 0.0) or 0.0
    return f"{v:.{digits}f} ± {s:.{digits}f}" if rec.get("repeats", 1) > 1 else f"{v:.{digits}f}"


def _find(records, **kw):
    for r in records:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def _uniq(values):
    return list(dict.fromkeys(values))


def table1(results: dict) -> str:
    """The paper's Table 1: reconstruction quality (SSIM, FSIM, PSNR) per frequency, one column group per inpainter."""
    recs = results["records"]
    freqs = _uniq(r["frequency"] for r in recs)
    inps = _uniq(r["inpainter"] for r in recs)
    bb = recs[0]["backbone"]  # quality does not depend on the backbone
    cfg = results.get("config", {})
    lines = [
        "# Table 1 — reconstruction quality per fringe frequency",
        "",
        f"Data set `{cfg.get('dataset', '?')}`, {cfg.get('n_queries', '?')} queries, missing fraction "
        f"{cfg.get('missing_fraction', '?')}, {cfg.get('repeats', 1)} repeat(s) with different mask phases "
        "(± = std over repeats). SSIM and FSIM (luminance FSIM, as the paper) in [0, 1], PSNR in dB. "
        "`none` is the destroyed (zero-filled) image."
        + (" `estimated mask`: reconstructed through the mask estimated in the damaged image (--detect-mask)."
           if any(r["state"] == "estimated" for r in recs) else ""),
        "",
        "| frequency (Hz) | " + " | ".join(f"{i} SSIM | {i} FSIM | {i} PSNR" for i in inps) + " |",
        "|---:|" + "---:|" * (3 * len(inps)),
    ]
    for f in freqs:
        cells = []
        for i in inps:
            r = _find(recs, backbone=bb, inpainter=i, frequency=f, state="reconstructed") or {}
            cells += [_pm(r, "ssim", 3), _pm(r, "fsim", 3), _pm(r, "psnr", 2)]
        lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
        if any(r["state"] == "estimated" for r in recs):  # --detect-mask: through the estimated mask
            cells = []
            for i in inps:
                r = _find(recs, backbone=bb, inpainter=i, frequency=f, state="estimated") or {}
                cells += [_pm(r, "ssim", 3), _pm(r, "fsim", 3), _pm(r, "psnr", 2)]
            lines.append(f"| {f:g} estimated mask | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _delta(est: dict, true: dict, key: str = "p_at_1") -> str:
    """``est[key] - true[key]`` in points, signed ("–" when either is missing)."""
    if est.get(key) is None or true.get(key) is None:
        return "–"
    return f"{est[key] - true[key]:+.1f}"


def mask_table(results: dict) -> str:
    """``--detect-mask``: per frequency, how well the estimator found the missing region, and per backbone
    what not knowing the mask costs (P@1 through the estimated mask minus P@1 through the true one)."""
    rows = results.get("mask_estimation") or []
    if not rows:
        return ""
    recs = results["records"]
    inps = _uniq(r["inpainter"] for r in recs)
    lines = [
        f"## Estimated masks (--detect-mask, estimator: {rows[0].get('estimator', 'network')})",
        "",
        "The same zero-filled queries, reconstructed through the mask the estimator finds in each damaged "
        "image instead of the true one (`estimated mask` rows above; `none`: the damaged image with the "
        "estimated holes zeroed too; a query where nothing is found is searched as the damaged image). "
        "Mask IoU: the estimated missing region against the true one, mean over queries.",
        "",
        "| frequency (Hz) | mask IoU | missing (true) % | missing (estimated) % | nothing found |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['frequency']:g} | {_pm(r, 'mask_iou', 3)} | {100 * r['missing_fraction']:.1f} | "
                     f"{100 * r['estimated_missing_fraction']:.1f} | {r['found_nothing']} of {r['n_images']} |")
    for bb in _uniq(r["backbone"] for r in recs):
        lines += ["", f"### {bb}: cost of not knowing the mask (P@1, estimated − true mask, points)", "",
                  "| frequency (Hz) | mask IoU | " + " | ".join(f"{i} ΔP@1" for i in inps) + " |",
                  "|---:|---:|" + "---:|" * len(inps)]
        for r in rows:
            f = r["frequency"]
            cells = [_delta(_find(recs, backbone=bb, inpainter=i, frequency=f, state="estimated") or {},
                            _find(recs, backbone=bb, inpainter=i, frequency=f, state="reconstructed") or {})
                     for i in inps]
            lines.append(f"| {f:g} | {r['mask_iou']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table2(results: dict) -> str:
    """The paper's Table 2: P@1/5/10 per backbone and frequency, damaged and after each reconstruction.

    With ``--detect-mask`` every frequency's row is followed by its ``estimated mask`` row (the damaged
    column: ``none`` through the estimated mask), and :func:`mask_table` closes the table."""
    recs = results["records"]
    freqs = _uniq(r["frequency"] for r in recs)
    inps = [i for i in _uniq(r["inpainter"] for r in recs) if i != "none"]
    estimated = any(r["state"] == "estimated" for r in recs)
    cfg = results.get("config", {})
    protocol = recs[0].get("protocol", "exclude-self")
    lines = [
        "# Table 2 — precision@1/5/10 (%) per backbone and fringe frequency",
        "",
        f"Data set `{cfg.get('dataset', '?')}`, {cfg.get('n_queries', '?')} queries against "
        f"{cfg.get('n_database', '?')} images. Protocol: **{protocol}** "
        + ("(the query's own original is removed from its neighbours)." if protocol == "exclude-self"
           else "(the query's own original stays in the database and may be retrieved).")
        + f" Fusion: {cfg.get('profile') or cfg.get('fusion', '?')}; ± = std over {cfg.get('repeats', 1)} repeat(s).",
    ]
    for bb in _uniq(r["backbone"] for r in recs):
        o = _find(recs, backbone=bb, state="original") or {}
        lines += ["", f"## {bb}", "",
                  f"Intact queries: P@1 {_pm(o, 'p_at_1')}, P@5 {_pm(o, 'p_at_5')}, P@10 {_pm(o, 'p_at_10')}, "
                  f"mAP {_pm(o, 'map')}.", ""]
        head = ["frequency (Hz)", "damaged P@1", "P@5", "P@10"]
        for i in inps:
            head += [f"{i} P@1", "P@5", "P@10"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---:|" * len(head))
        for f in freqs:
            d = _find(recs, backbone=bb, frequency=f, state="damaged") or {}
            row = [f"{f:g}", _pm(d, "p_at_1"), _pm(d, "p_at_5"), _pm(d, "p_at_10")]
            for i in inps:
                r = _find(recs, backbone=bb, inpainter=i, frequency=f, state="reconstructed") or {}
                row += [_pm(r, "p_at_1"), _pm(r, "p_at_5"), _pm(r, "p_at_10")]
            lines.append("| " + " | ".join(row) + " |")
            if estimated:
                d = _find(recs, backbone=bb, inpainter="none", frequency=f, state="estimated") or {}
                row = [f"{f:g} estimated mask", _pm(d, "p_at_1"), _pm(d, "p_at_5"), _pm(d, "p_at_10")]
                for i in inps:
                    r = _find(recs, backbone=bb, inpainter=i, frequency=f, state="estimated") or {}
                    row += [_pm(r, "p_at_1"), _pm(r, "p_at_5"), _pm(r, "p_at_10")]
                lines.append("| " + " | ".join(row) + " |")
    mask = mask_table(results)
    return "\n".join(lines) + "\n" + ("\n" + mask if mask else "")


def plot_precision(results: dict, path: Path) -> None:
    plt = _plt()
    recs = results["records"]
    bbs = _uniq(r["backbone"] for r in recs)
    freqs = _uniq(r["frequency"] for r in recs)
    inps = _uniq(r["inpainter"] for r in recs)
    fig, axes = plt.subplots(len(bbs), 3, figsize=(13, 3.4 * len(bbs)), squeeze=False)
    for row, bb in enumerate(bbs):
        for col, key in enumerate(("p_at_1", "p_at_5", "p_at_10")):
            ax = axes[row, col]
            o = _find(recs, backbone=bb, state="original")
            if o:
                ax.axhline(o[key], color="k", ls="--", lw=1, label="intact")
            d = [(_find(recs, backbone=bb, frequency=f, state="damaged") or {}).get(key, np.nan) for f in freqs]
            ax.plot(freqs, d, "o-", color="0.5", label="damaged")
            for i in inps:
                if i == "none":
                    continue
                y = [(_find(recs, backbone=bb, inpainter=i, frequency=f, state="reconstructed") or {}).get(key, np.nan)
                     for f in freqs]
                line, = ax.plot(freqs, y, "o-", label=f"reconstructed ({i})")
                y = [(_find(recs, backbone=bb, inpainter=i, frequency=f, state="estimated") or {}).get(key, np.nan)
                     for f in freqs]
                if not np.all(np.isnan(y)):  # --detect-mask: the same reconstruction through the estimated mask
                    ax.plot(freqs, y, "x--", color=line.get_color(), label=f"{i}, estimated mask")
            ax.set_title(f"{bb}: {key.replace('p_at_', 'P@')}")
            ax.set_xlabel("fringe frequency (Hz)")
            ax.set_ylabel("%")
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def plot_quality(results: dict, path: Path) -> None:
    plt = _plt()
    recs = results["records"]
    bb = recs[0]["backbone"]
    freqs = _uniq(r["frequency"] for r in recs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key in zip(axes, ("ssim", "fsim", "psnr")):
        for i in _uniq(r["inpainter"] for r in recs):
            rs = [_find(recs, backbone=bb, inpainter=i, frequency=f, state="reconstructed") or {} for f in freqs]
            y = np.array([r.get(key, np.nan) for r in rs])
            e = np.array([r.get(f"{key}_std", 0.0) for r in rs])
            ax.errorbar(freqs, y, yerr=e, marker="o", capsize=3, label=i)
        ax.set_title(key.upper() + (" (dB)" if key == "psnr" else ""))
        ax.set_xlabel("fringe frequency (Hz)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


_KINDS = (("network", "tab:red"), ("pre-fill", "tab:orange"), ("reconstruct", "tab:orange"), ("quality", "tab:green"),
          ("FSIM", "tab:grey"), ("features", "tab:blue"), ("estimate masks", "tab:brown"))


def timeline_summary(timeline: list[dict]) -> dict:
    """Span of the tasks, their summed busy seconds and the mean number running at once (busy / span)."""
    if not timeline:
        return {"span_s": 0.0, "busy_s": 0.0, "mean_concurrency": 0.0, "workers": 0}
    span = max(t["end"] for t in timeline) - min(t["start"] for t in timeline)
    busy = sum(t["end"] - t["start"] for t in timeline)
    return {"span_s": round(span, 2), "busy_s": round(busy, 2), "mean_concurrency": round(busy / span, 2) if span else 0.0,
            "workers": len({t["pid"] for t in timeline})}


def run_md(results: dict) -> str:
    """The run in a few lines: its wall time, its tasks' concurrency, and the cores this machine kept busy."""
    c = results.get("concurrency") or timeline_summary(results.get("timeline", []))
    lines = ["## The run", "",
             f"{results.get('wall_seconds', 0):.0f} s; {len(results.get('timeline', []))} tasks on {c['workers']} "
             f"processes, {c['mean_concurrency']:.2f} running at once on average over {c['span_s']:.0f} s"
             f"{cores_text(results)}."]
    if results.get("cores_busy") is not None:
        lines += ["", "Cores busy: the whole machine's (every process on it, the job's and any other's) over the "
                      "run, of the cores the job may use; on a cluster, the driver's machine only."]
    return "\n".join(lines) + "\n"


def plot_timeline(results: dict, path: Path) -> None:
    """Gantt chart of the tasks, one lane per worker process: gaps in a lane are idle time of that worker.

    Colours: red the network (its actor), orange reconstruction / pre-fill, green quality metrics, grey
    FSIM reference maps, blue features, brown mask estimates (``--detect-mask``). The title gives the mean number of tasks running at once.
    """
    plt = _plt()
    tl = sorted(results.get("timeline", []), key=lambda t: t["start"])
    if not tl:
        return
    t0 = tl[0]["start"]
    pids = _uniq(t["pid"] for t in tl)
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(pids) + 1.6))
    for t in tl:
        color = next((c for k, c in _KINDS if t["task"].startswith(k)), "tab:purple")
        ax.barh(pids.index(t["pid"]), t["end"] - t["start"], left=t["start"] - t0, color=color, height=0.8,
                edgecolor="white", linewidth=0.4)
    names = {}
    for t in tl:  # the network's actor is the lane whose tasks are all "network ..."
        names.setdefault(t["pid"], set()).add(t["task"].split(" ")[0])
    ax.set_yticks(range(len(pids)))
    ax.set_yticklabels([f"worker {i}" + (" (network actor)" if names[p] == {"network"} else "")
                        for i, p in enumerate(pids)], fontsize=7)
    ax.invert_yaxis()
    summ = timeline_summary(tl)
    ax.set_title(f"{len(tl)} tasks on {summ['workers']} processes; mean {summ['mean_concurrency']:.2f} running at once "
                 f"over {summ['span_s']:.0f} s{cores_text(results)}", fontsize=9)
    ax.set_xlabel("seconds since the first task started (red network, orange reconstruction, green quality, "
                  "grey FSIM references, blue features" + (", brown mask estimates" if any(
                      t["task"].startswith("estimate masks") for t in tl) else "") + ")")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def plot_fig6(entry: dict, title: str, path: Path) -> None:
    """Fig. 6: original / damaged / reconstructed query rows, each followed by its top-10 (green = correct)."""
    from ...io.images import read_image

    plt = _plt()
    original = read_image(entry["query"])
    rows = [("original", original), ("damaged", entry["images"]["damaged"]),
            ("reconstructed", entry["images"]["reconstructed"])]
    k = max(len(entry["hits"][s]["paths"]) for s, _ in rows)
    fig, axes = plt.subplots(3, k + 1, figsize=(1.3 * (k + 1), 4.4), squeeze=False)
    for r, (state, qimg) in enumerate(rows):
        hits = entry["hits"][state]
        draw_hits_row(axes[r], qimg, state, hits["paths"], hits["labels"], entry["label"], k=k)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def write_report(results: dict, out: Path, *, dataset: str = "") -> None:
    """Everything for an evaluation run in ``out``; removes the in-memory-only ``_fig6`` entry from ``results``."""
    out = Path(out)
    fig6 = results.pop("_fig6", {})
    write_json(out / "results.json", results, default=_json_default, indent=1, sort_keys=False)
    t1, t2 = table1(results), table2(results)
    write_text(out / "table1.md", t1)
    write_text(out / "table2.md", t2)
    plot_precision(results, out / "precision_vs_frequency.png")
    plot_quality(results, out / "quality_vs_frequency.png")
    plot_timeline(results, out / "timeline.png")
    images = [("Precision vs frequency", out / "precision_vs_frequency.png"),
              ("Reconstruction quality vs frequency", out / "quality_vs_frequency.png")]
    if fig6:
        # the hardest frequency, the last inpainter listed (usually the strongest), the first backbone
        key = max(fig6, key=lambda k: (k[1], -list(fig6).index(k)))
        inps = _uniq(k[2] for k in fig6)
        key = next((k for k in fig6 if k[1] == key[1] and k[0] == key[0] and k[2] == inps[-1]), key)
        plot_fig6(fig6[key], f"Fig. 6 — {key[0]}, {key[1]:g} Hz, {key[2]}: query {Path(fig6[key]['query']).name} "
                  f"({fig6[key]['label']}) and its top-{len(fig6[key]['hits']['original']['paths'])}",
                  out / "fig6.png")
        images.append(("Fig. 6 — a query and its neighbours", out / "fig6.png"))
    images.append(("Task timeline (concurrency of the cells)", out / "timeline.png"))
    write_html(out, [("table1", t1), ("table2", t2), ("run", run_md(results))], images,
               f"cbir_dist evaluation — {dataset}")


