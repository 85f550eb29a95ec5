"""One attention layer of the training step's fused path in one C++ call each way, where the
native attention kernel runs (`native_attention.runs_on`).

The layer is `head_projections.project_heads`, `native_attention.NativeAttention` and
`head_projections.project_out` (with the residual added in W_O's matmul), the same operations in
the same order, computed bit for bit the same (tested). Written as three autograd functions, the
layer makes some forty Python calls and three autograd nodes around its five matmuls and one
kernel; at the default config on two threads that was 0.35 ms of a layer's 1.2 ms forward and
backward, the kernels idle meanwhile. Here the Python side only takes the layer's memory from
`scratch` and hands it to `csrc/kernels.cpp` (section 3), which lays out the projections' rows,
runs the kernel on them in place and marks the profiler's parts (`projections`, `attention`) as
the Python path does.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import native, scratch
from .native_attention import SAVED_PATTERN_CONTEXT

_NONE = torch.empty(0)  # an absent residual


class _AttentionLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layout, *tensors):
        # layout: (of_input, n_inputs, has_bias, has_residual, scale, batch); tensors: the inputs
        # [G, M, d], W_Q, W_K, W_V, W_O, (b_Q, b_K, b_V, b_O), (residual [G, M, d])
        of_input, n_inputs, has_bias, has_residual, scale, batch = layout
        xs, Ws = tensors[:n_inputs], tensors[n_inputs:n_inputs + 4]
        bs = tensors[n_inputs + 4:n_inputs + 8] if has_bias else ()
        residual = tensors[-1] if has_residual else _NONE
        G, h, d, e = Ws[0].shape
        rows, like = xs[0].shape[1], xs[0]
        keep_pattern = rows // batch <= SAVED_PATTERN_CONTEXT
        kernels = native.extension()
        ws = scratch.empty((kernels.attention_layer_workspace(n_inputs, G, rows, batch, h, e,
                                                              keep_pattern),),
                           like.dtype, like.device)
        out = scratch.empty((G, rows, d), like.dtype, like.device)
        flats = kernels.attention_layer_forward(list(xs), of_input, list(Ws), list(bs), residual,
                                                scale, batch, keep_pattern, ws, out)
        ctx.save_for_backward(*xs, Ws[3], ws, *flats)
        ctx.layout, ctx.keep_pattern = layout, keep_pattern
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # [G, M, d]
        of_input, n_inputs, has_bias, has_residual, scale, batch = ctx.layout
        saved = ctx.saved_tensors
        xs, (W_O, ws), flats = saved[:n_inputs], saved[n_inputs:n_inputs + 2], saved[n_inputs + 2:]
        G, h, e, d = W_O.shape
        rows = xs[0].shape[1]
        grad_out = grad_out.contiguous()
        gws = scratch.empty((4 * G * rows * h * e,), grad_out.dtype, grad_out.device)
        grad_xs = scratch.empty((n_inputs, G, rows, d), grad_out.dtype, grad_out.device)
        grads = native.extension().attention_layer_backward(
            grad_out, list(xs), of_input, list(flats), W_O, has_bias, scale, batch,
            ctx.keep_pattern, ws, gws, grad_xs)
        return (None, *grad_xs.unbind(0), *grads, *((grad_out,) if has_residual else ()))


def attention_layer(inputs: Sequence[torch.Tensor],  # q_in, k_in, v_in [G, batch, pos, d_model]
                    weights: Tuple[torch.Tensor, ...],  # W_Q, W_K, W_V, W_O [G, ...]
                    biases: Tuple[torch.Tensor, ...] | None,  # b_Q, b_K, b_V, b_O [G, ...]
                    scale: float,
                    residual: torch.Tensor | None = None,  # [G, batch, pos, d_model]
                    ) -> torch.Tensor:  # [G, batch, pos, d_model]
    """`residual + attention(inputs) @ W_O + b_O` for G models by the native kernels; the inputs
    that are one tensor share one projection matmul."""
    G, batch, pos = inputs[0].shape[:3]
    distinct: list = []
    of_input = []
    for x in inputs:  # identity, not equality: a shared input is one matmul
        j = next((j for j, y in enumerate(distinct) if y is x), len(distinct))
        if j == len(distinct):
            distinct.append(x)
        of_input.append(j)
    tensors = [x.reshape(G, batch * pos, -1) for x in distinct] + list(weights)
    if biases is not None:
        tensors += biases
    if residual is not None:
        tensors.append(residual.reshape(G, batch * pos, -1))
    layout = (of_input, len(distinct), biases is not None, residual is not None, scale, batch)
    return _AttentionLayer.apply(layout, *tensors).view(G, batch, pos, -1)
