"""llama.cpp GGUF files -> (ModelConfig, Meta-named fp32 state dict), dequantized with the `gguf` package,
and back (`write_gguf`: F32/F16/BF16/Q8_0 with the tokenizer and its chat template).

Tensor names and the q/k row order (interleaved for "llama", rotate_half for "qwen2") come from the family
(model/families/) that general.architecture names.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize, quantize

from common.errors import UserError
from common.io import atomic_write
from model.config import Llama3RopeScaling, ModelConfig
from model.families import FAMILIES
from model.gguf_reader import GGUFFile, GGUFTensor, read_gguf_file
from model.chat import template_source
from model.tensor_names import from_ours, to_ours
from model.tokenizer_base import Tokenizer
from model.tokenizer_gguf import IGNORE_MERGES, pre_tokenizer_name
from model.tokenizer_hf import HFTokenizer
from model.tokenizer_spm import SentencePieceTokenizer
from model.transformer import rope_frequencies

SUPPORTED_TYPES = {
    GGMLQuantizationType[t]
    for t in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
}

def gguf_metadata(gguf_file: GGUFFile) -> dict:
    """Key/value fields of a GGUF file, `tokenizer.*` included (so the tokenizer needs no second read)."""
    return {key: field.value for key, field in gguf_file.fields.items()}


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
    families = [f for f in FAMILIES.values() if f.gguf_architecture == arch]
    if not families:
        known = sorted({f.gguf_architecture for f in FAMILIES.values()})
        raise ValueError(f"{name}: GGUF architecture {arch!r} is not supported ({', '.join(known)})")
    # Families sharing an architecture name (llama.cpp converts Mistral as "llama"): the first whose
    # features the file has (a sliding window, q/k/v biases).
    window, bias = meta.get(f"{arch}.attention.sliding_window"), "blk.0.attn_q.bias" in tensor_shapes
    fitting = [f for f in families if (window is None or f.sliding_window) and f.qkv_bias == bias]
    family = (fitting or families)[0]

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
        family=family.name,
    )
    rope_dim = meta.get(f"{arch}.rope.dimension_count", config.head_dim)
    if rope_dim != config.head_dim:
        raise ValueError(f"{name}: partial RoPE (rope.dimension_count {rope_dim} != head_dim {config.head_dim}) unsupported")
    return config


def _to_torch(tensor: GGUFTensor, path: Path) -> torch.Tensor:
    if tensor.tensor_type not in SUPPORTED_TYPES:
        raise ValueError(f"{path}: tensor {tensor.name} has unsupported GGUF type {tensor.tensor_type.name}")
    values = dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy, not a view of the file


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Config, fp32 state dict (Meta names) and raw metadata of a GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    gguf_file = read_gguf_file(path)
    if gguf_file.big_endian and gguf_file.tensors:  # the gguf package's dequantize assumes little-endian data
        raise UserError(f"{path}: a big-endian GGUF file; only little-endian weights are read (llama.cpp's "
                        "gguf-py has a converter)")
    meta = gguf_metadata(gguf_file)
    shapes = {t.name: tuple(reversed(t.shape)) for t in gguf_file.tensors}
    config = config_from_gguf(meta, shapes, path.stem)
    state: dict[str, torch.Tensor] = {}
    for tensor in gguf_file.tensors:
        if tensor.name == "rope_freqs.weight":
            factors = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(-1)
            config.rope_scaling = _scaling_from_factors(factors, config.head_dim, config.rope_theta, path)
            continue
        state[tensor.name] = _to_torch(tensor, path)
    return config, to_ours(state, config, "gguf", str(path)), meta


WRITE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0"}  # -> file type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp's token types


def _source_fields(gguf_file: GGUFFile) -> list[tuple]:
    """The `tokenizer.*` fields of a GGUF file as (key, value, type, sub-type), ready for GGUFWriter."""
    return [(key, *field) for key, field in gguf_file.fields.items() if key.startswith("tokenizer.")]


def _sentencepiece_fields(tokenizer: SentencePieceTokenizer) -> list[tuple]:
    """A SentencePiece vocabulary as llama.cpp's "llama" tokenizer fields (pieces, scores, token types)."""
    sp, n = tokenizer.sp, tokenizer.vocab_size
    types = [_UNKNOWN if sp.is_unknown(i) else _CONTROL if sp.is_control(i) else _UNUSED if sp.is_unused(i)
             else _BYTE if sp.is_byte(i) else _NORMAL for i in range(n)]  # fmt: skip
    V = GGUFValueType
    fields = [("tokenizer.ggml.model", "llama", V.STRING, None),
              ("tokenizer.ggml.tokens", [sp.id_to_piece(i) for i in range(n)], V.ARRAY, V.STRING),
              ("tokenizer.ggml.scores", [sp.get_score(i) for i in range(n)], V.ARRAY, V.FLOAT32),
              ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32),
              ("tokenizer.ggml.eos_token_id", tokenizer.eos_id, V.UINT32, None)]  # fmt: skip
    for key, i in (("bos", tokenizer.bos_id), ("unknown", sp.unk_id()), ("padding", tokenizer.pad_id)):
        if i is not None and i >= 0:
            fields.append((f"tokenizer.ggml.{key}_token_id", i, V.UINT32, None))
    return fields


def _bpe_fields(tokenizer: HFTokenizer) -> list[tuple] | None:
    """A byte-level BPE tokenizer.json as llama.cpp's "gpt2" fields (tokens, types, merges, pre-tokenizer
    name); None when llama.cpp could not split or merge alike. An NFC normalizer (Qwen2's) is left out, as
    llama.cpp's own conversion does."""
    tk = tokenizer.tk
    data = json.loads(tk.to_str())
    model, pre = data["model"], pre_tokenizer_name(tk)
    if (model["type"] != "BPE" or pre is None or data["decoder"] is None or data["decoder"]["type"] != "ByteLevel"
            or data["normalizer"] not in (None, {"type": "NFC"}) or model.get("ignore_merges", False) != (pre in IGNORE_MERGES)):
        return None  # fmt: skip
    tokens = [tk.id_to_token(i) for i in range(tokenizer.vocab_size)]
    added = {t.content for t in tk.get_added_tokens_decoder().values()}
    types = [_CONTROL if t in tokenizer.special_tokens else _USER_DEFINED if t in added else _NORMAL for t in tokens]
    V = GGUFValueType
    fields = [("tokenizer.ggml.model", "gpt2", V.STRING, None), ("tokenizer.ggml.pre", pre, V.STRING, None),
              ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
              ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32),
              ("tokenizer.ggml.merges", [m if isinstance(m, str) else " ".join(m) for m in model["merges"]], V.ARRAY, V.STRING),
              ("tokenizer.ggml.eos_token_id", tokenizer.eos_id, V.UINT32, None),
              ("tokenizer.ggml.add_bos_token", tokenizer.bos_id is not None, V.BOOL, None)]  # fmt: skip
    for key, i in (("bos", tokenizer.bos_id), ("padding", tokenizer.pad_id)):
        if i is not None:
            fields.append((f"tokenizer.ggml.{key}_token_id", i, V.UINT32, None))
    return fields


def tokenizer_fields(tokenizer: Tokenizer) -> list[tuple]:
    """GGUF `tokenizer.*` fields of a tokenizer read from a GGUF file (its own, copied), a SentencePiece
    model or a byte-level BPE tokenizer.json that llama.cpp can split, with its chat template; other
    tokenizers: ValueError."""
    source = Path(getattr(tokenizer, "source", "") or "")
    fields = None
    if source.suffix == ".gguf" and source.is_file():
        fields = [f for f in _source_fields(read_gguf_file(source)) if f[0] != "tokenizer.chat_template"]
    elif isinstance(tokenizer, SentencePieceTokenizer):
        fields = _sentencepiece_fields(tokenizer)
    elif isinstance(tokenizer, HFTokenizer):
        fields = _bpe_fields(tokenizer)
    if fields is None:
        raise ValueError(f"a GGUF export takes a GGUF or SentencePiece tokenizer, or a byte-level BPE one whose "
                         f"pre-tokenizer llama.cpp knows, not this {type(tokenizer).__name__} ({source}); save "
                         f"without the tokenizer or as hf")  # fmt: skip
    return fields + [("tokenizer.chat_template", template_source(tokenizer.chat_template), GGUFValueType.STRING, None)]


def _add_tensor(writer: GGUFWriter, name: str, w: torch.Tensor, kind: str) -> None:
    """A 2-D weight as `kind` (Q8_0 needs rows in blocks of 32: F16 otherwise, as llama.cpp falls back);
    vectors (norms, biases) as F32."""
    array = w.detach().float().cpu().numpy()
    if w.ndim == 1 or kind == "F32":
        writer.add_tensor(name, array)
        return
    block = GGML_QUANT_SIZES[GGMLQuantizationType[kind]][0]
    qtype = GGMLQuantizationType[kind if array.shape[-1] % block == 0 else "F16"]
    data = quantize(array, qtype)
    writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)


def write_gguf(state: dict[str, torch.Tensor], config: ModelConfig, path: str | Path, kind: str = "F16",
               tokenizer: Tokenizer | None = None) -> None:  # fmt: skip
    """One GGUF file (atomically) that llama.cpp and `read_gguf` load: the family's GGUF names and q/k
    order, matrices as `kind` (F32, F16, BF16 or Q8_0), LLaMA-3.1 RoPE scaling as rope_freqs."""
    if kind not in WRITE_TYPES:
        raise ValueError(f"unknown GGUF type {kind!r} ({', '.join(WRITE_TYPES)})")
    fields = tokenizer_fields(tokenizer) if tokenizer is not None else []
    tensors = from_ours(state, config, "gguf")
    arch = FAMILIES[config.family].gguf_architecture

    def write(tmp: Path) -> None:
        writer = GGUFWriter(tmp, arch)
        writer.add_name(config.name)
        writer.add_file_type(LlamaFileType[WRITE_TYPES[kind]])
        writer.add_block_count(config.n_layers)
        writer.add_context_length(config.max_seq_len)
        writer.add_embedding_length(config.dim)
        writer.add_feed_forward_length(config.ffn_dim)
        writer.add_head_count(config.n_heads)
        writer.add_head_count_kv(config.n_kv_heads)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_vocab_size(config.vocab_size)
        if config.sliding_window is not None:
            writer.add_sliding_window(config.sliding_window)
        for field in fields:
            writer.add_key_value(*field)
        if config.rope_scaling is not None:  # llama.cpp's per-pair divisors of the frequencies
            base = rope_frequencies(config.head_dim, config.rope_theta)
            writer.add_tensor("rope_freqs.weight", (base / rope_frequencies(config.head_dim, config.rope_theta,
                                                                             config.rope_scaling)).numpy())  # fmt: skip
        for name, w in tensors.items():
            _add_tensor(writer, name, w, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write)


def write_vocab_gguf(source: str | Path, out_path: str | Path) -> None:
    """Copy only the `tokenizer.*` metadata of a GGUF file into a small tensor-free GGUF (atomically)."""
    gguf_file = read_gguf_file(source)
    arch = gguf_file.fields["general.architecture"].value if "general.architecture" in gguf_file.fields else "llama"

    def write(tmp: Path) -> None:
        writer = GGUFWriter(tmp, arch)
        for field in _source_fields(gguf_file):
            writer.add_key_value(*field)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(out_path, write)
