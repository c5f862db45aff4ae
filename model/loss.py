"""Cross-entropy through the output projection, a chunk of tokens at a time.

The full [tokens, vocab] fp32 logits never exist: each chunk's logits are computed, reduced to a loss and
dropped, and recomputed in the backward pass (activation checkpointing per chunk).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss_sum(hidden: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(hidden: Tensor, output_weight: Tensor, labels: Tensor, chunk_size: int = 1024) -> Tensor:
    """Mean cross-entropy of `hidden @ output_weight.T` against `labels` over non-ignored (-100) tokens.

    hidden [..., dim], labels [...] (same leading shape). Equals
    `F.cross_entropy((hidden @ output_weight.T).float().flatten(0, -2), labels.flatten(), ignore_index=-100)`.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"chunked_cross_entropy: hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree")
    if chunk_size < 1:
        raise ValueError(f"chunked_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or output_weight.requires_grad)
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], labels[start : start + chunk_size]
        if needs_grad:
            total = total + checkpoint(_chunk_loss_sum, h, output_weight, y, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(h, output_weight, y)
    return total / (labels != IGNORE_INDEX).sum()


def next_token_loss_sum(model, input_ids: Tensor, labels: Tensor, chunked: bool = False) -> Tensor | None:
    """Sum of next-token cross-entropies over the unmasked targets (labels aligned with inputs, -100 masked);
    None when every target is masked. `chunked` goes through `chunked_cross_entropy`."""
    targets = labels[:, 1:]
    n = int((targets != IGNORE_INDEX).sum())
    if n == 0:
        return None
    if chunked:
        hidden = model(input_ids, hidden=True)[:, :-1]  # (under FSDP, output.weight is gathered from here on)
        return chunked_cross_entropy(hidden, model.output.weight, targets) * n
    logits = model(input_ids)[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
