"""LoRA baseline (Hu et al. 2021): y = W x + (alpha / r) * B A dropout(x), W frozen, A (r x in) and
B (out x r) trained; A is kaiming-uniform(a=sqrt(5)) and B zero, so training starts from the base model.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def _check_lora_args(rank: int, dropout: float) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout}")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        _check_lora_args(rank, dropout)
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    def delta_weight(self) -> Tensor:
        return (self.lora_B.float() @ self.lora_A.float() * self.scaling).to(self.base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.dropout(x) @ self.lora_A.mT @ self.lora_B.mT * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold B A into the base weight in place (forward then uses the base weight only)."""
        if not self.merged:
            self.base.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.sub_(self.delta_weight())
            self.merged = False


def _matching_linears(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for parent in model.modules():
        if isinstance(parent, LoRALinear):
            continue
        for name, child in parent.named_children():
            if name in targets and isinstance(child, nn.Linear):
                found.append((parent, name, child))
    return found


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: tuple[str, ...] = LORA_TARGETS,
) -> list[nn.Parameter]:
    """Wrap every nn.Linear child named in `targets` with a LoRALinear, freeze all other parameters and
    return the adapter parameters (A, B per wrapped linear)."""
    _check_lora_args(rank, dropout)
    found = _matching_linears(model, tuple(targets))
    if not found:
        raise ValueError(f"no nn.Linear named any of {tuple(targets)} in {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for parent, name, linear in found:
        wrapped = LoRALinear(linear, rank, alpha, dropout)
        setattr(parent, name, wrapped)
        adapters += [wrapped.lora_A, wrapped.lora_B]
    return adapters


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear holding W + scaling * B A (original parameter names),
    in place; returns `model`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                child.unmerge()
                base = child.base
                base.weight.add_(child.delta_weight())
                setattr(parent, name, base)
    return model


def lora_param_count(shape: tuple[int, int], rank: int) -> int:
    """Trainable parameters of a rank-`rank` adapter on a weight of `shape` = (out, in)."""
    out_features, in_features = shape
    return rank * (in_features + out_features)
