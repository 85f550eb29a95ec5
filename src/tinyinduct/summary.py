"""What a run says at its end: the summary fields computed from its metrics rows, and the
one-paragraph account printed for a person."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

from .config import RunConfig
from .metrics import best_induction_head
from .phase import formed_at, phase_change_summary

# The steepest fall of the second-copy loss is worth a sentence only when the loss fell by at
# least this share of its first value (otherwise the "fall" is noise around a flat curve).
MEANINGFUL_FALL = 0.25


def heads_above(row: Dict[str, Any], threshold: float) -> List[str]:
    """Every layer>=1 head whose induction score in `row` is at least `threshold`, best first."""
    prefix = "heads/induction/"
    scores = {k[len(prefix):]: v for k, v in row.items()
              if k.startswith(prefix) and not k[len(prefix):].startswith("L0")
              and isinstance(v, (int, float)) and v >= threshold}
    return sorted(scores, key=scores.get, reverse=True)


def summarize(rows: List[Dict[str, Any]], cfg: RunConfig) -> Dict[str, Any]:
    """Did an induction head form (final best layer>=1 score and copy-loss ratio), and when."""
    last = rows[-1]
    head, score = best_induction_head(last)
    ratio = last.get("eval/loss_ratio", float("nan"))
    t = cfg.train
    formed = bool(score >= t.induction_threshold and ratio < t.loss_ratio_threshold)
    mech_head = last.get("mechanism/head")
    first = rows[0].get("eval/loss_second_copy")
    lowest = min((r["eval/loss_second_copy"] for r in rows
                  if _finite(r.get("eval/loss_second_copy"))), default=float("nan"))
    return {
        "induction_formed": formed,
        "best_induction_head": head,
        "best_induction_score": score,
        "heads_above_threshold": heads_above(last, t.induction_threshold),
        "loss_ratio": ratio,
        "loss_ratio_threshold": t.loss_ratio_threshold,
        **phase_change_summary(rows, t.induction_threshold),
        "first_formed_step": formed_at(rows, t.induction_threshold, t.loss_ratio_threshold),
        "second_copy_loss_fell": bool(_finite(first) and _finite(lowest)
                                      and first - lowest >= MEANINGFUL_FALL * first),
        "mechanism": last.get("mechanism/verdict"),
        "mechanism_head": mech_head,
        "mechanism_scores": {k.split("/")[-1]: v for k, v in last.items()
                             if k.startswith(f"mechanism/{mech_head}/")},
        "icl_score": last.get("icl/score"),
        "final_train_loss": last.get("train/loss"),
        "final_loss_second_copy": last.get("eval/loss_second_copy"),
        "final_loss_first_copy": last.get("eval/loss_first_copy"),
        "final_train_dist_loss_second_copy": last.get("train_dist/loss_second_copy"),
        "final_train_dist_loss_first_copy": last.get("train_dist/loss_first_copy"),
        "steps": last["step"],
    }


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def score_text(score: float, threshold: float) -> str:
    """Two decimals, or as many as it takes not to round across the threshold (0.6985 against
    0.7 prints as 0.6985, never as 0.70)."""
    for digits in (2, 3, 4, 6):
        text = f"{score:.{digits}f}"
        if (float(text) >= threshold) == (score >= threshold):
            return text
    return repr(score)


def why_not_formed(s: Dict[str, Any]) -> str:
    """The formation criteria that failed, with the numbers: "loss ratio 0.21 >= 0.2"."""
    failed = []
    t, r = s["threshold"], s["loss_ratio_threshold"]
    score, ratio = s["best_induction_score"], s["loss_ratio"]
    if not (_finite(score) and score >= t):
        failed.append(f"best layer-1 induction score {score_text(score, t)} < {t}")
    if not (_finite(ratio) and ratio < r):
        failed.append(f"loss ratio {score_text(ratio, r)} >= {r}")
    return " and ".join(failed)


def format_summary(summary: Dict[str, Any], run_dir: Path) -> str:
    """The one-paragraph account printed at the end of a run (one per seed for several)."""
    s = summary
    if "seed_summaries" in s:
        return format_seeds_summary(s, run_dir)
    if s.get("status") == "failed":
        return f"Run failed after step {s.get('last_step')}: {s.get('error')}. Files in {run_dir}."
    if s.get("status") == "interrupted":
        return (f"Run interrupted by {s['interrupted_by']} after step {s['last_step']}: "
                f"checkpoint saved, metrics complete. Files in {run_dir}.")
    t = s["threshold"]
    when = (f"the best layer-1 induction score crossed {t} at step "
            f"{s['phase_change_step']} ({s['phase_change_tokens']:,} tokens)"
            if s["phase_change_step"] is not None else f"no head crossed {t}")
    if s.get("phase_change_steepest_step") is not None and s.get("second_copy_loss_fell"):
        when += (f"; the second-copy loss fell fastest around step "
                 f"{s['phase_change_steepest_step']}")
    if s["induction_formed"]:
        verdict = "An induction head formed"
    else:
        verdict = f"No induction head formed ({why_not_formed(s)})"
    if s["best_induction_head"]:
        best = (f"{s['best_induction_head']} scores {score_text(s['best_induction_score'], t)} "
                f"on the probe")
        others = [h for h in s.get("heads_above_threshold") or [] if h != s["best_induction_head"]]
        if others:
            best += f" ({', '.join(others)} above {t} too)"
    else:
        best = "a one-layer model has no layer-1 head"
    early = f" {s['stop_reason']}." if s.get("stopped_early") else ""
    return (f"{verdict}: {best}, second-copy loss {s['final_loss_second_copy']:.2f} vs first-copy "
            f"{s['final_loss_first_copy']:.2f} nats (ratio {s['loss_ratio']:.2f}); on the "
            f"training distribution {_nats(s.get('final_train_dist_loss_second_copy'))} vs "
            f"{_nats(s.get('final_train_dist_loss_first_copy'))}; {when}.{early} "
            f"{format_mechanism(s)}"
            f"{s['last_step']} steps in {s['train_seconds']:.1f} s of training "
            f"({s['tokens_per_second']:,.0f} training tokens/s, evaluation "
            f"{100 * s['eval_fraction']:.0f}% of the time). Run dir: {run_dir}")


def _nats(x: Any) -> str:
    return f"{x:.2f}" if _finite(x) else "n/a"


def format_mechanism(s: Dict[str, Any]) -> str:
    """One sentence: the mechanism verdict with its attribution numbers, and the partner head."""
    scores = s.get("mechanism_scores") or {}
    if not s.get("mechanism") or "full" not in scores:
        return ""
    partner = (f", composing with {s['composes_with']} (previous-token score "
               f"{s['composes_with_prev_token_score']:.2f})" if s.get("composes_with") else "")
    return (f"Mechanism: {s['mechanism']} ({s['mechanism_head']} induction score "
            f"{scores['full']:.2f}; {scores['k_removed']:.2f} with earlier heads removed from its "
            f"keys, {scores['q_removed']:.2f} from its queries){partner}. ")


def format_seeds_summary(overall: Dict[str, Any], run_dir: Path) -> str:
    """One paragraph per seed, then a line over all of them."""
    lines = [f"seed {s}: {format_summary(summary, Path(run_dir) / f'seed{s}')}"
             for s, summary in overall["seed_summaries"].items()]
    formed = sum(bool(x) for x in overall["induction_formed"])
    lines.append(
        f"{overall['n_seeds']} seeds trained at once: {formed} formed an induction head; "
        f"{overall['train_seconds']:.1f} s of training, {overall['tokens_per_second']:,.0f} "
        f"training tokens/s over all seeds. Run dir: {run_dir}")
    return "\n".join(lines)
