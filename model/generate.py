"""Autoregressive decoding with the KV cache: greedy or nucleus (top-p) sampling."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from model.transformer import Transformer


def sample_next(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Next token id from logits [vocab]: argmax at temperature 0, else top-p sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_ids: Iterable[int] = (),
    generator: torch.Generator | None = None,
) -> list[int]:
    """New token ids after `prompt` (stops after emitting a stop id, which is included)."""
    if not prompt:
        raise ValueError("generate: the prompt must contain at least one token")
    total = len(prompt) + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(f"generate: prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len {model.config.max_seq_len}")
    stop = set(stop_ids)
    device = model.tok_embeddings.weight.device
    was_training = model.training
    model.eval()
    model.setup_kv_cache(1, total)
    try:
        tokens = torch.tensor([prompt], device=device)
        input_pos = torch.arange(len(prompt), device=device)
        new: list[int] = []
        for _ in range(max_new_tokens):
            logits = model(tokens, input_pos)[0, -1]
            token = sample_next(logits, temperature, top_p, generator)
            new.append(token)
            if token in stop:
                break
            tokens = torch.tensor([[token]], device=device)
            input_pos = input_pos[-1:] + 1
        return new
    finally:
        model.clear_kv_cache()
        model.train(was_training)
