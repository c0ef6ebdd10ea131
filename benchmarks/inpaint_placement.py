"""Where the two-stage network runs in the Ray graph: fused with the backbone's actors, or a pool of its own.

Describes the same images (damaged by a fringe mask, reconstructed by ``two-stage``) through
:func:`cbir_dist.distributed.graph.describe_files` on one local Ray instance, alternating the two
placements ``--rounds`` times, and prints the wall seconds of each run, images/s and the load
average before and after (the comparison is only as good as the machine is quiet).

    OMP_NUM_THREADS=1 python benchmarks/inpaint_placement.py --images 64 --rounds 2 --num-cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "paris6k_subset"))
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--fringe", type=float, default=2.0)
    p.add_argument("--out-json")
    args = p.parse_args(argv)
    import ray

    from cbir_dist.damage.hook import DamageConfig, damage_transform
    from cbir_dist.distributed.graph import GraphConfig, describe_files
    from cbir_dist.features.profiles import build_spec
    from cbir_dist.io.files import list_images

    files = list_images(args.data)[: args.images]
    spec = build_spec(backbone=args.backbone, descriptors=("correlogram", "gabor"), mode="balanced")
    hook = damage_transform(DamageConfig(fringe=args.fringe, inpainter="two-stage"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, address="local")
    runs = []
    try:
        describe_files(spec, files[:4], GraphConfig(batch_size=4, progress=False), transform=hook)  # warm-up
        for r in range(args.rounds):
            for placement in ("fused", "separate") if r % 2 == 0 else ("separate", "fused"):
                load = os.getloadavg()[0]
                t = time.perf_counter()
                recs, _ = describe_files(spec, files, GraphConfig(batch_size=args.batch_size, progress=False,
                                                                   inpaint_placement=placement), transform=hook)
                dt = time.perf_counter() - t
                runs.append({"round": r, "placement": placement, "seconds": round(dt, 2),
                             "images_per_s": round(len(files) / dt, 2), "load_before": load,
                             "load_after": os.getloadavg()[0], "ok": sum(x.status == "ok" for x in recs)})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        ray.shutdown()
    for placement in ("fused", "separate"):
        secs = [x["seconds"] for x in runs if x["placement"] == placement]
        print(f"{placement}: {secs} s for {len(files)} images ({args.num_cpus} Ray CPUs, batch {args.batch_size})")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
