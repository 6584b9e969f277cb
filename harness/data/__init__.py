"""Data: dataset folders, decoding and caching, splits, near-duplicates, importers, normalisation."""
