"""Numerical faults: notice a NaN or inf loss without a host sync per step, and never checkpoint
a state that has gone non-finite (so the last checkpoint on disk is always a good one)."""

from __future__ import annotations

from typing import Sequence

import torch

_NO_STEP = 2**62


class NonFiniteGuard:
    """Remembers, on the device, the first step whose loss was NaN or inf, for each of K
    stacked models."""

    def __init__(self, n_models: int, device: torch.device):
        self._first_bad = torch.full((n_models,), _NO_STEP, dtype=torch.long, device=device)

    def observe(self, step: int, losses: torch.Tensor) -> None:  # losses [K]
        """Three tiny device ops and no sync: the loop reads the flag only at eval/checkpoint."""
        bad_step = torch.where(torch.isfinite(losses), _NO_STEP, step)
        torch.minimum(self._first_bad, bad_step, out=self._first_bad)

    def keep_models(self, keep: Sequence[int]) -> None:
        self._first_bad = self._first_bad[list(keep)].clone()

    def first_bad_step(self, k: int) -> int | None:
        step = int(self._first_bad[k].item())
        return None if step == _NO_STEP else step

    def problem(self, k: int, model: torch.nn.Module, step: int) -> str | None:
        """Why model k's state after `step` (its weights in `model`) must not be saved, or None
        if it is finite.

        A finite loss does not make finite weights (an inf gradient turns the weights NaN after
        the loss was computed), so the weights are checked too; NaN optimizer moments always
        reach the weights on the same step.
        """
        bad = self.first_bad_step(k)
        if bad is not None:
            return f"non-finite training loss at step {bad}"
        finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
        if not bool(finite):
            return f"non-finite weights after step {step}"
        return None
