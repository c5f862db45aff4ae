"""Mistral 7B: LLaMA's tensors, sliding-window attention, Mistral's params.json keys and chat format."""
from model.families.family import Family, register_family
from model.families.llama import NAMES

# params.json names no family: Mistral's sets a sliding window (v0.1) or comes with tokenizer.model.v1/v3.
# llama.cpp converts Mistral as "llama", so a GGUF file reads back as the llama family.
MISTRAL = register_family(Family(
    "mistral", "mistral", "MistralForCausalLM", "llama", "mistral", NAMES, rotate_half=frozenset({"hf"}),
    sliding_window=True, meta_params="mistral", meta_sign=("sliding_window",),
    tokenizer_files=("tokenizer.model.v1", "tokenizer.model.v3"),
))  # fmt: skip
