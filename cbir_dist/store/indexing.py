"""The collection's vector index: which index realises each logical type, building it, waiting for it.

A collection asks for ``FLAT`` (exact), ``HNSW`` or ``IVF_FLAT``; the caller's choice is kept as a
collection property (:data:`INDEX_KEY`) and realised per backend: on milvus-lite ``FLAT`` is an
exact FAISS scan (``IVF_FLAT`` with one list, probed fully) because its own ``FLAT`` is a NumPy brute
force, and build parameters are sent both as flat keys and as the JSON ``params`` key that
milvus-lite 3.2.2 reads. :meth:`IndexingMixin.flush_and_index` waits until every row is indexed.
"""

from __future__ import annotations

import json
import logging
import time

from ..io.records import VECTOR
from . import lite_internals, schema
from .schema import auto_nlist

logger = logging.getLogger(__name__)

METRIC = "L2"
INDEX_KEY = "cbir_index"  # property: JSON {"index_type": ..., "params": {...as the caller gave...}}
INDEX_WAIT_TIMEOUT_S = 3600.0
HNSW_BUILD_DEFAULTS = {"M": 16, "efConstruction": 200}


def index_property(index_type: str, index_params: dict) -> str:
    """The :data:`INDEX_KEY` property's value for a logical index type and the caller's parameters."""
    return json.dumps({"index_type": index_type, "params": index_params}, sort_keys=True)


class IndexingMixin:
    """Index building and waiting for :class:`~cbir_dist.store.milvus.VectorStore`.

    Uses the host's ``_call``, ``_describe``, ``_require``, ``_require_loaded``, ``count``,
    ``is_local``, ``collection`` and ``_lite_path``, and resets its cached ``_info``, ``_loaded``
    and ``_clean`` (every row searchable by its index) when the index changes.
    """

    def index_params(self) -> dict:
        """The collection's index: ``{"index_type": ..., "params": {...}}`` as given at creation (or by set_index)."""
        info = self._describe()
        return {"index_type": info.index_type, "params": dict(info.index_params)}

    def index_type(self) -> str:
        """The index type the collection was created with: FLAT, HNSW or IVF_FLAT."""
        return self._describe().index_type

    def _index_params(self, index_type: str, params: dict, n_rows: int):
        """The pymilvus IndexParams realising a logical index type on this backend."""
        if index_type == "FLAT":
            kind, build = ("IVF_FLAT", {"nlist": 1}) if self.is_local else ("FLAT", {})
        elif index_type == "HNSW":
            kind, build = "HNSW", {**HNSW_BUILD_DEFAULTS, **params}
        else:
            kind, build = "IVF_FLAT", {**params, "nlist": int(params.get("nlist") or auto_nlist(n_rows))}
        from pymilvus import MilvusClient

        index_params = MilvusClient.prepare_index_params()
        # pymilvus 3 sends build params as flat keys; milvus-lite 3.2.2 reads only a JSON "params" key.
        extra = {**build, "params": dict(build)} if self.is_local else build
        index_params.add_index(
            field_name=VECTOR, index_type=kind, index_name=VECTOR, metric_type=METRIC, params=extra
        )
        return index_params

    def set_index(self, index_type: str, index_params: dict | None = None) -> None:
        """Replace the collection's vector index (e.g. FLAT -> HNSW) and build it for every row."""
        index_type, index_params = schema.check_index(index_type, index_params)
        self._describe()
        self._call("alter_collection_properties", "meta", "alter_collection_properties", self.collection,
                   properties={INDEX_KEY: index_property(index_type, index_params)})
        self._call("flush", "build", "flush", self.collection)
        self._rebuild_index(index_type, index_params)
        self.flush_and_index()

    def _rebuild_index(self, index_type: str, index_params: dict) -> None:
        n_rows = self.count()
        physical = self._index_params(index_type, index_params, n_rows)
        self._call("rebuild index: release", "meta", "release_collection", self.collection)
        self._call("rebuild index: drop", "meta", "drop_index", self.collection, VECTOR)
        self._call("rebuild index: create", "build", "create_index", self.collection, physical)
        self._call("rebuild index: load", "build", "load_collection", self.collection)
        self._info = None
        self._loaded = True
        self._clean = False

    def flush(self) -> None:
        """Persist pending writes (durable across a kill of this process) without waiting for the index.

        The index job calls it once per shard, before writing the shard's completion marker.
        """
        self._require()
        self._call("flush", "build", "flush", self.collection)
        self._clean = False

    def flush_and_index(self) -> None:
        """Persist pending writes and wait until every row is searchable through the index.

        Call it after writing and before searching: until then milvus-lite searches unindexed
        rows by brute force and :meth:`search` sends small requests to bound that memory.
        """
        info = self._describe()
        self._call("flush", "build", "flush", self.collection)
        if info.index_type == "IVF_FLAT" and "nlist" not in info.index_params:
            target = auto_nlist(self.count())
            if info.nlist <= 0 or not (0.5 < target / info.nlist < 2):
                logger.info("re-fitting IVF_FLAT nlist %d -> %d", info.nlist, target)
                self._rebuild_index(info.index_type, info.index_params)
        self._require_loaded()
        clean = self._wait_lite_indexed() if self.is_local else self._wait_server_indexed()
        self._clean = clean

    def _wait_lite_indexed(self) -> bool:
        """Wait for milvus-lite's background compaction and index builds; True when all rows are indexed."""
        if lite_internals.wait_indexed(self._lite_path, self.collection, VECTOR):
            return True
        # Unknown internals, or segments left unindexed: a load builds every segment's index inline.
        self._call("reload: release", "meta", "release_collection", self.collection)
        self._call("reload: load", "build", "load_collection", self.collection)
        return lite_internals.available(self._lite_path, self.collection)

    def _wait_server_indexed(self) -> bool:
        deadline = time.monotonic() + INDEX_WAIT_TIMEOUT_S
        while True:
            desc = self._call("describe_index", "meta", "describe_index", self.collection, VECTOR) or {}
            pending = int(desc.get("pending_index_rows", 0) or 0)
            if pending == 0 and int(desc.get("indexed_rows", 0)) >= int(desc.get("total_rows", 0)):
                return True
            if time.monotonic() > deadline:
                logger.warning("index of %s still has %d pending rows; searching anyway", self.collection, pending)
                return False
            time.sleep(1.0)
