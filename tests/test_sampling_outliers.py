import dataclasses

import pytest
import torch
import torch.nn as nn

from model import Transformer, get_config
from sampling.outliers import block_linears, collect_input_sum_sq, outlier_ratio, outlier_ratios, outlier_report
from sampling.sampler import set_trainable

LINEARS = ["attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
           "feed_forward.w3"]


def tiny_model(n_layers=2, seed=0):
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(get_config("tiny"), n_layers=n_layers)).eval()


def calib(n=4, T=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, T), generator=g) for _ in range(n // 2)]


def brute_force_ratio(weights, norms, M):
    """D = 100 * #(A > M mean(A)) / numel over the pooled A_ij = |W_ij| * ||X_j||, element by element."""
    scores = []
    for W, x_norm in zip(weights, norms):
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                scores.append(abs(W[i, j].item()) * x_norm[j].item())
    mean = sum(scores) / len(scores)
    return 100.0 * sum(s > M * mean for s in scores) / len(scores)


@pytest.mark.parametrize("M", [1.0, 2.5, 5.0])
def test_ratio_equals_brute_force(M):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 7, generator=g) ** 3, torch.randn(3, 4, generator=g), torch.randn(6, 2, generator=g) * 4]
    norms = [torch.rand(7, generator=g) * 3, torch.rand(4, generator=g), torch.rand(2, generator=g) * 10]
    scores = [W.abs() * n for W, n in zip(weights, norms)]
    assert outlier_ratio(scores, M) == pytest.approx(brute_force_ratio(weights, norms, M), abs=1e-12)


def test_hooks_collect_sum_of_squares_of_each_linear_input():
    model = tiny_model()
    batches = calib()
    sums = collect_input_sum_sq(model, batches)
    assert set(sums[0]) == set(LINEARS)
    block = model.layers[0]
    with torch.no_grad():
        x = torch.cat([model.tok_embeddings(t) for t in batches]).reshape(-1, 32, 64)
        normed = block.attention_norm(x)
        h = x + block.attention(normed, model.rope[:32], torch.arange(32))
        ffn_in = block.ffn_norm(h)
        w2_in = torch.nn.functional.silu(block.feed_forward.w1(ffn_in)) * block.feed_forward.w3(ffn_in)
    for name in ("attention.wq", "attention.wk", "attention.wv"):
        assert torch.allclose(sums[0][name], normed.pow(2).sum((0, 1)), rtol=1e-5)
    assert torch.allclose(sums[0]["feed_forward.w1"], ffn_in.pow(2).sum((0, 1)), rtol=1e-5)
    assert torch.allclose(sums[0]["feed_forward.w2"], w2_in.pow(2).sum((0, 1)), rtol=1e-4)


def test_planted_outliers_give_the_highest_ratio():
    model = tiny_model(n_layers=4)
    planted = model.layers[2]
    features = list(range(0, 64, 8))
    with torch.no_grad():
        # Eight outlier features (x10) at the input of wq/wk; wv's weights compensate so the block's
        # output, and with it the blocks after it, stay as they were.
        planted.attention_norm.weight[features] *= 10.0
        planted.attention.wv.weight[:, features] /= 10.0
    ratios = outlier_ratios(model, calib(), M=5.0)
    assert max(range(4), key=ratios.__getitem__) == 2
    assert ratios[2] > 1.5 * max(ratios[i] for i in (0, 1, 3))


def test_ratio_is_invariant_to_rescaling_activations_and_weights():
    model = tiny_model()
    sums = collect_input_sum_sq(model, calib())
    base = outlier_report(model, sums, M=3.0)
    scaled_sums = [{k: v * 37.0 ** 2 for k, v in block.items()} for block in sums]  # X -> 37 X
    assert outlier_report(model, scaled_sums, M=3.0) == base
    with torch.no_grad():
        for block in model.layers:
            for lin in block_linears(block).values():
                lin.weight.mul_(0.125)  # exact in binary floating point
    assert outlier_report(model, sums, M=3.0) == base


def test_larger_M_gives_smaller_ratios():
    model = tiny_model()
    sums = collect_input_sum_sq(model, calib())
    per_M = [outlier_report(model, sums, M)["ratios"] for M in (1.0, 2.0, 3.0, 5.0, 13.0)]
    for smaller, larger in zip(per_M, per_M[1:]):
        assert all(a >= b for a, b in zip(smaller, larger))
    assert all(a > b for a, b in zip(per_M[0], per_M[-1]))


def test_matrix_ratios_are_each_matrix_on_its_own():
    model = tiny_model()
    sums = collect_input_sum_sq(model, calib())
    report = outlier_report(model, sums, M=2.0)
    wo = model.layers[1].attention.wo.weight
    own = brute_force_ratio([wo.detach()], [sums[1]["attention.wo"].sqrt()], 2.0)
    assert report["matrix_ratios"][1]["attention.wo"] == pytest.approx(own, abs=1e-12)


def test_blockwise_mode_equals_one_forward():
    model = tiny_model(n_layers=3)
    full = collect_input_sum_sq(model, calib())
    blockwise = collect_input_sum_sq(model, calib(), blockwise=True, device="cpu")
    for a, b in zip(full, blockwise):
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], rtol=1e-5) for k in a)


def test_wrapped_linears_are_still_scored():
    from optim.lora import apply_lora

    model = tiny_model()
    expected = outlier_ratios(model, calib(), M=3.0)
    apply_lora(model, rank=4, alpha=8.0)  # B = 0: same function, linears now inside LoRALinear wrappers
    assert set(block_linears(model.layers[0])) == {f"{name}.base" for name in LINEARS}
    assert outlier_ratios(model, calib(), M=3.0) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("bad,message", [
    ([torch.rand(2, 8)], "integer tensor"),
    ([torch.randint(0, 256, (8,))], "integer tensor"),
    ([torch.full((1, 8), 256)], r"token ids must be in \[0, 256\)"),
    ([], "no calibration batches"),
])
def test_bad_batches_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        outlier_ratios(tiny_model(), bad, M=3.0)


@pytest.mark.parametrize("M", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_M_raises(M):
    with pytest.raises(ValueError, match="M must be a positive finite number"):
        outlier_ratios(tiny_model(), calib(), M=M)


def test_nan_activations_raise():
    model = tiny_model()
    with torch.no_grad():
        model.layers[0].attention.wv.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        outlier_ratios(model, calib(), M=3.0)


def test_set_trainable_freezes_inactive_blocks_and_follows_the_outer_flag():
    model = tiny_model(n_layers=3)
    set_trainable(model, [1])
    assert all(p.requires_grad == (i == 1) for i, b in enumerate(model.layers) for p in b.parameters())
    assert model.tok_embeddings.weight.requires_grad and model.norm.weight.requires_grad
    set_trainable(model, [0, 2], train_outer=False)
    assert not model.output.weight.requires_grad and not model.norm.weight.requires_grad
    assert all(p.requires_grad == (i != 1) for i, b in enumerate(model.layers) for p in b.parameters())
    assert isinstance(model.layers[0].attention.wq, nn.Linear)


def test_calibration_and_alphas_show_progress_bars_only_when_asked(capsys):
    from sampling.htsr import block_alphas

    torch.manual_seed(0)
    model = Transformer(get_config("tiny")).eval()
    batches = [torch.randint(0, 256, (1, 8)) for _ in range(3)]
    quiet = outlier_ratios(model, batches, M=3)
    assert capsys.readouterr().err == ""
    assert outlier_ratios(model, batches, M=3, progress=True) == quiet
    block_alphas(model, progress=True)
    err = capsys.readouterr().err
    assert "calibration:" in err and "/3 " in err and "HT-SR alphas:" in err and "/2 " in err  # bars with their totals


def test_decoder_blocks_is_the_largest_module_list_of_any_model():
    from sampling.blocks import decoder_blocks

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))  # nested: smaller than the stack

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(8, 2)])
            self.decoder = nn.Module()
            self.decoder.stack = nn.ModuleList(Block() for _ in range(3))

    model = Wrapped()
    assert decoder_blocks(model) is model.decoder.stack
    ours = Transformer(get_config("tiny"))
    assert decoder_blocks(ours) is ours.layers
    with pytest.raises(ValueError, match="no nn.ModuleList"):
        decoder_blocks(nn.Linear(2, 2))
