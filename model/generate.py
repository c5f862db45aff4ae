"""Autoregressive decoding with the KV cache: greedy, nucleus (top-p) sampling, beam search."""
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


@torch.inference_mode()
def beam_search(model: Transformer, prompt: list[int], max_new_tokens: int, num_beams: int = 4,
                stop_ids: Iterable[int] = (), length_penalty: float = 1.0) -> list[int]:
    """New tokens of the best beam; finished beams are ranked by sum log-prob / length**length_penalty."""
    if not prompt:
        raise ValueError("beam_search: the prompt must contain at least one token")
    stop = set(stop_ids)
    device = next(model.parameters()).device
    model.setup_kv_cache(num_beams, len(prompt) + max_new_tokens)
    try:
        tokens = torch.tensor([prompt] * num_beams, device=device)
        pos = torch.arange(len(prompt), device=device)
        scores = torch.full((num_beams,), float("-inf"), device=device)
        scores[0] = 0.0  # all beams start identical: expand only the first
        beams: list[list[int]] = [[] for _ in range(num_beams)]
        finished: list[tuple[float, list[int]]] = []
        for step in range(max_new_tokens):
            logprobs = model(tokens, pos)[:, -1].float().log_softmax(-1)
            total = (scores[:, None] + logprobs).flatten()
            top, flat = total.topk(2 * num_beams)
            vocab = logprobs.shape[-1]
            keep_parents, keep_tokens, keep_scores = [], [], []
            for score, idx in zip(top.tolist(), flat.tolist()):
                parent, token = divmod(idx, vocab)
                seq = beams[parent] + [token]
                if token in stop:
                    finished.append((score / len(seq) ** length_penalty, seq))
                elif len(keep_parents) < num_beams:
                    keep_parents.append(parent), keep_tokens.append(token), keep_scores.append(score)
            if not keep_parents:
                break
            best_live = max(keep_scores) / (step + 1) ** length_penalty
            if len(finished) >= num_beams and max(f[0] for f in finished) >= best_live:
                break
            while len(keep_parents) < num_beams:  # pad with dead beams so the cache keeps its batch size
                keep_parents.append(keep_parents[0]), keep_tokens.append(keep_tokens[0]), keep_scores.append(float("-inf"))
            parents = torch.tensor(keep_parents, device=device)
            model.select_kv_cache(parents)
            beams = [beams[p] + [t] for p, t in zip(keep_parents, keep_tokens)]
            scores = torch.tensor(keep_scores, device=device)
            tokens, pos = torch.tensor(keep_tokens, device=device)[:, None], pos[-1:] + 1
        else:
            finished += [(s / len(b) ** length_penalty, b) for s, b in zip(scores.tolist(), beams)]
        return max(finished, key=lambda f: f[0])[1]
    finally:
        model.clear_kv_cache()
