"""The projections' autograd functions compute the einsums they replace, value and gradient, and
the fused path that uses them trains exactly as the explicit path (autograd through einsums)."""

import pytest
import torch

from tinyinduct import AttnOnlyTransformer, ModelConfig
from tinyinduct.head_projections import project_heads, project_out
from tinyinduct.stack import next_token_loss


def leaves(*shapes, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("n", [1, 3])  # one projection reads x, or all three do
@pytest.mark.parametrize("bias", [False, True])
def test_project_heads_is_an_einsum_per_projection(n, bias):
    G, b, p, d, h, e = 2, 3, 5, 4, 2, 3
    x, *rest = leaves((G, b, p, d), *[(G, h, d, e)] * n, *[(G, h, e)] * (n if bias else 0))
    weights, biases = tuple(rest[:n]), (tuple(rest[n:]) if bias else None)
    heads = project_heads(x, weights, biases)
    for i, y in enumerate(heads):  # [G * b, h, p, e], model-major, then batch
        want = torch.einsum("gbpd,ghde->gbhpe", x, weights[i])
        if bias:
            want = want + biases[i][:, None, :, None, :]
        torch.testing.assert_close(y, want.reshape(G * b, h, p, e))
    assert all(y.is_contiguous() for y in heads)
    assert torch.autograd.gradcheck(
        lambda *t: project_heads(t[0], t[1:n + 1], t[n + 1:] if bias else None), (x, *rest))


@pytest.mark.parametrize("residual", [False, True])  # added inside the matmul, or not given
@pytest.mark.parametrize("bias", [False, True])
def test_project_out_sums_the_heads_through_W_O(bias, residual):
    G, b, h, p, e, d = 2, 3, 2, 5, 3, 4
    z, W_O, b_O, r = leaves((G, b, h, p, e), (G, h, e, d), (G, d), (G, b, p, d))
    out = project_out(z, W_O, b_O if bias else None, r if residual else None)
    want = (torch.einsum("gbhpe,ghed->gbpd", z, W_O) + (b_O[:, None, None] if bias else 0)
            + (r if residual else 0))
    torch.testing.assert_close(out, want)
    assert torch.autograd.gradcheck(
        lambda a, w, c, x: project_out(a, w, c if bias else None, x if residual else None),
        (z, W_O, b_O, r))


VARIANTS = [dict(positional=pos, attn_bias=bias, blocked_composition=blocked)
            for pos in ("standard", "shortformer") for bias in (False, True)
            for blocked in ([], ["K"], ["Q", "V"])]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_fused_path_gradients_equal_the_explicit_paths(variant, two_threads):
    """Every kernel of `causal_attention` too: at head size 5 n_ctx 16 takes the matmuls and 80
    the flash kernel, at head sizes 8 and 16 the native kernel runs."""
    for n_ctx, d_head in ((16, 5), (80, 5), (16, 8), (37, 16)):
        torch.manual_seed(0)
        model = AttnOnlyTransformer(ModelConfig(n_layers=2, n_heads=3, d_model=24, d_head=d_head,
                                                n_ctx=n_ctx, d_vocab=40, **variant))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        tokens = torch.randint(0, 40, (4, n_ctx))
        next_token_loss(model(tokens), tokens).backward()
        fused = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad()
        cache = {}
        next_token_loss(model(tokens, cache=cache), tokens).backward()  # every hook: explicit
        assert cache["blocks.1.attn.hook_pattern"].shape == (4, 3, n_ctx, n_ctx)
        for name, p in model.named_parameters():
            torch.testing.assert_close(fused[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
