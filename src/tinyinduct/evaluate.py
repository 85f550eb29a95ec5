"""Periodic evaluation: one cached forward pass on each fixed batch, turned into metric rows."""

from __future__ import annotations

from typing import Dict

import torch

from .data import Batch
from .metrics import head_scores, masked_mean, per_position_loss
from .model import AttnOnlyTransformer


def copy_losses(logits: torch.Tensor, batch: Batch, section: str) -> Dict[str, float]:
    """`{section}/loss`, `/loss_first_copy`, `/loss_second_copy`, `/loss_ratio` (second/first)."""
    loss = per_position_loss(logits, batch.tokens)
    first = masked_mean(loss, batch.first_copy).item()
    second = masked_mean(loss, batch.second_copy).item()
    return {
        f"{section}/loss": loss.mean().item(),
        f"{section}/loss_first_copy": first,
        f"{section}/loss_second_copy": second,
        f"{section}/loss_ratio": second / first,
    }


@torch.no_grad()
def evaluate(model: AttnOnlyTransformer, probe: Batch, train_batch: Batch) -> Dict[str, float]:
    """Losses by copy on the probe (`eval/`) and on a fixed training-distribution batch
    (`train_dist/`), and every head's scores on the probe (`heads/`)."""
    was_training = model.training
    model.eval()
    logits, cache = model.run_with_cache(probe.tokens)
    row = copy_losses(logits, probe, "eval")
    row.update(head_scores(cache, probe.tokens, probe.second_copy))
    row.update(copy_losses(model(train_batch.tokens), train_batch, "train_dist"))
    model.train(was_training)
    return row
