"""cbir_dist: content-based image retrieval at cluster scale with missing-region queries."""
__version__ = "0.1.0"
