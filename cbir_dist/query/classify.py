"""`cbir-dist classify`: each image's class by a majority vote of its k nearest neighbours in a collection.

Images are described with the collection's own FeatureSpec (as queries are) and searched in the
store; the k nearest rows vote (:func:`cbir_dist.retrieval.knn.knn_predict`: most votes, then the smaller
summed distance, then the nearest). An image whose own content is in the collection never votes
for itself: its row (same content id) is dropped from its neighbours. When the images sit in class
folders, their folder names are the true labels and accuracy is reported.

Output rows (one per image): ``path, id, label, predicted, votes, distance, neighbour_ids,
neighbour_labels, error`` — ``label`` is ``""`` when unknown, ``distance`` the mean distance of the
voters for the predicted class, and a bad file has an empty prediction and its reason in ``error``.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError, UsageError

log = logging.getLogger(__name__)

COLUMNS = ("path", "id", "label", "predicted", "votes", "distance", "neighbour_ids", "neighbour_labels", "error")


def run_classify(images_dir: str, *, db: str = "cbir.db", collection: str = "images", k: int = 5,
                 token: str | None = None, out: str | None = None, batch_size: int = 32,
                 weights_override: str | None = None, device: str | None = None,
                 max_pixels: int = 100_000_000, progress: bool = True, runtime: str = "auto") -> dict:
    """Predict the class of every image under ``images_dir``; returns the result columns and a summary.

    Returns
    -------
    dict
        ``{"columns": {name: list}, "n": images, "failed": bad files, "labelled": images with a known
        label, "accuracy": fraction correct among them (None if none), "report": the
        :func:`cbir_dist.retrieval.knn.classification_report` of the labelled ones (or None)}``.

    Raises
    ------
    ValueError
        ``k`` < 1, no images, or a collection with fewer than ``k`` rows besides an image's own.
    """
    from ..io.files import list_images
    from ..io.progress import progress as progress_bar
    from ..retrieval.knn import classification_report
    from .search import QueryConfig, Searcher, load_queries

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"k must be a positive integer, got {k!r}")
    files = list_images(images_dir)
    if not files:
        raise InputError(f"no images found under {images_dir}: give a folder of image files (in class folders "
                         "to measure the accuracy)")
    searcher = Searcher(QueryConfig(db=db, collection=collection, token=token, k=int(k), exclude_self=True,
                                    batch_size=batch_size, weights_override=weights_override, device=device,
                                    max_pixels=max_pixels, runtime=runtime))
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    try:
        n_rows = searcher.store.count()
        if n_rows < k:
            raise UsageError(f"collection {collection!r} holds {n_rows} rows; -k {k} needs at least {k}: "
                             f"give -k {max(n_rows - 1, 1)} or less")
        with progress_bar(len(files), progress, "classify", "img") as bar:
            for start in range(0, len(files), batch_size):
                recs = load_queries(files[start : start + batch_size], max_pixels)
                _classify_batch(cols, searcher, recs, int(k))
                bar.update(len(recs))
    finally:
        searcher.store.close()
    if out:
        write_predictions(cols, out)
    ok = [i for i, e in enumerate(cols["error"]) if not e]
    labelled = [i for i in ok if cols["label"][i]]
    report = None
    if labelled:
        report = classification_report([cols["label"][i] for i in labelled], [cols["predicted"][i] for i in labelled])
    return {
        "columns": cols,
        "n": len(files),
        "failed": len(files) - len(ok),
        "labelled": len(labelled),
        "accuracy": report["accuracy"] if report else None,
        "report": report,
    }


def _classify_batch(cols: dict, searcher, recs, k: int) -> None:
    """Add one row per record: the vote of its ``k`` nearest neighbours, or why it has none."""
    from ..io.records import OK
    from ..retrieval.knn import knn_predict
    from ..retrieval.search import search_vectors

    good = [r for r in recs if r.status == OK]
    for r in recs:
        if r.status != OK:
            _add(cols, r.path, r.id, r.label, "", 0, float("nan"), [], [], r.error or r.status)
    if not good:
        return
    vectors = searcher.extractor([r.image for r in good])
    # the image's own row (same content id), when stored, never votes
    ids, dist, _paths, labels = search_vectors(searcher.store, vectors, [r.id for r in good], k, True)
    for q, r in enumerate(good):
        keep = np.flatnonzero(ids[q] >= 0)
        if len(keep) < k:
            _add(cols, r.path, r.id, r.label, "", 0, float("nan"), [], [],
                 f"only {len(keep)} neighbours besides the image itself; -k {k} needs {k}")
            continue
        lab, d = labels[q, keep], dist[q, keep].astype(np.float64)
        pred = str(knn_predict(lab[None, :], d[None, :], k)[0])
        voters = lab == pred
        _add(cols, r.path, r.id, r.label, pred, int(voters.sum()), float(d[voters].mean()),
             [int(i) for i in ids[q, keep]], [str(x) for x in lab], "")


def _add(cols, path, id_, label, predicted, votes, distance, neighbour_ids, neighbour_labels, error) -> None:
    for c, v in zip(COLUMNS, (path, id_, label, predicted, votes, distance, neighbour_ids, neighbour_labels, error)):
        cols[c].append(v)


def write_predictions(cols: dict, out: str) -> None:
    """The prediction table as Parquet (written to a temporary name, then renamed)."""
    import pyarrow as pa

    from ..io.tables import write_parquet

    types = {"path": pa.string(), "id": pa.int64(), "label": pa.string(), "predicted": pa.string(),
             "votes": pa.int32(), "distance": pa.float32(), "neighbour_ids": pa.list_(pa.int64()),
             "neighbour_labels": pa.list_(pa.string()), "error": pa.string()}
    write_parquet(out, {c: cols[c] for c in types}, types)

