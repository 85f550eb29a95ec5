"""The native attention kernel computes `scaled_dot_product_attention(..., is_causal=True)`,
value and gradient, reads and writes the projections' row layout in place, and gives way to
torch's kernels where it is switched off or cannot be built."""

import pytest
import torch
import torch.nn.functional as F

from tinyinduct import causal_attention as ca
from tinyinduct import native, native_attention
from tinyinduct.native_attention import NativeAttention

CPU = torch.device("cpu")
# built here, or skipped (no C++ compiler): CI builds the kernels before the tests and fails
# if they do not build, so there these never skip
built = pytest.mark.skipif(native.extension() is None,
                           reason="tinyinduct's CPU kernels could not be built here")


def reference(q, k, v, scale, grad_z):
    """z and the gradients of q, k, v in float64 by torch's kernel."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    z = F.scaled_dot_product_attention(*leaves, is_causal=True, scale=scale)
    z.backward(grad_z.double())
    return z, [t.grad for t in leaves]


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-threads")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@built
@pytest.mark.parametrize("d_head", [8, 16])
@pytest.mark.parametrize("n_ctx", [1, 3, 16, 17, 64, 65, 130])  # padding; pattern kept to 128
def test_value_and_gradient_equal_torch_attention(n_ctx, d_head, threads):
    torch.manual_seed(n_ctx)
    q, k, v = (torch.randn(3, 2, n_ctx, d_head, requires_grad=True) for _ in range(3))
    grad_z = torch.randn(3, 2, n_ctx, d_head)
    z = NativeAttention.apply(q, k, v, 0.3)
    z.backward(grad_z)
    want_z, want_grads = reference(q, k, v, 0.3, grad_z)
    torch.testing.assert_close(z.double(), want_z, atol=2e-6, rtol=1e-5)
    for t, want in zip((q, k, v), want_grads):
        torch.testing.assert_close(t.grad.double(), want, atol=2e-5, rtol=1e-4)


@built
def test_a_query_sees_only_itself_and_earlier_keys():
    """Hand-built: the key at position 2 matches every query far better than any other, so a
    query at 2 or later attends to it alone and a query before it spreads evenly over what it
    may see (the values are the positions)."""
    n = 5
    q = torch.ones(1, 1, n, 8)
    k = torch.zeros(1, 1, n, 8)
    k[0, 0, 2] = 20.0
    v = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 1, n, 8).contiguous()
    z = NativeAttention.apply(q, k, v, 1.0)[0, 0, :, 0]
    torch.testing.assert_close(z, torch.tensor([0.0, 0.5, 2.0, 2.0, 2.0]))


@built
def test_rows_are_read_in_place_and_everything_comes_back_as_rows():
    """q, k, v as the slots of one rows buffer `[N, pos, 3, heads, d_head]` (the projections'
    matmul output) are read in place; z and the gradients are stored as rows."""
    torch.manual_seed(0)
    N, h, p, e = 2, 3, 10, 16
    rows = torch.randn(N, p, 3, h, e, requires_grad=True)
    q, k, v = (rows[:, :, i].transpose(1, 2) for i in range(3))
    grad_z = torch.randn(N, h, p, e)
    z = NativeAttention.apply(q, k, v, 0.25)
    grads = torch.autograd.grad(z, (q, k, v), grad_z)
    for t in (z, *grads):  # [N, pos, heads, d_head] rows
        assert t.transpose(1, 2).is_contiguous()
    want_z, want_grads = reference(q, k, v, 0.25, grad_z)
    torch.testing.assert_close(z.double(), want_z, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)


@built
def test_the_native_kernel_runs_where_it_can(monkeypatch):
    assert ca.kernel_for(128, 64, 16, CPU) == "native"
    assert ca.kernel_for(128, 64, 8, CPU) == "native"
    assert ca.kernel_for(128, 64, 4, CPU) != "native"  # head size 4: torch's kernels
    assert ca.kernel_for(128, 64, 16, CPU, torch.float64) != "native"
    assert ca.kernel_for(4, native_attention.MAX_CONTEXT, 16, CPU) == "native"
    assert ca.kernel_for(4, native_attention.MAX_CONTEXT + 1, 16, CPU) == "flash"
    monkeypatch.setenv(native.SWITCH, "0")
    assert ca.kernel_for(128, 64, 16, CPU) != "native"
    q, k, v = (torch.randn(2, 2, 9, 16) for _ in range(3))
    torch.testing.assert_close(ca.causal_attention(q, k, v, 0.25),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                              scale=0.25))
    monkeypatch.setenv(native.SWITCH, "yes")
    with pytest.raises(ValueError, match="TINYINDUCT_NATIVE='yes'.*0.*1"):
        ca.kernel_for(128, 64, 16, CPU)


def test_a_kernel_that_cannot_be_built_warns_once_and_torch_runs(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    import torch.utils.cpp_extension as cpp_extension
    monkeypatch.setenv(native.SWITCH, "1")
    monkeypatch.setattr(cpp_extension, "load_inline", no_compiler)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_extension", None)
    with pytest.warns(RuntimeWarning, match="could not be built .*no C\\+\\+ compiler found"):
        assert ca.kernel_for(128, 64, 16, CPU) in ("matmuls", "flash")
    assert native.extension() is None  # tried once: no second attempt, no warning
    assert not native_attention.runs_on(CPU, 16, torch.float32, 64)


@built
@pytest.mark.parametrize("n_ctx", [20, 140])  # the pattern kept, and recomputed
def test_a_non_finite_key_reaches_exactly_the_queries_that_see_it(n_ctx):
    """The kernels are compiled with fast math; a NaN or an infinity must still come out where
    torch's kernel gives it (the training loop's non-finite guard relies on it): a NaN key makes
    every later query's output NaN, an infinite one those whose score it makes +inf."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, n_ctx, 16) for _ in range(3))
    for bad in (float("nan"), float("inf")):
        k[0, 1, 7, 3] = bad
        z = NativeAttention.apply(q, k, v, 0.25)
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25)
        assert torch.equal(z.isfinite(), want.isfinite()), bad
        assert not z[0, 1, 7:].isfinite().all() and z[0, 1, :7].isfinite().all(), bad
