"""Unembedding and mean cross-entropy in one pass over row chunks, never materialising the logits.

The logits `[rows, d_vocab]` are the largest tensor of a training step; on a CPU the passes over
them (bias add, softmax, its gradient, the zero-filled gradient of the loss) cost more than
the matmuls themselves once they fall out of cache, and K stacked models make them K times larger.
A training step wants only each model's mean loss, whose gradient is a scalar (the upstream
gradient) times a fixed tensor: so each chunk of rows is unembedded, reduced to its loss, turned
in place into its gradient (softmax - onehot, over the rows) while it is in cache, passed through
the two gradient matmuls and dropped. Nothing is recomputed; the backward pass only scales the
gradients kept. Where tinyinduct's CPU kernels run (`native`), the whole loop is one C++ call,
in which one kernel turns a chunk of logits into its gradient and its rows' losses in one pass
per row (bias, maximum, exponentials, softmax - onehot weighted by 1 / rows, loss); elsewhere
torch's operations do it in several passes, in Python.
The function is the same as `cross_entropy(resid @ W_U + b_U, targets)` (tested).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import native, scratch
from .step_profile import profiled

IGNORE = -100  # a target that contributes no loss (cross_entropy's ignore_index)
# logits per chunk on a CPU, per torch thread (1 MiB of float32, half this machine's L2 per core):
# measured at the default config, 1/2 to 4x this, the step was fastest here on one thread (6% ahead
# of 4x) and within 2% of the best on two; at d_model 128 and n_ctx 256 all tied
CHUNK_FLOATS = 1 << 18


def _chunks(rows: int, per_row: int, device: torch.device):
    # a GPU streams the whole tensor faster than it launches many small kernels
    size = (max(1, CHUNK_FLOATS * torch.get_num_threads() // per_row) if device.type == "cpu"
            else rows)
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


class _UnembedMeanCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, resid, W_U, b_U, targets, with_grad):  # [G, N, d], [G, d, V], [G, V], [G, N]
        chunks = _chunks(targets.shape[1], W_U.shape[0] * W_U.shape[2], resid.device)
        if native.runs_on(resid):  # the whole loop in one C++ call, its memory from `scratch`
            rows = chunks[0].stop
            # reused memory: fresh, a chunk of logits made its matmul 2-3x slower
            logits = scratch.empty((W_U.shape[0] * rows * W_U.shape[2],), resid.dtype,
                                   resid.device)
            grad_resid = scratch.empty(resid.shape, resid.dtype, resid.device)
            with profiled("tinyinduct::unembed_cross_entropy"):
                loss, *grads = native.extension().unembed_cross_entropy(
                    resid, W_U, b_U, targets, IGNORE, rows, with_grad, logits, grad_resid)
            if with_grad:
                ctx.save_for_backward(grad_resid, *grads)
            return loss
        keep = targets != IGNORE
        safe = targets.clamp(min=0)
        # [G, N]: 1 / rows, 0 if ignored
        weight = (keep / keep.sum(1, keepdim=True).clamp(min=1)).to(resid.dtype)
        loss = resid.new_zeros(targets.shape[0])
        if with_grad:
            grad_resid = torch.empty_like(resid)
            grad_W = torch.zeros_like(W_U)
            grad_b = torch.zeros_like(b_U)
        for c in chunks:
            target, w = safe[:, c, None], weight[:, c, None]
            logits = torch.baddbmm(b_U[:, None], resid[:, c], W_U)  # [G, rows, V]
            picked, top = logits.gather(-1, target), logits.amax(-1, keepdim=True)
            # one softmax pass (one exp per logit, the costly part on a CPU) gives both the
            # gradient and the log-sum-exp: the largest logit's probability is
            # 1 / sum(exp(logits - top)), at least 1 / V, so its log never underflows
            g = torch.softmax(logits, -1)
            loss += ((top - g.amax(-1, keepdim=True).log() - picked) * w).sum((1, 2))
            if not with_grad:
                continue
            # d mean loss / d logits = (softmax - onehot(target)) * w, w = 1 / rows (0 where
            # ignored): w scales the matmuls' narrow operands instead of the chunk
            g.scatter_add_(-1, target, torch.full_like(picked, -1.0))
            grad_resid[:, c] = torch.bmm(g, W_U.transpose(1, 2)).mul_(w)
            grad_W.baddbmm_((resid[:, c] * w).transpose(1, 2), g)
            grad_b.unsqueeze(1).baddbmm_(w.transpose(1, 2), g)
        if with_grad:
            ctx.save_for_backward(grad_resid, grad_W, grad_b)
        return loss

    @staticmethod
    @once_differentiable  # the saved gradient is a constant: no double backward
    def backward(ctx, grad_loss):  # [G]
        grad_resid, grad_W, grad_b = ctx.saved_tensors
        scaled = torch.mul(grad_resid, grad_loss[:, None, None], out=scratch.empty(
            grad_resid.shape, grad_resid.dtype, grad_resid.device))
        return scaled, grad_W * grad_loss[:, None, None], grad_b * grad_loss[:, None], None, None


def unembed_mean_cross_entropy(
    resid: torch.Tensor,  # [G, N, d_model]: G independent models (1 for a single one)
    W_U: torch.Tensor,  # [G, d_model, d_vocab]
    b_U: torch.Tensor,  # [G, d_vocab]
    targets: torch.Tensor,  # [G, N] int64; IGNORE where a row has no target
) -> torch.Tensor:  # [G]: each model's mean cross-entropy over its rows with a target
    """Each model's `cross_entropy(resid @ W_U + b_U, targets)`, its gradient computed in the
    forward pass (only when autograd will want it)."""
    with_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (resid, W_U, b_U))
    return _UnembedMeanCrossEntropy.apply(resid, W_U, b_U, targets, with_grad)
