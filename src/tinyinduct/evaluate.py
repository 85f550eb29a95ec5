"""Periodic evaluation: one cached forward pass on each fixed batch, turned into metric rows."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

import torch

from .composition import composition_table, weight_scores
from .config import RunConfig
from .data import Batch, RepeatedSegmentData, make_probe, probe_lengths
from .metrics import (
    attribution_row,
    composition_partners,
    head_scores,
    icl_positions,
    icl_score,
    masked_mean,
    mechanism_attribution,
    pattern_under,
    per_position_loss,
    prev_token_score,
)
from .model import AttnOnlyTransformer

if TYPE_CHECKING:
    from .tracking import Tracker

# The evaluation batches are the same for every run, whatever its seed, so runs compare.
PROBE_SEED = 20_221_000
TRAIN_DIST_SEED = 20_221_001
PREV_TOKEN_HEAD = 0.3  # a partner head with at least this previous-token score is named one


def copy_losses(logits: torch.Tensor, batch: Batch, section: str,
                loss: torch.Tensor | None = None) -> Dict[str, float]:
    """`{section}/loss`, `/loss_first_copy`, `/loss_second_copy`, `/loss_ratio` (second/first).
    `loss`: the `per_position_loss` of these logits, if already computed."""
    loss = per_position_loss(logits, batch.tokens) if loss is None else loss
    first = masked_mean(loss, batch.first_copy).item()
    second = masked_mean(loss, batch.second_copy).item()
    return {
        f"{section}/loss": loss.mean().item(),
        f"{section}/loss_first_copy": first,
        f"{section}/loss_second_copy": second,
        f"{section}/loss_ratio": second / first,
    }


def eval_batches(cfg: RunConfig, device: torch.device) -> tuple:
    """The fixed probe and training-distribution batches every evaluation uses."""
    probe = make_probe(cfg.data, seed=PROBE_SEED, device=device)
    train_batch = RepeatedSegmentData(cfg.data, seed=TRAIN_DIST_SEED, device=device).sample(
        cfg.data.eval_batch_size)
    return probe, train_batch


def picture_index(probe: Batch) -> int:
    """The probe sequence whose attention patterns are kept for pictures: the longest copy."""
    return int(probe.second_copy.sum(1).argmax())


def in_distribution(probe: Batch) -> torch.Tensor:  # [batch] bool
    """The probe sequences whose copy length is one training shows (all of them for a batch that
    does not say): the headline head scores average over these, as a head trained on copies of
    16-31 tokens is not expected to generalise to 7."""
    lengths = probe.copy_lengths
    if probe.train_copy_lengths is None:
        return torch.ones_like(lengths, dtype=torch.bool)
    low, high = probe.train_copy_lengths
    inside = (lengths >= low) & (lengths <= high)
    return inside if bool(inside.any()) else torch.ones_like(inside)


def scores_by_length(cache: Dict[str, torch.Tensor], probe: Batch,
                     n_layers: int) -> Dict[str, float]:
    """`heads/induction_len{L}/L{l}H{h}`: the induction score on the probe's copies of each
    length L, in and out of the training range."""
    row: Dict[str, float] = {}
    lengths = probe.copy_lengths
    for length in probe_lengths(probe.tokens.shape[1]):
        pick = lengths == length
        if not bool(pick.any()):
            continue
        scores = head_scores(_rows_of(cache, pick, n_layers), probe.tokens[pick],
                             probe.second_copy[pick])
        row.update({k.replace("heads/induction/", f"heads/induction_len{length}/"): v
                    for k, v in scores.items() if k.startswith("heads/induction/")})
    return row


def _rows_of(cache: Dict[str, torch.Tensor], pick: torch.Tensor,
             n_layers: int) -> Dict[str, torch.Tensor]:
    """The attention patterns of the chosen probe sequences."""
    keys = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    return {k: cache[k][pick] for k in keys}


@torch.no_grad()
def evaluate(model: AttnOnlyTransformer, probe: Batch, train_batch: Batch,
             patterns: List[torch.Tensor] | None = None) -> Dict[str, float]:
    """Losses by copy on the probe (`eval/`) and on a fixed training-distribution batch
    (`train_dist/`, with the in-context learning score `icl/score`), every head's scores on the
    probe's copies of training lengths (`heads/`) and on each probe length
    (`heads/induction_len{L}/`), K/Q mechanism attribution (`mechanism/`), composition and
    copying scores of the weights (`comp/`, `heads/copying/`). A list passed as `patterns`
    receives the attention patterns `[layer, head, q, k]` of the picture sequence of the probe."""
    was_training = model.training
    model.eval()
    logits, cache = model.run_with_cache(probe.tokens)
    row = copy_losses(logits, probe, "eval")
    n_layers = model.cfg.n_layers
    pick = in_distribution(probe)
    row.update(head_scores(_rows_of(cache, pick, n_layers), probe.tokens[pick],
                           probe.second_copy[pick]))
    row.update(scores_by_length(cache, probe, n_layers))
    row.update(attribution_row(mechanism_attribution(model, probe.tokens, cache)))
    row.update(weight_scores(model))
    if patterns is not None:
        i = picture_index(probe)
        patterns.append(torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][i]
                                     for layer in range(model.cfg.n_layers)]).cpu().half())
    train_logits = model(train_batch.tokens)
    loss = per_position_loss(train_logits, train_batch.tokens)
    row.update(copy_losses(train_logits, train_batch, "train_dist", loss))
    row["icl/score"] = icl_score(loss, *icl_positions(train_batch.tokens.shape[1]))
    model.train(was_training)
    return row


PARTNER_INPUTS = {"K": ("K",), "Q": ("Q",), "mixed": ("Q", "K")}


@torch.no_grad()
def partner_summary(model: AttnOnlyTransformer, probe: Batch, summary: Dict) -> Dict:
    """Which earlier head the run's induction head composes with: the one whose output, removed
    from the head's input named by the mechanism (keys for K, queries for Q, both otherwise),
    lowers its induction score most. `composes_with_scores` holds the score under each removal.
    All None when the mechanism is `none`: there is no composition to name."""
    head, mechanism = summary.get("mechanism_head"), summary.get("mechanism")
    if head is None or mechanism not in PARTNER_INPUTS:
        return dict.fromkeys(("composes_with", "composes_with_prev_token_score",
                              "composes_with_scores", "previous_token_head"))
    model.eval()
    scores = composition_partners(model, probe.tokens, head, PARTNER_INPUTS[mechanism])
    partner = min(scores, key=scores.get)
    layer, h = (int(x) for x in partner[1:].split("H"))
    prev = prev_token_score(pattern_under(model, probe.tokens, layer, []))[h].item()
    return {
        "composes_with": partner,
        "composes_with_prev_token_score": prev,
        "composes_with_scores": scores,
        "previous_token_head": partner if prev >= PREV_TOKEN_HEAD else None,
    }


def score_tables(row: Dict) -> Dict[str, tuple]:
    """`{name: (columns, rows)}` of a metrics row: per-head scores and composition scores."""
    kinds = ("induction", "prev_token", "duplicate", "copying")
    labels = sorted({k.split("/")[-1] for k in row if k.startswith("heads/induction/")})
    heads = [[label] + [row.get(f"heads/{kind}/{label}") for kind in kinds]
             + [row.get(f"mechanism/{label}/{x}") for x in ("k_removed", "q_removed")]
             for label in labels]
    return {
        "head_scores": (["head", *kinds, "k_removed", "q_removed"], heads),
        "composition": (["kind", "writer", "reader", "score", "baseline"],
                        [list(r) for r in composition_table(row)]),
    }


def write_pictures(run_dir: Path, rows: List[Dict[str, Any]], summary: Dict[str, Any],
                   patterns: List[torch.Tensor], probe: Batch, tracker: Tracker) -> float:
    """Draw the run's pictures into plots/ and send them, with the score tables, to W&B.
    Returns the seconds spent; a plotting failure is reported, never fatal to the run."""
    t0 = time.perf_counter()
    try:
        from .plots import plot_run

        tokens = probe.tokens[picture_index(probe)].cpu()
        paths = plot_run(run_dir, rows, summary, patterns, tokens)
        tracker.media(rows[-1]["step"], paths, score_tables(rows[-1]))
    except Exception as err:  # the run's numbers are on disk already; pictures are extra
        print(f"could not draw the pictures: {type(err).__name__}: {err}", file=sys.stderr)
    return time.perf_counter() - t0
