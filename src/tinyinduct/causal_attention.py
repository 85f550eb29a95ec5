"""Causal self-attention of the training step's fused path, the kernel chosen by shape.

Where it runs (float32 on a CPU, head size 8 or 16, n_ctx up to 1,024: `native_attention`),
tinyinduct's own C++ kernel: one pass over each sequence's head in cache, its pattern never
written out. Elsewhere torch's kernels, between which the rest of this note chooses.

`scaled_dot_product_attention`'s CPU flash kernel walks the keys in blocks and recomputes the
scores and their exponentials in its backward pass. `SmallContextAttention` instead writes each
head's whole score matrix with batched matmuls and keeps one softmax for the backward pass.
Measured side by side (`scripts/bench.py --parts attention`, and at the default shape with 1-16
stacked models): on one thread the two tie at n_ctx 64 and the flash kernel wins above; on two
threads the flash kernel gains nothing at n_ctx 64 while the matmuls nearly halve their time, as
long as the scores stay small (up to 8 stacked default models, 16 MB a layer); with 16 models
(33 MB) and at n_ctx 128 and 256 the flash kernel, which never holds them, wins. So the matmuls
run on a CPU with two or more threads, n_ctx up to `SMALL_CONTEXT` and scores up to
`SMALL_SCORES` elements; the flash kernel everywhere else. Both compute the same function
(tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import native_attention

SMALL_CONTEXT = 64  # the longest context given to SmallContextAttention on a CPU
SMALL_SCORES = 1 << 22  # the most score elements (sequences x n_ctx^2) it writes in one layer


class SmallContextAttention(torch.autograd.Function):
    """`softmax(q k^T * scale + causal mask) v` for `q, k, v [N, p, e]` by batched matmuls; the
    pattern `[N, p, p]` is kept for the backward pass (no exponential recomputed)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        n = q.shape[-2]
        future = torch.full((n, n), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
        pattern = torch.softmax(torch.baddbmm(future, q, k.transpose(1, 2), alpha=scale), -1)
        ctx.save_for_backward(q, k, v, pattern)
        ctx.scale = scale
        return torch.bmm(pattern, v)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z):
        q, k, v, pattern = ctx.saved_tensors
        grad_pattern = torch.bmm(grad_z, v.transpose(1, 2))
        # the scores' gradient, with the scale the forward pass applied to them
        grad_scores = torch._softmax_backward_data(grad_pattern, pattern, -1, pattern.dtype)
        grad_scores.mul_(ctx.scale)
        return (torch.bmm(grad_scores, k), torch.bmm(grad_scores.transpose(1, 2), q),
                torch.bmm(pattern.transpose(1, 2), grad_z), None)


def kernel_for(sequences: int, n_ctx: int, d_head: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> str:
    """The kernel `causal_attention` runs for `sequences` (batch x heads) of `n_ctx` positions
    and head size `d_head` on this device with the current torch threads: "native"
    (`native_attention.NativeAttention`), "matmuls" (`SmallContextAttention`) or "flash"
    (`scaled_dot_product_attention`)."""
    if native_attention.runs_on(device, d_head, dtype, n_ctx):
        return "native"
    small = n_ctx <= SMALL_CONTEXT and sequences * n_ctx * n_ctx <= SMALL_SCORES
    return ("matmuls" if device.type == "cpu" and small and torch.get_num_threads() > 1
            else "flash")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     kernel: str | None = None) -> torch.Tensor:  # [N, h, p, e] -> z [N, h, p, e]
    """Causal attention of every head of every sequence, by `kernel` (one of `kernel_for`'s
    names; by default the one that is faster here)."""
    if kernel is None:
        kernel = kernel_for(q.shape[:-2].numel(), q.shape[-2], q.shape[-1], q.device, q.dtype)
    if kernel == "native":
        return native_attention.NativeAttention.apply(q, k, v, scale)
    if kernel == "flash":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    shape = q.shape
    z = SmallContextAttention.apply(*(t.reshape(-1, *shape[-2:]) for t in (q, k, v)), scale)
    return z.view(shape)
