"""Optimizer-state bytes from shapes alone agree with the bytes GaLoreAdamW really holds."""
import pytest
import torch

from optim import GaLoreAdamW, RandomProjector, SVDProjector, lora_param_count, measured_state_bytes, state_bytes
from optim.projector import PROJ_TYPES

SHAPES = [(12, 5), (5, 12), (7, 7), (3, 40)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [None, 2, 5, 50])
@pytest.mark.parametrize("proj_type", PROJ_TYPES)
@pytest.mark.parametrize("dtype, fp32_moments", [(torch.float32, False), (torch.bfloat16, False),
                                                 (torch.bfloat16, True)])
@pytest.mark.parametrize("kind", [SVDProjector, RandomProjector])
def test_state_bytes_match_measured_state(shape, rank, proj_type, dtype, fp32_moments, kind):
    w = torch.nn.Parameter(torch.randn(shape, dtype=dtype))
    projector = None if rank is None else kind(rank, proj_type)
    opt = GaLoreAdamW([{"params": [w], "projector": projector}], fp32_moments=fp32_moments)
    w.grad = torch.randn(shape, dtype=dtype)
    opt.step()
    moments_dtype = torch.float32 if fp32_moments else None
    assert measured_state_bytes(opt) == state_bytes(shape, projector, dtype, moments_dtype)


def test_formula_of_galore():
    m, n, r = 4096, 11008, 128  # m <= n: projector r m + moments 2 r n, against Adam 2 m n
    assert state_bytes((m, n), SVDProjector(r)) == 4 * (r * m + 2 * r * n)
    assert state_bytes((m, n)) == 4 * 2 * m * n
    assert state_bytes((n, m), SVDProjector(r), dtype=torch.bfloat16) == 2 * (r * m + 2 * r * n)
    assert state_bytes((n, m), SVDProjector(r), torch.bfloat16, torch.float32) == 2 * r * m + 4 * 2 * r * n
    assert state_bytes((m, m), SVDProjector(r, "full")) == 4 * (2 * m * r + 2 * r * r)
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
        state_bytes((4, 4), SVDProjector(2, "sideways"))
