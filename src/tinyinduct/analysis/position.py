"""Where a Q-composition induction head can get position from when the residual stream carries
none. With shortformer positions, position enters queries and keys only; layer 0's values, and so
its output, carry tokens. A layer-0 head can still write position indirectly: how its attention
spreads depends on where the query sits (attending to BOS, or evenly over the context, writes
`1 / (position + 1)` of a value: counting). Two measures of layer 0 on real sequences:

- `position_r2`: how much of the position index a linear readout recovers from layer 0's output
  (`blocks.0.hook_attn_out`), fitted by least squares on half the sequences and scored (R^2) on
  the other half; 0 for an output that says nothing about position, 1 for one that states it;
- `bos_attention`: per layer-0 head, its mean attention to BOS (position 0) from the positions
  after it;
- `earlier_r2` and `earlier_r2_from_own_position`: what a Q-composition head needs is the
  position of the token's earlier occurrence (its key sits one further). At second-copy
  positions, the R^2 of a linear readout of that position from layer 0's output plus the query's
  own position, against the query's own position alone (it predicts some: the earlier occurrence
  is the same distance back in a whole sequence). The gap is what layer 0 writes about where the
  earlier occurrence was.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from ..data import Batch
from ..metrics import head_label


def held_out_r2(x: List[torch.Tensor], y: List[torch.Tensor]) -> float:
    """Per-sequence features `x[i]` [n_i, f] and targets `y[i]` [n_i]: R^2 on the second half of
    the sequences of the least-squares linear map (with a constant) fitted on the first half."""
    half = len(x) // 2
    if half < 1:
        raise ValueError(f"a held-out R^2 needs >= 2 sequences, got {len(x)}")

    def stack(xs, ys):
        features = torch.cat(xs).double()
        return (torch.cat([features, torch.ones_like(features[:, :1])], dim=1),
                torch.cat(ys).double())

    fit_x, fit_y = stack(x[:half], y[:half])
    test_x, test_y = stack(x[half:], y[half:])
    # gelsd (SVD): outputs that use few directions make the system rank-deficient
    w = torch.linalg.lstsq(fit_x, fit_y[:, None], driver="gelsd").solution
    residual = test_y - (test_x @ w).squeeze(1)
    return float(1 - (residual ** 2).sum() / ((test_y - test_y.mean()) ** 2).sum())


def position_r2(out: torch.Tensor) -> float:
    """`out` [b, p, d]: the held-out R^2 of the position index read linearly from `out`.
    Position 0 (BOS, where every head attends to itself) is left out."""
    b, p, _ = out.shape
    if b < 2 or p < 3:
        raise ValueError(f"position_r2 needs >= 2 sequences of >= 3 positions, got {b} x {p}")
    positions = torch.arange(1, p, dtype=torch.float64)
    return held_out_r2(list(out[:, 1:]), [positions] * b)


def earlier_position_r2(out: torch.Tensor, batch: Batch) -> Tuple[float, float]:
    """At the second copy's positions j, whose token last occurred at i = j - (distance between
    the copies): (R^2 of i from [out_j, j], R^2 of i from j alone), held out."""
    start1 = batch.first_copy.float().argmax(1)
    start2 = batch.second_copy.float().argmax(1)
    with_out, own_only, targets = [], [], []
    for s in range(out.shape[0]):
        j = batch.second_copy[s].nonzero().squeeze(1)
        own = j.double()[:, None]
        with_out.append(torch.cat([out[s, j].double(), own], dim=1))
        own_only.append(own)
        targets.append((j - (start2[s] - start1[s])).double())
    return held_out_r2(with_out, targets), held_out_r2(own_only, targets)


def bos_attention(pattern: torch.Tensor) -> torch.Tensor:  # [b, h, q, k] -> [h]
    """Each head's mean attention to position 0 from the query positions after it."""
    return pattern[:, :, 1:, 0].mean(dim=(0, 2))


@torch.no_grad()
def layer0_position(model, batch: Batch) -> Dict[str, object]:
    """A batch of >= 2 sequences: {"position_r2", "earlier_r2", "earlier_r2_from_own_position",
    "bos_attention": {"L0H0": ..., ...}}."""
    names = ("blocks.0.hook_attn_out", "blocks.0.attn.hook_pattern")
    _, cache = model.run_with_cache(batch.tokens, names_filter=lambda name: name in names)
    out = cache["blocks.0.hook_attn_out"]
    bos = bos_attention(cache["blocks.0.attn.hook_pattern"])
    earlier, own = earlier_position_r2(out, batch)
    return {"position_r2": position_r2(out), "earlier_r2": earlier,
            "earlier_r2_from_own_position": own,
            "bos_attention": {head_label(0, h): float(v) for h, v in enumerate(bos)}}
