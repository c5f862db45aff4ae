"""The model families: one module each (llama.py, mistral.py, qwen2.py), registered on import.

A researcher's family is one more module calling `register_family(Family(...))`; see docs/design.md.
"""
from model.families import llama, mistral, qwen2  # noqa: F401 (each registers its family)
from model.families.family import FAMILIES, TENSOR_FORMATS, Family, register_family

__all__ = ["FAMILIES", "TENSOR_FORMATS", "Family", "register_family"]
