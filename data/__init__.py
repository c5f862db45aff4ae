"""Data: readers, prompt templates, loss masking, packing, the real-asset cache."""
