"""Causal attention by tinyinduct's C++ kernel (`native`), for float32 on a CPU at head sizes 8
and 16.

At these head sizes a score matmul's inner dimension is 8 or 16, too short for a BLAS call to
pay for its setup, and the flash kernel spends most of its time outside multiply-adds. The
kernel takes one sequence's head at a time into buffers that stay in cache, and puts a block of
queries in the lanes of one vector: each multiply-add broadcasts one number of a key or value
against all of them, and the softmax needs no reduction across lanes. Up to n_ctx
`SAVED_PATTERN_CONTEXT` the forward pass keeps the pattern for the backward pass; above it the
pattern never leaves the thread: the forward pass keeps each row's log-sum-exp and the backward
pass recomputes the pattern from it (a kept pattern costs more in fresh memory there than its
exponentials).

`NativeAttention` takes q, k, v `[N, heads, positions, head size]` with any strides (the last one
1) and returns z the same, stored as `[N, positions, heads, head size]` rows, as are the
gradients of q, k and v: the projections' matmuls read and write that layout without a copy.
The training step's fused path calls the kernels from C++ inside a whole layer (`native_layer`),
on the projections' rows in place.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import native, scratch
from .step_profile import profiled

HEAD_SIZES = (8, 16)
# each thread holds two [n_ctx, n_ctx] score buffers (4 MB each at 1,024): longer contexts, whose
# buffers would leave the cache, go to the flash kernel
MAX_CONTEXT = 1024
# measured (forward + backward of one layer, 1 and 2 threads): reading a kept pattern beats
# recomputing it by 15-25% at n_ctx 32 to 128; at 256 (batch 16, 8 heads: 32 MB of pattern)
# recomputing it is nearly twice as fast
SAVED_PATTERN_CONTEXT = 128


def runs_on(device: torch.device, d_head: int, dtype: torch.dtype, n_ctx: int) -> bool:
    """Whether `causal_attention` can run the native kernel for these tensors."""
    return (device.type == "cpu" and dtype == torch.float32 and d_head in HEAD_SIZES
            and n_ctx <= MAX_CONTEXT and native.extension() is not None)


def _rows_like(t: torch.Tensor) -> torch.Tensor:
    """An empty `[N, heads, positions, head size]` tensor stored as rows `[N, positions, heads,
    head size]`."""
    N, h, p, e = t.shape
    return scratch.empty((N, p, h, e), t.dtype, t.device).transpose(1, 2)


class NativeAttention(torch.autograd.Function):
    """`softmax(q k^T * scale + causal mask) v`; the backward pass reads the kept pattern, or
    above `SAVED_PATTERN_CONTEXT` recomputes it from each row's log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        N, h, p, _ = q.shape
        z = _rows_like(q)
        lse = scratch.empty((N * h, p), q.dtype, q.device)
        padded = -(-p // 16) * 16
        pattern = scratch.empty((N * h, padded, padded) if p <= SAVED_PATTERN_CONTEXT else (0,),
                                q.dtype, q.device)
        with profiled("tinyinduct::causal_attention"):
            native.extension().attention_forward(q, k, v, scale, z, lse, pattern)
        ctx.save_for_backward(q, k, v, lse, pattern)
        ctx.scale = scale
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z):
        q, k, v, lse, pattern = ctx.saved_tensors
        if grad_z.stride(-1) != 1:
            grad_z = grad_z.contiguous()
        grads = [_rows_like(t) for t in (q, k, v)]
        with profiled("tinyinduct::causal_attention_backward"):
            native.extension().attention_backward(grad_z, q, k, v, lse, ctx.scale, *grads,
                                                  pattern)
        return (*grads, None)
