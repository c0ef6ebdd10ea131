"""The vector store: every Milvus call behind one small class (only :mod:`cbir_dist.store` imports pymilvus).

One collection holds one row per image: ``id`` (INT64 primary key, the content hash, so writes are
idempotent upserts), ``path``, ``label`` and ``vector`` (FLOAT_VECTOR, metric L2). The FeatureSpec
JSON that produced the vectors travels with the collection (as collection properties), so a query
can check it uses the same features.

The same class talks to milvus-lite (a local ``*.db`` folder, embedded in this process) or to a
Milvus server (``http(s)://host:port``). Facts about milvus-lite 3.2.2 that shape the code:

- a ``.db`` folder is locked by one process, so every write in a job goes through one writer;
- rows not yet indexed (and every row under its ``FLAT``/``BRUTE_FORCE`` index) are searched by a
  NumPy brute force that materialises ``queries x rows x dim`` float32 differences at once; the
  store therefore (a) maps ``FLAT`` to an exact FAISS scan (``IVF_FLAT`` with one list, probed
  fully) on milvus-lite, (b) waits in :meth:`VectorStore.flush_and_index` until every row is
  indexed, and (c) bounds each search request by ``memory_budget_bytes`` while rows may be
  unindexed;
- it reads index build parameters only from a JSON ``params`` key, which pymilvus 3 no longer
  sends, so both forms are sent (:mod:`.indexing`);
- metric ``L2`` distances come back squared: :meth:`VectorStore.search` returns true Euclidean
  distances.

:class:`VectorStore` holds the connection, what it knows of the collection and the data calls
(writes, reads, search); its other parts live beside it as mixins: each call's timeout, retries and
errors (:mod:`.calls`), creating, dropping and replacing the collection (:mod:`.collection`), the
index (:mod:`.indexing`), the run history (:mod:`.runs`); milvus-lite's lifecycle is :mod:`.lite`.
URIs in messages and logs never carry credentials (:func:`.lite.display_uri`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from ..errors import CollectionNotFoundError, StoreError, UsageError
from ..io.records import ID, LABEL, PATH, VECTOR
from . import lite, schema
from .calls import CallsMixin, redact
from .collection import CollectionMixin
from .indexing import INDEX_KEY, METRIC, IndexingMixin
from .runs import RunsMixin
from .schema import MAX_LABEL_BYTES, MAX_PATH_BYTES

logger = logging.getLogger(__name__)

MAX_TOP_K = 16384  # Milvus' limit for a search's limit
MAX_REQUEST_BYTES = 64 << 20  # Milvus' default gRPC request cap
REQUEST_TARGET_BYTES = 16 << 20  # what one upsert/search/get request carries: well under the cap
MAX_QUERIES_PER_REQUEST = 512
SCAN_PER_REQUEST = 1 << 35  # query x row x dim products per exact-search request (~10-30 s on one core)
ID_CHUNK = 1000  # ids per `id in [...]` expression
ID_PAGE = 16384  # ids per page when listing every stored id (Milvus caps a query page at 16384)
CONNECT_TIMEOUT_S = 10.0
# Default ef = max(HNSW_MIN_EF, 2k). benchmarks/query.py, 100k x 2304-d clustered rows, recall@10:
# ef 64 -> 0.954, 128 -> 0.988, 256 -> 0.996 (10k rows: 0.9987 for any ef >= 64).
HNSW_MIN_EF = 256
IVF_MIN_NPROBE = 16
# The brute force holds the (chunk, rows, dim) difference array and its square at once.
BRUTE_FORCE_TEMPORARIES = 2

_FIELD_ID, _FIELD_PATH, _FIELD_LABEL, _FIELD_VECTOR = ID, PATH, LABEL, VECTOR
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of ``Q`` queries, nearest first.

    Attributes
    ----------
    ids : ndarray of int64, shape (Q, k)
        Content ids of the neighbours; ``-1`` pads rows when the collection holds fewer than k rows.
    distances : ndarray of float32, shape (Q, k)
        Euclidean distances ``||q - x||_2``, ascending along each row; ``inf`` where padded.
    paths, labels : ndarray of object (str), shape (Q, k)
        The neighbours' stored path and label; ``""`` where padded.
    """

    ids: np.ndarray
    distances: np.ndarray
    paths: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class _Info:
    """What the store needs to know about an existing collection."""

    dim: int
    spec_json: str
    index_type: str  # the logical type the caller asked for: FLAT, HNSW or IVF_FLAT
    index_params: dict  # the build parameters the caller gave (defaults not filled in)
    nlist: int  # the physical IVF list count (0 for HNSW, 1 for FLAT on milvus-lite)


class VectorStore(CallsMixin, CollectionMixin, IndexingMixin, RunsMixin):
    """One Milvus collection of image vectors: create, upsert, index, search.

    Parameters
    ----------
    uri : str
        A local path ending in ``.db`` (a milvus-lite folder; parent folders are created) or a
        Milvus server ``http(s)://host:port`` / ``tcp://host:port``.
    collection : str
        Collection name: letters, digits and underscores, not starting with a digit.
    token : str, optional
        Server credentials (``"user:password"`` or an API key); unused for local stores.
    memory_budget_bytes : int
        Upper bound on the transient memory of one search request while rows may be searched by
        brute force (before :meth:`flush_and_index`, or right after writes): each request carries at
        most ``max(1, budget // (2 * rows * dim * 4))`` queries.

    Raises
    ------
    UsageError
        The URI or the collection name is malformed (:class:`~cbir_dist.errors.InputError` when
        the URI names a file, not a store).
    StoreError
        The server cannot be reached within a few seconds, or the local folder is in use by
        another process.
    """

    def __init__(
        self,
        uri: str = "cbir.db",
        collection: str = "images",
        *,
        token: str | None = None,
        memory_budget_bytes: int = 1 << 30,
    ) -> None:
        if not isinstance(uri, str | os.PathLike) or not str(uri).strip():
            raise UsageError(f"store URI must be a non-empty string, got {uri!r}; pass e.g. ./cbir.db")
        if not isinstance(collection, str) or not _NAME_RE.match(collection):
            raise UsageError(
                f"collection name {collection!r} is not valid: use letters, digits and underscores, "
                "starting with a letter or underscore (at most 255 characters)"
            )
        if isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, int | np.integer):
            raise TypeError(f"memory_budget_bytes must be an int, got {type(memory_budget_bytes).__name__}")
        if memory_budget_bytes <= 0:
            raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
        self._raw_uri = str(uri).strip()
        self._lite_path = lite.lite_path(self._raw_uri)  # None for a server
        #: the store's URI as shown in messages, logs and run state: normalised, without credentials
        self.uri = self._lite_path or lite.display_uri(self._raw_uri)
        self.collection = collection
        self.memory_budget_bytes = int(memory_budget_bytes)
        self._token = token or ""
        self._info: _Info | None = None
        self._loaded = False
        self._clean = False  # True once flush_and_index made every row searchable by its index
        self._client = self._connect()

    # ---------------------------------------------------------------- connection

    @property
    def is_local(self) -> bool:
        """True for an embedded milvus-lite store (a local ``.db`` folder)."""
        return self._lite_path is not None

    def _connect(self):
        lite.quiet_grpc()
        if self._lite_path is not None:
            return lite.open_client(self._lite_path, CONNECT_TIMEOUT_S)
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        t0 = time.monotonic()
        try:
            return self._retrying("connect", lambda: MilvusClient(
                uri=self._raw_uri, token=self._token, timeout=min(CONNECT_TIMEOUT_S, self._timeout("meta"))))
        except MilvusException as exc:
            spent = time.monotonic() - t0
            if schema.grpc_status(exc) == "UNAUTHENTICATED":
                raise StoreError(
                    f"Milvus at {self.uri} rejected the credentials: authentication failed (wrong user or "
                    "password in the token). Pass the right one with MILVUS_TOKEN or --token-file"
                ) from exc
            raise StoreError(
                f"cannot reach Milvus at {self.uri} (connect, tried for {spent:.0f} s): is the server running? "
                f"({redact(exc.message, self._token)}) For a local embedded store pass a file path like ./cbir.db"
            ) from exc

    def close(self) -> None:
        """Close the connection; the last store closed on a local folder releases its lock."""
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.close()
        if self._lite_path is not None:
            lite.release(self._lite_path)

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def target_uri(self) -> str:
        """The store's identity for run state: the absolute folder of a local store, else the
        server URI normalised without credentials (same as :attr:`uri`)."""
        return self.uri

    def __repr__(self) -> str:
        return f"VectorStore(uri={self.uri!r}, collection={self.collection!r})"

    @property
    def client(self):
        if self._client is None:
            raise StoreError(f"{self!r} is closed; open a new VectorStore")
        return self._client

    # ---------------------------------------------------------------- collection

    def spec_json(self) -> str:
        """The FeatureSpec JSON the collection was created with, exactly as given."""
        return self._describe().spec_json

    def dim(self) -> int:
        """Dimension of the stored vectors."""
        return self._describe().dim

    def count(self) -> int:
        """Exact number of rows (each id counted once)."""
        self._require_loaded()
        res = self._call("count", "data", "query", self.collection, filter="", output_fields=["count(*)"],
                         consistency_level="Strong")
        return int(res[0]["count(*)"])

    def _require(self) -> None:
        if not self.exists():
            names = self.list_collections()
            there = (f"it holds {', '.join(repr(n) for n in names[:20])}{' ...' if len(names) > 20 else ''}: "
                     "pick one with --collection" if names else "it holds no collection")
            raise CollectionNotFoundError(
                f"collection {self.collection!r} not found in {self.uri} ({there}); "
                "run `cbir-dist index ...` first (or pass the --db/--collection it was built with)"
            )

    def _describe(self) -> _Info:
        if self._info is None:
            self._require()
            desc = self._call("describe_collection", "meta", "describe_collection", self.collection)
            index = self._call("describe_index", "meta", "describe_index", self.collection, _FIELD_VECTOR) or {}
            vec = [f for f in desc["fields"] if f["name"] == _FIELD_VECTOR]
            if not vec:
                raise StoreError(
                    f"collection {self.collection!r} in {self.uri} has no {_FIELD_VECTOR!r} field: it was "
                    "not made by cbir-dist; use another collection name or drop it"
                )
            props = desc.get("properties") or {}
            logical = json.loads(props.get(INDEX_KEY) or "{}")
            nlist = index.get("nlist") or (index.get("params") or {}).get("nlist") or 0
            self._info = _Info(
                dim=int(vec[0]["params"]["dim"]),
                spec_json=schema.spec_from_properties(props),
                index_type=logical.get("index_type") or str(index.get("index_type", "FLAT")).upper(),
                index_params=dict(logical.get("params") or {}),
                nlist=int(nlist),
            )
        return self._info

    def _require_loaded(self) -> None:
        self._describe()
        if not self._loaded:
            self._call("load_collection", "build", "load_collection", self.collection)
            self._loaded = True

    # ---------------------------------------------------------------- writes

    def upsert(self, ids, paths, labels, vectors) -> int:
        """Insert or replace rows by id; returns the number of distinct ids written.

        Parameters
        ----------
        ids : array-like of int, shape (N,)
            Non-negative content ids (``-1`` is the search padding); a repeated id keeps its last row.
        paths, labels : sequence of str, length N
            At most 4096 and 512 bytes of UTF-8.
        vectors : array-like of float, shape (N, dim)
            Finite values; ``dim`` must be the collection's.
        """
        return self._write("upsert", ids, paths, labels, vectors)

    def insert(self, ids, paths, labels, vectors) -> int:
        """Add rows whose ids are known to be absent (cheaper than :meth:`upsert` on a server).

        Milvus does not check primary keys on insert: inserting an id that is already stored makes a
        second row with it, and a check (:meth:`existing_ids`) does not guard against another process
        writing the same ids in between. For bulk loads of ids known to be new (benchmarks); the index
        job always upserts. Same parameters and return value.
        """
        return self._write("insert", ids, paths, labels, vectors)

    def _write(self, op: str, ids, paths, labels, vectors) -> int:
        info = self._describe()
        ids = schema.check_ids(ids)
        n = ids.shape[0]
        paths = schema.check_strings(paths, n, "paths", MAX_PATH_BYTES)
        labels = schema.check_strings(labels, n, "labels", MAX_LABEL_BYTES)
        vectors = self._check_vectors(vectors, info, "vectors", n_rows=n)
        if n == 0:
            return 0
        # Keep the last occurrence of each id, in first-seen order of the survivors.
        _, last_rev = np.unique(ids[::-1], return_index=True)
        keep = np.sort(n - 1 - last_rev)
        if keep.size != n:
            logger.debug("%s: %d repeated ids in the batch, keeping the last of each", op, n - keep.size)
        row_bytes = info.dim * 4 + 64 + max(len(p) for p in paths) + max(len(s) for s in labels)
        batch = max(1, REQUEST_TARGET_BYTES // row_bytes)
        for start in range(0, keep.size, batch):
            rows = [
                {_FIELD_ID: int(ids[i]), _FIELD_PATH: paths[i], _FIELD_LABEL: labels[i], _FIELD_VECTOR: vectors[i]}
                for i in keep[start : start + batch]
            ]
            self._call(op, "data", op, self.collection, rows)
            self._clean = False
        return int(keep.size)

    # ---------------------------------------------------------------- reads

    def existing_ids(self, ids) -> set[int]:
        """The subset of ``ids`` already stored."""
        ids = np.unique(schema.check_ids(ids))
        self._require_loaded()
        found: set[int] = set()
        for start in range(0, ids.size, ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK].tolist()
            rows = self._call("query by id", "data", "query", self.collection, filter=f"{_FIELD_ID} in {chunk}",
                              output_fields=[_FIELD_ID], consistency_level="Strong")
            found.update(int(r[_FIELD_ID]) for r in rows)
        return found

    def stored_ids(self) -> np.ndarray:
        """Every id in the collection, sorted (int64, 8 bytes a row): what an index job need not describe."""
        from pymilvus.exceptions import MilvusException

        self._require_loaded()

        def listing() -> np.ndarray:
            it = self.client.query_iterator(self.collection, batch_size=ID_PAGE, filter=f"{_FIELD_ID} >= 0",
                                            output_fields=[_FIELD_ID], timeout=self._timeout("data"))
            parts = []
            try:
                while page := it.next():
                    parts.append(np.fromiter((r[_FIELD_ID] for r in page), np.int64, len(page)))
            finally:
                it.close()
            return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

        try:
            return self._retrying("list stored ids", listing)
        except MilvusException as exc:
            raise StoreError(f"list stored ids of collection {self.collection!r} in {self.uri} failed: "
                             f"{redact(str(exc), self._token)}") from exc

    def fetch(self, ids) -> dict[str, np.ndarray]:
        """Stored rows for ``ids``, in the order asked, skipping absent ids.

        Returns a batch ``{ID: int64 (M,), PATH: object (M,), LABEL: object (M,), VECTOR: float32 (M, dim)}``.
        """
        info = self._describe()
        ids = schema.check_ids(ids)
        self._require_loaded()
        by_id: dict[int, dict] = {}
        batch = max(1, min(ID_CHUNK, REQUEST_TARGET_BYTES // (info.dim * 4 + MAX_PATH_BYTES + MAX_LABEL_BYTES)))
        wanted = np.unique(ids)
        for start in range(0, wanted.size, batch):
            rows = self._call("get", "data", "get", self.collection, ids=wanted[start : start + batch].tolist(),
                              output_fields=[_FIELD_ID, _FIELD_PATH, _FIELD_LABEL, _FIELD_VECTOR])
            by_id.update((int(r[_FIELD_ID]), r) for r in rows)
        order = [int(i) for i in ids if int(i) in by_id]
        vectors = np.empty((len(order), info.dim), np.float32)
        for j, i in enumerate(order):
            vectors[j] = np.asarray(by_id[i][_FIELD_VECTOR], np.float32)
        return {
            ID: np.asarray(order, np.int64),
            PATH: schema.object_array([by_id[i][_FIELD_PATH] for i in order]),
            LABEL: schema.object_array([by_id[i][_FIELD_LABEL] for i in order]),
            VECTOR: vectors,
        }

    def search(self, vectors, k: int, *, search_params: dict | None = None) -> SearchResult:
        """The ``k`` nearest stored rows (Euclidean) of each query vector.

        Parameters
        ----------
        vectors : array-like of float, shape (Q, dim) or (dim,)
            Query vectors, finite, of the collection's dimension.
        k : int
            Neighbours per query, 1 to 16384 (else :class:`~cbir_dist.errors.UsageError`).
        search_params : dict, optional
            Engine parameters overriding the defaults: ``{"ef": max(256, 2k)}`` for HNSW,
            ``{"nprobe": max(16, nlist / 8)}`` for IVF_FLAT; FLAT is exact and takes none.

        Returns
        -------
        SearchResult
            Arrays of shape (Q, k); distances ascending, padded with ``-1``/``inf``/``""`` when
            the collection holds fewer than ``k`` rows.
        """
        info = self._describe()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_TOP_K:
            raise UsageError(f"k must be an int in [1, {MAX_TOP_K}] (Milvus returns at most {MAX_TOP_K} neighbours "
                             f"per query), got {k!r}: ask for fewer neighbours (-k; one fewer when the query's own "
                             "row is excluded)")
        k = int(k)
        queries = np.asarray(vectors)
        if queries.ndim == 1:
            queries = queries[None, :]
        queries = self._check_vectors(queries, info, "query vectors")
        if search_params is not None and not isinstance(search_params, dict):
            raise TypeError(f"search_params must be a dict, got {type(search_params).__name__}")
        params = {**self._default_search_params(info, k), **(search_params or {})}
        nq = queries.shape[0]
        ids = np.full((nq, k), -1, np.int64)
        dists = np.full((nq, k), np.inf, np.float32)
        paths = schema.object_array([""] * (nq * k)).reshape(nq, k)
        labels = schema.object_array([""] * (nq * k)).reshape(nq, k)
        if nq == 0:
            return SearchResult(ids, dists, paths, labels)
        self._require_loaded()
        n_rows = self.count()
        if n_rows == 0:
            return SearchResult(ids, dists, paths, labels)
        scan_rows = n_rows if info.index_type == "FLAT" else 0
        chunk = self._query_chunk(0 if self._clean else n_rows, info.dim, k, scan_rows=scan_rows)
        logger.debug("search: %d queries over %d rows in requests of %d", nq, n_rows, chunk)
        for start in range(0, nq, chunk):
            hits = self._call("search", "data", "search", self.collection, data=list(queries[start : start + chunk]),
                              limit=k, anns_field=_FIELD_VECTOR, output_fields=[_FIELD_PATH, _FIELD_LABEL],
                              search_params={"metric_type": METRIC, "params": params}, consistency_level="Strong")
            for qi, row in enumerate(hits, start=start):
                for j, hit in enumerate(row[:k]):
                    entity = hit.get("entity") or {}
                    ids[qi, j] = int(hit["id"])
                    dists[qi, j] = math.sqrt(max(float(hit["distance"]), 0.0))
                    paths[qi, j] = entity.get(_FIELD_PATH, "")
                    labels[qi, j] = entity.get(_FIELD_LABEL, "")
        return SearchResult(ids, dists, paths, labels)

    def _default_search_params(self, info: _Info, k: int) -> dict:
        if info.index_type == "HNSW":
            return {"ef": max(HNSW_MIN_EF, 2 * k)}
        if info.index_type == "IVF_FLAT":
            nlist = max(info.nlist, 1)
            return {"nprobe": min(nlist, max(IVF_MIN_NPROBE, -(-nlist // 8)))}
        return {"nprobe": 1} if self.is_local else {}  # FLAT: one IVF list on milvus-lite, scanned whole

    def _query_chunk(self, brute_rows: int, dim: int, k: int, *, scan_rows: int = 0) -> int:
        """Queries per search request: bounded by the request size, the reply size, the work of an
        exact scan over ``scan_rows`` rows (so one request takes seconds, not minutes) and, while
        ``brute_rows`` rows may be brute-forced, by ``chunk * rows * dim * 4 * 2 <= memory_budget_bytes``."""
        chunk = min(MAX_QUERIES_PER_REQUEST, REQUEST_TARGET_BYTES // (dim * 4), REQUEST_TARGET_BYTES // (k * 400))
        if scan_rows > 0:
            chunk = min(chunk, SCAN_PER_REQUEST // (scan_rows * dim))
        if brute_rows > 0:
            chunk = min(chunk, self.memory_budget_bytes // (BRUTE_FORCE_TEMPORARIES * brute_rows * dim * 4))
        return max(1, int(chunk))

    def _check_vectors(self, vectors, info: _Info, what: str, n_rows: int | None = None) -> np.ndarray:
        arr = np.asarray(vectors)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{what} must be a numeric array, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{what} must have shape (N, dim), got shape {arr.shape}")
        if n_rows is not None and arr.shape[0] != n_rows:
            raise ValueError(f"{what} has {arr.shape[0]} rows but {n_rows} ids were given")
        if arr.shape[1] != info.dim:
            raise StoreError(
                f"{what} are {arr.shape[1]}-d but collection {self.collection!r} in {self.uri} holds "
                f"{info.dim}-d vectors built with feature spec {schema.short(info.spec_json)}; use the same "
                "feature spec as the index (or rebuild it with --overwrite)"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.size and not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise ValueError(f"{what} must be finite; row {bad} holds NaN or inf (or overflows float32)")
        return arr
