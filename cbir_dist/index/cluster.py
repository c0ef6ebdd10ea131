"""The Ray backend of the index job: the driver loop over the distributed graph's stream of shards.

The graph (:mod:`cbir_dist.distributed.graph`) decodes, damages and describes the pending shards'
files on the cluster and hands each shard back once all of its rows are in; this driver is the
single writer: each shard goes to the same :class:`~.run.IndexRun` writer as the local backend's,
as a value (:class:`~.writer.ComputedShard`), so both backends write the same rows. The ids the
plan found stored travel with the graph's decode tasks, which mark them so no later stage works on them.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..distributed.graph import (
    GraphConfig,
    GraphStats,
    PartResult,
    features_of,
    run_graph,
)
from ..features.spec import FeatureSpec
from ..io.records import OK
from .run import ImageTransform, IndexConfig, IndexRun, IndexSummary, WorkerStats
from .writer import ComputedShard


def graph_config(config: IndexConfig) -> GraphConfig:
    """The graph's settings from an index run's."""
    return GraphConfig(batch_size=config.batch_size, max_pixels=config.max_pixels, max_bytes=config.max_bytes,
                       weights_override=config.weights_override, device=config.device,
                       torch_threads=config.torch_threads, runtime=config.runtime, deep_actors=config.deep_actors,
                       deep_resources=config.deep_resources, progress=config.progress)


def _computed(stream: Iterator[PartResult], spec: FeatureSpec) -> Iterator[ComputedShard]:
    for result in stream:
        ok = [r for r in result.records if r.status == OK]
        yield ComputedShard(result.index, result.records, np.asarray([r.id for r in ok], np.int64),
                            features_of(result, spec, ok))


def windows(run: IndexRun, max_files: int) -> Iterator[list]:
    """The run's shards cut into consecutive windows holding at most ``max_files`` pending files each
    (at least one pending shard per window); done shards ride along with the window they fall in."""
    window, n = [], 0
    for shard in run.plan.shards:
        if not shard.done and n and n + shard.count > max_files:
            yield window
            window, n = [], 0
        window.append(shard)
        n += 0 if shard.done else shard.count
    if window:
        yield window


def run_index_ray(spec: FeatureSpec, config: IndexConfig, *, store=None,
                  transform: ImageTransform | None = None) -> IndexSummary:
    """Index ``config.images_dir`` with the Ray Data graph; same run directory and result as the local backend.

    The driver is the single writer; features stream back while later files are still being read.
    The pending shards go to the graph in windows of ``config.window_files`` files (one Ray Dataset
    each, one Ray session for all), so the driver never holds the whole listing. Job-level failures
    raise (no images, store errors, a stage failing after its retries); bad files never do.
    """
    from ..distributed.connect import session

    run = IndexRun(spec, config, store=store, progress=False)
    stats = GraphStats()
    try:
        if run.plan.pending:
            with session():
                for window in windows(run, config.window_files):
                    parts = [(s.index, run.plan.files_of(s)) for s in window if not s.done]
                    with run_graph(run.spec, parts, graph_config(config), transform=transform, stats=stats,
                                   stored=run.plan.stored) as stream:
                        run.write(_computed(stream, run.spec), shards=window)
        else:
            run.write(())
    except BaseException:
        run.abort()
        raise
    return run.close(WorkerStats(seconds=stats.seconds, counts=stats.counts, cpu_seconds=stats.cpu_seconds,
                                 plan=stats.plan, nodes=stats.nodes, node_items=stats.node_items,
                                 node_seconds=stats.node_seconds, peak_rss_mb=stats.worker_peak_rss_mb,
                                 runtimes=set(stats.runtimes)))
