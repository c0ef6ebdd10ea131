"""The shape and texture evaluation's outputs: results.json, markdown tables, plots, retrieval grid, report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...io.tables import save_figure, write_json, write_text
from .figures import plt as _plt
from .html import cores_text

GRID_TOP = 8


def _f(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _spec_line(spec: dict) -> str:
    parts = []
    for b in spec["blocks"]:
        p = ", ".join(f"{k}={v}" for k, v in sorted(b["params"].items()))
        parts.append(f"`{b['name']}` ({b['dim']}-d{', ' + p if p else ''}; {b['norm']}, weight {b['weight']:g})")
    return "; ".join(parts)


def _protocol_text(protocol: str) -> str:
    return ("**exclude-self**: the query's own row is removed from its ranking" if protocol == "exclude-self"
            else "**include-self**: the query's own row stays in its ranking (P@1 is then trivially 100)")


def shape_table(results: dict) -> str:
    """The main markdown table: retrieval, KNN classification, affine comparison and ablation."""
    cfg, recs = results["config"], results["records"]
    prof = cfg["profile"]
    k0 = results["per_class"]["knn_k"]
    base = next(r for r in recs if r["variant"] == "original" and r["knn_k"] == k0)
    dup = f", {cfg['n_duplicates']} byte-identical duplicate files share a row" if cfg["n_duplicates"] else ""
    lines = [
        f"# {prof.capitalize()} retrieval and KNN classification (Pande et al.) — profile `{prof}`",
        "",
        f"Data set `{cfg['dataset']}`: {cfg['n_files']} files, {cfg['n_database']} rows in collection "
        f"`{cfg['collection']}` of `{cfg['db']}`{dup}, {cfg['n_rejected']} rejected, {len(cfg['classes'])} classes. "
        f"Spec: {_spec_line(cfg['spec'])}.",
        "",
        f"Protocol of P@k and mAP@{cfg['map_k']}: {_protocol_text(cfg['protocol'])}. Bull's-eye (MPEG-7): "
        f"same-class rows in the top {base['bullseye_window']} (2 × class size) of the ranking that includes the "
        "query, over the class size. KNN: majority vote of the k nearest *other* rows (ties: smaller summed "
        "distance). Retrieval through the Milvus store. Values in %.",
        "",
        "## Retrieval",
        "",
        "| variant | queries | database | n queries | P@1 | P@5 | P@10 | mAP | bull's-eye | ΔP@1 vs original |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        if r["knn_k"] != k0:
            continue
        delta = r["p_at_1"] - base["p_at_1"]
        lines.append(f"| {r['variant']} | {r['queries']} | {r['database']} ({r['n_database']}) | {r['n_queries']} | "
                     f"{_f(r['p_at_1'])} | {_f(r['p_at_5'])} | {_f(r['p_at_10'])} | {_f(r['map'])} | "
                     f"{_f(r['bullseye'])} | {'' if r is base else f'{delta:+.1f}'} |")
    if cfg.get("affine"):
        lines += ["", "`affine` → `affine`: every repository image (originals and variants) queries the whole "
                  "repository; its sibling copies stay in the database. variants → `original`: each transformed "
                  "copy queries the unmodified collection"
                  + (" with its source shape removed, the same task as the original leave-one-out row."
                     if cfg["protocol"] == "exclude-self" else " (its source shape stays in the database).")]
    lines += ["", "## KNN classification (one class against the rest, macro-averaged over classes)", "",
              "| variant | queries | database | k | accuracy (overall) | precision | recall (sensitivity) | "
              "specificity | accuracy (one-vs-rest) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        if r["knn_k"] != k0 and r["queries"] not in ("all", "all variants"):
            continue  # each single affine variant: the first k only (all k are in results.json)
        lines.append(f"| {r['variant']} | {r['queries']} | {r['database']} | {r['knn_k']} | {_f(r['knn_accuracy'])} | "
                     f"{_f(r['precision'])} | {_f(r['recall'])} | {_f(r['specificity'])} | {_f(r['accuracy'])} |")
    ab = results.get("ablation") or []
    if ab:
        row0 = ab[0]
        lines += ["", "## Ablation — numpy retrieval over the descriptors (not through the store)", "",
                  f"Same protocol and scaling as the store ({row0['n_queries']} queries, {row0['n_database']} rows; "
                  f"z-scores fitted on the data set unless marked), computed in the same run. "
                  f"KNN accuracy with k = {row0['knn_k']}. **bold** = the profile's setting"
                  + ("; † = the paper's 10 Fourier descriptors." if prof == "shape" else "."), "",
                  "| descriptor | dim | P@1 | P@5 | P@10 | mAP | bull's-eye | KNN accuracy |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ab:
            name = f"**{r['name']}**" if r.get("profile") else r["name"]
            name += " †" if r.get("paper") else ""
            lines.append(f"| {name} | {r['dim']} | {_f(r['p_at_1'])} | {_f(r['p_at_5'])} | {_f(r['p_at_10'])} | "
                         f"{_f(r['map'])} | {_f(r['bullseye'])} | {_f(r['knn_accuracy'])} |")
    t = results.get("timings", {})
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:g}" for k, v in t.items()) + cores_text(results)
              + (" (this machine's, every process on it)" if cores_text(results) else "") + "."]
    return "\n".join(lines) + "\n"


def per_class_md(results: dict) -> str:
    pc = results["per_class"]
    prof = results["config"]["profile"]
    lines = [f"# Per-class figures — profile `{prof}`, unmodified data set", "",
             f"P@1 under the {results['config']['protocol']} protocol; KNN (k = {pc['knn_k']}) precision, recall "
             "(sensitivity), specificity and accuracy one class against the rest (Pande et al.). Values in %.", "",
             "| class | queries | P@1 | bull's-eye | precision | recall | specificity | accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lb, r in pc["classes"].items():
        lines.append(f"| {lb} | {r['n_queries']} | {_f(r['p_at_1'])} | {_f(r['bullseye'])} | {_f(r['precision'])} | "
                     f"{_f(r['recall'])} | {_f(r['specificity'])} | {_f(r['accuracy'])} |")
    return "\n".join(lines) + "\n"


def summary_text(results: dict) -> str:
    cfg, recs = results["config"], results["records"]
    k0 = results["per_class"]["knn_k"]
    o = next(r for r in recs if r["variant"] == "original" and r["knn_k"] == k0)
    lines = [
        f"{cfg['profile']} on {cfg['dataset']}: {o['n_queries']} queries, {len(cfg['classes'])} classes "
        f"({cfg['protocol']}): P@1 {_f(o['p_at_1'])}  P@5 {_f(o['p_at_5'])}  P@10 {_f(o['p_at_10'])}  "
        f"mAP@{cfg['map_k']} {_f(o['map'])}  bull's-eye {_f(o['bullseye'])} (top {o['bullseye_window']})",
        f"KNN k={k0}: accuracy {_f(o['knn_accuracy'])}; macro precision {_f(o['precision'])}, recall "
        f"{_f(o['recall'])}, specificity {_f(o['specificity'])}, accuracy (one-vs-rest) {_f(o['accuracy'])}",
    ]
    rep = next((r for r in recs if r["database"] == "affine" and r["knn_k"] == k0), None)
    var = next((r for r in recs if r["queries"] == "all variants" and r["knn_k"] == k0), None)
    if rep and var:
        lines.append(f"affine repository ({rep['n_queries']} images): P@1 {_f(rep['p_at_1'])} "
                     f"({rep['p_at_1'] - o['p_at_1']:+.1f}); variants -> originals: P@1 {_f(var['p_at_1'])} "
                     f"({var['p_at_1'] - o['p_at_1']:+.1f} vs the unmodified set)")
    ab = results.get("ablation") or []
    if ab:
        best = max(ab, key=lambda r: (r["p_at_1"], r["bullseye"] or 0))
        lines.append(f"ablation (numpy): best P@1 {_f(best['p_at_1'])} with {best['name']} "
                     f"(bull's-eye {_f(best['bullseye'])})")
    lines.append(f"wrote {cfg['out']}/results.json, table_{cfg['profile']}.md, report.html "
                 f"({results['timings']['total']:.0f} s{cores_text(results)})")
    return "\n".join(lines)


def plot_per_class(results: dict, path: Path) -> None:
    """Horizontal bars per class, hardest first: KNN precision and recall, and the bull's-eye."""
    plt = _plt()
    pc = results["per_class"]["classes"]
    names = sorted(pc, key=lambda n: (pc[n]["recall"], pc[n]["precision"], n))
    keys = ("precision", "recall") + (("bullseye",) if any(r["bullseye"] is not None for r in pc.values()) else ())
    fig, ax = plt.subplots(figsize=(9, 0.08 * len(names) * len(keys) + 1.5))
    y = np.arange(len(names))
    h = 0.8 / len(keys)
    for i, key in enumerate(keys):
        label = {"recall": "recall (sensitivity)", "bullseye": "bull's-eye"}.get(key, key)
        ax.barh(y + i * h, [pc[n][key] or 0 for n in names], height=h, label=label)
    ax.set_yticks(y + 0.4 - h / 2)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_ylim(len(names) - 0.2, -0.6)
    ax.set_xlabel(f"% (KNN k = {results['per_class']['knn_k']}, one class vs the rest; sorted by recall)")
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(keys), frameon=False)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def plot_ablation(results: dict, path: Path) -> None:
    plt = _plt()
    ab = results["ablation"]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(ab) + 1.5))
    y = np.arange(len(ab))
    ax.barh(y - 0.2, [r["p_at_1"] for r in ab], height=0.4, label="P@1")
    ax.barh(y + 0.2, [r["bullseye"] or 0 for r in ab], height=0.4, label="bull's-eye")
    ax.set_yticks(y)
    ax.set_yticklabels([("▶ " if r.get("profile") else "") + r["name"] for r in ab], fontsize=7)
    ax.invert_yaxis()
    lo = min(min(r["p_at_1"], r["bullseye"] or 100) for r in ab)
    ax.set_xlim(max(0, lo - 10), 100)
    ax.set_xlabel("% (numpy retrieval over the descriptors; ▶ = the profile's setting)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def plot_grid(entries: list[dict], title: str, path: Path) -> None:
    """Each row: a query, then its top results (green frame = same class, red = other)."""
    from ...io.images import read_image
    from .figures import draw_hits_row

    plt = _plt()
    k = max(len(e["paths"]) for e in entries)
    fig, axes = plt.subplots(len(entries), k + 1, figsize=(1.2 * (k + 1), 1.35 * len(entries) + 0.4), squeeze=False)
    for r, e in enumerate(entries):
        draw_hits_row(axes[r], read_image(e["query"]), f"query: {e['label']}", e["paths"], e["labels"], e["label"],
                      k=k, hit_caption=lambda rank, label, ok: f"{rank} {label}")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def plot_affine_examples(items: list, path: Path) -> None:
    from ...io.images import read_image
    from .figures import thumb as _thumb

    plt = _plt()
    fig, axes = plt.subplots(1, len(items), figsize=(1.6 * len(items), 1.9), squeeze=False)
    for ax, (name, p) in zip(axes[0], items):
        ax.imshow(_thumb(read_image(p), 128))
        ax.set_title(str(name), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def write_shape_report(results: dict, out: Path, figures: dict) -> None:
    """results.json, the markdown tables, the PNGs and report.html in ``out``."""
    from .html import json_default as _json_default
    from .html import write_html

    out = Path(out)
    prof = results["config"]["profile"]
    write_json(out / "results.json", results, default=_json_default, indent=1, sort_keys=False)
    table, pcls = shape_table(results), per_class_md(results)
    write_text(out / f"table_{prof}.md", table)
    write_text(out / f"table_{prof}_per_class.md", pcls)
    images = []
    plot_per_class(results, out / f"per_class_{prof}.png")
    images.append(("Per-class KNN precision and recall", out / f"per_class_{prof}.png"))
    if results.get("ablation"):
        plot_ablation(results, out / f"ablation_{prof}.png")
        images.append(("Ablation (numpy retrieval)", out / f"ablation_{prof}.png"))
    if figures.get("grid"):
        plot_grid(figures["grid"], f"{prof}: queries and their top {GRID_TOP} ({results['config']['protocol']})",
                  out / f"retrieval_grid_{prof}.png")
        images.append(("Retrieval examples", out / f"retrieval_grid_{prof}.png"))
    if figures.get("affine"):
        plot_affine_examples(figures["affine"], out / "affine_examples.png")
        images.append(("Affine repository: one shape and its variants", out / "affine_examples.png"))
    summary = "## Summary\n\n" + "\n\n".join(f"`{line}`" for line in results["summary"].splitlines())
    write_html(out, [("summary", summary), ("table", table), ("per_class", pcls)], images,
               f"cbir_dist {prof} evaluation — {results['config']['dataset']}")
