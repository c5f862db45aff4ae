"""Batched log-likelihood of continuations given contexts, the way lm-evaluation-harness scores them.

Tokenisation: trailing whitespace of the context moves to the front of the continuation; the context
is tokenised alone and the continuation's tokens are those of (context + continuation) after the
context's tokens. The model sees (context + continuation)[-(max_len + 1):][:-1] and the log-probs of
the continuation tokens are summed.

Speed: a request whose input tokens are a prefix of another's is read from that other row (causal
attention makes the logits identical), so the four single-token MMLU answers, or boolq's " no"/" yes",
cost one row. Rows are sorted longest first, padded on the right, and run one forward per batch; the
output head is applied only at the positions that are scored. With `share_context`, a context
shared by several multi-token continuations (one doc's choices) runs once into the KV cache, which is
then copied per continuation: for 5-shot prompts this divides the work by about the number of choices.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

TokenPair = tuple[list[int], list[int]]


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the front of the continuation."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool = False) -> TokenPair:
    """(context tokens, continuation tokens) with the harness's split and BOS handling."""
    context, continuation = split_context(context, continuation)
    if not continuation:
        raise ValueError(f"empty continuation for context {context[-60:]!r}")
    whole = tokenizer.encode(context + continuation, bos=add_bos)
    ctx = tokenizer.encode(context, bos=add_bos)
    if not ctx:  # an empty context is conditioned on BOS (or EOS when the tokenizer has none)
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        return [prefix], whole
    if len(whole) <= len(ctx):
        raise ValueError(f"continuation {continuation!r} adds no token after context ...{context[-40:]!r}")
    return ctx, whole[len(ctx):]


def _input_tokens(pair: TokenPair, max_len: int) -> tuple[int, ...]:
    context, continuation = pair
    if not continuation:
        raise ValueError("a continuation must have at least one token")
    if len(continuation) > max_len:
        raise ValueError(f"continuation of {len(continuation)} tokens does not fit max length {max_len}")
    return tuple((context + continuation)[-(max_len + 1):][:-1])


def _host_rows(inputs: list[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Map each distinct input to the longest row it is a prefix of.

    In lexicographic order every sequence that starts with s follows s directly, so checking each
    sequence against its successor finds all prefix relations.
    """
    ordered = sorted(set(inputs))
    host: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i in range(len(ordered) - 1, -1, -1):
        seq = ordered[i]
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        host[seq] = host[nxt] if nxt is not None and nxt[: len(seq)] == seq else seq
    return host


@torch.inference_mode()
def loglikelihoods(
    model, pairs: list[TokenPair], batch_size: int = 16, max_len: int | None = None, progress: bool = False,
    share_context: bool = False,
) -> list[tuple[float, bool]]:
    """(sum of continuation log-probs, whether the continuation is the greedy one) per pair.

    share_context: run a context shared by several multi-token continuations once, through the KV
    cache, then all its continuations as one batch (much less compute for few-shot prompts on a CPU).
    """
    max_len = max_len or model.config.max_seq_len
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    rest = list(range(len(pairs)))
    if share_context:
        groups = _shared_context_groups(pairs, max_len)
        for group in tqdm(groups, desc="shared contexts", disable=not progress, leave=False):
            for i, value in zip(group, _score_shared_context(model, [pairs[i] for i in group])):
                results[i] = value
        rest = [i for i in rest if results[i] is None]
    for i, value in zip(rest, _score_rows(model, [pairs[i] for i in rest], batch_size, max_len, progress)):
        results[i] = value
    return results  # type: ignore[return-value]


def _shared_context_groups(pairs: list[TokenPair], max_len: int) -> list[list[int]]:
    """Indices of pairs sharing a context, when some continuation has > 1 token and all fit untruncated."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(pairs):
        by_context.setdefault(tuple(ctx), []).append(i)
    return [
        group for ctx, group in by_context.items()
        if len(group) > 1 and any(len(pairs[i][1]) > 1 for i in group)
        and all(0 < len(pairs[i][1]) and len(ctx) + len(pairs[i][1]) - 1 <= max_len for i in group)
    ]


def _score_shared_context(model, pairs: list[TokenPair]) -> list[tuple[float, bool]]:
    context = pairs[0][0]
    conts = [cont for _, cont in pairs]
    width = max(len(c) for c in conts) - 1
    device = next(model.parameters()).device
    model.setup_kv_cache(1, len(context) + width)
    try:
        first = model.forward_hidden(torch.tensor([context], device=device))[0, -1]
        model.select_kv_cache(torch.zeros(len(conts), dtype=torch.long, device=device))  # one context per continuation
        tokens = torch.zeros(len(conts), width, dtype=torch.long)
        for b, cont in enumerate(conts):
            tokens[b, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        pos = torch.arange(len(context), len(context) + width, device=device)
        rest = model.forward_hidden(tokens.to(device), pos)
    finally:
        model.clear_kv_cache()
    hidden = torch.cat([first.expand(len(conts), 1, -1), rest], dim=1)
    batch_idx = [b for b, cont in enumerate(conts) for _ in cont]
    pos_idx = [j for cont in conts for j in range(len(cont))]
    owners = [b for b, cont in enumerate(conts) for _ in cont]
    token_lp, greedy = _token_scores(model, hidden, batch_idx, pos_idx, [t for c in conts for t in c])
    out: list = [None] * len(conts)
    _scatter(out, owners, token_lp, greedy)
    return out


def _token_scores(model, hidden, batch_idx, pos_idx, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token and whether it is the argmax, from hidden[batch_idx, pos_idx]."""
    logprobs = model.output(hidden[torch.tensor(batch_idx), torch.tensor(pos_idx)]).float().log_softmax(-1)
    target = torch.tensor(targets, device=logprobs.device)
    return logprobs.gather(1, target[:, None])[:, 0].double().cpu(), (logprobs.argmax(-1) == target).cpu()


def _score_rows(model, pairs: list[TokenPair], batch_size: int, max_len: int, progress: bool) -> list[tuple[float, bool]]:
    if not pairs:
        return []
    inputs = [_input_tokens(p, max_len) for p in pairs]
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    host = _host_rows(inputs)
    rows = sorted(set(host.values()), key=lambda r: (-len(r), r))
    readers: dict[tuple[int, ...], list[int]] = {r: [] for r in rows}
    for i, inp in enumerate(inputs):
        readers[host[inp]].append(i)
    device = next(model.parameters()).device
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="loglikelihood", disable=not progress, leave=False):
        batch = rows[start : start + batch_size]
        tokens = torch.zeros(len(batch), len(batch[0]), dtype=torch.long)
        batch_idx, pos_idx, targets, owners = [], [], [], []
        for b, row in enumerate(batch):
            tokens[b, : len(row)] = torch.tensor(row)
            for i in readers[row]:
                cont, n = pairs[i][1], len(inputs[i])
                batch_idx += [b] * len(cont)
                pos_idx += range(n - len(cont), n)
                targets += cont
                owners += [i] * len(cont)
        hidden = model.forward_hidden(tokens.to(device))
        token_lp, greedy = _token_scores(model, hidden, batch_idx, pos_idx, targets)
        _scatter(results, owners, token_lp, greedy)
    return results  # type: ignore[return-value]


def _scatter(results: list, owners: list[int], token_lp: torch.Tensor, greedy: torch.Tensor) -> None:
    """Sum per-token values back into each request (owners are contiguous per request)."""
    start = 0
    while start < len(owners):
        end = start
        while end < len(owners) and owners[end] == owners[start]:
            end += 1
        results[owners[start]] = (float(token_lp[start:end].sum()), bool(greedy[start:end].all()))
        start = end
