"""Qwen2 / Qwen2.5: LLaMA's tensors plus biases on q, k and v; ChatML.

llama.cpp keeps Qwen2's q/k rows (and biases) as HF stores them and applies RoPE in rotate_half ("NeoX")
order, so GGUF "qwen2" is rotate_half too. No Meta-format release exists: our params.json states the
family in a "family" key. Qwen2's per-layer sliding window (use_sliding_window) is not supported.
"""
from model.families.family import Family, register_family
from model.families.llama import NAMES

QWEN2 = register_family(Family(
    "qwen2", "qwen2", "Qwen2ForCausalLM", "qwen2", "chatml", NAMES, rotate_half=frozenset({"hf", "gguf"}),
    qkv_bias=True, meta_params="mistral",
))  # fmt: skip
