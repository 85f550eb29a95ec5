"""The native attention layer (one C++ call each way) computes what torch's functions for the
same layer compute (`project_heads`, the native kernel, `project_out`), value and every
gradient, for every way the layer's three inputs can be shared; and its memory, taken from
`scratch`, is never handed out while a backward pass may still read it."""

import pytest
import torch

from tinyinduct import native, scratch
from tinyinduct.head_projections import project_heads, project_out
from tinyinduct.native_attention import SAVED_PATTERN_CONTEXT, NativeAttention
from tinyinduct.native_layer import attention_layer

pytestmark = pytest.mark.skipif(native.extension() is None,
                                reason="tinyinduct's CPU kernels could not be built here")

# which input each of Q, K, V reads: one for all (standard positions), q and k one, v another
# (shortformer), each its own (composition blocked in two of them)
SHARING = {"qkv": (0, 0, 0), "qk-v": (0, 0, 1), "q-k-v": (0, 1, 2)}


def layer_leaves(G, batch, pos, d, h, e, sharing, bias, residual, seed=0):
    torch.manual_seed(seed)
    n_inputs = max(SHARING[sharing]) + 1
    inputs = [torch.randn(G, batch, pos, d, requires_grad=True) for _ in range(n_inputs)]
    weights = [torch.randn(G, h, d, e) / d ** 0.5 for _ in range(3)]
    weights.append(torch.randn(G, h, e, d) / (h * e) ** 0.5)
    biases = [torch.randn(G, h, e) for _ in range(3)] + [torch.randn(G, d)] if bias else []
    params = [t.requires_grad_() for t in weights + biases]
    resid = torch.randn(G, batch, pos, d, requires_grad=True) if residual else None
    return inputs, params, resid


def torch_functions_layer(q_in, k_in, v_in, weights, biases, scale, residual):
    """The layer by torch's autograd functions: one `project_heads` per distinct input."""
    inputs, qkv = (q_in, k_in, v_in), [None] * 3
    for i, x in enumerate(inputs):
        if qkv[i] is None:
            same = [j for j in range(i, 3) if inputs[j] is x]
            heads = project_heads(x, tuple(weights[j] for j in same),
                                  tuple(biases[j] for j in same) if biases else None)
            for j, y in zip(same, heads):
                qkv[j] = y
    z = NativeAttention.apply(*qkv, scale)
    G = q_in.shape[0]
    return project_out(z.reshape(G, -1, *z.shape[1:]), weights[3],
                       biases[3] if biases else None, residual)


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("G, pos, e", [(1, 12, 16), (2, 17, 8), (1, SAVED_PATTERN_CONTEXT + 3, 16)])
def test_the_layer_is_torchs_functions_value_and_gradients(sharing, bias, residual, G, pos, e,
                                                           two_threads):
    batch, d, h = 3, 24, 2
    inputs, params, resid = layer_leaves(G, batch, pos, d, h, e, sharing, bias, residual)
    q_in, k_in, v_in = (inputs[j] for j in SHARING[sharing])
    weights, biases = params[:4], params[4:]
    scale = e ** -0.5
    grad_out = torch.randn(G, batch, pos, d)
    leaves = inputs + params + ([resid] if residual else [])
    got = attention_layer((q_in, k_in, v_in), tuple(weights), tuple(biases) or None, scale, resid)
    got_grads = torch.autograd.grad(got, leaves, grad_out)
    want = torch_functions_layer(q_in, k_in, v_in, weights, biases, scale, resid)
    want_grads = torch.autograd.grad(want, leaves, grad_out)
    assert got.shape == (G, batch, pos, d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_a_retained_graph_gives_the_same_gradients_twice():
    """The layer's saved workspace outlives the step that made it: a second layer and a second
    backward pass, with other layers taking `scratch` memory in between, read it unchanged."""
    G, batch, pos, d, h, e = 1, 8, 32, 16, 4, 16
    # the workspace large enough for `scratch` to reuse memory
    assert native.extension().attention_layer_workspace(1, G, batch * pos, batch, h, e,
                                                        True) >= scratch.SMALLEST
    inputs, params, _ = layer_leaves(G, batch, pos, d, h, e, "qkv", True, False)
    x = inputs[0]
    first = attention_layer((x, x, x), tuple(params[:4]), tuple(params[4:]), 0.3)
    second = attention_layer((first, first, first), tuple(params[:4]), tuple(params[4:]), 0.3)
    loss = second.square().sum()
    grads = torch.autograd.grad(loss, [x, *params], retain_graph=True)
    y = x.detach()  # another layer's memory taken and given back between the two passes
    attention_layer((y, y, y), tuple(p.detach() for p in params[:4]), None, 0.7).sum()
    again = torch.autograd.grad(loss, [x, *params])
    for g, h in zip(grads, again):
        assert torch.equal(g, h)
