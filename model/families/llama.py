"""LLaMA-2 / LLaMA-3(.1) (and SmolLM2): the reference layout every other family starts from."""
from model.families.family import Family, register_family

# Each module's name: ours (Meta's), HF's, llama.cpp's. Mistral and Qwen2 use the same names.
_MODULES = (
    ("tok_embeddings", "model.embed_tokens", "token_embd"),
    ("norm", "model.norm", "output_norm"),
    ("output", "lm_head", "output"),
    ("layers.{}.attention.wq", "model.layers.{}.self_attn.q_proj", "blk.{}.attn_q"),
    ("layers.{}.attention.wk", "model.layers.{}.self_attn.k_proj", "blk.{}.attn_k"),
    ("layers.{}.attention.wv", "model.layers.{}.self_attn.v_proj", "blk.{}.attn_v"),
    ("layers.{}.attention.wo", "model.layers.{}.self_attn.o_proj", "blk.{}.attn_output"),
    ("layers.{}.feed_forward.w1", "model.layers.{}.mlp.gate_proj", "blk.{}.ffn_gate"),
    ("layers.{}.feed_forward.w2", "model.layers.{}.mlp.down_proj", "blk.{}.ffn_down"),
    ("layers.{}.feed_forward.w3", "model.layers.{}.mlp.up_proj", "blk.{}.ffn_up"),
    ("layers.{}.attention_norm", "model.layers.{}.input_layernorm", "blk.{}.attn_norm"),
    ("layers.{}.ffn_norm", "model.layers.{}.post_attention_layernorm", "blk.{}.ffn_norm"),
)
NAMES = {fmt: {row[0]: row[i] for row in _MODULES} for i, fmt in enumerate(("meta", "hf", "gguf"))}

# HF permutes q/k rows for rotate_half; llama.cpp's converter undoes it, so GGUF "llama" is interleaved as Meta's.
LLAMA = register_family(Family("llama", "llama", "LlamaForCausalLM", "llama", "llama2", NAMES, rotate_half=frozenset({"hf"})))
