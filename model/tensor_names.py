"""Tensor names and q/k row order between our model (Meta's names, interleaved RoPE pairs) and a format,
read from the model family's declaration (model/families/): one generic conversion for every format.
"""
from __future__ import annotations

import re

import torch

from model.config import ModelConfig
from model.families import FAMILIES

_INDEX = re.compile(r"\.(\d+)\.")
PARAMS = ("weight", "bias")


def rename(name: str, table: dict[str, str]) -> str | None:
    """`name` ('layers.3.attention.wq.bias') through a module-name table ('layers.{}.attention.wq' -> ...);
    None if the module or the parameter is unknown."""
    module, _, param = name.rpartition(".")
    if param not in PARAMS:
        return None
    match = _INDEX.search(module)
    key = module if match is None else f"{module[: match.start()]}.{{}}.{module[match.end():]}"
    target = table.get(key)
    if target is None:
        return None
    return f"{target.format(match.group(1)) if match else target}.{param}"


def format_name(name: str, config: ModelConfig, fmt: str) -> str:
    """The name format `fmt` gives our tensor `name`."""
    out = rename(name, FAMILIES[config.family].names[fmt])
    if out is None:
        raise ValueError(f"unknown tensor name {name!r}")
    return out


def our_name(name: str, config: ModelConfig, fmt: str) -> str | None:
    """Our name of format `fmt`'s tensor `name` (None if unknown)."""
    names = FAMILIES[config.family].names[fmt]
    return rename(name, {v: k for k, v in names.items()})


def qk_heads(name: str, config: ModelConfig) -> int | None:
    """Heads whose rows RoPE rotates for our tensor `name` (q: n_heads, k: n_kv_heads), else None."""
    module = name.rpartition(".")[0]
    if module.endswith("attention.wq"):
        return config.n_heads
    if module.endswith("attention.wk"):
        return config.n_kv_heads
    return None


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """rotate_half rows -> interleaved rows: per head, (first halves, second halves) -> pairs. A bias
    (1-D) is ordered as its weight's rows."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, -1).transpose(1, 2).reshape(w.shape)


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved rows -> rotate_half rows (inverse of `unpermute`)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def to_ours(state: dict[str, torch.Tensor], config: ModelConfig, fmt: str, source: str) -> dict[str, torch.Tensor]:
    """Format `fmt`'s tensors under our names, q/k rows (and biases) in interleaved order."""
    rotate = fmt in FAMILIES[config.family].rotate_half
    out = {}
    for name, w in state.items():
        ours = our_name(name, config, fmt)
        if ours is None:
            raise ValueError(f"{source}: unknown tensor name {name!r}")
        heads = qk_heads(ours, config)
        if heads:
            shape = (heads * config.head_dim,) if ours.endswith(".bias") else (heads * config.head_dim, config.dim)
            if tuple(w.shape) != shape:
                raise ValueError(f"{source}: tensor {name} has shape {tuple(w.shape)}, expected {shape}")
        out[ours] = unpermute(w, heads) if heads and rotate else w
    return out


def from_ours(state: dict[str, torch.Tensor], config: ModelConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Inverse of `to_ours`; a tied output head is left out (the formats tie it from the embedding)."""
    rotate = fmt in FAMILIES[config.family].rotate_half
    out = {}
    for name, w in state.items():
        if name == "output.weight" and config.tie_embeddings:
            continue
        heads = qk_heads(name, config)
        out[format_name(name, config, fmt)] = permute(w, heads) if heads and rotate else w
    return out
