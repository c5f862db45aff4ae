"""Which parameters train under each method, and how OwLore/LISA switch the active blocks.

full            every parameter, AdamW
galore          every parameter; the 2-D block weights through GaLore, the rest AdamW
lora            only the low-rank adapters of the block linears
lisa            gamma uniformly drawn blocks + embeddings/norm/head, AdamW
owlore-fullrank gamma outlier-weighted blocks + embeddings/norm/head, AdamW
owlore          as owlore-fullrank, the active blocks' 2-D weights through GaLore
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable

import torch
from torch import nn

SAMPLED_METHODS = ("lisa", "owlore", "owlore-fullrank")
GALORE_METHODS = ("galore", "owlore")


def block_matrices(model: nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights of every decoder block (q, k, v, o, gate, up, down)."""
    return [p for block in model.layers for p in block.parameters() if p.ndim == 2]


def outer_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    """Embeddings, final norm and LM head (one parameter when tied)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for module in (model.tok_embeddings, model.norm, model.output):
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    """Optimizer groups for a full-weight method; every block is in them, inactive ones hold no grad."""
    matrices = block_matrices(model) if args.method in GALORE_METHODS else []
    in_rank_group = {id(p) for p in matrices}
    plain = [p for p in model.parameters() if id(p) not in in_rank_group]
    groups = [{"params": plain}]
    if matrices:
        groups.append({
            "params": matrices, "rank": args.rank, "update_proj_gap": args.update_proj_gap,
            "scale": args.galore_scale, "proj_type": args.proj_type, "svd": args.svd,
        })
    return groups


def set_trainable(params: Iterable[torch.nn.Parameter], trainable: bool) -> None:
    for p in params:
        p.requires_grad_(trainable)
        if not trainable:
            p.grad = None


def activate_blocks(model: nn.Module, active: list[int], train_outer: bool) -> list[torch.nn.Parameter]:
    """Make exactly the `active` blocks (plus embeddings/norm/head unless frozen) trainable.

    Returns the parameters of blocks that were trainable and are not any more, so the optimizer can
    free their state.
    """
    left: list[torch.nn.Parameter] = []
    for index, block in enumerate(model.layers):
        params = list(block.parameters())
        was_active = params[0].requires_grad
        set_trainable(params, index in active)
        if was_active and index not in active:
            left.extend(params)
    set_trainable(outer_parameters(model), train_outer)
    return left


def active_block_indices(model: nn.Module) -> list[int]:
    return [i for i, block in enumerate(model.layers) if next(block.parameters()).requires_grad]
