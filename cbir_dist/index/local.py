"""The one-process backend of the index job: read, decode, damage and describe each shard here."""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np

from ..damage.hook import apply_transform
from ..features.extract import Extractor
from ..features.spec import FeatureSpec
from ..io.files import ImageFile
from ..io.records import OK, Record, read_record
from .run import (
    ImageTransform,
    IndexConfig,
    IndexRun,
    ShardResult,
    StageClock,
    run_shards_in_order,
)


class ShardProcessor:
    """Reads, decodes, damages (optional hook) and describes one shard's files in this process."""

    def __init__(self, spec: FeatureSpec, config: IndexConfig, *, transform: ImageTransform | None = None,
                 clock: StageClock | None = None):
        self.spec = spec
        self.config = config
        self.transform = transform
        self.clock = clock or StageClock()
        self.extractor = Extractor(spec, device=config.device, weights=config.weights_override,
                                   batch_size=config.batch_size, num_threads=config.torch_threads)

    def read(self, files: Sequence[ImageFile]) -> list[Record]:
        t = time.perf_counter()
        recs = [read_record(f, max_pixels=self.config.max_pixels, max_bytes=self.config.max_bytes) for f in files]
        self.clock.add("decode", time.perf_counter() - t, len(recs))
        if self.transform is not None:
            t = time.perf_counter()
            ok = [r for r in recs if r.status == OK]
            for r in ok:
                apply_transform(r, self.transform)
            self.clock.add("inpaint", time.perf_counter() - t, len(ok))
        return recs

    def features(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.extractor.blocks(images, timer=self.clock.add)

    def close(self) -> None:
        pass


ProcessorFactory = Callable[..., ShardProcessor]


def _results(run: IndexRun, config: IndexConfig, factory: ProcessorFactory,
             transform: ImageTransform | None, opened: list) -> Iterator[ShardResult]:
    for shard in run.pending:
        if not opened:  # load the backbone only when there is work left
            opened.append(factory(run.spec, config, transform=transform, clock=run.clock))
        processor = opened[0]
        recs = processor.read(run.files_of(shard))
        yield shard.index, recs, (lambda todo, p=processor: p.features([r.image for r in todo]))


def run_index_local(spec: FeatureSpec, config: IndexConfig, *, store=None, transform: ImageTransform | None = None,
                    processor_factory: ProcessorFactory | None = None):
    """Index ``config.images_dir`` in this process; see :func:`cbir_dist.index.run_index`."""
    run = IndexRun(spec, config, store=store)
    opened: list[ShardProcessor] = []
    try:
        run_shards_in_order(run, _results(run, config, processor_factory or ShardProcessor, transform, opened))
    except BaseException:
        run.abort()
        raise
    finally:
        for p in opened:
            p.close()
    return run.close()
