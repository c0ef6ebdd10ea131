"""Resource planning of the Ray Data graph (:mod:`.graph`): how the cluster is split between its stages.

:func:`plan_stages` gives the CPU tasks (decode, transform, descriptors), the backbone's actor pool
and a network inpainter's own pool (when it has one) their CPUs, GPUs and pool sizes, so that no
stage can starve the others (:class:`StagePlan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from ..errors import PipelineError

if TYPE_CHECKING:
    from .graph import GraphConfig


@dataclass(frozen=True)
class StagePlan:
    """Resources of the CPU tasks, of the backbone actor pool and of a network inpainter's own pool.

    ``inpaint_pool`` is 0 when the network has no pool of its own (no network, or fused into the
    backbone's actors). ``whole``: CPU only, one kind of CPU task runs the whole per-image pipeline
    (:func:`~.stages.whole_batch`), ``actor_cpus`` each, at most ``pool_size`` at once; no actors.
    """

    task_cpus: float
    actor_cpus: float
    actor_gpus: float
    pool_size: int
    torch_threads: int | None
    actor_resources: Mapping[str, float] | None = None
    inpaint_cpus: float = 0.0
    inpaint_gpus: float = 0.0
    inpaint_pool: int = 0
    inpaint_threads: int | None = None
    whole: bool = False


def plan_stages(cluster: Mapping[str, float], config: GraphConfig, *, network: bool = False,
                deep: bool = True) -> StagePlan:
    """:func:`plan_actors` for the backbone, then room for a network inpainter (``network``) when it
    needs a pool of its own: always without a backbone (``deep`` False, it takes the backbone's
    plan), and with ``inpaint_placement="separate"``, when the two pools split the actors'
    resources: half a GPU each per GPU, or the CPU budget in two (tasks keep theirs)."""
    from dataclasses import replace

    if not deep and not network:  # descriptors only: no actors anywhere
        return plan_whole(cluster, config)
    if deep and not _on_gpus(cluster, config) and (not network or config.inpaint_placement == "fused"):
        return plan_whole(cluster, config)
    plan = plan_actors(cluster, config, deep=deep or network)  # a network without a backbone takes its plan
    if not network or (deep and config.inpaint_placement == "fused"):
        return plan
    if not deep:
        return replace(plan, inpaint_cpus=plan.actor_cpus, inpaint_gpus=plan.actor_gpus, inpaint_pool=plan.pool_size,
                       inpaint_threads=plan.torch_threads)
    if plan.actor_gpus:  # both pools on every GPU node: each takes half of what one actor would
        halved = {k: v / 2 for k, v in plan.actor_resources.items()} if plan.actor_resources else None
        return replace(plan, actor_gpus=0.5, inpaint_cpus=plan.actor_cpus / 2, actor_cpus=plan.actor_cpus / 2,
                       inpaint_gpus=0.5, inpaint_pool=plan.pool_size, inpaint_threads=plan.torch_threads,
                       actor_resources=halved)
    if plan.pool_size >= 2:
        half = plan.pool_size // 2
        return replace(plan, pool_size=plan.pool_size - half, inpaint_cpus=plan.actor_cpus, inpaint_pool=half,
                       inpaint_threads=plan.torch_threads)
    share = plan.actor_cpus / 2
    return replace(plan, actor_cpus=share, inpaint_cpus=share, inpaint_pool=1, inpaint_threads=plan.torch_threads)


def _cpus(cluster: Mapping[str, float]) -> float:
    """The cluster's CPUs; a cluster without any cannot run the read and descriptor tasks."""
    cpus = float(cluster.get("CPU", 0.0))
    if cpus <= 0:
        raise PipelineError("the Ray cluster has no CPUs to run the read and descriptor tasks on")
    return cpus


def _on_gpus(cluster: Mapping[str, float], config: GraphConfig) -> bool:
    """The backbone runs on the cluster's GPUs (it has some, and ``config.device`` is not the CPU)."""
    return float(cluster.get("GPU", 0.0)) >= 1 and (config.device is None or str(config.device).startswith("cuda"))


def plan_whole(cluster: Mapping[str, float], config: GraphConfig) -> StagePlan:
    """One task per CPU running the whole pipeline of its batch (:func:`~.stages.whole_batch`, a
    backbone on one thread, ``torch_threads``), as the local backend's workers do: on clusters
    without GPUs, and for specs without a backbone (nothing then needs an actor); ``deep_actors``
    caps how many run at once.

    Measured on 2 cores, 10,000 images with MobileNetV2 (docs/scaling.md): split into CPU tasks and
    a backbone pool, the stages waited on each other; the whole pipeline in each process keeps every
    core on its own stream of images.
    """
    cpus = _cpus(cluster)
    actor_cpus = min(1.0, cpus)
    pool = max(1, min(config.deep_actors or int(cpus // actor_cpus), int(cpus // actor_cpus)))
    extra = dict(config.deep_resources) if config.deep_resources else None
    return StagePlan(0.0, actor_cpus, 0.0, pool, config.torch_threads or 1, extra, whole=True)


#: CPU-only clusters whose stages keep their pools (a network inpainter placed ``"separate"``): the
#: logical CPU of one task slot and of one single-threaded actor. Each CPU holds one of each, so the
#: tasks alone, or the actors alone, can fill every core when the other stage has nothing to do;
#: when both have work, two threads share each core. (With a backbone and no separate network the
#: whole pipeline runs in each task instead: :func:`plan_whole`.)
CPU_SLOT = 0.5


def plan_actors(cluster: Mapping[str, float], config: GraphConfig, *, deep: bool = True) -> StagePlan:
    """Split the cluster between CPU tasks and backbone actors so that every core has work.

    With GPUs (and ``config.device`` not ``"cpu"``): one actor per GPU (``num_gpus=1``, one CPU to
    feed it), one task per remaining CPU. Without: one task and one single-threaded actor per CPU
    (:data:`CPU_SLOT` each; ``deep_actors`` caps the pool), and never more than ``CPU - task_cpus``
    CPUs for the pool, so at least one read/descriptor task can always run (an actor pool holding
    every CPU would leave the tasks that feed it unscheduled: the job hangs without an error).
    With no actors at all (``deep`` False: no backbone, no network) each task takes one CPU.
    """
    cpus = _cpus(cluster)
    gpus = float(cluster.get("GPU", 0.0))
    extra = dict(config.deep_resources) if config.deep_resources else None
    if _on_gpus(cluster, config):
        pool = config.deep_actors or int(gpus)
        return StagePlan(1.0 if cpus >= 2 else 0.5, 1.0 if cpus >= 2 else 0.0, 1.0, min(pool, int(gpus)),
                         config.torch_threads, extra)
    if not deep:
        return StagePlan(min(1.0, cpus), 0.0, 0.0, 0, None, extra)
    slot = min(CPU_SLOT, cpus / 2)
    pool = config.deep_actors or max(1, int(cpus))
    pool = max(1, min(pool, int(round((cpus - slot) / slot, 6))))
    threads = config.torch_threads or 1
    return StagePlan(slot, slot, 0.0, pool, threads, extra)
