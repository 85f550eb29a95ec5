"""Phase-change detection: pure functions over metrics rows (`{"step", "tokens", key: value}`).

Two independent estimates of when the induction head forms:
- threshold crossing: the first evaluation at which the best induction score of a head in layer
  >= 1 reaches the threshold;
- steepest fall: the middle of the interval between consecutive evaluations over which the
  second-copy loss falls fastest (per step).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

from .metrics import best_induction_head

Row = Dict[str, Any]
SECOND_COPY_LOSS = "eval/loss_second_copy"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def threshold_crossing(rows: List[Row], threshold: float) -> Row | None:
    """The first row whose best layer>=1 induction score is >= `threshold` (None if none)."""
    return next((r for r in rows if best_induction_head(r)[1] >= threshold), None)


def steepest_fall(rows: List[Row], key: str = SECOND_COPY_LOSS) -> Dict[str, Any] | None:
    """`{"step", "tokens", "slope"}` at the middle of the interval where `key` falls fastest per
    step (slope < 0), or None if it never falls."""
    points = [r for r in rows if _finite(r.get(key))]
    best = None
    for a, b in zip(points, points[1:]):
        slope = (b[key] - a[key]) / max(b["step"] - a["step"], 1)
        if slope < 0 and (best is None or slope < best["slope"]):
            best = {"step": (a["step"] + b["step"]) // 2,
                    "tokens": (a["tokens"] + b["tokens"]) // 2, "slope": slope}
    return best


def phase_change_row(rows: List[Row], threshold: float) -> Dict[str, float]:
    """`phase_change/*` for the newest row of `rows` (all rows so far, newest last): the best
    layer>=1 induction score, the second-copy loss slope since the previous evaluation, and the
    two step estimates once they exist."""
    last = rows[-1]
    out: Dict[str, float] = {"phase_change/best_induction": best_induction_head(last)[1]}
    if len(rows) > 1 and _finite(last.get(SECOND_COPY_LOSS)) \
            and _finite(rows[-2].get(SECOND_COPY_LOSS)):
        out["phase_change/loss_second_copy_slope"] = (
            (last[SECOND_COPY_LOSS] - rows[-2][SECOND_COPY_LOSS])
            / max(last["step"] - rows[-2]["step"], 1))
    crossing = threshold_crossing(rows, threshold)
    if crossing is not None:
        out["phase_change/threshold_step"] = crossing["step"]
    fall = steepest_fall(rows)
    if fall is not None:
        out["phase_change/steepest_fall_step"] = fall["step"]
    return out


def phase_change_summary(rows: List[Row], threshold: float) -> Dict[str, Any]:
    """Summary fields: both estimates, in steps and in tokens seen (None where not found)."""
    crossing = threshold_crossing(rows, threshold)
    fall = steepest_fall(rows)
    return {
        "phase_change_step": crossing["step"] if crossing else None,
        "phase_change_tokens": crossing["tokens"] if crossing else None,
        "phase_change_steepest_step": fall["step"] if fall else None,
        "phase_change_steepest_tokens": fall["tokens"] if fall else None,
        "phase_change_steepest_slope": fall["slope"] if fall else None,
    }


def formed_at(rows: List[Row], threshold: float, ratio_threshold: float) -> int | None:
    """The first step at which the run met both formation criteria (best layer>=1 induction
    score >= `threshold` and second/first-copy loss ratio < `ratio_threshold`), or None."""
    for r in rows:
        ratio = r.get("eval/loss_ratio")
        if best_induction_head(r)[1] >= threshold and _finite(ratio) and ratio < ratio_threshold:
            return r["step"]
    return None
