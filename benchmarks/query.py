"""Vector-store query benchmark: exact FLAT against HNSW in cbir_dist.store.milvus, on milvus-lite and a Milvus server, scored against NumPy in the same run.

    python benchmarks/query.py --sizes 10000,100000 --queries 1000,10000 --stores lite,server --k 10

``--stores server`` starts the Milvus 2.3.5 standalone server of ``scripts/milvus_server.sh`` (auth
on) for the server's own steps of each size and stops it after them, so that it never idles beside
the lite steps.

For each size: synthetic clustered float32 vectors (``--clusters`` Gaussian clusters; each point is
its centre plus noise in a random ``--intrinsic-dim``-d subspace of its cluster plus small isotropic
noise, like deep features; queries are fresh draws from the same mixture). Every step runs in a
fresh subprocess so its peak memory (ru_maxrss, the embedded milvus-lite server included) is its own:

- ``truth``: exact k-NN by NumPy (float32 GEMM shortlist, re-ranked in float64), in query chunks;
- ``insert`` (per store): create a FLAT collection, insert all rows (batched), flush and index;
- ``build`` per ``--configs`` entry (flat, hnsw, ivf_flat): (re)build that index over the stored rows;
- ``search`` per query count of ``--queries``: search the first that many queries, recall@k against
  ``truth`` (and, for flat, the largest distance error); its own process, so the peak memory of
  1,000 and of 10,000 queries can be compared: the store splits the queries into requests bounded by
  its ``memory_budget_bytes``, so the client's peak must not grow with the query count.

For a server store the server's own resident memory (VmRSS of the ``milvus`` process, after the
step) is printed beside the client's peak.

Targets: FLAT recall exactly 1.0; HNSW recall@10 >= 0.99 at its default search param; client peak
memory < 4 GiB and the same for 1,000 and 10,000 queries over 100k x 2304-d. ``--ef`` adds HNSW
rows at other ``ef`` values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _peak_gib() -> float:
    """This process's peak resident memory in GiB (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    from cbir_dist.io.files import peak_rss_mb

    return peak_rss_mb() / 1024


def step_generate(work: Path, n: int, dim: int, n_queries: int, clusters: int, intrinsic: int, seed: int) -> dict:
    """Write ``base.npy`` (n, dim) and ``queries.npy`` (n_queries, dim) to ``work`` chunk by chunk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    bases = rng.standard_normal((clusters, intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic)

    def draw(count: int, out: np.ndarray) -> None:
        for start in range(0, count, 256):
            m = min(256, count - start)
            c = rng.integers(0, clusters, m)
            z = rng.standard_normal((m, intrinsic)).astype(np.float32) * 0.6
            x = centres[c] + np.einsum("mi,mid->md", z, bases[c]) + 0.05 * rng.standard_normal((m, dim)).astype(np.float32)
            out[start : start + m] = x

    for name, count in (("base.npy", n), ("queries.npy", n_queries)):
        out = np.lib.format.open_memmap(work / name, mode="w+", dtype=np.float32, shape=(count, dim))
        draw(count, out)
        out.flush()
        del out
    return {"peak_gib": _peak_gib()}


def step_truth(work: Path, k: int) -> dict:
    base = np.load(work / "base.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    t0 = time.perf_counter()
    shortlist = k + 20
    ids = np.empty((queries.shape[0], k), np.int64)
    dists = np.empty((queries.shape[0], k), np.float64)
    cand_d = np.full((queries.shape[0], 0), np.inf)
    cand_i = np.zeros((queries.shape[0], 0), np.int64)
    q2 = (queries.astype(np.float64) ** 2).sum(1)
    for start in range(0, base.shape[0], 8192):  # rows in chunks: (Q, 8192) float32 at a time
        block = np.asarray(base[start : start + 8192])
        d2 = q2[:, None] - 2.0 * (queries @ block.T) + (block.astype(np.float64) ** 2).sum(1)[None, :]
        cand_d = np.concatenate([cand_d, d2], axis=1)
        cand_i = np.concatenate([cand_i, np.broadcast_to(np.arange(start, start + block.shape[0]), d2.shape)], axis=1)
        keep = np.argpartition(cand_d, min(shortlist, cand_d.shape[1] - 1), axis=1)[:, :shortlist]
        cand_d = np.take_along_axis(cand_d, keep, 1)
        cand_i = np.take_along_axis(cand_i, keep, 1)
    for q in range(queries.shape[0]):  # exact float64 re-rank of the shortlist
        exact = np.sqrt(((np.asarray(base[np.sort(cand_i[q])], np.float64) - queries[q]) ** 2).sum(1))
        order = np.argsort(exact, kind="stable")[:k]
        ids[q] = np.sort(cand_i[q])[order]
        dists[q] = exact[order]
    np.save(work / "truth_ids.npy", ids)
    np.save(work / "truth_dists.npy", dists)
    return {"seconds": time.perf_counter() - t0, "peak_gib": _peak_gib()}


def _store(db: str):
    from cbir_dist.store import VectorStore

    return VectorStore(db, "bench", token=os.environ.get("MILVUS_TOKEN"))


def step_insert(work: Path, db: str, batch: int) -> dict:
    base = np.load(work / "base.npy", mmap_mode="r")
    with _store(db) as store:
        store.create(base.shape[1], json.dumps({"bench": "synthetic", "dim": base.shape[1]}), overwrite=True)
        t0 = time.perf_counter()
        for start in range(0, base.shape[0], batch):
            rows = np.asarray(base[start : start + batch])
            ids = np.arange(start, start + rows.shape[0])
            store.insert(ids, [f"img/{i:07d}.jpg" for i in ids], [f"c{i % 100}" for i in ids], rows)
        t_insert = time.perf_counter() - t0
        store.flush_and_index()
        t_total = time.perf_counter() - t0
        count = store.count()
    return {"insert_s": t_insert, "insert_flush_index_s": t_total, "rows": count, "peak_gib": _peak_gib()}


def step_build(db: str, config: str) -> dict:
    with _store(db) as store:
        t0 = time.perf_counter()
        store.set_index(config.upper())
        return {"build_s": time.perf_counter() - t0, "peak_gib": _peak_gib()}


def step_search(work: Path, db: str, config: str, nq: int, k: int, efs: list[int]) -> dict:
    queries = np.load(work / "queries.npy", mmap_mode="r")[:nq]
    queries = np.ascontiguousarray(queries)
    truth_ids = np.load(work / "truth_ids.npy")[:nq]
    truth_d = np.load(work / "truth_dists.npy")[:nq]
    rows = []
    with _store(db) as store:
        # as the query job does when it opens its store (query/search.py): a store that has not seen
        # every row indexed must assume brute force and send one query per request on 100k x 2304-d
        store.flush_and_index()
        store.search(queries[:8], k)  # warm-up: first-call costs stay out of the timing
        settings = [None] + ([{"ef": e} for e in efs] if config == "hnsw" else [])
        for params in settings:
            t0 = time.perf_counter()
            res = store.search(queries, k, search_params=params)
            secs = time.perf_counter() - t0
            hits = sum(len(set(a) & set(b)) for a, b in zip(res.ids.tolist(), truth_ids.tolist(), strict=True))
            rows.append({
                "config": config + ("" if params is None else f" ef={params['ef']}"),
                "search_params": params or store._default_search_params(store._describe(), k),  # noqa: SLF001
                "queries": nq,
                "search_s": secs,
                "qps": nq / secs,
                "recall": hits / truth_ids.size,
                # meaningful for exact search only: an ANN miss shifts the distances of later ranks
                "max_dist_err": float(np.abs(res.distances.astype(np.float64) - truth_d).max())
                if config == "flat" else None,
            })
    for row in rows:
        row["peak_gib"] = _peak_gib()
    return {"rows": rows}


def _server_rss_gib(pid: int | None) -> float | None:
    """Resident memory of the server's process tree (the ``milvus`` binary and its children)."""
    if pid is None:
        return None
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            stat = (status.parent / "stat").read_text()
        except OSError:
            continue
        pgid = int(stat.rsplit(")", 1)[1].split()[2])
        if pgid != pid and int(status.parent.name) != pid:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 2**20


def run_step(args: argparse.Namespace, *step: str, extra_env: dict | None = None) -> dict:
    """Run one step in a fresh interpreter; it prints one JSON line last."""
    cmd = [sys.executable, __file__, "--_step", *step, "--k", str(args.k), "--batch", str(args.batch),
           "--ef", ",".join(map(str, args.ef)), "--dim", str(args.dim), "--queries", str(max(args.queries)),
           "--clusters", str(args.clusters), "--intrinsic-dim", str(args.intrinsic_dim), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(extra_env or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"step {' '.join(step)} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated row counts")
    ap.add_argument("--dim", type=int, default=2304)
    ap.add_argument("--queries", default="1000", help="comma-separated query counts (each searched in its own process)")
    ap.add_argument("--stores", default="lite", help="comma-separated: lite (milvus-lite folder), server (Milvus 2.3.5, started here)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--configs", default="flat,hnsw", help="comma-separated: flat, hnsw, ivf_flat")
    ap.add_argument("--ef", default="", help="extra HNSW ef values to score, e.g. 32,64,256")
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--intrinsic-dim", type=int, default=32, help="dimension of each cluster's spread")
    ap.add_argument("--batch", type=int, default=5000, help="rows per insert call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db-dir", default="/tmp/cbir_query_bench", help="scratch folder (emptied per size)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    ap.add_argument("--_step", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.ef = [int(e) for e in args.ef.split(",") if e.strip()]
    args.queries = [int(q) for q in str(args.queries).split(",") if q.strip()]

    if args._step:
        kind, work = args._step[0], Path(args._step[1])
        if kind == "generate":
            result = step_generate(work, int(args._step[2]), args.dim, max(args.queries), args.clusters,
                                   args.intrinsic_dim, args.seed)
        elif kind == "truth":
            result = step_truth(work, args.k)
        elif kind == "insert":
            result = step_insert(work, args._step[2], args.batch)
        elif kind == "build":
            result = step_build(args._step[2], args._step[3])
        else:
            result = step_search(work, args._step[2], args._step[3], int(args._step[4]), args.k, args.ef)
        print(json.dumps(result))
        return

    configs = [c.strip().lower() for c in args.configs.split(",") if c.strip()]
    stores = [c.strip().lower() for c in args.stores.split(",") if c.strip()]
    print(f"dim={args.dim} queries={args.queries} k={args.k} clusters={args.clusters} stores={stores} "
          f"intrinsic_dim={args.intrinsic_dim} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}", flush=True)
    table, inserts = run_sizes(args, configs, stores)
    print_tables(args, table, inserts)


def start_server(root: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from milvus_server import MilvusServer

    return MilvusServer(data_dir=root / "milvus").start()


def run_sizes(args, configs: list[str], stores: list[str]) -> tuple[list[dict], list[dict]]:
    table, inserts = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        work = Path(args.db_dir) / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        run_step(args, "generate", str(work), str(n))
        t_data = time.perf_counter() - t0
        truth = run_step(args, "truth", str(work))
        print(f"n={n}: data {t_data:.1f}s, numpy exact truth of {max(args.queries)} queries "
              f"{truth['seconds']:.1f}s (peak {truth['peak_gib']:.2f} GiB)", flush=True)
        for store in stores:
            # the server runs only during its own steps: an idle server beside the lite steps would
            # take a share of the 2 cores they are timed on
            server = start_server(Path(args.db_dir)) if store == "server" else None
            try:
                db = str(work / "bench.db") if store == "lite" else server.uri
                env = {"MILVUS_TOKEN": server.token} if store == "server" and server.token else {}
                ins = run_step(args, "insert", str(work), db, extra_env=env)
                ins.update(n=n, store=store, server_gib=_server_rss_gib(server.pid) if store == "server" else None)
                inserts.append(ins)
                print(f"n={n} {store}: insert {ins['rows']} rows {ins['insert_s']:.1f}s "
                      f"({ins['rows'] / ins['insert_s']:.0f} rows/s), +flush+index {ins['insert_flush_index_s']:.1f}s, "
                      f"peak {ins['peak_gib']:.2f} GiB", flush=True)
                for config in configs:
                    build = run_step(args, "build", str(work), db, config, extra_env=env)
                    for nq in args.queries:
                        for row in run_step(args, "search", str(work), db, config, str(nq), extra_env=env)["rows"]:
                            row.update(n=n, store=store, build_s=build["build_s"],
                                       server_gib=_server_rss_gib(server.pid) if store == "server" else None)
                            table.append(row)
                            print(f"n={n} {store}: {row['config']} x{nq}: build {row['build_s']:.1f}s, "
                                  f"{row['qps']:.1f} queries/s, recall@{args.k} {row['recall']:.4f}, "
                                  f"peak {row['peak_gib']:.2f} GiB", flush=True)
            finally:
                if server is not None:
                    server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return table, inserts


def print_tables(args, table: list[dict], inserts: list[dict]) -> None:
    print()
    header = f"{'rows':>7} {'store':<6} {'config':<14} {'search params':<16} {'queries':>7} {'build s':>8} " \
             f"{'queries/s':>10} {'recall@' + str(args.k):>9} {'max |d err|':>11} {'peak GiB':>9} {'server GiB':>10}"
    print(header)
    print("-" * len(header))
    for r in table:
        params = ",".join(f"{k}={v}" for k, v in r["search_params"].items()) or "-"
        err = "-" if r["max_dist_err"] is None else f"{r['max_dist_err']:.2e}"
        srv = "-" if r["server_gib"] is None else f"{r['server_gib']:.2f}"
        print(f"{r['n']:>7} {r['store']:<6} {r['config']:<14} {params:<16} {r['queries']:>7} {r['build_s']:>8.1f} "
              f"{r['qps']:>10.1f} {r['recall']:>9.4f} {err:>11} {r['peak_gib']:>9.2f} {srv:>10}")
    print("\nbuild s: set_index + flush_and_index over the stored rows; peak: the search step's own process "
          "(VmHWM; for lite the embedded server is in it); server GiB: the Milvus server's RSS after the step; "
          "max |d err|: exact search vs float64 NumPy")
    for ins in inserts:
        srv = "" if ins["server_gib"] is None else f", server RSS {ins['server_gib']:.2f} GiB"
        print(f"insert {ins['n']} rows into {ins['store']} (FLAT collection): {ins['insert_s']:.1f}s = "
              f"{ins['n'] / ins['insert_s']:.0f} rows/s, with flush_and_index {ins['insert_flush_index_s']:.1f}s, "
              f"client peak {ins['peak_gib']:.2f} GiB{srv}")


if __name__ == "__main__":
    main()
