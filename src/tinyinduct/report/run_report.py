"""`RUN_DIR/report.html`: a run's page, from its directory alone (metrics.jsonl, summary.json,
config.yaml, record/attention/). A slider walks the evaluations; missing pieces are named on
the page instead of failing."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from ..record import load_attention, load_picture_tokens
from ..tracking import METRICS_FILE, SUMMARY_FILE, read_metrics
from .page import pack_patterns, render, write_page

REPORT_FILE = "report.html"
# (key, label) of the loss curves, probe first, then the training distribution
LOSS_PANELS = (
    ("Loss on the probe (eval/)", (("train/loss", "train (training batches)"),
                                   ("eval/loss_first_copy", "first copy (unpredictable)"),
                                   ("eval/loss_second_copy", "second copy (predictable)"))),
    ("Loss on the training distribution (train_dist/)",
     (("train_dist/loss", "all positions"),
      ("train_dist/loss_first_copy", "first copy"),
      ("train_dist/loss_second_copy", "second copy"))),
)
SCORE_KINDS = (("induction", "induction"), ("prev_token", "previous-token"),
               ("duplicate", "duplicate"))


def _read_json(path: Path, notes: List[str]) -> Dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"{path.name} could not be read ({err}).")
        return None


def _read_config(run_dir: Path) -> Dict[str, Any]:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _heads(rows: List[Dict[str, Any]]) -> List[str]:
    prefix = "heads/induction/"
    return sorted({k[len(prefix):] for r in rows for k in r if k.startswith(prefix)})


def _comp_pairs(rows: List[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """(kind, writer, reader) of every `comp/{kind}/{writer}->{reader}` key."""
    pairs = set()
    for r in rows:
        for k in r:
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == "comp" and "->" in parts[2]:
                pairs.add((parts[1], *parts[2].split("->")))
    return sorted(pairs)


def _series(rows: List[Dict[str, Any]], key: str) -> List[Any]:
    return [r.get(key) if isinstance(r.get(key), (int, float)) else None for r in rows]


def _fmt(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def verdict_lines(summary: Dict[str, Any] | None, rows: List[Dict[str, Any]],
                  config: Dict[str, Any]) -> List[str]:
    """The fixed verdict panel, as sentences."""
    steps = (config.get("train") or {}).get("steps")
    if summary is None:
        last = rows[-1]["step"] if rows else None
        where = f"last evaluation at step {last} of {steps}" if last is not None else \
            "nothing evaluated yet"
        return [f"No verdict yet: the run has no {SUMMARY_FILE} (still running, or killed); "
                f"{where}."]
    s = summary
    lines = []
    if s.get("status") in ("failed", "interrupted"):
        lines.append(f"The run {s['status']} after step {s.get('last_step')}"
                     + (f": {s['error']}" if s.get("error") else "") + ".")
    if "induction_formed" not in s:
        return lines + ["The summary holds no verdict."]
    head, score = s.get("best_induction_head"), s.get("best_induction_score")
    formed = "An induction head formed" if s["induction_formed"] else "No induction head formed"
    lines.append(f"{formed}: best layer-1 head {head or 'n/a'} scores {_fmt(score)} "
                 f"(threshold {s.get('threshold', 'n/a')}); second-copy / first-copy loss ratio "
                 f"{_fmt(s.get('loss_ratio'))}.")
    scores = s.get("mechanism_scores") or {}
    if s.get("mechanism"):
        lines.append(
            f"Mechanism: {s['mechanism']} ({s.get('mechanism_head')}: induction score "
            f"{_fmt(scores.get('full'))}; {_fmt(scores.get('k_removed'))} with earlier heads "
            f"removed from its keys, {_fmt(scores.get('q_removed'))} from its queries, "
            f"{_fmt(scores.get('qk_removed'))} from both).")
    if s.get("composes_with"):
        lines.append(f"Partner head: {s['composes_with']} (previous-token score "
                     f"{_fmt(s.get('composes_with_prev_token_score'))}).")
    elif s.get("mechanism"):
        lines.append("Partner head: none (nothing composes).")
    crossing, steepest = s.get("phase_change_step"), s.get("phase_change_steepest_step")
    lines.append("Phase change: " + (
        f"the best induction score crosses {s.get('threshold')} at step {crossing}"
        if crossing is not None else "no head crossed the threshold")
        + (f"; the second-copy loss falls fastest around step {steepest}."
           if steepest is not None else "."))
    return lines


def run_report_data(run_dir: str | Path) -> Dict[str, Any]:
    """Everything the run page shows, as plain JSON-ready values."""
    run_dir = Path(run_dir)
    notes: List[str] = []
    rows = read_metrics(run_dir / METRICS_FILE)
    summary = _read_json(run_dir / SUMMARY_FILE, notes)
    config = _read_config(run_dir)
    if not rows:
        notes.append(f"No evaluations: {METRICS_FILE} is missing or empty, so there are no curves, "
                     f"scores or patterns to show.")
    if summary is None:
        notes.append(f"No {SUMMARY_FILE}: the run is still in progress (or was killed); the "
                     f"verdict and the phase change are not known yet.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        att_steps, attention = load_attention(run_dir)
        picture = load_picture_tokens(run_dir)
    notes += [str(w.message) for w in caught]
    row_steps = [r["step"] for r in rows]
    keep = [i for i, s in enumerate(att_steps) if s in set(row_steps)]  # patterns of logged steps
    if rows and not keep:
        notes.append("No attention record (record/attention/): the patterns cannot be shown.")
    elif rows and len(keep) < len(rows):
        notes.append(f"Attention patterns recorded at {len(keep)} of {len(rows)} evaluations; "
                     f"the others show none.")
    heads = _heads(rows)
    pairs = _comp_pairs(rows)
    summary = summary or {}
    data = config.get("data") or {}
    return {
        "kind": "run",
        "run_dir": str(run_dir),
        "title": f"tinyinduct run: {run_dir.name}",
        "notes": notes,
        "verdict": verdict_lines(summary if summary else None, rows, config),
        "status": summary.get("status", "in progress"),
        "steps": row_steps,
        "tokens": [r.get("tokens") for r in rows],
        "d_vocab": data.get("d_vocab"),
        "data_kind": data.get("kind"),
        "threshold": summary.get("threshold", (config.get("train") or {}).get(
            "induction_threshold")),
        "phase": {"crossing": summary.get("phase_change_step"),
                  "steepest": summary.get("phase_change_steepest_step")},
        "loss_panels": [{"title": t, "series": [{"key": k, "label": lab, "values": _series(rows, k)}
                                                for k, lab in keys]}
                        for t, keys in LOSS_PANELS],
        "heads": heads,
        "score_kinds": [{"key": k, "label": lab} for k, lab in SCORE_KINDS],
        "scores": {k: {h: _series(rows, f"heads/{k}/{h}") for h in heads}
                   for k, _ in SCORE_KINDS},
        "comp": {
            "pairs": [list(p) for p in pairs],
            "values": [_series(rows, f"comp/{k}/{w}->{r}") for k, w, r in pairs],
            "baseline": _series(rows, "comp/baseline"),
        },
        "attention": {
            "steps": [att_steps[i] for i in keep],
            "shape": list(attention.shape[1:]) if keep else [],
            "packed": pack_patterns(attention[keep]) if keep else "",
            "tokens": picture["tokens"] if picture else None,
            "first_copy": list(picture["first_copy"]) if picture else None,
            "second_copy": list(picture["second_copy"]) if picture else None,
        },
    }


def write_run_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` (one file, works offline) and return its path."""
    run_dir = Path(run_dir)
    data = run_report_data(run_dir)
    page = render(data["title"], data, ["common.js", "run.js"])
    return write_page(run_dir / REPORT_FILE, page)
