"""Scale: N images through both index backends into milvus-lite and a Milvus server, in one run.

1. **Data.** ``--sizes`` N distinct labelled images made deterministically from a class-per-folder
   set (``--source``, default Wang-1000): a random crop (60–100 % of each side), a horizontal flip,
   colour jitter (brightness, contrast, saturation ±15 %) and a little noise, seeded per image,
   written as JPEG (quality 90) into a temporary folder (never the repository). Smaller sizes are
   the first N files of the largest set, hard-linked, so every size sees the same images.
2. **Runs.** For each N, backend (``local``, ``ray``) and store (``lite``: a milvus-lite folder;
   ``server``: the Milvus 2.3.5 standalone server of ``scripts/milvus_server.sh``, started here)
   one ``cbir-dist index`` in a fresh subprocess (its own peak RSS), with the job's own
   ``stats.json`` read back.
3. **Table** per backbone: wall s, img/s, per-image cost relative to the smallest N **of the same
   backend and store in this run**, driver peak RSS, peak RSS of the busiest worker, store insert
   rate (rows / write seconds), seconds per stage (summed over workers); then, per run, the cores
   the whole machine kept busy (``/proc/stat``) and each process's CPU by role (driver, Ray
   workers, raylet, GCS, Milvus: ``benchmarks/cpu.py``), and with ``--bound`` each stage's CPU per
   image under the backend against its cost alone.
4. **Compute bound** (``--bound``): CPU-seconds per image of each stage measured alone in this
   process on ``--bound-sample`` images (decode, descriptors, backbone, write = fuse + insert into a
   scratch store, flushed), divided over the cores: the img/s the machine could reach; each run's
   fraction of it is printed.
5. **Insert rate** (``--insert``): vectors/s of ``--insert-dim``-d rows from this process into each
   store, ``insert`` against ``upsert``, for several request sizes.

Example (the issue's two commands; 100k takes about an hour on 2 cores):

    source scripts/env.sh
    .venv/bin/python benchmarks/scale.py --sizes 1000,10000,100000 --backbone none --bound --insert
    .venv/bin/python benchmarks/scale.py --sizes 1000,10000 --backbone mobilenet_v2 --bound
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STAGES = ("decode", "descriptors", "deep", "write")
WARM = 64  # images each stage sees before the bound's sample is timed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "wang1000"))
    p.add_argument("--sizes", default="1000,10000", help="comma-separated image counts")
    p.add_argument("--backbone", default="none", help="none (descriptors only) or a backbone (imagenet weights)")
    p.add_argument("--backends", default="local,ray",
                   help="comma-separated: local (its default: a process per core), local:N (N worker processes, "
                        "--workers N; local:1 = one process), ray")
    p.add_argument("--stores", default="lite,server")
    p.add_argument("--workdir", default=None, help="where the images and stores go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--bound", action="store_true", help="measure each stage alone: the machine's compute bound")
    p.add_argument("--bound-sample", type=int, default=1000)
    p.add_argument("--insert", action="store_true", help="measure the stores' insert rate from this process")
    p.add_argument("--insert-dim", type=int, default=1584)
    p.add_argument("--insert-rows", type=int, default=20000)
    p.add_argument("--out", default=None, help="also write every figure as JSON here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------- data

def _make_one(job):
    import cv2

    src, dst, seed, i = job
    rng = np.random.default_rng([seed, i])
    img = cv2.imread(src, cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = cv2.resize(img[y : y + ch, x : x + cw], (256, 256), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    f = crop.astype(np.float32)
    f = (f - f.mean()) * rng.uniform(0.85, 1.15) + f.mean() * rng.uniform(0.85, 1.15)  # contrast, brightness
    grey = f.mean(axis=2, keepdims=True)
    f = grey + (f - grey) * rng.uniform(0.85, 1.15)  # saturation
    f += rng.normal(0, 2.0, f.shape)
    cv2.imwrite(dst, np.clip(f, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_images(source: Path, out: Path, n: int, seed: int) -> Path:
    """``n`` distinct labelled images in ``out/<class>/``; reused when a previous run made them."""
    from multiprocessing import Pool

    from cbir_dist.io.files import list_images

    marker = out / ".complete.json"
    if marker.exists() and json.loads(marker.read_text()) == {"n": n, "seed": seed, "source": str(source)}:
        return out
    if out.exists():
        shutil.rmtree(out)
    files = list_images(source)
    jobs = []
    for i in range(n):
        f = files[i % len(files)]
        d = out / (f.label or "unlabelled")
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((f.path, str(d / f"img_{i:07d}.jpg"), seed, i))
    t = time.perf_counter()
    with Pool(os.cpu_count() or 2) as pool:
        pool.map(_make_one, jobs, chunksize=256)
    marker.write_text(json.dumps({"n": n, "seed": seed, "source": str(source)}))
    print(f"made {n} images in {out} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    return out


def subset(full: Path, out: Path, n: int) -> Path:
    """The first ``n`` images of ``full`` (sorted by number), hard-linked into ``out``."""
    if (out / ".complete").exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    paths = sorted(full.rglob("img_*.jpg"), key=lambda p: p.name)[:n]
    for p in paths:
        d = out / p.parent.name
        d.mkdir(parents=True, exist_ok=True)
        os.link(p, d / p.name)
    (out / ".complete").write_text(str(n))
    return out


# --------------------------------------------------------------------------------------- runs

def index_once(images: Path, db: str, collection: str, backend: str, args, env: dict, run_dir: Path) -> dict:
    """One ``cbir-dist index`` in a fresh process: its stats.json, wall time, the cores the whole machine
    kept busy meanwhile and the CPU of each process by role (:mod:`cpu`)."""
    from cpu import MachineCpu, ProcessCpu

    backend, _, workers = backend.partition(":")
    cmd = [sys.executable, "-m", "cbir_dist.cli", "index", str(images), "--db", db, "--collection", collection,
           "--backbone", args.backbone, "--backend", backend, "--run-dir", str(run_dir), "--shard-size",
           str(args.shard_size), "--overwrite", *(["--workers", workers] if workers else [])]
    t = time.perf_counter()
    with MachineCpu() as machine, ProcessCpu() as procs:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **env})
        procs.driver = p.pid
        out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"index failed ({p.returncode}):\n{err[-3000:]}")
    stats = json.loads((run_dir / "stats.json").read_text())
    stats["wall_s"] = wall
    stats["line"] = out.strip().splitlines()[-1]
    stats["cores_busy"], stats["busy_cpu_s"] = round(machine.cores_busy, 3), round(machine.busy_s, 1)
    stats["steal_cpu_s"], stats["cpu_s_by_role"] = round(machine.steal_s, 1), procs.seconds
    return stats


def start_server(root: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from milvus_server import MilvusServer

    return MilvusServer(data_dir=root / "milvus").start()


# --------------------------------------------------------------------------------------- bound

def compute_bound(images: Path, args, store_uri: str, token: str | None) -> dict:
    """CPU-seconds per image of each stage, measured alone on a sample, and the img/s the cores allow.

    Each stage runs on one thread, as in the backends' workers (OpenCV and torch set to one thread:
    a library's own pool would add its threads' overhead to the CPU counted), after a warm-up of
    ``WARM`` images that pays the one-time costs (imports, first allocations, the model's first
    batches), which the runs spread over thousands of images.
    """
    import cv2
    import torch

    import cbir_dist.features.extract as fx
    from cbir_dist.features.profiles import build_spec
    from cbir_dist.io.files import list_images
    from cbir_dist.io.records import read_record
    from cbir_dist.store import VectorStore

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    files = list_images(images)[: args.bound_sample + WARM]
    warm, files = files[:WARM], files[WARM:]
    spec = build_spec(backbone=None if args.backbone == "none" else args.backbone)
    warm_imgs = [read_record(f).image for f in warm]
    fx.handcrafted_features(warm_imgs, spec.blocks)
    cpu = {}
    t = time.process_time()
    recs = [read_record(f) for f in files]
    cpu["decode"] = (time.process_time() - t) / len(files)
    imgs = [r.image for r in recs]
    t = time.process_time()
    feats = fx.handcrafted_features(imgs, spec.blocks)
    cpu["descriptors"] = (time.process_time() - t) / len(files)
    if spec.deep is not None:
        deep = fx.DeepFeatures(spec.deep, num_threads=1)
        deep(warm_imgs)
        t = time.process_time()
        feats["deep"] = deep(imgs)
        cpu["deep"] = (time.process_time() - t) / len(files)
    store = VectorStore(store_uri, "bound_scratch", token=token)
    try:
        store.create(spec.dim, spec.to_json(), overwrite=True)
        ids = [r.id for r in recs]
        t = time.process_time()
        store.insert(ids, [r.path for r in recs], [r.label for r in recs], spec.fuse(feats))
        store.flush()
        cpu["write"] = (time.process_time() - t) / len(files)
        store.drop()
    finally:
        store.close()
    cores = len(os.sched_getaffinity(0))
    per_image = sum(cpu.values())
    return {"cpu_s_per_image": cpu, "cores": cores, "bound_images_per_s": cores / per_image,
            "sample": len(files), "warm_up": len(warm)}


# --------------------------------------------------------------------------------------- insert

def insert_rates(uri: str, token: str | None, dim: int, rows: int) -> list[dict]:
    from cbir_dist.store import VectorStore

    rng = np.random.default_rng(0)
    out = []
    for op in ("insert", "upsert"):
        for per_call in (256, 2048, rows):
            store = VectorStore(uri, f"rate_{op}", token=token)
            try:
                store.create(dim, json.dumps({"version": 2, "bench": dim}), overwrite=True)
                vec = rng.standard_normal((rows, dim)).astype(np.float32)
                ids = np.arange(rows, dtype=np.int64) + 1
                paths = [f"/bench/img_{i:07d}.jpg" for i in range(rows)]
                labels = ["bench"] * rows
                write = getattr(store, op)
                t = time.perf_counter()
                for s in range(0, rows, per_call):
                    write(ids[s : s + per_call], paths[s : s + per_call], labels[s : s + per_call], vec[s : s + per_call])
                store.flush()
                dt = time.perf_counter() - t
                assert store.count() == rows
                out.append({"op": op, "rows_per_call": per_call, "rows": rows, "dim": dim,
                            "seconds": round(dt, 2), "vectors_per_s": round(rows / dt, 1)})
                store.drop()
            finally:
                store.close()
    return out


# --------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    backends = [b for b in args.backends.split(",") if b]
    stores = [s for s in args.stores.split(",") if s]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cbir-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; load average {os.getloadavg()}", file=sys.stderr)
    full = make_images(Path(args.source), work / f"images_{sizes[-1]}", sizes[-1], args.seed)
    folders = {n: (full if n == sizes[-1] else subset(full, work / f"images_{n}", n)) for n in sizes}
    results = {"sizes": sizes, "backbone": args.backbone, "runs": [], "loadavg_start": os.getloadavg()}
    lite_uri = str(work / "scale.db")
    try:
        if args.bound:
            results["bound"] = compute_bound(folders[sizes[0]], args, lite_uri, None)
        for store in stores:
            # The server starts just before its own runs and stops after them: an idle server
            # (~7% of a core) must not run beside the lite runs it is compared with.
            server = start_server(work) if store == "server" else None
            try:
                uri = server.uri if server else lite_uri
                token = server.token if server else None
                env = {"MILVUS_TOKEN": token} if server else {}
                if args.insert:
                    results.setdefault("insert", {})[store] = insert_rates(uri, token, args.insert_dim,
                                                                           args.insert_rows)
                for backend in backends:
                    for n in sizes:
                        run_dir = work / "runs" / f"{store}_{backend.replace(':', 'x')}_{n}"
                        if run_dir.exists():
                            shutil.rmtree(run_dir)
                        stats = index_once(folders[n], uri, f"scale_{backend.replace(':', 'x')}", backend, args, env,
                                           run_dir)
                        stats.update(store=store, backend_=backend, n=n, loadavg=os.getloadavg())
                        results["runs"].append(stats)
                        print(f"{store} {backend} {n}: {stats['line']} ({stats['wall_s']:.0f} s)", file=sys.stderr)
            finally:
                if server is not None:
                    server.stop()
            if store == "lite":
                shutil.rmtree(lite_uri, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print(format_tables(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return 0


def format_tables(results: dict) -> str:
    lines = [f"## Index at scale — backbone `{results['backbone']}`, load average at start "
             f"{'/'.join(f'{x:.2f}' for x in results['loadavg_start'])}, at end "
             f"{'/'.join(f'{x:.2f}' for x in results['loadavg_end'])}", ""]
    bound = results.get("bound")
    if bound:
        cpu = ", ".join(f"{k} {1000 * v:.2f}" for k, v in bound["cpu_s_per_image"].items())
        lines += [f"Compute bound: CPU ms per image measured alone on {bound.get('sample', '?')} images, one "
                  f"thread, after a warm-up — {cpu}; {bound['cores']} cores → "
                  f"**{bound['bound_images_per_s']:.1f} img/s**.", ""]
    lines += ["| store | backend | N | wall s | img/s | cost/img vs smallest N | driver peak RSS MB | busiest worker "
              "peak RSS MB | insert rows/s | " + " | ".join(f"{s} s" for s in STAGES) + " | of bound |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(STAGES) + "---:|"]
    base = {}
    for r in results["runs"]:
        key = (r["store"], r["backend_"])
        per_img = r["wall_s"] / r["n"]
        base.setdefault(key, per_img)
        st = r["stage_seconds"]
        write_rate = r["rows_written"] / st["write"] if st.get("write") else float("nan")
        worker = r.get("peak_worker_rss_mb") or r["peak_rss_mb"]
        frac = f"{r['n'] / r['wall_s'] / bound['bound_images_per_s']:.2f}" if bound else ""
        lines.append(f"| {r['store']} | {r['backend_']} | {r['n']} | {r['wall_s']:.1f} | {r['n'] / r['wall_s']:.1f} | "
                     f"{per_img / base[key]:.3f} | {r['peak_rss_mb']:.0f} | {worker:.0f} | {write_rate:.0f} | "
                     + " | ".join(f"{st.get(s, 0):.1f}" for s in STAGES) + f" | {frac} |")
    lines += ["", "Where the CPU went (whole machine from /proc/stat; each process's CPU by role, sampled from "
              "/proc every 0.25 s):", "",
              "| store | backend | N | cores busy | machine CPU s | steal s | CPU s by role |", "|---|---|---:|---:|---:|---:|---|"]
    for r in results["runs"]:
        roles = ", ".join(f"{k} {v:.1f}" for k, v in r.get("cpu_s_by_role", {}).items())
        lines.append(f"| {r['store']} | {r['backend_']} | {r['n']} | {r.get('cores_busy', float('nan')):.2f} of "
                     f"{os.cpu_count()} | {r.get('busy_cpu_s', float('nan')):.1f} | {r.get('steal_cpu_s', 0):.1f} | "
                     f"{roles} |")
    if bound:
        lines += ["", "Each stage's CPU per image under the backend against its cost measured alone (ratio):", "",
                  "| store | backend | N | " + " | ".join(bound["cpu_s_per_image"]) + " |",
                  "|---|---|---:|" + "---:|" * len(bound["cpu_s_per_image"])]
        for r in results["runs"]:
            cells = []
            # the workers' CPU per stage where the backend measures it (Ray), else the stage's seconds
            # (the local backend's stages run on one thread each: their seconds are their CPU)
            spent = r.get("stage_cpu_seconds") or {}
            for stage, alone in bound["cpu_s_per_image"].items():
                items = r["stage_items"].get(stage) or 0
                seconds = spent.get(stage) or r["stage_seconds"].get(stage, 0.0)
                under = seconds / items if items else float("nan")
                cells.append(f"{1000 * under:.2f} ms ({under / alone:.2f}×)" if alone and items else "")
            lines.append(f"| {r['store']} | {r['backend_']} | {r['n']} | " + " | ".join(cells) + " |")
    for store, rates in (results.get("insert") or {}).items():
        lines += ["", f"Insert rate into `{store}` from this process ({rates[0]['dim']}-d, {rates[0]['rows']} rows, "
                  "flushed at the end):", "", "| op | rows per call | vectors/s |", "|---|---:|---:|"]
        lines += [f"| {r['op']} | {r['rows_per_call']} | {r['vectors_per_s']:.0f} |" for r in rates]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
