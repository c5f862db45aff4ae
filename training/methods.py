"""The training methods, one row each, and how OwLore/LISA switch the active blocks.

Everything that asks "which method is this?" (the argument parser, train.py, the memory estimator,
bench/) reads the row of METHODS instead of comparing names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sampling.sampler import set_trainable

TRAINS = ("all", "adapters", "sampled")


@dataclass(frozen=True)
class Method:
    name: str
    trains: Literal["all", "adapters", "sampled"]  # every parameter; only LoRA adapters; gamma drawn blocks
    projected: bool  # the decoder blocks' 2-D weights step through GaLore's low-rank projection
    default_sampling: str | None  # sampling policy (sampling/policies.py) when --sampling is not given
    summary: str
    default_gamma: int = 5  # blocks per draw and steps per draw when --gamma/--period are not given:
    default_period: int = 50  # the official OwLore script's, and the official LISA baseline's for lisa

    def __post_init__(self):
        if self.trains not in TRAINS:
            raise ValueError(f"method {self.name!r}: trains must be one of {TRAINS}, got {self.trains!r}")
        if (self.default_sampling is not None) != self.sampled:
            raise ValueError(f"method {self.name!r}: a default sampling policy exactly when blocks are sampled")

    @property
    def sampled(self) -> bool:
        """gamma blocks drawn every period train, plus embeddings, final norm and head unless frozen."""
        return self.trains == "sampled"

    @property
    def adapters(self) -> bool:
        """Only LoRA adapters of the block linears train; the base weights stay frozen."""
        return self.trains == "adapters"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", "all", False, None, "every parameter, AdamW"),
    Method("lora", "adapters", False, None, "low-rank adapters of the block linears, AdamW"),
    Method("galore", "all", True, None, "every parameter; block matrices through GaLore, the rest AdamW"),
    Method("lisa", "sampled", False, "uniform", "gamma uniformly drawn blocks + embeddings/norm/head, AdamW",
           default_gamma=2, default_period=3),
    Method("owlore-fullrank", "sampled", False, "owlore", "gamma outlier-weighted blocks + embeddings/norm/head, AdamW"),
    Method("owlore", "sampled", True, "owlore", "as owlore-fullrank, the active blocks' matrices through GaLore"),
)}
SAMPLED_METHODS = tuple(name for name, m in METHODS.items() if m.sampled)


def block_matrices(model: nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights of every decoder block (q, k, v, o, gate, up, down)."""
    return [p for block in model.layers for p in block.parameters() if p.ndim == 2]


def param_groups(model: nn.Module, galore: dict | None = None) -> list[dict]:
    """Optimizer groups for a full-weight method; every block is in them, inactive ones hold no grad.

    `galore`: the options of one GaLore group holding every block matrix (projector, update_proj_gap,
    scale; see optim/galore_adamw.py); None puts every parameter in one plain AdamW group.
    """
    matrices = block_matrices(model) if galore is not None else []
    in_rank_group = {id(p) for p in matrices}
    groups = [{"params": [p for p in model.parameters() if id(p) not in in_rank_group]}]
    if matrices:
        groups.append({"params": matrices, **galore})
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
