"""LLaMA-2 / LLaMA-3(.1) (and SmolLM2): the reference layout every other family starts from."""
from model.families.family import Family, register_family

# Our module names (Meta's) -> HF's and llama.cpp's; Mistral and Qwen2 use the same names.
HF_NAMES = {
    "tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head",
    "layers.{}.attention.wq": "model.layers.{}.self_attn.q_proj", "layers.{}.attention.wk": "model.layers.{}.self_attn.k_proj",
    "layers.{}.attention.wv": "model.layers.{}.self_attn.v_proj", "layers.{}.attention.wo": "model.layers.{}.self_attn.o_proj",
    "layers.{}.feed_forward.w1": "model.layers.{}.mlp.gate_proj", "layers.{}.feed_forward.w2": "model.layers.{}.mlp.down_proj",
    "layers.{}.feed_forward.w3": "model.layers.{}.mlp.up_proj", "layers.{}.attention_norm": "model.layers.{}.input_layernorm",
    "layers.{}.ffn_norm": "model.layers.{}.post_attention_layernorm",
}  # fmt: skip
GGUF_NAMES = {
    "tok_embeddings": "token_embd", "norm": "output_norm", "output": "output",
    "layers.{}.attention.wq": "blk.{}.attn_q", "layers.{}.attention.wk": "blk.{}.attn_k",
    "layers.{}.attention.wv": "blk.{}.attn_v", "layers.{}.attention.wo": "blk.{}.attn_output",
    "layers.{}.feed_forward.w1": "blk.{}.ffn_gate", "layers.{}.feed_forward.w2": "blk.{}.ffn_down",
    "layers.{}.feed_forward.w3": "blk.{}.ffn_up", "layers.{}.attention_norm": "blk.{}.attn_norm",
    "layers.{}.ffn_norm": "blk.{}.ffn_norm",
}  # fmt: skip
NAMES = {"meta": {name: name for name in HF_NAMES}, "hf": HF_NAMES, "gguf": GGUF_NAMES}

# HF permutes q/k rows for rotate_half; llama.cpp's converter undoes it, so GGUF "llama" is interleaved as Meta's.
LLAMA = register_family(Family("llama", "llama", "LlamaForCausalLM", "llama", "llama2", NAMES, rotate_half=frozenset({"hf"})))
