"""What makes a model family: declared once (one module per family in this folder), read by every format.

The formats (model/meta_format.py, hf_format.py, gguf_format.py, peft_format.py) and model/tensor_names.py
are generic code over a `Family`; none of them names a family.
"""
from __future__ import annotations

from dataclasses import dataclass

TENSOR_FORMATS = ("meta", "hf", "gguf")  # checkpoint formats with their own tensor names; PEFT uses the HF names


@dataclass(frozen=True)
class Family:
    """One model family: its features, its tensor names and q/k layout per format, how each format names it.

    `names[format]` maps our module names (Meta's: "tok_embeddings", "layers.{}.attention.wq", ...) to the
    format's ("model.embed_tokens", "model.layers.{}.self_attn.q_proj", ...); a parameter keeps its suffix
    (".weight" / ".bias"). `rotate_half`: the formats whose q/k rows are ordered for rotate_half RoPE (per
    head: all first halves of the pairs, then all second halves) rather than Meta's interleaved pairs; a
    q/k bias is ordered as the rows of its weight.
    """

    name: str  # ModelConfig.family
    hf_model_type: str  # HF config.json "model_type"
    hf_architecture: str  # HF config.json "architectures"[0]
    gguf_architecture: str  # GGUF general.architecture (llama.cpp's name; several families may share one)
    chat_template: str  # built-in chat format (model.chat.BUILTIN) for a tokenizer without a template
    names: dict[str, dict[str, str]]  # format -> {our module name: the format's module name}
    rotate_half: frozenset[str] = frozenset({"hf"})  # formats storing q/k rows in rotate_half order
    qkv_bias: bool = False  # q, k and v projections have a bias (o has none)
    sliding_window: bool = False  # attention may be limited to the last ModelConfig.sliding_window keys
    meta_params: str = "meta"  # params.json keys written: Meta's ModelArgs ("meta") or Mistral's ("mistral")
    meta_sign: tuple[str, ...] = ()  # params.json keys whose presence names this family (no "family" key)
    tokenizer_files: tuple[str, ...] = ()  # tokenizer file names that name this family (first: the one written)

    def __post_init__(self) -> None:
        missing = [f for f in TENSOR_FORMATS if f not in self.names]
        if missing:
            raise ValueError(f"family {self.name!r}: no tensor names for {missing}")
        if self.meta_params not in ("meta", "mistral"):
            raise ValueError(f"family {self.name!r}: meta_params must be 'meta' or 'mistral', got {self.meta_params!r}")
        if not self.rotate_half <= set(TENSOR_FORMATS) - {"meta"}:
            raise ValueError(f"family {self.name!r}: rotate_half {sorted(self.rotate_half)} names unknown formats")


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add `family` to FAMILIES (so ModelConfig.family and every format know it); returns it."""
    if family.name in FAMILIES and FAMILIES[family.name] != family:
        raise ValueError(f"model family {family.name!r} is registered already")
    FAMILIES[family.name] = family
    return family
