"""Where a Q-composition induction head can get position from when the residual stream carries
none. With shortformer positions, position enters queries and keys only; layer 0's values, and so
its output, carry tokens. A layer-0 head can still write position indirectly: how its attention
spreads depends on where the query sits (attending to BOS, or evenly over the context, writes
`1 / (position + 1)` of a value: counting). Two measures of layer 0 on real sequences:

- `position_r2`: how much of the position index a linear readout recovers from layer 0's output
  (`blocks.0.hook_attn_out`), fitted by least squares on half the sequences and scored (R^2) on
  the other half; 0 for an output that says nothing about position, 1 for one that states it;
- `bos_attention`: per layer-0 head, its mean attention to BOS (position 0) from the positions
  after it.
"""

from __future__ import annotations

from typing import Dict

import torch

from ..metrics import head_label


def position_r2(out: torch.Tensor) -> float:
    """`out` [b, p, d]: R^2 on the second half of the sequences of the least-squares linear map
    (with a constant) from `out` to the position index, fitted on the first half. Position 0
    (BOS, where every head attends to itself) is left out."""
    b, p, d = out.shape
    if b < 2 or p < 3:
        raise ValueError(f"position_r2 needs >= 2 sequences of >= 3 positions, got {b} x {p}")
    x = out[:, 1:].double()
    x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)  # the constant
    y = torch.arange(1, p, dtype=torch.float64).expand(b, p - 1)
    half = b // 2
    # gelsd (SVD): outputs that use few directions make the system rank-deficient
    fit = torch.linalg.lstsq(x[:half].reshape(-1, d + 1), y[:half].reshape(-1, 1),
                             driver="gelsd").solution
    pred = (x[half:].reshape(-1, d + 1) @ fit).squeeze(-1)
    target = y[half:].reshape(-1)
    return float(1 - ((target - pred) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def bos_attention(pattern: torch.Tensor) -> torch.Tensor:  # [b, h, q, k] -> [h]
    """Each head's mean attention to position 0 from the query positions after it."""
    return pattern[:, :, 1:, 0].mean(dim=(0, 2))


@torch.no_grad()
def layer0_position(model, tokens: torch.Tensor) -> Dict[str, object]:
    """`tokens` [b, p] (b >= 2): {"position_r2": float, "bos_attention": {"L0H0": ..., ...}}."""
    names = ("blocks.0.hook_attn_out", "blocks.0.attn.hook_pattern")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    bos = bos_attention(cache["blocks.0.attn.hook_pattern"])
    return {"position_r2": position_r2(cache["blocks.0.hook_attn_out"]),
            "bos_attention": {head_label(0, h): float(v) for h, v in enumerate(bos)}}
