"""Optimizer-state bytes from shapes alone agree with the bytes GaLoreAdamW really holds."""
import pytest
import torch

from optim import GaLoreAdamW, lora_param_count, measured_state_bytes, state_bytes, state_bytes_table
from optim.projector import PROJ_TYPES

SHAPES = [(12, 5), (5, 12), (7, 7), (3, 40)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [None, 2, 5, 50])
@pytest.mark.parametrize("proj_type", PROJ_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_match_measured_state(shape, rank, proj_type, dtype):
    w = torch.nn.Parameter(torch.randn(shape, dtype=dtype))
    group = {"params": [w]} if rank is None else {"params": [w], "rank": rank, "proj_type": proj_type}
    opt = GaLoreAdamW([group])
    w.grad = torch.randn(shape, dtype=dtype)
    opt.step()
    assert measured_state_bytes(opt) == state_bytes(shape, rank, proj_type, dtype)


def test_formula_of_the_spec_and_table_totals():
    m, n, r = 4096, 11008, 128  # m <= n: projector r m + moments 2 r n, against Adam 2 m n
    assert state_bytes((m, n), r) == 4 * (r * m + 2 * r * n)
    assert state_bytes((m, n)) == 4 * 2 * m * n
    assert state_bytes((n, m), r, dtype=torch.bfloat16) == 2 * (r * m + 2 * r * n)
    entries = [
        ("wq", (m, m), {"rank": r}),
        ("norm", (m,), {}),
        ("w1", (n, m), {"lora_rank": 8}),
        ("frozen", (m, n), {"frozen": True}),
    ]
    per_param, total = state_bytes_table(entries)
    assert per_param == {
        "wq": 4 * 3 * r * m,
        "norm": 4 * 2 * m,
        "w1": 4 * 2 * 8 * (m + n),
        "frozen": 0,
    }
    assert total == sum(per_param.values())
    assert lora_param_count((n, m), 8) == 8 * (m + n)


def test_measured_bytes_count_shared_storage_once_and_drop_to_zero():
    a, b = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(6, 4))
    opt = GaLoreAdamW([a, b])
    a.grad = b.grad = torch.randn(6, 4)
    opt.step()
    assert measured_state_bytes(opt) == 2 * state_bytes((6, 4))
    opt.state[b]["alias"] = opt.state[a]["exp_avg"]
    assert measured_state_bytes(opt) == 2 * state_bytes((6, 4))
    opt.drop_state([a, b])
    assert measured_state_bytes(opt) == 0


def test_unknown_proj_type_in_accounting_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown proj_type"):
        state_bytes((4, 4), 2, "sideways")
