"""The profile of a real training step gives every operation, forward and backward, to the part
of the step it belongs to, and the parts add up to the step."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from tinyinduct import AttnOnlyTransformer, ModelConfig, native
from tinyinduct.stack import StackedTransformer, train_step
from tinyinduct.step_profile import (
    PARTS,
    attribute,
    part,
    profile_parts,
    profile_parts_and_kernels,
)

SMALL = dict(n_layers=2, n_heads=2, d_model=16, d_head=8, n_ctx=16, d_vocab=32, attn_bias=True)


def small_step():
    torch.manual_seed(0)
    model = StackedTransformer([AttnOnlyTransformer(ModelConfig(**SMALL))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tokens = torch.randint(0, 32, (1, 4, 16))
    return lambda: train_step(model, optimizer, scheduler, tokens, grad_clip=1.0)


@pytest.mark.parametrize("kernels", [
    pytest.param(True, id="native", marks=pytest.mark.skipif(
        native.extension() is None, reason="tinyinduct's CPU kernels could not be built here")),
    pytest.param(False, id="torch")])
def test_forward_and_backward_operations_belong_to_their_part(kernels, two_threads, monkeypatch):
    monkeypatch.setenv(native.SWITCH, "1" if kernels else "0")
    step = small_step()
    step()  # AdamW's state exists: the profiled step is a steady one
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    parts = {}
    for event, name in attribute(prof.events()):
        parts.setdefault(event.name, set()).add(name)
    if kernels:  # the native kernel, forward and backward, is attention's (both layers),
        # inside the C++ layer, whose own ranges mark its parts
        for name in ("tinyinduct::causal_attention", "tinyinduct::causal_attention_backward"):
            assert parts[name] == {"attention"}, name
    else:  # the short-context attention and its backward (its matmuls and softmax)
        assert parts["SmallContextAttention"] == {"attention"}
        assert parts["aten::_softmax_backward_data"] == {"attention"}
        assert "attention" in parts["aten::bmm"]
    assert parts["aten::embedding_dense_backward"] == {"embedding"}
    if kernels:
        assert parts["tinyinduct::softmax_cross_entropy"] == {"unembed_loss"}
    else:  # attention's softmax is one too
        assert "unembed_loss" in parts["aten::_softmax"]
    assert any(n.startswith("Optimizer.step") and p == {"optimizer"} for n, p in parts.items())
    # the matmuls of each part's backward pass (hand-written autograd functions) go to it
    backward_bmm = {}
    for event, name in attribute(prof.events()):
        if event.name == "aten::bmm" and event.cpu_parent is not None:
            backward_bmm.setdefault(event.cpu_parent.name, set()).add(name)
    if kernels:  # the layer's matmuls, forward and backward, all sit in its projections ranges
        layer = {n for e, n in attribute(prof.events()) if e.name == "aten::bmm"
                 and any(a.name.startswith("_AttentionLayer") for a in ancestors(e))}
        assert layer == {"projections"}
        assert any(a.name == "_AttentionLayerBackward" for e in prof.events()
                   if e.name == "aten::bmm" for a in ancestors(e))
    else:
        assert backward_bmm["_ProjectHeadsBackward"] == {"projections"}
        assert backward_bmm["_ProjectOutBackward"] == {"projections"}
        assert backward_bmm["SmallContextAttentionBackward"] == {"attention"}
    # an operation outside every part, the targets' shift (a cat), belongs to none ("other");
    # the residual stream's sums are inside W_O's matmuls (projections)
    assert None in parts["aten::cat"]


def ancestors(event):
    while event.cpu_parent is not None:
        event = event.cpu_parent
        yield event


def test_parts_add_up_to_the_profiled_step():
    step = small_step()
    step()
    seconds = profile_parts(step, steps=2)
    assert set(seconds) == {*PARTS, "other", "step"}
    for name in PARTS:
        assert seconds[name] > 0, name
    assert seconds["other"] >= 0
    assert abs(sum(seconds[name] for name in (*PARTS, "other")) - seconds["step"]) < 1e-9


def test_each_matmul_part_spends_part_of_its_time_in_its_kernels(two_threads):
    step = small_step()
    step()
    seconds, kernels = profile_parts_and_kernels(step, steps=2)
    for name in ("projections", "attention", "unembed_loss"):
        assert 0 < kernels[name] < seconds[name], name
    assert kernels["embedding"] == kernels["optimizer"] == 0  # no matmul there


def test_part_is_free_without_a_profiler():
    with part("attention") as marker:
        assert marker is None  # a null context: no profiler range recorded
