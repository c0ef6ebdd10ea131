"""Indexing throughput: the Ray backend against a plain single-process loop doing the same work, same run.

Both index the first ``--limit`` images of ``--data`` (sorted paths) with MobileNetV2 (ImageNet
weights from ``$TORCH_HOME``) + colour auto-correlogram + Gabor, balanced fusion, into their own
milvus-lite collection, flushing every ``--shard-size`` rows:

``plain loop``
    one process, no bookkeeping: read + hash + decode, descriptors, backbone (torch's default
    threads), fuse, upsert, in batches of ``--batch-size``.
``local backend``
    ``cbir_dist.index.run_index`` (the same loop plus run directory, manifest and markers).
``ray backend``
    ``cbir_dist.index.cluster.run_index_ray`` on a local Ray instance started before the clock starts
    (its start-up time is printed separately; a cluster is normally already running).

Prints one row per backend: wall seconds (backbone loading included), images/s, the ratio to the
plain loop, and the stage seconds (summed over workers: with Ray they overlap in time). Also checks
that the three collections hold the same vectors. Example (2 cores, ~3 minutes):

    TORCH_HOME=../shared/weights/torch OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index_throughput.py \\
        --data ../shared/data/wang1000 --limit 300
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("decode", "inpaint", "deep", "descriptors", "write")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", default="../shared/data/wang1000", help="class-per-folder image set")
    p.add_argument("--limit", type=int, default=300, help="index the first N images (sorted paths; default 300)")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--weights", default="imagenet", help="imagenet (needs $TORCH_HOME) or random")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray instance (default: all)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads of the Ray backbone actor (default: as the pipeline plans)")
    p.add_argument("--deep-actors", type=int, default=None, help="Ray backbone actor pool size")
    p.add_argument("--plain-threads", type=int, default=None,
                   help="torch threads of the plain loop and the local backend (default: one per CPU, torch's own "
                        "default; set explicitly because OMP_NUM_THREADS=1 would otherwise lower it)")
    p.add_argument("--repeats", type=int, default=1, help="alternate plain and Ray runs this many times")
    p.add_argument("--skip-local", action="store_true", help="do not time the local backend")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def subset(data: Path, limit: int, dest: Path) -> int:
    """Symlink the first ``limit`` images of ``data`` into ``dest`` (same class folders)."""
    from cbir_dist.io.files import list_images

    files = list_images(data)[:limit]
    for f in files:
        link = dest / f.label / Path(f.path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(f.path).resolve())
    return len(files)


def plain_loop(spec, images_dir: Path, db: str, batch_size: int, shard_size: int) -> dict:
    """The same work as an index run, as one straight loop; returns seconds per stage and in total."""
    from cbir_dist.features.extract import DeepFeatures, handcrafted_features
    from cbir_dist.features.spec import DEEP
    from cbir_dist.io.files import list_images
    from cbir_dist.io.records import OK, read_record
    from cbir_dist.store import VectorStore

    t0 = time.perf_counter()
    sec = dict.fromkeys(STAGES, 0.0)
    files = list_images(images_dir)
    store = VectorStore(db, "plain")
    store.create(spec.dim, spec.to_json(), overwrite=True)
    deep = DeepFeatures(spec.deep, batch_size=batch_size)
    t_load = time.perf_counter() - t0
    seen, since_flush, written = set(), 0, 0
    for start in range(0, len(files), batch_size):
        t = time.perf_counter()
        recs = [read_record(f) for f in files[start : start + batch_size]]
        recs = [r for r in recs if r.status == OK and r.id not in seen and not seen.add(r.id)]
        images = [r.image for r in recs]
        t1 = time.perf_counter()
        feats = handcrafted_features(images, spec.blocks)
        t2 = time.perf_counter()
        feats[DEEP] = deep(images)
        t3 = time.perf_counter()
        written += store.upsert([r.id for r in recs], [r.path for r in recs], [r.label for r in recs], spec.fuse(feats))
        since_flush += len(files[start : start + batch_size])
        if since_flush >= shard_size:
            store.flush()
            since_flush = 0
        t4 = time.perf_counter()
        sec["decode"] += t1 - t
        sec["descriptors"] += t2 - t1
        sec["deep"] += t3 - t2
        sec["write"] += t4 - t3
    t = time.perf_counter()
    store.flush_and_index()
    sec["write"] += time.perf_counter() - t
    store.close()
    return {"seconds": time.perf_counter() - t0, "stage_seconds": sec, "rows": written, "load_seconds": t_load}


def warm_up(spec, images_dir: Path) -> None:
    """Import and touch everything once, so the first timed run does not pay for imports and disk caches."""
    from cbir_dist.features.extract import Extractor
    from cbir_dist.io.files import list_images
    from cbir_dist.io.images import read_image

    files = list_images(images_dir)
    for f in files:
        Path(f.path).read_bytes()
    Extractor(spec, batch_size=2)([read_image(files[0].path)])


def backend_run(kind: str, spec, images_dir: Path, work: Path, args) -> dict:
    from cbir_dist.index import run_index
    from cbir_dist.index.run import IndexConfig

    cfg = IndexConfig(str(images_dir), db=str(work / f"{kind}.db"), collection=kind, run_dir=str(work / f"run_{kind}"),
                      shard_size=args.shard_size, batch_size=args.batch_size, overwrite=True, backend=kind,
                      progress=False, torch_threads=args.torch_threads if kind == "ray" else None,
                      deep_actors=args.deep_actors, workers=1)  # local: one process, as the plain loop
    t0 = time.perf_counter()
    if kind == "ray":
        from cbir_dist.index.cluster import run_index_ray

        s = run_index_ray(spec, cfg)
    else:
        s = run_index(spec, cfg)
    seconds = time.perf_counter() - t0
    stats = json.loads((work / f"run_{kind}" / "stats.json").read_text())
    return {"seconds": seconds, "stage_seconds": stats["stage_seconds"], "rows": s.rows_written}


def vectors(db: str, collection: str, ids) -> np.ndarray:
    from cbir_dist.store import VectorStore

    with VectorStore(db, collection) as store:
        got = store.fetch(ids)
    return got["vector"]


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from cbir_dist.features.profiles import build_spec

    spec = build_spec(backbone=args.backbone, weights=args.weights, descriptors=("correlogram", "gabor"),
                      mode="balanced")
    with tempfile.TemporaryDirectory(prefix="cbir-bench-") as tmp:
        work = Path(tmp)
        n = subset(Path(args.data), args.limit, work / "images")
        import torch

        torch.set_num_threads(args.plain_threads or os.cpu_count())
        warm_up(spec, work / "images")
        t = time.perf_counter()
        ray.init(num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t
        results: dict[str, list] = {"plain loop": [], "local backend": [], "ray backend": []}
        try:
            for _ in range(args.repeats):
                results["plain loop"].append(plain_loop(spec, work / "images", str(work / "plain.db"),
                                                        args.batch_size, args.shard_size))
                results["ray backend"].append(backend_run("ray", spec, work / "images", work, args))
                if not args.skip_local:
                    results["local backend"].append(backend_run("local", spec, work / "images", work, args))
        finally:
            ray.shutdown()
        from cbir_dist.io.files import content_id

        ids = sorted({content_id(p.read_bytes()) for p in (work / "images").rglob("*.*")})
        ref = vectors(str(work / "plain.db"), "plain", ids)
        diffs = {"ray backend": float(np.abs(vectors(str(work / "ray.db"), "ray", ids) - ref).max())}
        if not args.skip_local:
            diffs["local backend"] = float(np.abs(vectors(str(work / "local.db"), "local", ids) - ref).max())

    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items() if v}
    base = best["plain loop"]["seconds"]
    print(f"\nindexing {n} images of {args.data} with {args.backbone} ({args.weights}) + correlogram + gabor; "
          f"{os.cpu_count()} CPUs, batch {args.batch_size}, best of {args.repeats}; plain loop torch threads "
          f"{torch.get_num_threads()}; Ray start-up {ray_start:.1f} s (not included)\n")
    cols = ["backend", "seconds", "images/s", "vs plain", *(f"{s} s" for s in STAGES)]
    rows = []
    for name, r in best.items():
        st = r["stage_seconds"]
        rows.append([name, f"{r['seconds']:.1f}", f"{n / r['seconds']:.2f}", f"{base / r['seconds']:.2f}x",
                     *(f"{st.get(s, 0.0):.1f}" for s in STAGES)])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))) + " |")
    print("|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    for r in rows:
        print("| " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) + " |")
    load = best["plain loop"]["load_seconds"]
    print("\nstage columns: seconds summed over all workers (with Ray they run at the same time on different "
          f"cores); the plain loop's backbone load took {load:.1f} s of its total.")
    print("max |vector difference| vs the plain loop: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"images": n, "ray_start_s": ray_start, "runs": results,
                                              "max_abs_diff": diffs}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
