"""The vector store: every Milvus call behind one small class (with :mod:`.lite`, the only modules that import pymilvus).

One collection holds one row per image: ``id`` (INT64 primary key, the content hash, so writes are
idempotent upserts), ``path``, ``label`` and ``vector`` (FLOAT_VECTOR, metric L2). The FeatureSpec
JSON that produced the vectors travels with the collection (as collection properties), so a query
can check it uses the same features.

The same class talks to milvus-lite (a local ``*.db`` folder, embedded in this process) or to a
Milvus server (``http(s)://host:port``). Facts about milvus-lite 3.2.2 that shape the code:

- a ``.db`` folder is locked by one process, so every write in a job goes through one writer;
- rows not yet indexed (and every row under its ``FLAT``/``BRUTE_FORCE`` index) are searched by a
  NumPy brute force that materialises ``queries x rows x dim`` float32 differences at once; this
  module therefore (a) maps ``FLAT`` to an exact FAISS scan (``IVF_FLAT`` with one list, probed
  fully) on milvus-lite, (b) waits in :meth:`VectorStore.flush_and_index` until every row is
  indexed, and (c) bounds each search request by ``memory_budget_bytes`` while rows may be
  unindexed;
- it reads index build parameters only from a JSON ``params`` key, which pymilvus 3 no longer
  sends, so both forms are sent;
- metric ``L2`` distances come back squared: :meth:`VectorStore.search` returns true Euclidean
  distances.

Every call has a timeout (:data:`TIMEOUTS`: metadata, data, build) and transient failures —
connection refused or reset, unavailable, deadline exceeded, server busy or rate-limited — are
retried with bounded exponential backoff (tenacity; ``$CBIR_MILVUS_RETRY_S`` seconds in all,
default 120), then fail with a :class:`~cbir_dist.errors.StoreError` naming the URI and the
operation. URIs in messages and logs never carry credentials (:func:`.lite.display_uri`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CollectionNotFoundError, StoreError, UsageError
from ..io.records import ID, LABEL, PATH, VECTOR
from . import lite, schema
from .schema import MAX_LABEL_BYTES, MAX_PATH_BYTES, auto_nlist

logger = logging.getLogger(__name__)

METRIC = "L2"
MAX_TOP_K = 16384  # Milvus' limit for a search's limit
MAX_REQUEST_BYTES = 64 << 20  # Milvus' default gRPC request cap
REQUEST_TARGET_BYTES = 16 << 20  # what one upsert/search/get request carries: well under the cap
MAX_QUERIES_PER_REQUEST = 512
SCAN_PER_REQUEST = 1 << 35  # query x row x dim products per exact-search request (~10-30 s on one core)
ID_CHUNK = 1000  # ids per `id in [...]` expression
ID_PAGE = 16384  # ids per page when listing every stored id (Milvus caps a query page at 16384)
CONNECT_TIMEOUT_S = 10.0
INDEX_WAIT_TIMEOUT_S = 3600.0
#: Seconds each kind of call may take (one attempt; pymilvus retries inside it, then we retry it).
TIMEOUTS = {"meta": 30.0, "data": 300.0, "build": 3600.0}
RETRY_BUDGET_S = 120.0  # all attempts of one call together; $CBIR_MILVUS_RETRY_S overrides
RETRY_ENV = "CBIR_MILVUS_RETRY_S"
TIMEOUT_ENV = "CBIR_MILVUS_TIMEOUT_S"  # caps every per-call timeout (tests, impatient users)
_TRANSIENT_STATUS = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}
_TRANSIENT_TEXT = ("connection refused", "connection reset", "server unavailable", "deadline exceeded",
                   "server is busy", "rate limit", "too many requests", "socket closed", "broken pipe",
                   "fail connecting to server", "retry timeout", "stream removed", "channel is not ready",
                   # a standalone server whose components are (re)starting or starved answers
                   # "service not ready[standalone=1]: Abnormal" for a while
                   "service not ready",
                   # a standalone server restarted after a hard kill: its coordinator still assigns the
                   # channels to the dead data node until that node's session expires (~30-60 s)
                   "node not match", "node not found", "session not found")
HNSW_BUILD_DEFAULTS = {"M": 16, "efConstruction": 200}
# Default ef = max(HNSW_MIN_EF, 2k). benchmarks/query.py, 100k x 2304-d clustered rows, recall@10:
# ef 64 -> 0.954, 128 -> 0.988, 256 -> 0.996 (10k rows: 0.9987 for any ef >= 64).
HNSW_MIN_EF = 256
IVF_MIN_NPROBE = 16
# The brute force holds the (chunk, rows, dim) difference array and its square at once.
BRUTE_FORCE_TEMPORARIES = 2

_INDEX_KEY = "cbir_index"  # property: JSON {"index_type": ..., "params": {...as the caller gave...}}
_RUNS_KEY = "cbir_runs"  # property: JSON list of the runs that wrote the collection, newest last
_IDENTITY_KEY = "cbir_identity"  # property: a random id given at creation; survives renames, not re-creation
STAGING_SUFFIX = "__overwrite"  # where `index --overwrite` builds the collection that replaces one
_REPLACED_SUFFIX = "__replaced"  # the replaced collection, for the moment of the swap
MAX_RUNS_KEPT = 40  # a property value holds at most 64 kB
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


class VectorStore:
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
    StoreError
        The URI is malformed, the server cannot be reached within a few seconds, or the local
        folder is in use by another process.
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
            raise StoreError(f"store URI must be a non-empty string, got {uri!r}; pass e.g. ./cbir.db")
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
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if self._lite_path is not None:
            lite.quiet_faiss()
            try:
                Path(self._lite_path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder for the local store {self.uri}: {exc}") from exc
            if os.path.isfile(self._lite_path):
                raise StoreError(
                    f"{self.uri} is a file, but milvus-lite 3 keeps a store in a folder of that name "
                    "(an older milvus-lite file?): move it away or pass another path like ./cbir.db"
                )
            try:
                with lite.StartErrors() as lite_errors:
                    client = MilvusClient(uri=self._lite_path, timeout=CONNECT_TIMEOUT_S,
                                          grpc_options=lite.GRPC_OPTIONS)
            except MilvusException as exc:
                cause = lite_errors.errors[-1] if lite_errors.errors else exc.message
                if any(t in str(cause) for t in ("Read-only file system", "Permission denied", "[Errno 13]",
                                                   "[Errno 30]")):
                    raise StoreError(
                        f"cannot open the local store {self.uri} ({cause}): milvus-lite writes its folder (a "
                        "lock, its log) even to read it; give this user write access, or copy the folder "
                        "somewhere writable and pass that path") from exc
                raise StoreError(
                    f"cannot open the local store {self.uri} ({cause}): a local store can be open in "
                    "one process at a time; stop the other process using it, pass another path, or "
                    "run a Milvus server and pass its http://host:19530 URI"
                ) from exc
            lite.acquire(self._lite_path)
            return client
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
                f"({_redact(exc.message, self._token)}) For a local embedded store pass a file path like ./cbir.db"
            ) from exc

    # ---------------------------------------------------------------- calls

    @staticmethod
    def _timeout(kind: str) -> float:
        cap = os.environ.get(TIMEOUT_ENV)
        return min(TIMEOUTS[kind], float(cap)) if cap else TIMEOUTS[kind]

    def _retrying(self, what: str, fn):
        """``fn()``, retried on transient failures with bounded exponential backoff; the last error re-raised."""
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

        budget = float(os.environ.get(RETRY_ENV, RETRY_BUDGET_S))
        if budget <= 0:
            return fn()

        def log_retry(state) -> None:
            exc = state.outcome.exception()
            logger.warning("%s on %s failed (%s: %s); retrying in %.1f s (attempt %d)", what, self.uri,
                           type(exc).__name__, _redact(str(exc), self._token)[:200], state.next_action.sleep,
                           state.attempt_number)

        for attempt in Retrying(retry=retry_if_exception(_transient), stop=stop_after_delay(budget),
                                wait=wait_exponential(multiplier=0.5, max=15.0), reraise=True,
                                before_sleep=log_retry):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, what: str, kind: str, method: str, *args, **kwargs):
        """One client call with its timeout and retries; pymilvus errors become a StoreError naming the call."""
        from pymilvus.exceptions import MilvusException

        fn = getattr(self.client, method)
        t0 = time.monotonic()

        def once():
            return self._retrying(what, lambda: fn(*args, timeout=self._timeout(kind), **kwargs))

        try:
            try:
                return once()
            except MilvusException as exc:
                if not (self._loaded and _not_loaded(exc)):
                    raise
                # A server restarted since this store loaded the collection brings it back released
                # (Milvus 2.3 reloads it in the background, or not at all): load it, then try again.
                logger.warning("%s on %s: the collection is no longer loaded (the server restarted?); "
                               "loading it again", what, self.uri)
                self._call("reload after restart: load", "build", "load_collection", self.collection)
                return once()
        except Exception as exc:  # noqa: BLE001 - pymilvus' errors, and gRPC's that it lets through
            if not (isinstance(exc, MilvusException) or _is_rpc_error(exc)):
                raise
            if schema.grpc_status(exc) in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                raise StoreError(
                    f"{what} on collection {self.collection!r}: Milvus at {self.uri} rejected the credentials "
                    f"({schema.grpc_status(exc).lower().replace('_', ' ')}; the token was changed or revoked "
                    "during the job?). Pass a valid one with MILVUS_TOKEN or --token-file and rerun: the job "
                    "resumes") from exc
            spent = time.monotonic() - t0
            tried = f" (gave up after {spent:.0f} s of retries)" if _transient(exc) and spent > 1 else ""
            message = getattr(exc, "message", None) or (exc.details() if _is_rpc_error(exc) else str(exc))
            raise StoreError(f"{what} on collection {self.collection!r} in {self.uri} failed{tried}: "
                             f"{_redact(str(message), self._token)}") from exc

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

    def exists(self) -> bool:
        """Whether the collection exists."""
        return bool(self._call("has_collection", "meta", "has_collection", self.collection))

    def create(
        self,
        dim: int,
        spec_json: str,
        *,
        index_type: str = "FLAT",
        index_params: dict | None = None,
        overwrite: bool = False,
    ) -> bool:
        """Create the collection for ``dim``-d vectors built with the FeatureSpec ``spec_json``;
        True when this call created it (False when it existed already, also when another process
        created it a moment before: concurrent jobs may race to create one collection).

        ``index_type`` is ``FLAT`` (exact, the default), ``HNSW`` (``M=16, efConstruction=200``
        unless given) or ``IVF_FLAT`` (``nlist`` about ``4 sqrt(n)`` for ``n`` rows unless given,
        re-fitted by :meth:`flush_and_index`); the metric is L2. If the collection exists with the
        same dim and spec this is a no-op; with a different one it raises :class:`StoreError`
        unless ``overwrite`` drops it first.
        """
        dim = schema.check_dim(dim)
        if not isinstance(spec_json, str):
            raise TypeError(f"spec_json must be a str (the FeatureSpec's JSON), got {type(spec_json).__name__}")
        index_type, index_params = schema.check_index(index_type, index_params)
        if self.exists():
            if overwrite:
                self.drop()
            else:
                info = self._describe()
                if info.dim == dim and schema.same_spec(info.spec_json, spec_json):
                    logger.debug("collection %s already exists with the same dim and spec", self.collection)
                    return False
                what = f"dim {info.dim}" if info.dim != dim else "a different feature spec"
                raise StoreError(
                    f"collection {self.collection!r} in {self.uri} already exists with {what} "
                    f"(requested dim {dim}); pass overwrite=True (`--overwrite`) to rebuild it, "
                    "or use another collection name"
                )
        from pymilvus import DataType, MilvusClient

        fields = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        fields.add_field(_FIELD_ID, DataType.INT64, is_primary=True)
        fields.add_field(_FIELD_PATH, DataType.VARCHAR, max_length=MAX_PATH_BYTES)
        fields.add_field(_FIELD_LABEL, DataType.VARCHAR, max_length=MAX_LABEL_BYTES)
        fields.add_field(_FIELD_VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        properties = schema.spec_properties(spec_json)
        properties[_INDEX_KEY] = json.dumps({"index_type": index_type, "params": index_params}, sort_keys=True)
        properties[_IDENTITY_KEY] = uuid.uuid4().hex
        physical = self._index_params(index_type, index_params, n_rows=0)
        try:
            self._call("create_collection", "meta", "create_collection", self.collection, schema=fields,
                       index_params=physical, properties=properties, consistency_level="Strong")
        except StoreError:
            self._info = None
            if not self.exists():
                raise
            # another process created it between our check and our call: fine if it is the same
            info = self._describe()
            if info.dim == dim and schema.same_spec(info.spec_json, spec_json):
                logger.debug("collection %s was created by another process meanwhile", self.collection)
                return False
            raise
        self._info = None
        self._loaded = False
        self._clean = False
        staging = self.collection.endswith(STAGING_SUFFIX)
        logger.info("created collection %s (%d-d, %s) in %s%s", self.collection, dim, index_type, self.uri,
                    f", to replace {self.collection[:-len(STAGING_SUFFIX)]!r} when the job succeeds" if staging else "")
        return True

    def drop(self) -> None:
        """Drop the collection and its rows (no-op when absent)."""
        if self.exists():
            self._call("drop_collection", "meta", "drop_collection", self.collection)
        self._info = None
        self._loaded = False
        self._clean = False

    def identity(self) -> str:
        """The collection's identity: a random id given when it was created ("" for a collection made
        before identities, or by another tool). It survives a rename, so run state bound to it stops
        vouching the moment the collection is dropped and made anew, or replaced by ``--overwrite``."""
        props = self._call("describe_collection", "meta", "describe_collection", self.collection).get("properties")
        return str((props or {}).get(_IDENTITY_KEY) or "")

    def staging(self) -> "VectorStore":
        """A store on the same URI for the collection that will replace this one (:meth:`replace_with`)."""
        name = self.collection + STAGING_SUFFIX
        if len(name) > 255:
            raise UsageError(f"collection name {self.collection!r} is too long to be replaced (--overwrite)")
        return VectorStore(self._raw_uri, name, token=self._token or None,
                           memory_budget_bytes=self.memory_budget_bytes)

    def replace_with(self, staging: "VectorStore") -> None:
        """Make the complete collection of ``staging`` this one, and drop the one it replaces.

        The old collection is renamed aside, the new one renamed into its place, then the old one is
        dropped; if the second rename fails the old one is renamed back, so a failure leaves either
        the old collection or the new one under this name, never none.
        """
        if staging.uri != self.uri:
            raise StoreError(f"cannot replace {self.collection!r} in {self.uri} with a collection of {staging.uri}")
        aside = self.collection + _REPLACED_SUFFIX
        had_old = self.exists()
        if had_old:
            if self._call("has_collection", "meta", "has_collection", aside):
                self._call("drop_collection", "meta", "drop_collection", aside)
            self._call("rename aside", "meta", "rename_collection", self.collection, aside)
        try:
            self._call("rename into place", "meta", "rename_collection", staging.collection, self.collection)
        except BaseException:
            if had_old:
                self._call("rename back", "meta", "rename_collection", aside, self.collection)
            raise
        finally:
            self._info, self._loaded, self._clean = None, False, False
            staging._info, staging._loaded, staging._clean = None, False, False
        if had_old:
            self._call("drop the replaced", "meta", "drop_collection", aside)
        logger.info("collection %s in %s replaced by the one built as %s", self.collection, self.uri,
                    staging.collection)

    def list_collections(self) -> list[str]:
        """Names of every collection in this store (sorted)."""
        return sorted(self._call("list_collections", "meta", "list_collections"))

    def index_params(self) -> dict:
        """The collection's index: ``{"index_type": ..., "params": {...}}`` as given at creation (or by set_index)."""
        info = self._describe()
        return {"index_type": info.index_type, "params": dict(info.index_params)}

    def runs(self) -> list[dict]:
        """The runs recorded against the collection (:meth:`record_run`), oldest first."""
        self._require()
        props = self._call("describe_collection", "meta", "describe_collection", self.collection).get("properties") or {}
        try:
            runs = json.loads(props.get(_RUNS_KEY) or "[]")
        except ValueError:
            return []
        return runs if isinstance(runs, list) else []

    def record_run(self, run: dict) -> None:
        """Append one run's summary (small JSON-able dict) to the collection's run history (the newest
        :data:`MAX_RUNS_KEPT` are kept)."""
        runs = (self.runs() + [run])[-MAX_RUNS_KEPT:]
        text = json.dumps(runs, sort_keys=True, default=str)
        while len(text.encode("utf-8")) > 60_000 and len(runs) > 1:
            runs = runs[1:]
            text = json.dumps(runs, sort_keys=True, default=str)
        self._call("alter_collection_properties", "meta", "alter_collection_properties", self.collection,
                   properties={_RUNS_KEY: text})

    def spec_json(self) -> str:
        """The FeatureSpec JSON the collection was created with, exactly as given."""
        return self._describe().spec_json

    def dim(self) -> int:
        """Dimension of the stored vectors."""
        return self._describe().dim

    def index_type(self) -> str:
        """The index type the collection was created with: FLAT, HNSW or IVF_FLAT."""
        return self._describe().index_type

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
            logical = json.loads(props.get(_INDEX_KEY) or "{}")
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

    # ---------------------------------------------------------------- index

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
            field_name=_FIELD_VECTOR, index_type=kind, index_name=_FIELD_VECTOR, metric_type=METRIC, params=extra
        )
        return index_params

    def set_index(self, index_type: str, index_params: dict | None = None) -> None:
        """Replace the collection's vector index (e.g. FLAT -> HNSW) and build it for every row."""
        index_type, index_params = schema.check_index(index_type, index_params)
        self._describe()
        self._call("alter_collection_properties", "meta", "alter_collection_properties", self.collection,
                   properties={_INDEX_KEY: json.dumps({"index_type": index_type, "params": index_params}, sort_keys=True)})
        self._call("flush", "build", "flush", self.collection)
        self._rebuild_index(index_type, index_params)
        self.flush_and_index()

    def _rebuild_index(self, index_type: str, index_params: dict) -> None:
        n_rows = self.count()
        physical = self._index_params(index_type, index_params, n_rows)
        self._call("rebuild index: release", "meta", "release_collection", self.collection)
        self._call("rebuild index: drop", "meta", "drop_index", self.collection, _FIELD_VECTOR)
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
        if lite.wait_indexed(self._lite_path, self.collection, _FIELD_VECTOR):
            return True
        # Unknown internals, or segments left unindexed: a load builds every segment's index inline.
        self._call("reload: release", "meta", "release_collection", self.collection)
        self._call("reload: load", "build", "load_collection", self.collection)
        return lite.internals_available(self._lite_path, self.collection)

    def _wait_server_indexed(self) -> bool:
        deadline = time.monotonic() + INDEX_WAIT_TIMEOUT_S
        while True:
            desc = self._call("describe_index", "meta", "describe_index", self.collection, _FIELD_VECTOR) or {}
            pending = int(desc.get("pending_index_rows", 0) or 0)
            if pending == 0 and int(desc.get("indexed_rows", 0)) >= int(desc.get("total_rows", 0)):
                return True
            if time.monotonic() > deadline:
                logger.warning("index of %s still has %d pending rows; searching anyway", self.collection, pending)
                return False
            time.sleep(1.0)

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
                             f"{_redact(str(exc), self._token)}") from exc

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
            Neighbours per query, 1 to 16384.
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
            raise ValueError(f"k must be an int in [1, {MAX_TOP_K}], got {k!r}")
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


# -------------------------------------------------------------------- helpers


def _transient(exc: BaseException) -> bool:
    """Whether a pymilvus/gRPC failure is worth retrying: the server is (re)starting, busy or unreachable."""
    status = schema.grpc_status(exc)
    if status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):  # a wrong token does not get better by waiting
        return False
    if status in _TRANSIENT_STATUS:
        return True
    text = str(getattr(exc, "message", "") or exc).lower()
    return any(t in text for t in _TRANSIENT_TEXT)


def _is_rpc_error(exc: BaseException) -> bool:
    """A gRPC call error (``grpc.RpcError``, e.g. ``_InactiveRpcError``) that pymilvus did not wrap."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - pymilvus depends on grpcio
        return False
    return isinstance(exc, grpc.RpcError) and callable(getattr(exc, "details", None))


def _not_loaded(exc: BaseException) -> bool:
    """Whether a failure says the collection is not loaded (it was, before a server restart).

    Milvus' code 101 (collection not loaded); the server says "collection not loaded", milvus-lite
    "is in state 'released'".
    """
    text = str(getattr(exc, "message", "") or exc).lower()
    return getattr(exc, "code", None) == 101 or "collection not loaded" in text or "state 'released'" in text


def _redact(text: str, token: str) -> str:
    """``text`` with the token (and its password part) removed."""
    text = str(text)
    if token:
        text = text.replace(token, "***")
        _user, sep, password = token.partition(":")
        # the password alone too, unless it is Milvus' public default (which names the product)
        if sep and password and password != "Milvus":
            text = text.replace(password, "***")
    return text
