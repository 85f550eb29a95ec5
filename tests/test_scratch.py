"""`scratch.empty` hands memory out again only when nothing else holds it."""

import pytest
import torch

from tinyinduct import scratch

LARGE = (4, scratch.SMALLEST)  # pooled: at least SMALLEST elements


@pytest.fixture(autouse=True)
def own_pool():
    scratch._local.buffers = []  # this thread's pool, empty for each test
    yield
    scratch._local.buffers = []


def test_memory_nothing_holds_is_handed_out_again():
    first = scratch.empty(LARGE, torch.float32, torch.device("cpu"))
    address = first.data_ptr()
    del first
    again = scratch.empty(LARGE, torch.float32, torch.device("cpu"))
    assert again.data_ptr() == address and again.shape == LARGE and again.is_contiguous()
    assert scratch.kept() == 1


def test_memory_still_held_is_not_handed_out():
    held = scratch.empty(LARGE, torch.float32, "cpu")
    view = held[1:]  # a view holds the memory too
    del held
    other = scratch.empty(LARGE, torch.float32, "cpu")
    assert other.data_ptr() != view.data_ptr() - view.stride(0) * 4
    assert scratch.kept() == 2
    # another size or type never shares a buffer
    assert scratch.empty((2, scratch.SMALLEST), torch.float32, "cpu").data_ptr() not in (
        other.data_ptr(),)
    assert scratch.empty(LARGE, torch.float64, "cpu").dtype == torch.float64


class _Saves(torch.autograd.Function):
    """Saves a scratch tensor for its backward pass, which reads it."""

    @staticmethod
    def forward(ctx, x):
        kept = scratch.empty(LARGE, x.dtype, x.device)
        kept.fill_(2.0)
        ctx.save_for_backward(kept)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        (kept,) = ctx.saved_tensors
        return grad * kept[0, 0]


@pytest.mark.parametrize("retain", [False, True])
def test_a_tensor_saved_for_backward_is_never_overwritten(retain):
    x = torch.ones(3, requires_grad=True)
    y = _Saves.apply(x)
    pending = scratch.empty(LARGE, torch.float32, "cpu")  # the saved one is held by the graph
    pending.fill_(-1.0)
    y.sum().backward(retain_graph=retain)
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    del pending
    if retain:  # the retained graph still holds it: a second backward reads the same values
        after = scratch.empty(LARGE, torch.float32, "cpu")
        after.fill_(-1.0)
        y.sum().backward()
        assert torch.equal(x.grad, torch.full((3,), 4.0))
    assert scratch.kept() == 2


def test_small_tensors_and_other_devices_are_plain_allocations():
    small = scratch.empty((3, 5), torch.float32, "cpu")
    assert small.shape == (3, 5) and scratch.kept() == 0
    meta = scratch.empty(LARGE, torch.float32, torch.device("meta"))
    assert meta.device.type == "meta" and scratch.kept() == 0


def test_the_pool_lets_go_of_free_buffers_beyond_its_size():
    held = scratch.empty((1, scratch.SMALLEST), torch.float32, "cpu")  # the oldest stays in use
    for rows in range(2, scratch.KEPT + 6):  # distinct sizes, each dropped at once
        scratch.empty((rows, scratch.SMALLEST), torch.float32, "cpu")
    assert scratch.kept() == scratch.KEPT
    assert scratch._pool()[0].data_ptr() == held.data_ptr()  # the free ones went first


def test_memory_taken_under_inference_mode_is_never_kept():
    """An inference tensor may not be written outside inference mode: one taken there is fresh
    and not kept, so a model evaluated under `torch.inference_mode` trains afterwards."""
    with torch.inference_mode():
        made = scratch.empty(LARGE, torch.float32, "cpu")
    assert made.is_inference() and scratch.kept() == 0
    del made
    later = scratch.empty(LARGE, torch.float32, "cpu")
    assert not later.is_inference()


def test_a_model_trains_after_an_evaluation_under_inference_mode():
    from tinyinduct import AttnOnlyTransformer, ModelConfig
    from tinyinduct.stack import StackedTransformer, per_model_loss

    torch.manual_seed(0)
    model = AttnOnlyTransformer(ModelConfig(d_vocab=64, n_ctx=64))
    tokens = torch.randint(0, 64, (32, 64))  # the layer's memory large enough to be pooled
    with torch.inference_mode():
        model(tokens)
    loss = per_model_loss(StackedTransformer([model]), tokens[None])
    loss.sum().backward()
    assert torch.isfinite(loss).all()
