"""The collection's lifecycle: create it (schema, properties, index), drop it, replace it by another.

A collection carries, besides its rows, the FeatureSpec that made them (:mod:`.schema`), its logical
index (:mod:`.indexing`) and an identity (:data:`IDENTITY_KEY`): a random id given at creation, so
run state can tell a collection from one dropped and made anew under the same name. ``index
--overwrite`` builds the new collection beside the old one (:data:`STAGING_SUFFIX`) and swaps them
only when the job succeeds (:meth:`CollectionMixin.replace_with`).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from ..errors import StoreError, UsageError
from ..io.records import ID, LABEL, PATH, VECTOR
from . import schema
from .indexing import INDEX_KEY, index_property
from .schema import MAX_LABEL_BYTES, MAX_PATH_BYTES

if TYPE_CHECKING:
    from .milvus import VectorStore

logger = logging.getLogger(__name__)

IDENTITY_KEY = "cbir_identity"  # property: a random id given at creation; survives renames, not re-creation
STAGING_SUFFIX = "__overwrite"  # where `index --overwrite` builds the collection that replaces one
_REPLACED_SUFFIX = "__replaced"  # the replaced collection, for the moment of the swap


class CollectionMixin:
    """Collection lifecycle for :class:`~cbir_dist.store.milvus.VectorStore`.

    Uses the host's ``_call``, ``_describe``, ``_index_params``, ``uri``, ``collection`` and, to open
    the staging store, ``_raw_uri``, ``_token`` and ``memory_budget_bytes``; resets its cached
    ``_info``, ``_loaded`` and ``_clean`` when the collection changes.
    """

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
        fields.add_field(ID, DataType.INT64, is_primary=True)
        fields.add_field(PATH, DataType.VARCHAR, max_length=MAX_PATH_BYTES)
        fields.add_field(LABEL, DataType.VARCHAR, max_length=MAX_LABEL_BYTES)
        fields.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        properties = schema.spec_properties(spec_json)
        properties[INDEX_KEY] = index_property(index_type, index_params)
        properties[IDENTITY_KEY] = uuid.uuid4().hex
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
        return str((props or {}).get(IDENTITY_KEY) or "")

    def staging(self) -> VectorStore:
        """A store on the same URI for the collection that will replace this one (:meth:`replace_with`)."""
        name = self.collection + STAGING_SUFFIX
        if len(name) > 255:
            raise UsageError(f"collection name {self.collection!r} is too long to be replaced (--overwrite)")
        return type(self)(self._raw_uri, name, token=self._token or None,
                          memory_budget_bytes=self.memory_budget_bytes)

    def replace_with(self, staging: VectorStore) -> None:
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
