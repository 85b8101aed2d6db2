"""Per-case metrics on the original grid and their summaries."""
