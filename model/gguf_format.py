"""llama.cpp GGUF files -> (ModelConfig, Meta-named fp32 state dict), dequantized with the `gguf` package.

Tensor names and the q/k row order (interleaved for "llama", rotate_half for "qwen2") come from the family
(model/families/) that general.architecture names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from common.io import atomic_write
from model.config import Llama3RopeScaling, ModelConfig
from model.families import FAMILIES
from model.tensor_names import to_ours
from model.transformer import rope_frequencies

SUPPORTED_TYPES = {
    GGMLQuantizationType[t]
    for t in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
}

def gguf_metadata(reader: GGUFReader) -> dict:
    """Key/value fields of a GGUF file, `tokenizer.*` included (so the tokenizer needs no second read)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def _scaling_from_factors(factors: np.ndarray, head_dim: int, theta: float, path: Path) -> Llama3RopeScaling:
    """llama.cpp stores LLaMA-3.1 scaling as per-pair divisors; recover the standard parameters."""
    scaling = Llama3RopeScaling(factor=float(factors.max()))
    expected = rope_frequencies(head_dim, theta) / torch.from_numpy(factors.astype(np.float32))
    if not torch.allclose(rope_frequencies(head_dim, theta, scaling), expected, rtol=1e-4):
        raise ValueError(f"{path}: rope_freqs tensor does not match LLaMA-3.1 rope scaling; unsupported")
    return scaling


def config_from_gguf(meta: dict, tensor_shapes: dict[str, tuple[int, ...]], name: str) -> ModelConfig:
    """ModelConfig from GGUF metadata (`{arch}.*` keys) and the tensor names/shapes present."""
    arch = meta.get("general.architecture")
    families = [f.name for f in FAMILIES.values() if f.gguf_architecture == arch]
    if not families:
        known = sorted({f.gguf_architecture for f in FAMILIES.values()})
        raise ValueError(f"{name}: GGUF architecture {arch!r} is not supported ({', '.join(known)})")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{name}: GGUF metadata lacks {arch}.{key}")
        return value

    n_heads = int(get("attention.head_count"))
    vocab = meta.get(f"{arch}.vocab_size") or tensor_shapes["token_embd.weight"][0]
    config = ModelConfig(
        name=str(meta.get("general.name", name)),
        dim=int(get("embedding_length")),
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        vocab_size=int(vocab),
        ffn_dim=int(get("feed_forward_length")),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_seq_len=int(get("context_length", 4096)),
        sliding_window=meta.get(f"{arch}.attention.sliding_window"),
        tie_embeddings="output.weight" not in tensor_shapes,
        family=families[0],  # the first family llama.cpp stores under this architecture name
    )
    rope_dim = meta.get(f"{arch}.rope.dimension_count", config.head_dim)
    if rope_dim != config.head_dim:
        raise ValueError(f"{name}: partial RoPE (rope.dimension_count {rope_dim} != head_dim {config.head_dim}) unsupported")
    return config


def _to_torch(tensor, path: Path) -> torch.Tensor:
    if tensor.tensor_type not in SUPPORTED_TYPES:
        raise ValueError(f"{path}: tensor {tensor.name} has unsupported GGUF type {tensor.tensor_type.name}")
    values = dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy, not a view of the file


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Config, fp32 state dict (Meta names) and raw metadata of a GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(str(path))
    except Exception as err:
        raise ValueError(f"{path}: not a readable GGUF file ({err})") from err
    meta = gguf_metadata(reader)
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    config = config_from_gguf(meta, shapes, path.stem)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            factors = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(-1)
            config.rope_scaling = _scaling_from_factors(factors, config.head_dim, config.rope_theta, path)
            continue
        state[tensor.name] = _to_torch(tensor, path)
    return config, to_ours(state, config, "gguf", str(path)), meta


def write_vocab_gguf(source: str | Path, out_path: str | Path) -> None:
    """Copy only the `tokenizer.*` metadata of a GGUF file into a small tensor-free GGUF (atomically)."""
    from gguf import GGUFWriter

    reader = GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else "llama"

    def write(tmp: Path) -> None:
        writer = GGUFWriter(tmp, arch)
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                writer.add_key_value(key, field.contents(), field.types[0], field.types[1] if len(field.types) > 1 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(out_path, write)
