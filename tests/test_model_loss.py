import pytest
import torch
import torch.nn.functional as F

from model.loss import chunked_cross_entropy


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_equals_full_cross_entropy_value_and_gradients(chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(3, 20, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 20))
    labels[0, :5] = -100
    labels[2, -3:] = -100
    expected = F.cross_entropy((hidden @ weight.T).float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    g_expected = torch.autograd.grad(expected, (hidden, weight))
    loss = chunked_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)
    g = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss, expected)
    for a, b in zip(g, g_expected):
        torch.testing.assert_close(a, b)


def test_no_grad_and_bad_inputs():
    hidden, weight = torch.randn(2, 5, 8), torch.randn(11, 8)
    labels = torch.randint(0, 11, (2, 5))
    with torch.no_grad():
        expected = F.cross_entropy((hidden @ weight.T).flatten(0, 1), labels.flatten())
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, labels, chunk_size=3), expected)
    with pytest.raises(ValueError, match="disagree"):
        chunked_cross_entropy(hidden, weight, labels[:, :4])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(hidden, weight, labels, chunk_size=0)
