"""The run history of a collection: the summaries of the runs that wrote it, kept as a collection property."""

from __future__ import annotations

import json

RUNS_KEY = "cbir_runs"  # property: JSON list of the runs that wrote the collection, newest last
MAX_RUNS_KEPT = 40  # a property value holds at most 64 kB
MAX_RUNS_BYTES = 60_000  # the oldest runs are dropped until the JSON fits


class RunsMixin:
    """Run history for :class:`~cbir_dist.store.milvus.VectorStore` (uses its ``_call``, ``_require``
    and ``collection``)."""

    def runs(self) -> list[dict]:
        """The runs recorded against the collection (:meth:`record_run`), oldest first."""
        self._require()
        props = self._call("describe_collection", "meta", "describe_collection", self.collection).get("properties") or {}
        try:
            runs = json.loads(props.get(RUNS_KEY) or "[]")
        except ValueError:
            return []
        return runs if isinstance(runs, list) else []

    def record_run(self, run: dict) -> None:
        """Append one run's summary (small JSON-able dict) to the collection's run history (the newest
        :data:`MAX_RUNS_KEPT` are kept)."""
        runs = (self.runs() + [run])[-MAX_RUNS_KEPT:]
        text = json.dumps(runs, sort_keys=True, default=str)
        while len(text.encode("utf-8")) > MAX_RUNS_BYTES and len(runs) > 1:
            runs = runs[1:]
            text = json.dumps(runs, sort_keys=True, default=str)
        self._call("alter_collection_properties", "meta", "alter_collection_properties", self.collection,
                   properties={RUNS_KEY: text})
