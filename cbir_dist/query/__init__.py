"""The query side: search a collection with (optionally damaged and reconstructed) images; KNN classification."""
