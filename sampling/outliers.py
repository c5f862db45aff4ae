"""Layerwise outlier ratios D_l from calibration activations (OWL's metric; docs/method.md, "Outlier ratios").

For each linear of a decoder block, a forward pre-hook keeps the fp32 sum of squares of every input
feature over all calibration tokens, so ||X_j||_2 = sqrt(sum_sq_j). The Wanda score of a weight is
A_ij = |W_ij| * ||X_j||_2; per block the scores of all its linears are pooled and
D_l = 100 * count(A > M * mean(A)) / numel(A).

Command line: `python -m sampling --model SOURCE [--calib FILE] --M 13 --out scores.json` (sampling/__main__.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from sampling.blocks import block_linears, decoder_blocks


def wanda_scores(weight: Tensor, input_sum_sq: Tensor) -> Tensor:
    """A_ij = |W_ij| * ||X_j||_2 in fp32 (j indexes in_features)."""
    if weight.dim() != 2 or input_sum_sq.shape != (weight.shape[1],):
        raise ValueError(f"weight {tuple(weight.shape)} and input norms {tuple(input_sum_sq.shape)} do not match")
    return weight.detach().float().abs() * input_sum_sq.float().sqrt().to(weight.device)


def outlier_ratio(scores: list[Tensor], M: float) -> float:
    """Percent of the pooled scores above M times their pooled mean."""
    _check_M(M)
    numel = sum(s.numel() for s in scores)
    if numel == 0:
        raise ValueError("no scores to pool")
    mean = sum(s.sum().item() for s in scores) / numel  # fp32 cascade sums: relative error ~1e-7
    count = sum(int(torch.count_nonzero(s > M * mean)) for s in scores)
    return 100.0 * count / numel


def _check_M(M: float) -> None:
    if not (isinstance(M, (int, float)) and math.isfinite(M) and M > 0):
        raise ValueError(f"M must be a positive finite number, got {M!r}")


def _check_batch(tokens: Tensor, vocab_size: int | None) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int):
        raise ValueError(f"a calibration batch must be an integer tensor [batch, seq], got "
                         f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
    if vocab_size is not None and tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"calibration token ids must be in [0, {vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]")


class _Accumulator:
    """Forward pre-hooks that add each linear's per-input-feature sum of squares (fp32)."""

    def __init__(self, blocks: nn.ModuleList):
        self.sum_sq: list[dict[str, Tensor]] = [{} for _ in blocks]
        self.handles = [
            linear.register_forward_pre_hook(self._hook(i, name))
            for i, block in enumerate(blocks) for name, linear in block_linears(block).items()
        ]

    def _hook(self, block: int, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            sq = x.reshape(-1, x.shape[-1]).float().pow(2).sum(0)
            acc = self.sum_sq[block]
            acc[name] = acc[name] + sq if name in acc else sq
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Captured(Exception):
    pass


Forward = Callable[[Tensor], object]  # runs the model on token ids [batch, seq]; its output is not used


def _block_inputs(blocks: nn.ModuleList, forward: Forward, tokens: Tensor) -> tuple[tuple, dict]:
    """The (args, kwargs) the model passes to its first block: embeddings, RoPE table, positions."""
    captured: dict = {}

    def grab(_module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        forward(tokens)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured["args"], captured["kwargs"]


def _move(obj, device):
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def collect_input_sum_sq(model: nn.Module, batches: Iterable[Tensor], blockwise: bool = False,
                         device: torch.device | str | None = None,
                         forward: Forward | None = None, progress: bool = False) -> list[dict[str, Tensor]]:
    """Per block, per linear name: fp32 sum over all calibration tokens of each input feature squared.

    `blockwise` keeps the model where it is and moves one block at a time to `device`, running all
    windows through it before the next (the dense model's activations, as one forward would give).
    `forward` runs the model on a batch (default `model.forward_hidden`; an HF model: `model(input_ids=t,
    use_cache=False)`); a block must take the hidden states as its first argument and return them.
    `progress`: a progress bar over the batches (blockwise: over the blocks) on stderr.
    """
    forward = forward or model.forward_hidden
    blocks = decoder_blocks(model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    was_training = model.training
    model.eval()
    acc = _Accumulator(blocks)
    n_batches = 0
    try:
        if not blockwise:
            for tokens in tqdm(batches, desc="calibration", unit="batch", disable=not progress, leave=False):
                _check_batch(tokens, vocab)
                forward(tokens.to(home))
                n_batches += 1
        else:
            inputs = []
            for tokens in batches:
                _check_batch(tokens, vocab)
                inputs.append(_block_inputs(blocks, forward, tokens.to(home)))
            n_batches = len(inputs)
            for block in tqdm(blocks, desc="calibration", unit="block", disable=not progress, leave=False):
                block.to(device)
                for j, (args, kwargs) in enumerate(inputs):
                    out = block(*_move(args, device), **_move(kwargs, device))
                    inputs[j] = ((out.to(home),) + tuple(args[1:]), kwargs)
                block.to(home)
    finally:
        acc.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("no calibration batches were given")
    for i, sums in enumerate(acc.sum_sq):
        for name, s in sums.items():
            if not torch.isfinite(s).all():
                raise ValueError(f"block {i} {name}: calibration activations contain NaN or inf")
    return acc.sum_sq


def outlier_report(model: nn.Module, sum_sq: list[dict[str, Tensor]], M: float) -> dict:
    """Per-block pooled ratios and each matrix's own ratio (against its own mean)."""
    ratios, matrix_ratios = [], []
    for i, block in enumerate(decoder_blocks(model)):
        linears = block_linears(block)
        missing = sorted(set(linears) - set(sum_sq[i]))
        if missing:
            raise ValueError(f"block {i}: no calibration inputs reached {', '.join(missing)}")
        scores = {name: wanda_scores(lin.weight, sum_sq[i][name]) for name, lin in linears.items()}
        ratios.append(outlier_ratio(list(scores.values()), M))
        matrix_ratios.append({name: outlier_ratio([s], M) for name, s in scores.items()})
    return {"ratios": ratios, "matrix_ratios": matrix_ratios}


def outlier_ratios(model: nn.Module, batches: Iterable[Tensor], M: float, blockwise: bool = False,
                   device: torch.device | str | None = None, forward: Forward | None = None,
                   progress: bool = False) -> list[float]:
    """D_l (percent) of every decoder block of `model` over calibration `batches` of token ids [batch, seq]."""
    _check_M(M)
    sum_sq = collect_input_sum_sq(model, batches, blockwise, device, forward, progress)
    return outlier_report(model, sum_sq, M)["ratios"]
