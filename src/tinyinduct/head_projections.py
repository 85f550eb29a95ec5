"""The attention layer's projections as two autograd functions with hand-written backward passes.

`project_heads` maps a residual input to the per-head queries, keys or values of every projection
that reads it, and `project_out` maps the heads' outputs back to the residual stream. Each is one
matmul on the flattened rows, `[G, batch * pos, n * heads * d_head]` for the n projections that
read one input and `[G, batch * pos, d_model]` out. For torch's attention kernels the heads are
then copied into contiguous `[G * batch, heads, pos, d_head]` (where the native kernel runs,
`native_layer` does the same operations on the rows in place, in C++). The backward passes
mirror the forward: the copy back to rows, two matmuls, and the bias gradient as a sum over
contiguous rows. Through autograd, the einsums and the per-projection
bias adds this replaces cost more in permutes, strided reductions and small operations than in
their matmuls; the function is the same (tested against the einsums).

`G` is the number of stacked models (1 for a plain model).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch.autograd.function import once_differentiable

from . import scratch


class _ProjectHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, batch):
        # x [G, M, d], W [G, n, h, d, e], b [G, n, h, e] | None
        G, n, h, d, e = W.shape
        pos = x.shape[1] // batch
        W_flat = W.permute(0, 3, 1, 2, 4).reshape(G, d, n * h * e)
        rows = torch.bmm(x, W_flat).view(G, batch, pos, n, h, e)
        outs = []
        for i in range(n):  # one output each: their gradients come back apart, never stacked
            heads = rows[:, :, :, i].permute(0, 1, 3, 2, 4)  # [G, batch, h, pos, e]
            out = torch.empty(heads.shape, dtype=x.dtype, device=x.device)
            if b is None:
                out.copy_(heads)
            else:  # the bias added in the copy
                torch.add(heads, b[:, i, None, :, None, :], out=out)
            outs.append(out.view(G * batch, h, pos, e))
        ctx.save_for_backward(x, W_flat)
        ctx.shape, ctx.has_bias = (G, n, h, d, e, batch, pos), b is not None
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outs):  # n x [G * batch, h, pos, e]
        x, W_flat = ctx.saved_tensors
        G, n, h, d, e, batch, pos = ctx.shape
        grad_rows = scratch.empty((G, batch, pos, n, h, e), x.dtype, x.device)
        for i, grad in enumerate(grad_outs):
            grad_rows[:, :, :, i].copy_(grad.view(G, batch, h, pos, e).transpose(2, 3))
        grad_rows = grad_rows.view(G, batch * pos, n * h * e)
        grad_x = torch.bmm(grad_rows, W_flat.transpose(1, 2),
                           out=scratch.empty((G, batch * pos, d), x.dtype, x.device))
        grad_W = torch.bmm(x.transpose(1, 2), grad_rows).view(G, d, n, h, e)
        grad_b = grad_rows.sum(1).view(G, n, h, e) if ctx.has_bias else None
        return grad_x, grad_W.permute(0, 2, 3, 1, 4), grad_b, None


class _ProjectOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, W_O, b_O, residual):
        # z [G, batch, h, pos, e], W_O [G, h, e, d], b_O [G, d] | None, residual [G, batch*pos, d]
        # | None: added inside the matmul, where a separate sum would write a fresh tensor
        G, batch, h, pos, e = z.shape
        z_rows = z.permute(0, 1, 3, 2, 4).reshape(G, batch * pos, h * e)
        W_flat = W_O.reshape(G, h * e, -1)
        out = scratch.empty((G, batch * pos, W_flat.shape[2]), z.dtype, z.device)
        if residual is None:
            torch.bmm(z_rows, W_flat, out=out)
        else:
            torch.baddbmm(residual, z_rows, W_flat, out=out)
        if b_O is not None:
            out.add_(b_O[:, None])
        ctx.save_for_backward(z_rows, W_flat)
        ctx.shape, ctx.has_bias, ctx.has_residual = z.shape, b_O is not None, residual is not None
        return out  # [G, batch * pos, d]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # [G, batch * pos, d]
        z_rows, W_flat = ctx.saved_tensors
        G, batch, h, pos, e = ctx.shape
        grad_z = torch.bmm(grad_out, W_flat.transpose(1, 2), out=scratch.empty(
            (G, batch * pos, h * e), grad_out.dtype, grad_out.device)).view(G, batch, pos, h, e)
        grad_W = torch.bmm(z_rows.transpose(1, 2), grad_out).view(G, h, e, -1)
        grad_b = grad_out.sum(1) if ctx.has_bias else None
        # grad_z in the layout of the heads' rows: the copy to the attention kernel's layout
        # happens where it is needed
        return (grad_z.permute(0, 1, 3, 2, 4), grad_W, grad_b,
                grad_out if ctx.has_residual else None)


def project_heads(x: torch.Tensor,  # [G, batch, pos, d_model]
                  weights: Tuple[torch.Tensor, ...],  # n x W [G, h, d_model, d_head]
                  biases: Tuple[torch.Tensor, ...] | None,  # n x b [G, h, d_head], or None
                  ) -> Tuple[torch.Tensor, ...]:  # n x [G * batch, h, pos, d_head]
    """`x @ W[g, h] + b[g, h]` for each of the n projections that read `x`, in one matmul, each
    a contiguous tensor."""
    G, batch, pos, _ = x.shape
    W = torch.stack(weights, 1)
    b = None if biases is None else torch.stack(biases, 1)
    return _ProjectHeads.apply(x.reshape(G, batch * pos, -1), W, b, batch)


def project_out(z: torch.Tensor,  # [G, batch, h, pos, d_head]
                W_O: torch.Tensor,  # [G, h, d_head, d_model]
                b_O: torch.Tensor | None,  # [G, d_model], or None
                residual: torch.Tensor | None = None,  # [G, batch, pos, d_model], or None
                ) -> torch.Tensor:  # [G, batch, pos, d_model]
    """`residual[g] + sum_h z[g, :, h] @ W_O[g, h] + b_O[g]`, in one matmul."""
    G, batch, _, pos, _ = z.shape
    rows = None if residual is None else residual.reshape(G, batch * pos, -1)
    return _ProjectOut.apply(z, W_O, b_O, rows).view(G, batch, pos, -1)
