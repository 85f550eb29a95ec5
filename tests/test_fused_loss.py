"""The chunked unembedding + mean cross-entropy is `cross_entropy(resid @ W_U + b_U, targets)`,
value and gradient (which it computes in the forward pass)."""

import pytest
import torch
import torch.nn.functional as F

from tinyinduct import fused_loss, native
from tinyinduct.fused_loss import IGNORE, unembed_mean_cross_entropy


# float32 on a CPU takes tinyinduct's softmax + cross-entropy kernel, float64 torch's operations;
# a vocabulary of 11 and of 24: a tail after the kernel's 8-wide steps, and none
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("v", [11, 24])
@pytest.mark.parametrize("chunk_floats", [7, 100, 1 << 18])  # many, uneven and one chunk
@pytest.mark.parametrize("models", [1, 3])
def test_mean_loss_and_its_precomputed_gradient_equal_plain_cross_entropy(
        monkeypatch, chunk_floats, models, v, dtype):
    monkeypatch.setattr(fused_loss, "CHUNK_FLOATS", chunk_floats)
    torch.manual_seed(2)
    n, d = 13, 6
    resid = torch.randn(models, n, d, dtype=dtype, requires_grad=True)
    W_U = torch.randn(models, d, v, dtype=dtype, requires_grad=True)
    b_U = torch.randn(models, v, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, v, (models, n))
    targets[:, -1] = IGNORE
    targets[0, 3] = IGNORE  # model 0 averages over one row fewer
    weights = torch.rand(models, dtype=dtype) + 0.5  # each model's upstream gradient
    fused = unembed_mean_cross_entropy(resid, W_U, b_U, targets)
    (fused * weights).sum().backward()
    got = [t.grad.clone() for t in (resid, W_U, b_U)]
    for t in (resid, W_U, b_U):
        t.grad = None
    plain = torch.stack([F.cross_entropy(resid[k] @ W_U[k] + b_U[k], targets[k],
                                         ignore_index=IGNORE) for k in range(models)])
    (plain * weights).sum().backward()
    torch.testing.assert_close(fused, plain)
    for g, t in zip(got, (resid, W_U, b_U)):
        torch.testing.assert_close(g, t.grad)
    with torch.no_grad():  # evaluation: the same value, without the gradient pass
        torch.testing.assert_close(unembed_mean_cross_entropy(resid, W_U, b_U, targets), plain)


def test_two_losses_before_either_backward_keep_their_own_gradients():
    """The chunk's logits buffer is reused from call to call (float32 on a CPU, where the kernel
    runs): a second loss computed before the first one's backward pass must not change the
    first one's gradient, and a smaller call after a larger one takes the front of the buffer."""
    torch.manual_seed(4)
    calls = []
    for rows in (40, 40, 17):
        resid = torch.randn(1, rows, 8, requires_grad=True)
        W_U = torch.randn(1, 8, 24, requires_grad=True)
        b_U = torch.randn(1, 24, requires_grad=True)
        targets = torch.randint(0, 24, (1, rows))
        calls.append((unembed_mean_cross_entropy(resid, W_U, b_U, targets),
                      (resid, W_U, b_U), targets))
    for loss, inputs, targets in calls:
        loss.sum().backward()
        got = [t.grad.clone() for t in inputs]
        resid, W_U, b_U = (t.detach().requires_grad_() for t in inputs)
        plain = F.cross_entropy(resid[0] @ W_U[0] + b_U[0], targets[0])
        plain.backward()
        torch.testing.assert_close(loss[0], plain)
        for g, t in zip(got, (resid, W_U, b_U)):
            torch.testing.assert_close(g, t.grad)


def test_mean_loss_on_a_float32_training_shape_equals_cross_entropy():
    """The shape of a default step (2,048 rows, 512 tokens, several chunks) in float32."""
    torch.manual_seed(3)
    resid = torch.randn(1, 2048, 64, requires_grad=True)
    W_U = (0.3 * torch.randn(1, 64, 512)).requires_grad_()
    b_U = (0.1 * torch.randn(1, 512)).requires_grad_()
    targets = torch.randint(0, 512, (1, 2048))
    targets[0, 63::64] = IGNORE  # each sequence's last position
    unembed_mean_cross_entropy(resid, W_U, b_U, targets).sum().backward()
    got = [t.grad.clone() for t in (resid, W_U, b_U)]
    for t in (resid, W_U, b_U):
        t.grad = None
    F.cross_entropy(torch.addmm(b_U[0], resid[0], W_U[0]), targets[0],
                    ignore_index=IGNORE).backward()
    for g, t in zip(got, (resid, W_U, b_U)):
        torch.testing.assert_close(g, t.grad, atol=1e-7, rtol=1e-4)


def test_gradcheck():
    torch.manual_seed(1)
    resid = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    W_U = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b_U = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0, 1, 2, 3, IGNORE], [3, IGNORE, 1, 0, 2]])
    assert torch.autograd.gradcheck(
        lambda r, w, b: unembed_mean_cross_entropy(r, w, b, targets), (resid, W_U, b_U))


def test_a_confident_wrong_model_gets_its_full_loss():
    """Logit gaps far beyond float32's exponent range: the loss is the gap (the target's
    probability underflows to 0, its log-sum-exp does not), and the gradient is finite."""
    resid = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    W_U = torch.tensor([[[500.0, 0.0, 0.0], [0.0, 0.0, 300.0]]], requires_grad=True)
    b_U = torch.zeros(1, 3, requires_grad=True)
    targets = torch.tensor([[1, 0]])  # logits [500, 0, 0] and [0, 0, 300]
    loss = unembed_mean_cross_entropy(resid, W_U, b_U, targets)
    torch.testing.assert_close(loss, torch.tensor([(500.0 + 300.0) / 2]))
    loss.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (resid, W_U, b_U))
    plain = F.cross_entropy(resid[0] @ W_U[0] + b_U[0], targets[0])
    torch.testing.assert_close(loss[0], plain)


def test_a_non_finite_input_gives_a_non_finite_loss():
    """float32 takes the fast-math softmax kernel: a NaN or an infinity in one row still makes
    the loss non-finite (the training loop's non-finite guard relies on it)."""
    torch.manual_seed(0)
    resid, W_U, b_U = torch.randn(1, 10, 8), torch.randn(1, 8, 24), torch.randn(1, 24)
    targets = torch.randint(0, 24, (1, 10))
    for bad in (float("nan"), float("inf")):
        resid[0, 4, 2] = bad
        assert not unembed_mean_cross_entropy(resid, W_U, b_U, targets).isfinite().any(), bad


@pytest.mark.skipif(native.extension() is None,
                    reason="tinyinduct's CPU kernels could not be built here")
def test_the_kernels_gradient_holds_no_subnormal_number():
    """A weighted probability below float32's smallest normal number (1.2e-38) is 0 in the
    kernel's gradient, where torch's is subnormal; every other entry is torch's. With the
    residual the identity, W_U's gradient is the logits' gradient itself."""
    tiny = torch.finfo(torch.float32).tiny
    resid = torch.eye(4)[None]
    W_U = torch.zeros(1, 4, 16)
    W_U[0, :, 3] = -86.5  # probability e^-86.5 / ~16 = 1.7e-39 after the 1/4 weight: subnormal
    W_U[0, :, 5] = -70.0  # 4e-31 / ~16 / 4: normal
    W_U.requires_grad_()
    targets = torch.tensor([[0, 1, 2, 4]])
    unembed_mean_cross_entropy(resid, W_U, torch.zeros(1, 16), targets).sum().backward()
    got = W_U.grad[0]
    want = torch.autograd.grad(F.cross_entropy(resid[0] @ W_U[0], targets[0]), W_U)[0][0]
    assert (want[:, 3] > 0).all() and (want[:, 3] < tiny).all()  # torch's: subnormal
    assert (got[:, 3] == 0).all()
    assert not ((got != 0) & (got.abs() < tiny)).any()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=tiny)  # the kernel's exponential
    assert (got[:, 5] > 0).all()
