"""Causal self-attention of the training step's fused path, the kernel chosen by shape.

`scaled_dot_product_attention`'s CPU flash kernel walks the keys in blocks and recomputes the
scores and their exponentials in its backward pass. At short contexts the whole score matrix of
a head fits in cache, so materialising it costs little, and on a CPU each exponential costs more
than the matmul work around it (head size 16 gives the matmuls little to do). There
`SmallContextAttention` wins: the scores by batched matmuls, one softmax kept for the backward
pass, no exponential recomputed. Measured side by side (`scripts/bench.py`, forward + backward of
the training step): on 2 cores at n_ctx 64 it is a tie on one thread and faster on two (the flash
kernel gets slower with a second thread at this shape); at n_ctx 128 and 256 the flash kernel is
faster. Above `SMALL_CONTEXT` positions and on other devices the flash kernel runs. Both compute
the same function (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

SMALL_CONTEXT = 64  # the longest context given to SmallContextAttention on a CPU


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


def kernel_for(n_ctx: int, device: torch.device) -> str:
    """The kernel `causal_attention` runs for this context length on this device: "matmuls"
    (`SmallContextAttention`) or "flash" (`scaled_dot_product_attention`)."""
    return "matmuls" if device.type == "cpu" and n_ctx <= SMALL_CONTEXT else "flash"


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scale: float) -> torch.Tensor:  # [N, h, p, e] each -> z [N, h, p, e]
    """Causal attention of every head of every sequence, by the kernel that is faster here."""
    if kernel_for(q.shape[-2], q.device) == "flash":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    shape = q.shape
    z = SmallContextAttention.apply(*(t.reshape(-1, *shape[-2:]) for t in (q, k, v)), scale)
    return z.view(shape)
