"""Self-contained HTML pages: markdown sections rendered to HTML, PNG figures embedded as data URIs."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

import numpy as np

from ...io.tables import write_text


def md_to_html(md: str) -> str:
    """Just enough Markdown for our tables: headings, paragraphs, pipe tables, **bold** and `code`."""
    import re

    def inline(s):
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    out, table = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            rows = [[c.strip() for c in t.strip("|").split("|")] for t in table if not set(t) <= set("|-: ")]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in rows[0]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                       + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level + 1}>{inline(line.lstrip('#').strip())}</h{level + 1}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out)


def write_html(out: Path, sections: Sequence[tuple[str, str]], images: Sequence[tuple[str, Path]], title: str) -> Path:
    """A self-contained page: markdown sections as HTML, PNGs embedded as data URIs."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right}img{max-width:100%;border:1px solid #eee}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for _name, md in sections:
        parts.append(md_to_html(md))
    for caption, png in images:
        if png.exists():
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    write_text(path, "\n".join(parts))
    return path




def cores_text(results: dict) -> str:
    """``"; 1.9 of 2 cores busy"``: the cores this machine kept busy over an evaluation (``cores_busy``:
    every process on it counted, the job's, Ray's and any other's; not a cluster's other nodes) of the
    ``cores_available`` to it, or ``""`` when not measured (off Linux)."""
    busy = results.get("cores_busy")
    return "" if busy is None else f"; {busy:.1f} of {results.get('cores_available')} cores busy"


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
