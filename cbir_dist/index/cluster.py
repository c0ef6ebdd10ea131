"""The Ray backend of the index job: the driver loop over the distributed graph's stream of shards.

The graph (:mod:`cbir_dist.distributed.graph`) decodes, damages and describes the pending shards'
files on the cluster and hands each shard back once all of its rows are in; this driver is the
single writer and finishes them in order with the same :class:`~.run.IndexRun` as the local
backend, so both backends write the same rows.
"""

from __future__ import annotations

from typing import Iterator

from ..distributed.graph import (
    GraphConfig,
    GraphStats,
    PartResult,
    features_of,
    run_graph,
)
from ..features.spec import FeatureSpec
from .run import (
    ImageTransform,
    IndexConfig,
    IndexRun,
    IndexSummary,
    ShardResult,
    run_shards_in_order,
)


def graph_config(config: IndexConfig) -> GraphConfig:
    """The graph's settings from an index run's."""
    return GraphConfig(batch_size=config.batch_size, max_pixels=config.max_pixels, max_bytes=config.max_bytes,
                       weights_override=config.weights_override, device=config.device,
                       torch_threads=config.torch_threads, deep_actors=config.deep_actors,
                       deep_resources=config.deep_resources, progress=config.progress)


def _shard_results(stream: Iterator[PartResult], spec: FeatureSpec) -> Iterator[ShardResult]:
    for result in stream:
        yield result.index, result.records, (lambda todo, r=result: features_of(r, spec, todo))


def run_index_ray(spec: FeatureSpec, config: IndexConfig, *, store=None,
                  transform: ImageTransform | None = None) -> IndexSummary:
    """Index ``config.images_dir`` with the Ray Data graph; same run directory and result as the local backend.

    The driver is the single writer; features stream back while later files are still being read.
    Job-level failures raise (no images, store errors, a stage failing after its retries); bad
    files never do.
    """
    run = IndexRun(spec, config, store=store, progress=False)
    try:
        pending = run.pending
        if pending:
            stats = GraphStats()
            parts = [(s.index, s.files) for s in pending]
            try:
                with run_graph(run.spec, parts, graph_config(config), transform=transform, stats=stats) as stream:
                    run_shards_in_order(run, _shard_results(stream, run.spec))
            finally:
                for stage, secs in stats.seconds.items():
                    run.clock.add(stage, secs, stats.counts[stage])
                run.nodes = stats.nodes
                run.node_items, run.node_seconds = stats.node_items, stats.node_seconds
                run.worker_peak_rss_mb = stats.worker_peak_rss_mb
        else:
            for shard in run.shards:
                run.load_done(shard)
    except BaseException:
        run.abort()
        raise
    return run.close()
