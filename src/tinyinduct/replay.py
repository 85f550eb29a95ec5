"""Metrics recomputed from a run's development record: the model at each saved step through the
run's own evaluation (the rows equal the logged ones) or through any function of the model."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence

import torch

from .evaluate import eval_batches, evaluate

if TYPE_CHECKING:
    from .model import AttnOnlyTransformer
    from .runs import Run

Metric = Callable[["AttnOnlyTransformer", int], Dict[str, Any]]


def own_evaluation(run: Run) -> Metric:
    """The evaluation the run logged at every eval step (on its fixed probe and batch)."""
    probe, train_batch = eval_batches(run.config, torch.device("cpu"))
    return lambda model, step: evaluate(model, probe, train_batch)


def replay(run: Run, fn: Metric | None = None,
           steps: Sequence[int] | None = None) -> List[Dict[str, Any]]:
    """`{"step": s, **fn(model_at(s), s)}` for every saved step (or `steps`), in order. A
    snapshot that cannot be read is named on stderr and skipped; the rest are replayed."""
    fn = own_evaluation(run) if fn is None else fn
    rows = []
    for step in sorted(run.snapshot_steps if steps is None else steps):
        try:
            model = run.model_at(step)
        except ValueError as err:
            print(f"replay: skipped step {step}: {err}", file=sys.stderr)
            continue
        with torch.no_grad():
            rows.append({"step": step, **fn(model, step)})
    return rows
