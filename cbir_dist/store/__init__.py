"""The vector store: every Milvus call behind one small class; milvus-lite's lifecycle apart."""

from .milvus import INDEX_TYPES, SearchResult, VectorStore

__all__ = ["INDEX_TYPES", "SearchResult", "VectorStore"]
