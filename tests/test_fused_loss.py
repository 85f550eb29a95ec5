"""The chunked unembedding + cross-entropy is `cross_entropy(resid @ W_U + b_U, targets)`."""

import pytest
import torch
import torch.nn.functional as F

from tinyinduct import fused_loss
from tinyinduct.fused_loss import IGNORE, unembed_cross_entropy


@pytest.mark.parametrize("chunk_floats", [7, 100, 1 << 18])  # many, uneven and one chunk
@pytest.mark.parametrize("models", [1, 3])
def test_values_and_gradients_equal_plain_cross_entropy(monkeypatch, chunk_floats, models):
    monkeypatch.setattr(fused_loss, "CHUNK_FLOATS", chunk_floats)
    torch.manual_seed(0)
    n, d, v = 13, 6, 11
    resid = torch.randn(models, n, d, dtype=torch.float64, requires_grad=True)
    W_U = torch.randn(models, d, v, dtype=torch.float64, requires_grad=True)
    b_U = torch.randn(models, v, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (models, n))
    targets[:, -1] = IGNORE
    targets[0, 3] = IGNORE
    weights = torch.rand(models, n, dtype=torch.float64)  # any upstream gradient
    fused = unembed_cross_entropy(resid, W_U, b_U, targets)
    (fused * weights).sum().backward()
    got = [t.grad.clone() for t in (resid, W_U, b_U)]
    for t in (resid, W_U, b_U):
        t.grad = None
    plain = F.cross_entropy((resid @ W_U + b_U[:, None]).flatten(0, 1), targets.flatten(),
                            ignore_index=IGNORE, reduction="none").view(models, n)
    (plain * weights).sum().backward()
    torch.testing.assert_close(fused, plain)
    assert torch.all(fused[targets == IGNORE] == 0)
    for g, t in zip(got, (resid, W_U, b_U)):
        torch.testing.assert_close(g, t.grad)


def test_gradcheck():
    torch.manual_seed(1)
    resid = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    W_U = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b_U = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0, 1, 2, 3, IGNORE], [3, IGNORE, 1, 0, 2]])
    assert torch.autograd.gradcheck(
        lambda r, w, b: unembed_cross_entropy(r, w, b, targets), (resid, W_U, b_U))
