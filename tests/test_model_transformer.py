import math

import pytest
import torch
import torch.nn.functional as F

from model import CONFIGS, Transformer, get_config
from model.generate import generate
from model.transformer import attention_mask, rope_frequencies


def tiny(name="tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    if overrides.get("sliding_window") is not None:
        overrides["family"] = "mistral"  # the family with sliding-window attention
    model = Transformer(get_config(name, **overrides)).eval()
    with torch.no_grad():  # sharp attention, so that positions and masks visibly change the logits
        for block in model.layers:
            block.attention.wq.weight.mul_(25)
            block.attention.wk.weight.mul_(25)
    return model


def reference_forward(model, tokens):
    """Independent naive forward: complex-number RoPE, explicit kv-head repeat, explicit softmax."""
    cfg = model.config
    hd, T = cfg.head_dim, tokens.shape[1]
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2).double() / hd)
    rot = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), inv))

    def rope(x):  # x [B, T, H, hd]
        xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], hd // 2, 2))
        return torch.view_as_real(xc * rot[None, :, None]).reshape(x.shape).float()

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w

    i = torch.arange(T)
    visible = i[None, :] <= i[:, None]
    if cfg.sliding_window is not None:
        visible &= i[:, None] - i[None, :] < cfg.sliding_window
    x = model.tok_embeddings.weight[tokens]
    B = x.shape[0]
    for blk in model.layers:
        a = blk.attention
        h = norm(x, blk.attention_norm.weight)
        q = rope((h @ a.wq.weight.T).view(B, T, cfg.n_heads, hd))
        k = rope((h @ a.wk.weight.T).view(B, T, cfg.n_kv_heads, hd))
        v = (h @ a.wv.weight.T).view(B, T, cfg.n_kv_heads, hd)
        rep = cfg.n_heads // cfg.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~visible, float("-inf"))
        out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, T, -1)
        x = x + out @ a.wo.weight.T
        h = norm(x, blk.ffn_norm.weight)
        f = blk.feed_forward
        x = x + (F.silu(h @ f.w1.weight.T) * (h @ f.w3.weight.T)) @ f.w2.weight.T
    return norm(x, model.norm.weight) @ model.output.weight.T


@pytest.mark.parametrize("name,window", [("tiny", None), ("tiny-tied", None), ("tiny", 5)])
def test_matches_independent_reference(name, window):
    model = tiny(name, sliding_window=window)
    tokens = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference_forward(model, tokens), atol=1e-4, rtol=1e-4)


def test_tiny_configs_match_contract():
    for name, tied in [("tiny", False), ("tiny-tied", True)]:
        c = CONFIGS[name]
        assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.max_seq_len) == (64, 2, 4, 2, 160, 256, 128)
        assert c.tie_embeddings is tied and c.head_dim == 16
    model = tiny("tiny-tied")
    assert model.output.weight is model.tok_embeddings.weight
    assert not tiny("tiny").output.weight is tiny("tiny").tok_embeddings.weight


def test_sliding_window_mask_contents():
    pos = torch.arange(5)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(attention_mask(pos, pos, 3), expected)
    assert torch.equal(attention_mask(pos, pos, None), torch.ones(5, 5).tril().bool())
    # One decoding query at position 6 against a cache of 8 slots.
    assert attention_mask(torch.tensor([6]), torch.arange(8), 3).int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 0]]


def test_sliding_window_limits_receptive_field():
    # 2 layers, window 2 (self + previous): position t sees at most tokens t-2..t.
    model = tiny(sliding_window=2)
    a = torch.randint(0, 256, (1, 12))
    b = a.clone()
    b[0, 0] = (a[0, 0] + 1) % 256
    with torch.no_grad():
        la, lb = model(a), model(b)
    assert not torch.allclose(la[0, 2], lb[0, 2])
    torch.testing.assert_close(la[0, 3:], lb[0, 3:])


def test_window_longer_than_sequence_equals_causal():
    tokens = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(tiny(sliding_window=10)(tokens), tiny()(tokens))


def test_llama31_rope_scaling_vector():
    cfg = CONFIGS["llama3.1-8b"]
    freqs = rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    base = rope_frequencies(cfg.head_dim, cfg.rope_theta, None)
    assert freqs.dtype == torch.float32 and freqs.shape == (64,)
    expected = []
    for f in base.double().tolist():
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4:
            expected.append(f)
        elif wavelen > 8192 / 1:
            expected.append(f / 8)
        else:
            s = (8192 / wavelen - 1) / (4 - 1)
            expected.append((1 - s) * f / 8 + s * f)
    torch.testing.assert_close(freqs, torch.tensor(expected, dtype=torch.float32))
    assert freqs[0] == 1.0  # the fastest pair is untouched
    torch.testing.assert_close(freqs[-1], base[-1] / 8)  # the slowest pair is slowed 8x
    n_blended = sum(1 for f, b in zip(freqs.tolist(), base.tolist()) if b / 8 * 1.0001 < f < b * 0.9999)
    assert n_blended > 0


def test_rope_attention_depends_only_on_relative_position():
    model = tiny()
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    from model.transformer import apply_rope

    def score(i, j):
        return (apply_rope(q, model.rope[i : i + 1]) * apply_rope(k, model.rope[j : j + 1])).sum()

    torch.testing.assert_close(score(3, 1), score(40, 38))
    assert not torch.allclose(score(3, 1), score(3, 2))


@pytest.mark.parametrize("window", [None, 4])
def test_kv_cache_greedy_equals_full_recompute(window):
    model = tiny(sliding_window=window)
    prompt = [5, 17, 42, 9, 100]
    cached = generate(model, prompt, max_new_tokens=12)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert cached == seq[len(prompt):]
    assert all(b.attention.kv_cache is None for b in model.layers)


def test_kv_cache_logits_match_full_forward():
    model = tiny()
    tokens = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        full = model(tokens)
        model.setup_kv_cache(2, 16)
        first = model(tokens[:, :6], torch.arange(6))
        rest = [model(tokens[:, t : t + 1], torch.tensor([t])) for t in range(6, 9)]
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat([first] + rest, dim=1), full, atol=1e-5, rtol=1e-5)


def test_generate_sampling_and_stop_ids():
    model = tiny()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = generate(model, [1, 2], 10, temperature=1.0, top_p=0.9, generator=g())
    assert a == generate(model, [1, 2], 10, temperature=1.0, top_p=0.9, generator=g())
    greedy = generate(model, [1, 2], 10)
    stopped = generate(model, [1, 2], 10, stop_ids=[greedy[3]])
    assert stopped == greedy[: greedy.index(greedy[3]) + 1]
    # top_p so small that only the argmax survives = greedy.
    assert generate(model, [1, 2], 10, temperature=1.0, top_p=1e-6, generator=g()) == greedy
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [1] * 100, 29)


def test_gradient_checkpointing_same_gradients():
    tokens = torch.randint(0, 256, (2, 12))
    grads = []
    for ckpt in (False, True):
        model = tiny().train()
        model.gradient_checkpointing = ckpt
        model(tokens).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_forward_hidden_feeds_output():
    model = tiny()
    tokens = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_hidden(tokens) @ model.output.weight.T, model(tokens))


def test_bf16_cast_keeps_fp32_rope_and_logits():
    model = tiny().to(torch.bfloat16)
    assert model.rope.dtype == torch.float32
    assert model.layers[0].attention.wq.weight.dtype == torch.bfloat16
    out = model(torch.randint(0, 256, (1, 4)))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_configs_and_lengths():
    with pytest.raises(KeyError, match="unknown model config 'nope'"):
        get_config("nope")
    with pytest.raises(ValueError, match="n_kv_heads"):
        get_config("tiny", n_kv_heads=3)
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny()(torch.zeros(1, 129, dtype=torch.long))
