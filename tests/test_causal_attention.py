"""Both attention kernels compute `scaled_dot_product_attention(..., is_causal=True)`, value and
gradient, and the kernel is chosen by context length, score size and threads."""

import math

import pytest
import torch
import torch.nn.functional as F

from tinyinduct import causal_attention as ca
from tinyinduct.causal_attention import SmallContextAttention, causal_attention


def qkv(n_ctx, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(3, 2, n_ctx, 4, dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("n_ctx", [1, 5, 64, 65])  # one position, short, the boundary, above it
def test_causal_attention_equals_sdpa_value_and_gradient(n_ctx, two_threads):
    q, k, v = qkv(n_ctx)
    grad_z = torch.randn(3, 2, n_ctx, 4)
    causal_attention(q, k, v, 0.5).backward(grad_z)
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)
    z.backward(grad_z)
    torch.testing.assert_close(causal_attention(q, k, v, 0.5), z)
    for mine, t in zip(ours, (q, k, v)):
        torch.testing.assert_close(mine, t.grad)


def test_a_query_sees_only_itself_and_earlier_keys():
    """Hand-built: the key at position 2 matches every query far better than any other, so a
    query at 2 or later attends to it alone and a query before it spreads evenly over what it
    may see (the values are the positions)."""
    n = 5
    q = torch.ones(1, n, 1)
    k = torch.zeros(1, n, 1)
    k[0, 2] = 100.0
    v = torch.arange(n, dtype=torch.float32).view(1, n, 1)
    z = SmallContextAttention.apply(q, k, v, 1.0)[0, :, 0]
    torch.testing.assert_close(z, torch.tensor([0.0, 0.5, 2.0, 2.0, 2.0]))


def test_gradcheck():
    q, k, v = (t.detach()[0].requires_grad_() for t in qkv(6, torch.float64))
    assert torch.autograd.gradcheck(
        lambda a, b, c: SmallContextAttention.apply(a, b, c, 1 / math.sqrt(4)), (q, k, v))


def test_the_kernel_is_chosen_by_context_length_score_size_and_threads(monkeypatch, two_threads):
    cpu = torch.device("cpu")
    assert ca.kernel_for(128, 64, 4, cpu) == "matmuls"  # the default shape at head size 4
    assert ca.kernel_for(128 * 16, 64, 4, cpu) == "flash"  # 16 stacked default models
    calls = []
    monkeypatch.setattr(ca.SmallContextAttention, "apply",
                        lambda *args: calls.append(args[0].shape) or torch.zeros(args[0].shape))
    for n_ctx in (ca.SMALL_CONTEXT, ca.SMALL_CONTEXT + 1):
        causal_attention(*qkv(n_ctx), 0.5)
    assert calls == [(6, ca.SMALL_CONTEXT, 4)]  # 3 x 2 sequences, the short context only
    monkeypatch.setattr(ca, "SMALL_SCORES", 6 * 16 * 16 - 1)  # one element too many
    causal_attention(*qkv(16), 0.5)
    torch.set_num_threads(1)
    causal_attention(*qkv(8), 0.5)
    assert len(calls) == 1
