"""Model loading (local directory, hub id, built-in alias) and the per-family adapters."""
