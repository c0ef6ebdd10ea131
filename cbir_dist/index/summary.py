"""The end of an index run: the read-back check, the run's tables, stats.json, and the summary line.

The summary is read back from the store, never counted on the side: every image the run planned
as ``ok`` is looked up by id (in batches), ``indexed N`` is the number found, and any image that is
missing fails the job (:class:`~cbir_dist.errors.IncompleteRunError`, exit status 1) after it is
written to ``errors.parquet`` with status ``missing`` and its shard's marker is withdrawn, so the
same command run again writes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..io import records as C
from ..io.files import peak_rss_mb
from ..io.records import MISSING, OK
from ..io.tables import atomic_path, write_json

log = logging.getLogger(__name__)

#: ``inpaint``: masks and classical inpainting (a network's pre-fill); ``inpaint_net``: a network inpainter
#: in the Ray backend's actors (the local backend counts it under ``inpaint``)
STAGES = ("decode", "inpaint", "inpaint_net", "deep", "descriptors", "write")


@dataclass
class IndexSummary:
    """What an index run did; ``indexed`` is read back from the store.

    ``processes``: how many processes computed the shards (the local backend; None: the backend does
    not say). ``cores_busy``: the cores the **whole machine** kept busy over the run, every process on
    it counted (the job's, and any other's), of the ``cores`` this process may use
    (:mod:`cbir_dist.io.cpu`); None off Linux.
    """

    files: int = 0
    indexed: int = 0
    duplicates: int = 0
    rejected: int = 0
    missing: int = 0
    planned: int = 0
    already_present: int = 0
    rows_written: int = 0
    run_dir: str = ""
    stage_seconds: dict = field(default_factory=dict)
    #: a one-time note for the user (a lite collection that grew past the size a server suits)
    advice: str | None = None
    #: what ran the backbone (``"onnxruntime 1.32.0"``, ``"torch 2.14.1 cuda bf16"``; several joined
    #: by ``" + "``); None when no backbone ran (descriptors only, or nothing to describe)
    runtime: str | None = None
    processes: int | None = None
    cores_busy: float | None = None
    cores: int | None = None

    def line(self) -> str:
        """``indexed N, duplicates N, rejected N (see …/errors.parquet)``, then, when known, e.g.
        ``; backbone on onnxruntime 1.32.0; 2 processes, 1.9 of 2 cores busy`` (the cores: the whole
        machine's, other processes included)."""
        missing = f", missing {self.missing}" if self.missing else ""
        from ..io.text import printable

        how = []
        if self.processes:
            how.append(f"{self.processes} process{'es' if self.processes > 1 else ''}")
        if self.cores_busy is not None:
            how.append(f"{self.cores_busy:.1f} of {self.cores} cores busy")
        backbone = f"; backbone on {self.runtime}" if self.runtime else ""
        ran = "; " + ", ".join(how) if how else ""
        return (f"indexed {self.indexed}, duplicates {self.duplicates}, rejected {self.rejected}{missing} "
                f"(see {printable(str(Path(self.run_dir) / 'errors.parquet'))}){backbone}{ran}")


@dataclass
class StageClock:
    """Seconds and item counts per stage (``STAGES``), summed over batches and workers, and the
    runtimes that ran the backbone (``deep``)."""

    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    counts: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    runtimes: set = field(default_factory=set)

    def add(self, stage: str, seconds: float, count: int) -> None:
        self.seconds[stage] += float(seconds)
        self.counts[stage] += int(count)

    def add_all(self, other) -> None:
        """Add another account's ``seconds`` and ``counts`` per stage (a worker's, a graph's) and its runtimes."""
        for stage, seconds in other.seconds.items():
            self.add(stage, seconds, other.counts.get(stage, 0))
        self.runtimes.update(getattr(other, "runtimes", ()))

    def runtime(self) -> str | None:
        """The backbone's runtime(s) for the records: ``"onnxruntime 1.32.0"``; None when none ran."""
        return " + ".join(sorted(self.runtimes)) or None

    def per_second(self) -> dict:
        return {k: (round(self.counts[k] / s, 2) if s > 0 and self.counts[k] else None)
                for k, s in self.seconds.items()}


@dataclass
class WorkerStats:
    """What a distributed backend's workers report: seconds and ok-image counts per stage, the CPU
    seconds the workers spent on each (when measured), the nodes that ran each stage (with their
    rows and seconds), and the busiest worker's peak RSS."""

    seconds: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)  # how the backend split the cluster (Ray: its StagePlan)
    nodes: dict = field(default_factory=dict)  # stage -> node ids
    node_items: dict = field(default_factory=dict)  # stage -> node id -> rows
    node_seconds: dict = field(default_factory=dict)  # stage -> node id -> seconds
    peak_rss_mb: float = 0.0
    runtimes: set = field(default_factory=set)  # what ran the backbone (the actors' reports)


def first_reason(errors_path) -> str | None:
    """The first reason in a run's ``errors.parquet``, or None when it has none or cannot be read."""
    try:
        import pyarrow.parquet as pq

        reasons = pq.read_table(errors_path, columns=["reason"]).column("reason").to_pylist()
    except Exception:  # noqa: BLE001 - a hint for an error line; the line stands without it
        return None
    return next((r for r in reasons if r), None)


def read_back(store, planned_ids: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Look up every planned id in the store; returns shard index → the ids that are missing."""
    missing = {}
    for index, ids in planned_ids.items():
        if len(ids) == 0:
            continue
        present = store.existing_ids(ids)
        gone = np.asarray([i for i in ids.tolist() if i not in present], np.int64)
        if gone.size:
            missing[index] = gone
    return missing


def write_tables(run_dir: Path, shards: Sequence, missing: dict[int, np.ndarray]) -> None:
    """``manifest.parquet`` (every file, shard by shard) and ``errors.parquet`` (every file not indexed,
    with its reason), streamed from the shard manifests: memory stays one shard whatever the run's size."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    err_schema = pa.schema([(C.PATH, pa.string()), (C.STATUS, pa.string()), (C.REASON, pa.string())])
    with atomic_path(run_dir / "manifest.parquet") as man_tmp, \
            atomic_path(run_dir / "errors.parquet") as err_tmp:
        with pq.ParquetWriter(man_tmp, C.MANIFEST_SCHEMA) as man, pq.ParquetWriter(err_tmp, err_schema) as err:
            for shard in shards:
                table = pq.read_table(shard.manifest).cast(C.MANIFEST_SCHEMA)
                man.write_table(table)
                bad = table.filter(pc.not_equal(table[C.STATUS], OK))
                err.write_table(pa.table({C.PATH: bad[C.PATH], C.STATUS: bad[C.STATUS], C.REASON: bad[C.ERROR]},
                                         schema=err_schema))
                gone = missing.get(shard.index)
                if gone is not None:
                    lost = table.filter(pc.and_(pc.is_in(table[C.ID], value_set=pa.array(gone)), pc.equal(table[C.STATUS], OK)))
                    n = lost.num_rows
                    err.write_table(pa.table({
                        C.PATH: lost[C.PATH], C.STATUS: pa.array([MISSING] * n, pa.string()),
                        C.REASON: pa.array(["planned as ok, but its row is not in the store after the write; "
                                            "rerun the same command to write it"] * n, pa.string()),
                    }, schema=err_schema))


def write_stats(path: Path, summary: IndexSummary, *, seconds: float, shards: Sequence, clock: StageClock,
                workers: WorkerStats, backend: str, collection: str, db: str, spec_dim: int,
                processes: int = 1, damage: Mapping[str, object] | None = None) -> None:
    """``stats.json``: the summary's counts, timings per stage, memory, where each stage ran, the
    cores the whole machine kept busy over the run (``cores_busy``, every process on it counted; None
    off Linux) of the ``cores_available`` to this process, and the damage step (``damage``: None
    when the images were indexed as read; ``damage.detect_mask`` true when their masks were estimated)."""
    peak_mb = peak_rss_mb()
    stats = {
        "files": summary.files,
        "indexed": summary.indexed,
        "planned": summary.planned,
        "missing": summary.missing,
        "duplicates": summary.duplicates,
        "rejected": summary.rejected,
        "already_present": summary.already_present,
        "rows_written": summary.rows_written,
        "shards": len(shards),
        "shards_processed": sum(not s.done for s in shards),
        "seconds": round(seconds, 3),
        "images_per_s": round(summary.files / seconds, 3) if seconds > 0 else None,
        "stage_seconds": summary.stage_seconds,
        # the workers' CPU per stage (Ray backend): a stage's cost whatever shares its core
        "stage_cpu_seconds": {k: round(v, 3) for k, v in workers.cpu_seconds.items()} or None,
        "ray_plan": workers.plan or None,  # CPU tasks, actor pool sizes and their CPUs / GPUs
        "stage_items": dict(clock.counts),
        "stage_images_per_s": clock.per_second(),
        "peak_rss_mb": round(peak_mb, 1),
        "peak_worker_rss_mb": round(workers.peak_rss_mb, 1) if workers.peak_rss_mb else None,
        "backend": backend,
        "runtime": summary.runtime,  # what ran the backbone (None: no backbone ran)
        "workers": processes,  # local backend: processes that computed the shards
        "cores_busy": summary.cores_busy,  # the whole machine's, over the run (other processes included)
        "cores_available": summary.cores,
        "stage_nodes": {k: sorted(v) for k, v in workers.nodes.items()},
        "stage_node_items": workers.node_items,
        "stage_node_seconds": {k: {n: round(t, 3) for n, t in v.items()} for k, v in workers.node_seconds.items()},
        "collection": collection,
        "db": db,  # normalised, without credentials
        "spec_dim": spec_dim,
        "damage": dict(damage) if damage else None,
    }
    write_json(path, stats)


def run_record(summary: IndexSummary, *, run_dir: Path, images_dir: str, backend: str,
               damage: Mapping[str, object] | None = None) -> dict:
    """What the collection remembers of this run (``cbir-dist info`` lists them); ``damage`` only when
    the images were damaged or reconstructed (see :func:`write_stats`)."""
    import platform

    s = summary
    record = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(Path(run_dir).resolve()),
              "images_dir": str(Path(images_dir).resolve()), "host": platform.node(),
              "backend": backend, "runtime": s.runtime, "files": s.files, "indexed": s.indexed, "missing": s.missing,
              "duplicates": s.duplicates, "rejected": s.rejected, "rows_written": s.rows_written}
    if damage:
        record["damage"] = dict(damage)
    return record
