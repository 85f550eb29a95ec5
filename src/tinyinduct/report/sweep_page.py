"""`SWEEP_DIR/compare.html`: the conditions table, the curves of every condition (mean over
seeds, min-max band, single seeds faint; each condition its own colour and dash), and per
condition the fraction of its runs formed against training steps. Failed and unfinished runs
are named on the page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

from ..sweep_plots import runs_band
from ..sweep_report import (
    TABLE_COLUMNS,
    Condition,
    best_induction_curve,
    condition_row,
    run_problems,
)
from .page import render, write_page

COMPARE_FILE = "compare.html"
CURVES = (("induction", "Best layer-1 induction score", "induction score"),
          ("eval/loss_second_copy", "Second-copy loss on the probe", "loss (nats)"),
          ("eval/loss_first_copy", "First-copy loss on the probe", "loss (nats)"))


def crossing_step(rows: List[Dict[str, Any]], threshold: float) -> int | None:
    """The first evaluation step at which the best layer-1 induction score reaches
    `threshold` (None if it never does)."""
    for row, (_, score) in zip(rows, best_induction_curve(rows)):
        if math.isfinite(score) and score >= threshold:
            return row["step"]
    return None


def formed_fraction(condition: Condition, threshold: float) -> Dict[str, list]:
    """At every step any run of the condition evaluated: the fraction of all its runs whose best
    induction score has crossed `threshold` by then (runs that stopped early count as not
    crossed after their last evaluation)."""
    runs = condition.runs
    steps = sorted({r["step"] for run in runs for r in run.rows})
    crossed = [crossing_step(run.rows, threshold) for run in runs]
    fraction = [sum(c is not None and c <= s for c in crossed) / max(len(runs), 1)
                for s in steps]
    return {"steps": steps, "fraction": fraction}


def _threshold(conditions: List[Condition]) -> float:
    values = {(r.config.get("train") or {}).get("induction_threshold")
              for c in conditions for r in c.runs}
    values.discard(None)
    return values.pop() if len(values) == 1 else 0.7


def sweep_report_data(sweep_dir: str | Path, conditions: List[Condition]) -> Dict[str, Any]:
    threshold = _threshold(conditions)
    notes = run_problems(conditions)
    if not conditions:
        notes.append("No runs found under this directory (no config.yaml).")
    out = []
    for condition in conditions:
        with_rows = [r for r in condition.runs if r.rows]
        if not with_rows:
            notes.append(f"{condition.label}: no run has logged an evaluation yet.")
        curves = {}
        for key, _, _ in CURVES:
            per_run, (xs, mean, low, high) = runs_band(with_rows, key)
            curves[key] = {"tokens": xs, "mean": mean, "low": low, "high": high,
                           "runs": [{"seed": r.seed, "state": r.state, "tokens": list(c),
                                     "values": list(c.values())} for r, c in per_run]}
        states = {s: len(condition.with_state(s)) for s in ("finished", "failed", "incomplete")}
        out.append({"label": condition.label, "states": states, "curves": curves,
                    "formed": formed_fraction(condition, threshold)})
    return {
        "kind": "sweep",
        "title": f"tinyinduct sweep: {Path(sweep_dir).name}",
        "sweep_dir": str(sweep_dir),
        "threshold": threshold,
        "notes": notes,
        "columns": list(TABLE_COLUMNS),
        "table": [condition_row(c) for c in conditions],
        "curves": [{"key": k, "title": t, "y_label": y} for k, t, y in CURVES],
        "conditions": out,
    }


def write_sweep_report(sweep_dir: str | Path, conditions: List[Condition]) -> Path:
    """Write `sweep_dir/compare.html` (one file, works offline) and return its path."""
    data = sweep_report_data(sweep_dir, conditions)
    page = render(data["title"], data, ["common.js", "sweep.js"])
    return write_page(Path(sweep_dir) / COMPARE_FILE, page)
