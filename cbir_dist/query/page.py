"""Self-contained HTML pages of query results (``cbir-dist query --html``, the demo's page).

Per query the page shows the query as given, its damaged and reconstructed versions when the query
was damaged, the mask found in it when the mask was estimated (``--detect-mask``: the query as
given with the pixels found missing painted red, the missing fraction in the caption), and one or
more rows of its top-k neighbours as thumbnails with rank, distance and
label, framed green when the neighbour's label equals the query's and red when it does not (grey
when the query's label, the name of its folder, is no label of any neighbour on the page: a photo
from ``~/Downloads`` has no class to agree with). A query that could not be run shows its reason. Every image is an
inline JPEG ``data:`` URI, so the page is one file that can be mailed or opened anywhere.

The markup is meant to be read by programs too: one ``<section class="query">`` per query with
``data-query``, ``data-label``, ``data-status`` (``ok`` or ``error``), ``data-hits`` and, when its
mask was estimated, ``data-estimated-missing`` (the fraction found missing); inside it
``<img class="view" data-view="query|damaged|mask|reconstructed">``, one ``<div class="hits">`` per row
of neighbours and one ``<img class="hit" data-rank data-label data-distance data-same>`` per
neighbour; a failed query has ``<p class="error">`` with the reason. Names and paths appear as
:func:`~cbir_dist.io.text.printable` shows them (control characters and bytes that are not UTF-8 as
backslash escapes; every ordinary name as it is).
"""

from __future__ import annotations

import html
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..damage.hook import Damaged
from ..errors import ImageDecodeError
from ..io.images import read_image
from ..io.records import Record
from ..io.tables import write_text
from ..io.text import printable
from ..io.thumbnails import jpeg_data_uri, placeholder

VIEW_PX = 128  # the query's own thumbnails
HIT_PX = 112  # the neighbours'
SAME, OTHER, UNKNOWN = "#2e9d3a", "#d0342c", "#b0b0b0"
MISSING_RGB = (230, 30, 30)  # the pixels a mask view marks missing


def mask_overlay(image: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """``image`` (uint8 grey or RGB) as RGB with the pixels ``known`` marks missing painted red (mostly:
    what lies under them still shows a little); ``image`` itself as RGB when ``known`` is None."""
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    rgb = rgb[..., :3].copy() if rgb.shape[2] >= 3 else np.repeat(rgb[..., :1], 3, axis=2)
    if known is not None:
        missing = ~np.asarray(known, bool)
        rgb[missing] = (0.3 * rgb[missing] + 0.7 * np.array(MISSING_RGB)).astype(np.uint8)
    return rgb


def mask_caption(result: Damaged, damaged: bool = False) -> str:
    """The mask view's caption: the fraction found missing, or that nothing was found (and so the query
    was searched as it is, or as damaged when ``damaged``)."""
    if result.known is None or result.missing_fraction == 0.0:
        return "no missing region found: searched " + ("as damaged" if damaged else "as it is")
    return f"missing region found: {result.missing_fraction:.1%} (red)"


class QueryViews:
    """Keeps a thumbnail of each query as given, damaged, its estimated mask and reconstructed: an
    ``observe`` hook of :func:`~cbir_dist.query.search.run_query` (only thumbnails are kept, a few kB
    per query).

    ``damaged`` and ``reconstructed`` are the captions of those views, None when the queries were
    not damaged (or not reconstructed: ``--inpainter none`` leaves the damaged image as it is).
    ``estimated``: the masks were found in the queries (``--detect-mask``); a ``mask`` view then
    shows each (:func:`mask_overlay` on the query as given, :func:`mask_caption`), and a query in
    which nothing was found has no reconstructed view (it was not reconstructed).
    """

    def __init__(self, damaged: str | None = None, reconstructed: str | None = None, *, estimated: bool = False,
                 size: int = VIEW_PX):
        self.damaged, self.reconstructed, self.estimated, self.size = damaged, reconstructed, estimated, size
        self.views: dict[str, list[tuple[str, str, str]]] = {}

    def __call__(self, record: Record, result: Damaged) -> None:
        views = [("query", "query", jpeg_data_uri(record.image, self.size))]
        if self.damaged:
            views.append(("damaged", self.damaged, jpeg_data_uri(result.damaged, self.size)))
        if self.estimated:
            views.append(("mask", mask_caption(result, bool(self.damaged)),
                          jpeg_data_uri(mask_overlay(record.image, result.known), self.size)))
        if self.reconstructed and (self.damaged or self.estimated) and not (self.estimated and result.known is None):
            views.append(("reconstructed", self.reconstructed, jpeg_data_uri(result.reconstructed, self.size)))
        self.views[record.path] = views


class HitThumbnails:
    """Thumbnails of stored images by path, read from disk once each (the newest ``cache`` kept)."""

    def __init__(self, size: int = HIT_PX, cache: int = 4096):
        self.size, self.cache = size, cache
        self._uris: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.unreadable: dict[str, str] = {}  # path -> why (the first few)

    def get(self, path: str) -> tuple[str, str]:
        """``(data URI, reason)``: the image's thumbnail and "", or a grey square and why it is not shown."""
        if path in self._uris:
            self._uris.move_to_end(path)
            return self._uris[path]
        try:
            value = (jpeg_data_uri(read_image(path), self.size), "")
        except ImageDecodeError as exc:
            value = (jpeg_data_uri(placeholder(self.size), self.size), f"not readable here: {exc}")
            if len(self.unreadable) < 1000:
                self.unreadable[path] = str(exc)
        self._uris[path] = value
        if len(self._uris) > self.cache:
            self._uris.popitem(last=False)
        return value


@dataclass
class HitRow:
    """One row of neighbours: a caption (what was searched) and the hits, nearest first
    (dicts with ``rank``, ``path``, ``label``, ``distance``)."""

    caption: str
    hits: list[dict]


@dataclass
class PageEntry:
    """One query of the page."""

    query: str
    label: str
    error: str = ""
    views: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, caption, data URI)
    rows: list[HitRow] = field(default_factory=list)
    estimated_missing: float | None = None  # the fraction found missing, when the mask was estimated
    note: str = ""  # a line under the heading: what this entry shows (the demo's found-mask query)


def entries_from_results(cols: dict, views: QueryViews | None, caption: str,
                         nothing_found: str | None = None) -> list[PageEntry]:
    """One entry per query of a result table (failed queries with their reason), one row of hits each,
    captioned ``caption`` (``nothing_found``, when given, for a query whose estimated mask marked nothing
    missing: it was searched without being reconstructed)."""
    from .results import by_query

    out = []
    for q in by_query(cols):
        row = nothing_found if nothing_found and q.get("estimated_missing") == 0.0 else caption
        out.append(PageEntry(q["query"], q["label"], q["error"], (views.views.get(q["query"], []) if views else []),
                             [] if q["error"] else [HitRow(row, q["hits"])], q.get("estimated_missing")))
    return out


def _esc(value) -> str:
    """Element text or an attribute value: names as :func:`~cbir_dist.io.text.printable` shows them
    (no raw control characters, which HTML forbids), then HTML-escaped."""
    return html.escape(printable(str(value)), quote=True)


def _hit_html(hit: dict, query_label: str, thumbs: HitThumbnails, classes: set[str]) -> str:
    uri, problem = thumbs.get(hit["path"])
    same = "" if query_label not in classes else ("true" if hit["label"] == query_label else "false")
    colour = {"true": SAME, "false": OTHER}.get(same, UNKNOWN)
    name = os.path.basename(hit["path"]) or hit["path"]
    tip = hit["path"] + (f" ({problem})" if problem else "")
    return (f"<figure class='hit'><img class='hit' src='{uri}' alt='{_esc(name)}' title='{_esc(tip)}' "
            f"data-rank='{int(hit['rank'])}' data-label='{_esc(hit['label'])}' "
            f"data-distance='{float(hit['distance']):.6g}' data-path='{_esc(hit['path'])}' data-same='{same}' "
            f"style='border-color:{colour}'><figcaption><b>{int(hit['rank'])}</b> · {float(hit['distance']):.3f}"
            f"<br><span class='lbl' style='color:{colour}'>{_esc(hit['label'] or '(no label)')}</span>"
            f"<br><span class='name'>{_esc(name)}</span>"
            + (f"<br><span class='problem'>{_esc(problem)}</span>" if problem else "")
            + "</figcaption></figure>")


def _entry_html(n: int, e: PageEntry, thumbs: HitThumbnails, classes: set[str]) -> str:
    status = "error" if e.error else "ok"
    hits = sum(len(r.hits) for r in e.rows)
    estimated = "" if e.estimated_missing is None else f" data-estimated-missing='{float(e.estimated_missing):.4f}'"
    head = (f"<section class='query {status}' data-query='{_esc(e.query)}' data-label='{_esc(e.label)}' "
            f"data-status='{status}' data-hits='{hits}'{estimated}>"
            f"<h2>{n}. {_esc(e.query)}"
            + (f" <span class='qlabel'>label: {_esc(e.label)}</span>" if e.label else "") + "</h2>")
    parts = [head]
    if e.note:
        parts.append(f"<p class='note'>{_esc(e.note)}</p>")
    if e.error:
        parts.append(f"<p class='error'>could not be searched: {_esc(e.error)}</p>")
    if e.views:
        parts.append("<div class='views'>")
        for kind, caption, uri in e.views:
            parts.append(f"<figure class='view'><img class='view' data-view='{kind}' src='{uri}' "
                         f"alt='{_esc(caption)}'><figcaption>{_esc(caption)}</figcaption></figure>")
        parts.append("</div>")
    for row in e.rows:
        parts.append(f"<div class='hits' data-searched='{_esc(row.caption)}'><p class='caption'>"
                     f"{_esc(row.caption)}</p><div class='thumbs'>")
        if not row.hits:
            parts.append("<p class='none'>no neighbours (the collection is empty)</p>")
        parts.extend(_hit_html(h, e.label, thumbs, classes) for h in row.hits)
        parts.append("</div></div>")
    parts.append("</section>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:22px;margin:.2em 0} .summary{color:#444;font-size:14px;margin:.3em 0}
.legend span{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 12px}
section.query{border-top:1px solid #ddd;padding:.6em 0}
section.query h2{font-size:14px;font-weight:600;margin:.2em 0 .4em;word-break:break-all}
.qlabel{font-weight:normal;color:#555;margin-left:.6em}
.views,.thumbs{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}
figure{margin:0;text-align:center;font-size:11px;color:#333}
figure.view{width:132px} figure.hit{width:120px}
img.view{border:2px solid #888;max-width:128px;max-height:128px}
img.hit{border:4px solid #b0b0b0;max-width:112px;max-height:112px}
figcaption{margin-top:2px;line-height:1.25;overflow:hidden;text-overflow:ellipsis}
.name{color:#777;white-space:nowrap} .problem{color:#d0342c}
.hits .caption{font-size:12px;color:#555;margin:.5em 0 .2em}
p.error{color:#d0342c;font-weight:600;margin:.2em 0}
p.note{font-size:13px;color:#333;margin:.1em 0 .4em}
"""


def write_page(path: str | os.PathLike, entries: Sequence[PageEntry], *, title: str,
               summary: Sequence[str] = (), thumbs: HitThumbnails | None = None) -> Path:
    """Write the page (atomically) and return its path. ``summary`` lines go under the title."""
    thumbs = thumbs or HitThumbnails()
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>"]
    parts.extend(f"<p class='summary'>{_esc(line)}</p>" for line in summary)
    parts.append(f"<p class='summary legend'>frame:<span style='background:{SAME}'></span>same label as the query"
                 f"<span style='background:{OTHER}'></span>another label"
                 f"<span style='background:{UNKNOWN}'></span>the query's label (its folder's name) is no "
                 "neighbour's label</p>")
    classes = {h["label"] for e in entries for r in e.rows for h in r.hits if h["label"]}
    body = [_entry_html(n, e, thumbs, classes) for n, e in enumerate(entries, 1)]
    if thumbs.unreadable:
        _, why = next(iter(thumbs.unreadable.items()))  # never reuse ``path``: it names the page
        parts.append(f"<p class='summary problem'>{len(thumbs.unreadable)} neighbour image(s) cannot be read from "
                     f"here and show as grey squares: the collection keeps each image's path as the index job "
                     f"was given it (relative paths are relative to where it ran). First: {_esc(why)}</p>")
    parts.extend(body)
    parts.append("</body></html>\n")
    out = Path(path)
    write_text(out, "\n".join(parts))
    return out
