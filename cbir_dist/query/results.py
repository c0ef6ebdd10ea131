"""The query job's results: the row table, its files (Parquet, CSV, JSON Lines), P@k, the printed table.

Rows, one per query and rank: ``query, query_id, query_label, rank, id, path, label, distance,
error, estimated_missing`` — a query that could not be run has one row with ``rank`` 0 and the
reason in ``error``. ``estimated_missing`` is the fraction of the query's pixels that the mask it was
reconstructed through marks missing, when that mask was estimated (``--detect-mask``; 0.0 when
nothing missing was found and the query was searched as it is), and null otherwise (no
``--detect-mask``, or a query that could not be run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..io.tables import check_writable, write_csv, write_jsonl, write_parquet

RESULT_COLUMNS = ("query", "query_id", "query_label", "rank", "id", "path", "label", "distance", "error",
                  "estimated_missing")
RESULT_TYPES = {"query_id": "int64", "rank": "int32", "id": "int64", "distance": "float32",
                "estimated_missing": "float32"}
RESULT_FORMATS = (".parquet", ".csv", ".jsonl")


def check_out_path(out: str) -> str:
    """The format of a result file by its extension (``.parquet``, ``.csv``, ``.jsonl``); UsageError otherwise,
    or when ``out`` is a folder: checked before a query job runs, so its results are not lost at the end."""
    suffix = Path(out).suffix.lower()
    if suffix not in RESULT_FORMATS:
        raise UsageError(f"--out {out}: unknown format {suffix or '(no extension)'!r}; "
                         f"end the name in {', '.join(RESULT_FORMATS)}")
    if Path(out).is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name ending in {', '.join(RESULT_FORMATS)}")
    check_writable(out, "--out")  # its folder: a usage error if not one, an OutputError if not writable
    return suffix


def write_results(cols: dict, out: str) -> None:
    """The result table, columns :data:`RESULT_COLUMNS`, written atomically as Parquet, CSV or JSON Lines
    by ``out``'s extension."""
    suffix = check_out_path(out)
    table = {c: cols[c] for c in RESULT_COLUMNS}
    if suffix == ".csv":
        write_csv(out, table)
    elif suffix == ".jsonl":
        write_jsonl(out, table)
    else:
        import pyarrow as pa

        types = {c: getattr(pa, RESULT_TYPES.get(c, "string"))() for c in RESULT_COLUMNS}
        write_parquet(out, table, types)


def precision_table(cols: dict, ks=(1, 5, 10), *, labels=None) -> dict[int, float]:
    """Mean P@k (in %) over the successful queries of a result table (label match = relevant);
    with ``labels``, only over the queries whose label is one of them."""
    by_query: dict[str, list[bool]] = {}
    for q, ql, rank, label, err in zip(cols["query"], cols["query_label"], cols["rank"], cols["label"], cols["error"]):
        if err or rank == 0 or (labels is not None and ql not in labels):
            continue
        by_query.setdefault(q, []).append(label == ql)
    if not by_query:
        return {k: float("nan") for k in ks}
    return {k: 100.0 * float(np.mean([np.mean(hits[:k]) for hits in by_query.values()])) for k in ks}


def by_query(cols: dict) -> list[dict]:
    """The result table grouped per query, in the order of the table: ``{"query", "query_id", "label",
    "error", "estimated_missing", "hits": [{"rank", "id", "path", "label", "distance"}, ...]}``."""
    out: dict[str, dict] = {}
    for row in zip(*(cols[c] for c in RESULT_COLUMNS)):
        r = dict(zip(RESULT_COLUMNS, row))
        q = out.setdefault(r["query"], {"query": r["query"], "query_id": r["query_id"], "label": r["query_label"],
                                        "error": "", "estimated_missing": r["estimated_missing"], "hits": []})
        if r["error"]:
            q["error"] = r["error"]
        elif r["rank"] > 0:
            q["hits"].append({k: r[k] for k in ("rank", "id", "path", "label", "distance")})
    return list(out.values())


def nothing_found(cols: dict) -> list[str]:
    """The queries, in table order, whose estimated mask marked nothing missing (``estimated_missing``
    0.0): searched as they are."""
    return [q["query"] for q in by_query(cols) if not q["error"] and q["estimated_missing"] == 0.0]


def format_results(cols: dict) -> str:
    """Per query, its top-k as a compact table (rank, distance, label, path); a failed query as its reason."""
    from ..io.text import printable as t  # names as the terminal can show them (no raw escapes)

    groups = by_query(cols)
    lines = []
    for n, q in enumerate(groups, 1):
        head = f"[{n}/{len(groups)}] {t(q['query'])}" + (f"  (label {t(q['label'])})" if q["label"] else "")
        if q["estimated_missing"] is not None and not q["error"]:
            head += (f"  (missing region found: {q['estimated_missing']:.1%})" if q["estimated_missing"] > 0
                     else "  (no missing region found)")
        if q["error"]:
            lines.append(f"{head}\n  error: {t(q['error'])}")
            continue
        if not q["hits"]:
            lines.append(f"{head}\n  no neighbours (the collection is empty)")
            continue
        width = max(5, *(len(t(h["label"])) for h in q["hits"]))
        rows = [f"  {'rank':>4}  {'distance':>9}  {'label':<{width}}  path"]
        for h in q["hits"]:
            rows.append(f"  {h['rank']:>4}  {h['distance']:>9.4f}  {t(h['label']):<{width}}  {t(h['path'])}")
        lines.append(head + "\n" + "\n".join(rows))
    return "\n".join(lines)
