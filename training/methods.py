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
import torch
from torch import nn

from optim.projector import build_projector
from sampling import set_trainable

SAMPLED_METHODS = ("lisa", "owlore", "owlore-fullrank")
GALORE_METHODS = ("galore", "owlore")


def block_matrices(model: nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights of every decoder block (q, k, v, o, gate, up, down)."""
    return [p for block in model.layers for p in block.parameters() if p.ndim == 2]


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    """Optimizer groups for a full-weight method; every block is in them, inactive ones hold no grad."""
    matrices = block_matrices(model) if args.method in GALORE_METHODS else []
    in_rank_group = {id(p) for p in matrices}
    plain = [p for p in model.parameters() if id(p) not in in_rank_group]
    groups = [{"params": plain}]
    if matrices:
        groups.append({
            "params": matrices, "update_proj_gap": args.update_proj_gap, "scale": args.galore_scale,
            "reproject_moments": args.reproject_moments,
            "projector": build_projector(args.projector, rank=args.rank, proj_type=args.proj_type, svd=args.svd,
                                         oversample=args.svd_oversample, power_iters=args.svd_power_iters),
        })
    return groups


def activate_blocks(model: nn.Module, active: list[int], train_outer: bool) -> list[torch.nn.Parameter]:
    """Make exactly the `active` blocks (plus embeddings/norm/head unless frozen) trainable.

    Returns the parameters of blocks that were trainable and are not any more (their gradients are
    freed), so the optimizer can free their state too.
    """
    was_active = active_block_indices(model)
    set_trainable(model, active, train_outer)
    left = [p for i in was_active if i not in active for p in model.layers[i].parameters()]
    for p in left:
        p.grad = None
    return left


def active_block_indices(model: nn.Module) -> list[int]:
    return [i for i, block in enumerate(model.layers) if next(block.parameters()).requires_grad]
