"""Evaluation: metrics, KNN, the affine repository, the papers' protocols (damaged retrieval, shapes), reports."""
