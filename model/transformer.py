"""LLaMA-2 / LLaMA-3(.1) / Mistral / Qwen2 decoder with Meta's tensor names and interleaved RoPE."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from model.config import Llama3RopeScaling, ModelConfig


def rope_frequencies(head_dim: int, theta: float, scaling: Llama3RopeScaling | None = None) -> Tensor:
    """Per-pair rotation frequencies theta^(-2i/d), fp32, with optional LLaMA-3.1 scaling."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim)
    if scaling is not None:
        # Long wavelengths are slowed by `factor`, short ones kept, a linear blend in between.
        wavelen = 2 * math.pi / freqs
        low_wavelen = scaling.original_max_seq_len / scaling.low_freq_factor
        high_wavelen = scaling.original_max_seq_len / scaling.high_freq_factor
        smooth = (scaling.original_max_seq_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * freqs / scaling.factor + smooth * freqs
        freqs = torch.where(wavelen < high_wavelen, freqs, torch.where(wavelen > low_wavelen, freqs / scaling.factor, blended))
    return freqs.float()


def rope_table(config: ModelConfig, device: torch.device | str | None = None) -> Tensor:
    """[max_seq_len, head_dim/2, 2] fp32 table of (cos, sin) per position and pair (computed on the CPU, even
    under a meta default device, where arange would import torch's compiler)."""
    freqs = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32, device="cpu"), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).to(device)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) of x [B, T, H, hd] by the angles in table [T, hd/2, 2]."""
    pairs = x.float().unflatten(-1, (-1, 2))
    cos, sin = table[:, None, :, 0], table[:, None, :, 1]
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, imag * cos + real * sin], dim=-1)
    return rotated.flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class KVCache(nn.Module):
    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, KV, T, hd] at positions input_pos; return the whole cache."""
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v

    def select(self, rows: Tensor) -> None:
        """Keep batch rows `rows` in that order, repeats allowed: a beam reorder, or one row expanded to n."""
        self.k, self.v = self.k[rows], self.v[rows]


def attention_mask(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """Boolean [Tq, Tk]: key j is visible to query i if j <= i and (no window or i - j < window)."""
    diff = q_pos[:, None] - k_pos[None, :]
    visible = diff >= 0
    if window is not None:
        visible = visible & (diff < window)
    return visible


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hd = config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, hd
        self.sliding_window = config.sliding_window
        self.wq = nn.Linear(config.dim, config.n_heads * hd, bias=config.qkv_bias)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * hd, bias=config.qkv_bias)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * hd, bias=config.qkv_bias)
        self.wo = nn.Linear(config.n_heads * hd, config.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, rope: Tensor, input_pos: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), rope)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), rope)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
            k_pos = torch.arange(k.shape[2], device=x.device)
            mask = attention_mask(input_pos, k_pos, self.sliding_window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        elif self.sliding_window is not None and self.sliding_window < T:
            mask = attention_mask(input_pos, input_pos, self.sliding_window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, input_pos: Tensor) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # on the meta device nn.Embedding's own normal_ init imports torch's compiler (seconds): skip it there
        meta = torch.get_default_device().type == "meta"
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim,
                                           _weight=torch.empty(config.vocab_size, config.dim) if meta else None)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.gradient_checkpointing = False
        self.register_buffer("rope", rope_table(config, self.tok_embeddings.weight.device), persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def _apply(self, fn, recurse=True):
        # Casting the model (e.g. to bf16) must not cast the RoPE table: rebuild it in fp32.
        super()._apply(fn, recurse)
        if self.rope.dtype != torch.float32 and not self.rope.is_meta:
            self.rope = rope_table(self.config, self.rope.device)
        return self

    def rebuild_buffers(self, device: torch.device | str) -> None:
        """Recompute non-persistent buffers (after loading a model built on the meta device)."""
        self.rope = rope_table(self.config, device)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def setup_kv_cache(self, batch_size: int, max_seq_len: int) -> None:
        if max_seq_len > self.config.max_seq_len:
            raise ValueError(f"KV cache length {max_seq_len} exceeds the model's max_seq_len {self.config.max_seq_len}")
        weight = self.tok_embeddings.weight
        for block in self.layers:
            attn = block.attention
            attn.kv_cache = KVCache(batch_size, max_seq_len, attn.n_kv_heads, attn.head_dim, weight.dtype, weight.device)

    def select_kv_cache(self, rows: Tensor) -> None:
        """Reorder / expand the batch of every block's KV cache (see `KVCache.select`)."""
        for block in self.layers:
            block.attention.kv_cache.select(rows)

    def clear_kv_cache(self) -> None:
        for block in self.layers:
            block.attention.kv_cache = None

    def forward_hidden(self, tokens: Tensor, input_pos: Tensor | None = None) -> Tensor:
        """Hidden states [B, T, dim] after the final norm (the input of `output`)."""
        T = tokens.shape[1]
        if input_pos is None:
            input_pos = torch.arange(T, device=tokens.device)
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
        rope = self.rope[input_pos]
        x = self.tok_embeddings(tokens)
        for block in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, input_pos, use_reentrant=False)
            else:
                x = block(x, rope, input_pos)
        return self.norm(x)

    def forward(self, tokens: Tensor, input_pos: Tensor | None = None, hidden: bool = False) -> Tensor:
        """Float32 logits [B, T, vocab]; with `hidden`, the hidden states `forward_hidden` returns (through
        `forward`, so FSDP's hooks gather the root's parameters, the head's included, for a loss on them)."""
        if hidden:
            return self.forward_hidden(tokens, input_pos)
        return self.output(self.forward_hidden(tokens, input_pos)).float()
