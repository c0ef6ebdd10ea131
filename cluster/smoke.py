"""Check a Ray cluster is wired the way cbir_dist expects: print its resources and where work lands.

Run it against any of the clusters in this folder:

    python cluster/smoke.py --address 127.0.0.1:6390                  # local-multinode.sh
    ray job submit --address http://HEAD:8265 -- python cluster/smoke.py   # inside the cluster

It places one actor that asks for a GPU (as the deep-feature actors do, when the cluster has GPUs) and
a few plain CPU tasks, and prints the node each ran on. It exits non-zero when a GPU actor was
requested (the cluster declares GPUs) but landed on a node without the ``deep`` tag.
"""

from __future__ import annotations

import argparse
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="auto", help="Ray address (default: auto, i.e. RAY_ADDRESS or the local cluster)")
    args = parser.parse_args(argv)

    import ray

    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    resources = ray.cluster_resources()
    print("cluster resources:", {k: v for k, v in sorted(resources.items()) if not k.startswith("node:")})
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    for n in nodes.values():
        res = {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}
        print(f"node {n['NodeID'][:8]} {n['NodeManagerAddress']}: {res}")

    @ray.remote(num_cpus=0)
    class Probe:
        def where(self) -> tuple[str, list[str]]:
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), [str(g) for g in ray.get_gpu_ids()]

    @ray.remote(num_cpus=1)
    def cpu_task(i: int) -> tuple[int, str, str]:
        return i, ray.get_runtime_context().get_node_id(), socket.gethostname()

    ok = True
    if resources.get("GPU", 0) >= 1:
        actor = Probe.options(num_gpus=1).remote()
        node_id, gpu_ids = ray.get(actor.where.remote())
        tagged = nodes[node_id]["Resources"].get("deep", 0) > 0
        print(f"GPU actor on node {node_id[:8]} (deep tag: {tagged}), gpu ids {gpu_ids}")
        ok = tagged
        ray.kill(actor)
    else:
        print("no GPU in this cluster: deep-feature actors will run on CPUs")
    for i, node_id, host in ray.get([cpu_task.remote(i) for i in range(4)]):
        print(f"cpu task {i} on node {node_id[:8]} ({host})")
    ray.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
