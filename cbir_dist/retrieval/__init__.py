"""Retrieval primitives the query and evaluation jobs share: searching vectors, exclude-self, KNN votes."""
