"""Memory of a training step from shapes alone: weights, gradients, optimizer state, activations, logits
and the runtime baseline, for every method. train.py prints it before the first step; `python -m
bench.memory` prints it for any named config without weights.

Activation model: bytes autograd saves per token per block, counted with saved-tensor hooks on this
repo's `Transformer` (tests/test_bench_memory.py re-checks it). b = bytes of the compute dtype,
d = dim, kv = n_kv_heads * head_dim, f = ffn_dim, H = n_heads:
  block with trainable weights  b (8d + 2kv + 4f) + 4H + 8 + u
  frozen block grads flow through b (4d + 2kv + 3f) + 4H + 8 + u   (frozen linears keep no input)
  frozen block below every trainable parameter: nothing.
u = 4d when b < 4: RoPE rotates q/k in fp32 and keeps the fp32 copies. LoRA adds, per adapted linear,
its dropped-out input (b + 1 bytes per element with the keep-mask) and the rank-r product.
With activation checkpointing each block keeps only its input (b d) and one block's full set exists
while it is recomputed. The final norm keeps 2 b d (+ 4d fp32 upcast when b < 4).

`runtime` is what the process holds before any model exists (the torch/Python runtime on CPU, where the
measured number is RSS; 0 for CUDA max-allocated), passed in explicitly rather than hidden in a factor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from model.config import ModelConfig
from optim.memory import state_bytes
from training.methods import METHODS, SAMPLED_METHODS as SAMPLED
from optim.projector import SVDProjector

GIB = 2**30


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
    lora_dropout: bool = True
    grad_ckpt: bool = False
    fused: bool = False
    chunked_ce: bool = False
    ce_chunk: int = 1024
    train_outer: bool = True
    keep_inactive_state: bool = False
    runtime_bytes: int = 0


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    runtime: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.runtime

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
    if s.method in SAMPLED and not 1 <= s.gamma <= config.n_layers:
        raise ValueError(f"gamma {s.gamma} must lie in [1, {config.n_layers}] for {config.name!r}")
    b = s.dtype.itemsize
    galore, plain = _trainable_shapes(config, s)
    weights = parameter_count(config) * b
    if s.method == "lora":
        weights += sum(_numel(x) for x in plain) * b
    optimizer = sum(state_bytes(x, SVDProjector(s.rank, s.proj_type), s.dtype) for x in galore)
    optimizer += sum(state_bytes(x, None, s.dtype) for x in plain)
    # kept state of inactive blocks costs optimizer memory, but only active blocks have gradients
    active_galore, active_plain = _trainable_shapes(config, replace(s, keep_inactive_state=False))
    grad_numels = [_numel(x) for x in active_galore + active_plain]
    gradients = (max(grad_numels) if s.fused else sum(grad_numels)) * b
    return MemoryEstimate(weights, gradients, optimizer, activation_bytes(config, s), _logit_bytes(config, s),
                          s.runtime_bytes)


def block_activation_bytes(config: ModelConfig, dtype: torch.dtype, kind: str, lora_rank: int = 8,
                           lora_dropout: bool = True) -> int:
    """Bytes saved for backward per token by one block; kind: "trainable", "frozen" or "lora"."""
    b, d, f, h = dtype.itemsize, config.dim, config.ffn_dim, config.n_heads
    kv = config.n_kv_heads * config.head_dim
    upcast = 4 * d if b < 4 else 0
    frozen = b * (4 * d + 2 * kv + 3 * f) + 4 * h + 8 + upcast
    if kind == "frozen":
        return frozen
    trainable = b * (8 * d + 2 * kv + 4 * f) + 4 * h + 8 + upcast
    if kind == "trainable":
        return trainable
    if kind == "lora":  # ~ a trainable block, plus each adapted linear's dropped-out input and keep-mask
        return trainable + ((b + 1) * (6 * d + f) if lora_dropout else 0)
    raise ValueError(f"unknown block kind {kind!r}")


def activation_bytes(config: ModelConfig, s: MemorySettings) -> int:
    """Peak bytes saved for backward by the blocks and the final norm for one micro-batch."""
    tokens, b, d = s.micro_batch * s.seq_len, s.dtype.itemsize, config.dim
    n_trainable = s.gamma if s.method in SAMPLED else config.n_layers
    n_frozen = config.n_layers - n_trainable
    # frozen embeddings: blocks below the lowest active one keep nothing; the peak is when block 0 is active
    kind = "lora" if s.method == "lora" else "trainable"
    one = lambda k: block_activation_bytes(config, s.dtype, k, s.lora_rank, s.lora_dropout)
    final_norm = 2 * b * d + (4 * d if b < 4 else 0)
    if s.grad_ckpt:
        per_token = config.n_layers * b * d + one(kind) + final_norm
    else:
        per_token = n_trainable * one(kind) + n_frozen * one("frozen") + final_norm
    return tokens * per_token


def _logit_bytes(config: ModelConfig, s: MemorySettings) -> int:
    """fp32 logits, their shifted contiguous copy and log-softmax (the forward peak; backward swaps the first
    two for gradients of the same size), plus the compute-dtype logits before the upcast when b < 4.
    Chunked cross-entropy holds one chunk's worth."""
    tokens = s.micro_batch * s.seq_len
    rows = min(tokens, s.ce_chunk) if s.chunked_ce else tokens
    per_row = 12 if s.dtype.itemsize == 4 else s.dtype.itemsize + 12
    return rows * config.vocab_size * per_row


def format_report(estimate: MemoryEstimate, measured_peak: int | None = None) -> str:
    rows = [(name, value) for name, value in asdict(estimate).items()] + [("total (estimate)", estimate.total)]
    if measured_peak is not None:
        rows.append(("measured peak", measured_peak))
    return "\n".join(f"  {name:<18}{value / GIB:10.3f} GiB" for name, value in rows)
