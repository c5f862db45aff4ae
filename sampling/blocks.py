"""The decoder blocks of a causal LM and the linears inside them: what is scored, sampled and trained.

This project's Transformer keeps its blocks in `model.layers`; any other model (an HF causal LM:
LLaMA, Mistral, Qwen2, Gemma, Phi, ...) is searched generically for the nn.ModuleList holding the most
parameters, which in a decoder-only LM is its stack of decoder layers (`model.model.layers` in HF).
"""
from __future__ import annotations

import torch.nn as nn


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of decoder blocks")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear modules of a block by name, leaving out adapters (LoRA A/B)."""
    return {name: m for name, m in block.named_modules()
            if isinstance(m, nn.Linear) and not any("lora" in part.lower() for part in name.split("."))}
