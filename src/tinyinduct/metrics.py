"""Pure metric functions over attention patterns, logits and tokens (no training code).

Conventions: `pattern` is `[batch, head, query_pos, key_pos]` (TransformerLens `hook_pattern`);
position `i` of `logits` predicts token `i + 1`. Head scores are plain means of attention weight
(not TransformerLens `head_detector`'s `mul` form), so a perfect head scores 1.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from .data import induction_mask, induction_sources


def per_position_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting `tokens[:, i+1]` at position i: `[batch, pos - 1]`."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(),
                           reduction="none").view(tokens.shape[0], -1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is true (NaN if it is nowhere true)."""
    mask = mask[..., : values.shape[-1]]
    return values[mask].mean() if mask.any() else values.new_tensor(float("nan"))


def induction_score(
    pattern: torch.Tensor,  # [batch, head, q, k]
    tokens: torch.Tensor,  # [batch, pos]
    mask: torch.Tensor | None = None,  # [batch, pos] bool; default induction_mask(tokens)
) -> torch.Tensor:  # [head]
    """Mean attention from each scored position to the token after the previous occurrence of
    the current token. Scored: `mask` positions (default: those predictable by induction)."""
    src = induction_sources(tokens)
    mask = induction_mask(tokens) if mask is None else mask
    mask = mask & (src >= 0)
    index = src.clamp(min=0)[:, None, :, None].expand(-1, pattern.shape[1], -1, 1)
    to_src = pattern.gather(-1, index).squeeze(-1)  # [batch, head, q]
    return (to_src * mask[:, None]).sum((0, 2)) / mask.sum().clamp(min=1)


def prev_token_score(pattern: torch.Tensor) -> torch.Tensor:  # [batch, head, q, k] -> [head]
    """Mean attention from position i to i - 1, over i >= 1."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean total attention to earlier occurrences of the current token, over positions that
    have one: `[head]`."""
    n = tokens.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    dup = (tokens[:, :, None] == tokens[:, None, :]) & earlier  # [batch, q, k]
    has = dup.any(-1)  # [batch, q]
    mass = (pattern * dup[:, None]).sum(-1)  # [batch, head, q]
    return (mass * has[:, None]).sum((0, 2)) / has.sum().clamp(min=1)


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def head_scores(
    cache: Dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor | None = None
) -> Dict[str, float]:
    """`heads/{induction,prev_token,duplicate}/L{l}H{h}` for every head in a cache."""
    out: Dict[str, float] = {}
    layer = 0
    while f"blocks.{layer}.attn.hook_pattern" in cache:
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        scores = {
            "induction": induction_score(pattern, tokens, mask),
            "prev_token": prev_token_score(pattern),
            "duplicate": duplicate_token_score(pattern, tokens),
        }
        for kind, values in scores.items():
            for head, value in enumerate(values.tolist()):
                out[f"heads/{kind}/{head_label(layer, head)}"] = value
        layer += 1
    return out


def best_induction_head(scores: Dict[str, float], min_layer: int = 1) -> tuple:
    """(label, score) of the best induction head in layers >= `min_layer` (None, nan if none)."""
    prefix = "heads/induction/"
    candidates = {k[len(prefix):]: v for k, v in scores.items()
                  if k.startswith(prefix) and int(k[len(prefix) + 1:].split("H")[0]) >= min_layer}
    if not candidates:
        return None, float("nan")
    label = max(candidates, key=candidates.get)
    return label, candidates[label]
