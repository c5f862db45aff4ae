"""Memory of a training step from shapes alone: weights, gradients, optimizer state, activations and
logits, for every method. train.py prints it before the first step; `python -m bench.memory` prints it
for any named config without weights.

Activation model (bytes per token per block, b = bytes of the compute dtype): the tensors autograd keeps
for a LLaMA block are the normed inputs of attention and MLP (b*dim each), q/k/v after RoPE
(b*(dim + 2*kv_dim)), the attention output (b*dim), the gate/up outputs, the SiLU output and their product
(4*b*ffn), and the two RMSNorm inputs upcast to fp32 (8*dim). With activation checkpointing only the block
inputs are kept (b*dim per block) plus one block's full set during its recomputation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from model.config import ModelConfig
from optim.memory import state_bytes

GIB = 2**30
METHODS = ("full", "lora", "galore", "lisa", "owlore-fullrank", "owlore")


@dataclass(frozen=True)
class MemorySettings:
    method: str
    micro_batch: int
    seq_len: int
    dtype: torch.dtype = torch.bfloat16
    gamma: int = 5
    rank: int = 128
    proj_type: str = "std"
    lora_rank: int = 8
    grad_ckpt: bool = False
    fused: bool = False
    chunked_ce: bool = False
    ce_chunk: int = 1024
    train_outer: bool = True
    keep_inactive_state: bool = False


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total}


def block_matrix_shapes(config: ModelConfig) -> list[tuple[int, int]]:
    """(out, in) of q, k, v, o, gate, up, down in one block."""
    kv = config.n_kv_heads * config.head_dim
    d, f = config.dim, config.ffn_dim
    return [(d, d), (kv, d), (kv, d), (d, d), (f, d), (d, f), (f, d)]


def outer_shapes(config: ModelConfig) -> list[tuple[int, ...]]:
    """Embedding, final norm and (untied) head."""
    shapes = [(config.vocab_size, config.dim), (config.dim,)]
    return shapes if config.tie_embeddings else shapes + [(config.vocab_size, config.dim)]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def parameter_count(config: ModelConfig) -> int:
    block = sum(_numel(s) for s in block_matrix_shapes(config)) + 2 * config.dim
    return config.n_layers * block + sum(_numel(s) for s in outer_shapes(config))


def _trainable_shapes(config: ModelConfig, s: MemorySettings) -> tuple[list[tuple], list[tuple]]:
    """(shapes optimised with GaLore, shapes optimised with plain Adam) for one step."""
    block_2d = block_matrix_shapes(config)
    block_1d = [(config.dim,), (config.dim,)]
    outer = outer_shapes(config) if s.train_outer else []
    if s.method == "full":
        return [], block_2d * config.n_layers + block_1d * config.n_layers + outer_shapes(config)
    if s.method == "galore":
        return block_2d * config.n_layers, block_1d * config.n_layers + outer_shapes(config)
    if s.method == "lora":
        adapters = [(s.lora_rank, n) for _, n in block_2d] + [(m, s.lora_rank) for m, _ in block_2d]
        return [], adapters * config.n_layers
    blocks = config.n_layers if s.keep_inactive_state else s.gamma
    if s.method == "owlore":
        return block_2d * blocks, block_1d * blocks + outer
    return [], (block_2d + block_1d) * blocks + outer  # lisa, owlore-fullrank


def estimate_memory(config: ModelConfig, s: MemorySettings) -> MemoryEstimate:
    if s.method not in METHODS:
        raise ValueError(f"unknown method {s.method!r}; known: {', '.join(METHODS)}")
    b = s.dtype.itemsize
    galore, plain = _trainable_shapes(config, s)
    weights = parameter_count(config) * b
    if s.method == "lora":
        weights += sum(_numel(x) for x in plain) * b
    optimizer = sum(state_bytes(x, rank=s.rank, proj_type=s.proj_type, dtype=s.dtype) for x in galore)
    optimizer += sum(state_bytes(x, rank=None, dtype=s.dtype) for x in plain)
    # kept state of inactive blocks costs optimizer memory, but only active blocks have gradients
    active_galore, active_plain = _trainable_shapes(config, replace(s, keep_inactive_state=False))
    grad_numels = [_numel(x) for x in active_galore + active_plain]
    gradients = (max(grad_numels) if s.fused else sum(grad_numels)) * b
    return MemoryEstimate(weights, gradients, optimizer, _activation_bytes(config, s), _logit_bytes(config, s))


def _activation_bytes(config: ModelConfig, s: MemorySettings) -> int:
    tokens = s.micro_batch * s.seq_len
    b, d, f = s.dtype.itemsize, config.dim, config.ffn_dim
    kv = config.n_kv_heads * config.head_dim
    per_block = tokens * (b * (4 * d + 2 * kv + 4 * f) + 8 * d)
    if s.grad_ckpt:
        return config.n_layers * tokens * d * b + per_block
    return config.n_layers * per_block


def _logit_bytes(config: ModelConfig, s: MemorySettings) -> int:
    """Logits in the compute dtype, their fp32 copy, and the fp32 gradient of the loss w.r.t. them."""
    tokens = s.micro_batch * s.seq_len
    rows = min(tokens, s.ce_chunk) if s.chunked_ce else tokens
    return rows * config.vocab_size * (s.dtype.itemsize + 8)


def format_report(estimate: MemoryEstimate, measured_peak: int | None = None) -> str:
    rows = [(name, value) for name, value in asdict(estimate).items()] + [("total (estimate)", estimate.total)]
    if measured_peak is not None:
        rows.append(("measured peak", measured_peak))
    return "\n".join(f"  {name:<18}{value / GIB:10.3f} GiB" for name, value in rows)
