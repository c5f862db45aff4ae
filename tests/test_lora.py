"""LoRA baseline: wrapping, freezing, init, merge equals unmerged, original names after merge."""
import pytest
import torch
from torch import nn

from model.config import get_config
from model.transformer import Transformer
from optim import GaLoreAdamW, LoRALinear, apply_lora, lora_param_count, merge_lora


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq = nn.Linear(8, 8, bias=False)
        self.w1 = nn.Linear(8, 12, bias=True)
        self.w2 = nn.Linear(12, 8, bias=False)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.w2(torch.relu(self.w1(self.norm(self.wq(x)))))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.output = nn.Linear(8, 5)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return self.output(x)


def _train_adapters(model, adapters, steps=3):
    opt = GaLoreAdamW(adapters, lr=0.05)
    for step in range(steps):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def test_apply_lora_wraps_targets_freezes_the_rest_and_starts_at_base_output():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(3, 8)
    base_out = model(x)
    adapters = apply_lora(model, rank=2, alpha=4.0, dropout=0.0, targets=("wq", "w1", "w2"))
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 6 and not isinstance(model.output, LoRALinear)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in adapters}
    expected = sum(lora_param_count(m.base.weight.shape, 2) for m in wrapped)
    assert sum(p.numel() for p in adapters) == expected
    for m in wrapped:
        assert m.scaling == 2.0 and torch.count_nonzero(m.lora_B) == 0
        bound = 1 / m.base.in_features**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in
        assert m.lora_A.abs().max() <= bound and m.lora_A.std() > 0.2 * bound
    torch.testing.assert_close(model(x), base_out)


def test_merged_output_equals_unmerged_and_keeps_original_names():
    torch.manual_seed(0)
    model = Tiny()
    names = set(model.state_dict())
    adapters = apply_lora(model, rank=3, alpha=6.0, dropout=0.1, targets=("wq", "w1", "w2"))
    _train_adapters(model, adapters)
    model.eval()
    x = torch.randn(5, 8)
    unmerged = model(x)
    expected_w1 = model.layers[0].w1.base.weight + 2.0 * model.layers[0].w1.lora_B @ model.layers[0].w1.lora_A
    assert torch.count_nonzero(model.layers[0].w1.lora_B) > 0  # trained, so merging is not trivial
    merge_lora(model)
    assert set(model.state_dict()) == names
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.layers[0].w1.weight, expected_w1, atol=1e-6, rtol=1e-6)


def test_in_place_merge_and_unmerge_round_trip():
    torch.manual_seed(0)
    model = Tiny()
    adapters = apply_lora(model, rank=2, alpha=2.0, targets=("w1",))
    _train_adapters(model, adapters)
    layer = model.layers[0].w1
    base_weight = layer.base.weight.detach().clone()
    x = torch.randn(4, 8)
    unmerged = model(x)
    layer.merge()
    model.layers[1].w1.merge()
    assert not torch.equal(layer.base.weight, base_weight)
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, base_weight, atol=1e-6, rtol=1e-6)


def test_lora_on_project_transformer_merges_exactly():
    torch.manual_seed(0)
    model = Transformer(get_config("tiny"))
    tokens = torch.randint(0, 256, (2, 9))
    adapters = apply_lora(model, rank=4, alpha=8.0)
    assert len(adapters) == 2 * 7 * len(model.layers)
    opt = GaLoreAdamW(adapters, lr=0.01)
    logits = model(tokens)
    nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), tokens[:, 1:].reshape(-1)).backward()
    opt.step()
    with torch.no_grad():
        unmerged = model(tokens)
    merge_lora(model)
    assert isinstance(model.layers[0].attention.wq, nn.Linear) and "layers.0.attention.wq.weight" in model.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), unmerged, atol=1e-4, rtol=1e-4)


def test_bad_lora_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(Tiny(), rank=2, alpha=2.0, targets=("q_proj",))
    model = Tiny()
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model, rank=0, alpha=2.0)
    assert all(p.requires_grad for p in model.parameters())  # refused before touching the model
    with pytest.raises(ValueError, match="dropout"):
        apply_lora(Tiny(), rank=2, alpha=2.0, dropout=1.0)
