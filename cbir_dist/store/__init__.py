"""The vector store: every Milvus call behind one small class; milvus-lite's lifecycle apart."""

from .milvus import SearchResult, VectorStore
from .schema import INDEX_TYPES, auto_nlist

__all__ = ["INDEX_TYPES", "SearchResult", "VectorStore", "auto_nlist"]
