"""Unembedding and cross-entropy in one pass over row chunks, never materialising the logits.

The logits `[rows, d_vocab]` are the largest tensor of a training step; on a CPU the passes over
them (bias add, log-softmax, its gradient, the zero-filled gradient of the loss) cost more than
the matmuls themselves once they fall out of cache, and K stacked models make them K times larger.
Here each chunk of rows is unembedded, reduced to its loss and dropped; the backward pass
recomputes the chunk's logits (one extra `d_model x d_vocab` matmul per row) instead of storing
them. The function is the same as `cross_entropy(resid @ W_U + b_U, targets)` (tested).
"""

from __future__ import annotations

import torch

IGNORE = -100  # a target that contributes no loss (cross_entropy's ignore_index)
CHUNK_FLOATS = 1 << 18  # logits per chunk on a CPU (1 MiB of float32): stays in cache


def _chunks(rows: int, per_row: int, device: torch.device):
    # a GPU streams the whole tensor faster than it launches many small kernels
    size = max(1, CHUNK_FLOATS // per_row) if device.type == "cpu" else rows
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


class _UnembedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, resid, W_U, b_U, targets):  # [G, N, d], [G, d, V], [G, V], [G, N]
        keep = targets != IGNORE
        safe = targets.clamp(min=0)
        loss = resid.new_zeros(targets.shape)
        lse = resid.new_zeros(targets.shape)
        for c in _chunks(targets.shape[1], W_U.shape[0] * W_U.shape[2], resid.device):
            logits = torch.baddbmm(b_U[:, None], resid[:, c], W_U)  # [G, rows, V]
            lse[:, c] = logits.logsumexp(-1)
            picked = logits.gather(-1, safe[:, c, None]).squeeze(-1)
            loss[:, c] = (lse[:, c] - picked) * keep[:, c]
        ctx.save_for_backward(resid, W_U, b_U, safe, keep, lse)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # [G, N]
        resid, W_U, b_U, safe, keep, lse = ctx.saved_tensors
        grad_resid = torch.empty_like(resid)
        grad_W = torch.zeros_like(W_U)
        grad_b = torch.zeros_like(b_U)
        scale = grad_loss * keep  # ignored rows pass no gradient
        for c in _chunks(safe.shape[1], W_U.shape[0] * W_U.shape[2], resid.device):
            logits = torch.baddbmm(b_U[:, None], resid[:, c], W_U)
            # d loss / d logits = softmax - onehot(target), times the incoming gradient
            g = (logits - lse[:, c, None]).exp_()
            g.scatter_add_(-1, safe[:, c, None], torch.full_like(lse[:, c, None], -1.0))
            g.mul_(scale[:, c, None])
            grad_resid[:, c] = torch.bmm(g, W_U.transpose(1, 2))
            grad_W.baddbmm_(resid[:, c].transpose(1, 2), g)
            grad_b += g.sum(1)
        return grad_resid, grad_W, grad_b, None


def unembed_cross_entropy(
    resid: torch.Tensor,  # [G, N, d_model]: G independent models (1 for a single one)
    W_U: torch.Tensor,  # [G, d_model, d_vocab]
    b_U: torch.Tensor,  # [G, d_vocab]
    targets: torch.Tensor,  # [G, N] int64; IGNORE where a row has no target
) -> torch.Tensor:  # [G, N]: each row's cross-entropy, 0 where ignored
    return _UnembedCrossEntropy.apply(resid, W_U, b_U, targets)
