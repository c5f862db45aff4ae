"""Model hyper-parameters and the one table of named configs (docs/method.md, "Models and checkpoint formats");
what differs between model families is declared in model/families/."""
from __future__ import annotations

from dataclasses import dataclass, replace

from model.families import FAMILIES


@dataclass(frozen=True)
class Llama3RopeScaling:
    """LLaMA-3.1 frequency-dependent RoPE scaling."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


@dataclass
class ModelConfig:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Llama3RopeScaling | None = None
    max_seq_len: int = 4096
    sliding_window: int | None = None
    tie_embeddings: bool = False
    family: str = "llama"  # a key of FAMILIES

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"config {self.name!r}: unknown model family {self.family!r}; known: {', '.join(FAMILIES)}")
        for field in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim", "max_seq_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config {self.name!r}: {field} must be a positive integer, got {value!r}")
        for field in ("norm_eps", "rope_theta"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ValueError(f"config {self.name!r}: {field} must be a positive number, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"config {self.name!r}: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"config {self.name!r}: n_heads {self.n_heads} not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"config {self.name!r}: head_dim {self.head_dim} must be even for RoPE")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"config {self.name!r}: sliding_window must be >= 1, got {self.sliding_window}")
        if self.sliding_window is not None and not FAMILIES[self.family].sliding_window:
            raise ValueError(f"config {self.name!r}: family {self.family!r} has no sliding-window attention")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def qkv_bias(self) -> bool:
        """q, k and v projections have a bias (the family's declaration)."""
        return FAMILIES[self.family].qkv_bias


def rope_scaling_from(values: dict, source: str, length_key: str) -> Llama3RopeScaling:
    """LLaMA-3.1 RoPE scaling from a checkpoint's fields; every field must be present and a number."""
    keys = {"factor": "factor", "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor",
            length_key: "original_max_seq_len"}
    missing = [k for k in keys if not isinstance(values.get(k), (int, float)) or isinstance(values.get(k), bool)]
    if missing:
        raise ValueError(f"{source}: rope_scaling needs numbers for {', '.join(missing)}, got {values}")
    return Llama3RopeScaling(**{field: values[key] for key, field in keys.items()})


def checked(source: str, make, **fields):
    """`make(**fields)` (a ModelConfig), its errors prefixed with the checkpoint file they came from."""
    try:
        return make(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(str(err) if source in str(err) else f"{source}: {err}") from None


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's SwiGLU hidden size: 2/3 of 4*dim, optionally scaled, rounded up to `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


_LLAMA3 = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim=14336, rope_theta=500000.0)
_TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, ffn_dim=160, max_seq_len=128)

CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig("llama2-7b", 4096, 32, 32, 32, 32000, 11008),
        ModelConfig("llama2-13b", 5120, 40, 40, 40, 32000, 13824),
        ModelConfig("llama2-70b", 8192, 80, 64, 8, 32000, 28672),
        ModelConfig("llama3-8b", **_LLAMA3, max_seq_len=8192),
        ModelConfig("llama3.1-8b", **_LLAMA3, max_seq_len=131072, rope_scaling=Llama3RopeScaling()),
        ModelConfig("mistral-7b", 4096, 32, 32, 8, 32000, 14336, max_seq_len=32768, sliding_window=4096,
                    family="mistral"),
        ModelConfig("qwen2.5-0.5b", 896, 24, 14, 2, 151936, 4864, norm_eps=1e-6, rope_theta=1e6, max_seq_len=32768,
                    tie_embeddings=True, family="qwen2"),
        ModelConfig("smollm2-135m", 576, 30, 9, 3, 49152, 1536, rope_theta=100000.0, max_seq_len=8192,
                    tie_embeddings=True),
        ModelConfig("tiny", **_TINY),
        ModelConfig("tiny-tied", **_TINY, tie_embeddings=True),
    ]
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A fresh copy of a named config, with optional field overrides."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)
