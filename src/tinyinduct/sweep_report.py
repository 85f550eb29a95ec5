"""A sweep directory read back: every run's config, metrics and summary, grouped by condition
(positional mode x blocked inputs, plus any other setting that varies across runs), and the
per-condition table. Works on a partial sweep: runs that failed or have not finished are kept
apart and named."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from .metrics import best_induction_head
from .sweeps import blocked_label
from .tracking import METRICS_FILE, SUMMARY_FILE, read_metrics

CONFIG_FILE = "config.yaml"
# Settings that never define a condition: the seed is what repeats within one, the rest is
# bookkeeping.
NOT_A_CONDITION = ("seed", "device", "logger.")
ALWAYS_SHOWN = ("model.positional", "model.blocked_composition")
SHORT_NAMES = {"model.blocked_composition": "blocked"}


@dataclass
class SweepRun:
    run_dir: Path
    config: Dict[str, Any]
    rows: List[Dict[str, Any]]
    summary: Dict[str, Any] | None
    state: str  # finished | failed | incomplete (still running, or killed)
    condition: str = ""

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


@dataclass
class Condition:
    label: str
    runs: List[SweepRun] = field(default_factory=list)

    def with_state(self, state: str) -> List[SweepRun]:
        return [r for r in self.runs if r.state == state]


def find_run_dirs(sweep_dir: Path) -> List[Path]:
    """Every directory under `sweep_dir` (itself included) that holds a run's config.yaml."""
    dirs = [p.parent for p in Path(sweep_dir).rglob(CONFIG_FILE)
            if not any(part in ("wandb", ".hydra", "checkpoints") for part in p.parts)]
    return sorted(dirs, key=_natural_key)


def _natural_key(path: Path) -> list:
    """Job folders in number order (2 before 10), other names after them."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def load_sweep_run(run_dir: Path) -> SweepRun:
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if summary is None:
        state = "incomplete"
    else:
        state = "failed" if summary.get("status") == "failed" else "finished"
        if state == "finished" and "mechanism" not in summary:
            summary["mechanism"] = attribute_from_checkpoint(run_dir)
    return SweepRun(run_dir, config, read_metrics(run_dir / METRICS_FILE), summary, state)


def attribute_from_checkpoint(run_dir: Path) -> str | None:
    """The run's mechanism verdict, for runs whose summary predates mechanism attribution:
    `mechanism_attribution` of the final checkpoint on the probe every run is scored on."""
    from .data import make_probe
    from .evaluate import PROBE_SEED
    from .metrics import mechanism_attribution
    from .runs import load_run

    try:
        run = load_run(run_dir)
    except (FileNotFoundError, RuntimeError, KeyError):
        return None
    if run.config.model.n_layers < 2:
        return None
    probe = make_probe(run.config.data, seed=PROBE_SEED)
    return mechanism_attribution(run.model, probe.tokens)["run"]["verdict"]


def _flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _format_value(name: str, value: Any) -> str:
    if name == "model.blocked_composition":
        return blocked_label(value or [])
    return str(value)


def condition_keys(runs: List[SweepRun]) -> List[str]:
    """The settings that name a condition: positional mode and blocked inputs always, then any
    other setting whose value differs between runs."""
    flats = [_flatten(r.config) for r in runs]
    names = sorted({k for f in flats for k in f})
    varying = [k for k in names
               if k not in ALWAYS_SHOWN and not k.startswith(NOT_A_CONDITION)
               and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    return list(ALWAYS_SHOWN) + varying


def condition_label(config: Dict[str, Any], keys: List[str]) -> str:
    flat = _flatten(config)
    parts = []
    for key in keys:
        short = SHORT_NAMES.get(key, key.split(".")[-1])
        parts.append(f"{short}={_format_value(key, flat.get(key))}")
    return ", ".join(parts)


def load_sweep(sweep_dir: str | Path) -> List[Condition]:
    """Every run under `sweep_dir`, grouped by condition, in the order the sweep ran them."""
    runs = [load_sweep_run(d) for d in find_run_dirs(Path(sweep_dir))]
    keys = condition_keys(runs)
    conditions: Dict[str, Condition] = {}
    for run in runs:
        run.condition = condition_label(run.config, keys)
        conditions.setdefault(run.condition, Condition(run.condition)).runs.append(run)
    return list(conditions.values())


def mechanism_verdict(summary: Dict[str, Any]) -> str | None:
    """The run's K-vs-Q attribution verdict, where the run recorded one."""
    mechanism = summary.get("mechanism")
    if isinstance(mechanism, dict):
        mechanism = mechanism.get("verdict")
    return None if mechanism is None else str(mechanism)


def mean_sd(values: List[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


TABLE_COLUMNS = ("condition", "runs", "formed", "phase change step", "mechanism",
                 "best induction score", "second-copy loss", "first-copy loss", "train loss")


def condition_row(condition: Condition) -> Dict[str, str]:
    """One table row: statistics over the condition's finished runs."""
    done = condition.with_state("finished")
    summaries = [r.summary for r in done]
    others = [f"{len(condition.with_state(s))} {s}" for s in ("failed", "incomplete")
              if condition.with_state(s)]
    runs = str(len(done)) + (f" (+{', '.join(others)})" if others else "")
    crossed = [s["phase_change_step"] for s in summaries if s.get("phase_change_step") is not None]
    phase = mean_sd(crossed, 0)
    if summaries and len(crossed) < len(summaries):
        phase = f"{phase} ({len(crossed)}/{len(summaries)} crossed)"
    verdicts = Counter(mechanism_verdict(s) for s in summaries)
    verdicts.pop(None, None)
    mechanism = ", ".join(f"{v} {n}" for v, n in verdicts.most_common()) or "n/a"
    return {
        "condition": condition.label,
        "runs": runs,
        "formed": f"{sum(bool(s.get('induction_formed')) for s in summaries)}/{len(summaries)}",
        "phase change step": phase,
        "mechanism": mechanism,
        "best induction score": mean_sd([s.get("best_induction_score") for s in summaries]),
        "second-copy loss": mean_sd([s.get("final_loss_second_copy") for s in summaries]),
        "first-copy loss": mean_sd([s.get("final_loss_first_copy") for s in summaries]),
        "train loss": mean_sd([s.get("final_train_loss") for s in summaries]),
    }


def markdown_table(rows: List[Dict[str, str]], columns: Tuple[str, ...] = TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def run_problems(conditions: List[Condition], now: float | None = None) -> List[str]:
    """One line for each run that failed or has not finished, saying where and how far it got."""
    now = time.time() if now is None else now
    lines = []
    for condition in conditions:
        for run in condition.runs:
            where = f"{run.run_dir} ({condition.label}, seed={run.seed})"
            if run.state == "failed":
                lines.append(f"failed: {where}: {run.summary.get('error')}")
            elif run.state == "incomplete":
                last = run.rows[-1]["step"] if run.rows else None
                steps = run.config.get("train", {}).get("steps")
                metrics = run.run_dir / METRICS_FILE
                age = (f", last written {now - metrics.stat().st_mtime:.0f} s ago"
                       if metrics.exists() else "")
                progress = (f"at step {last} of {steps}{age}" if last is not None
                            else "nothing logged yet")
                lines.append(f"incomplete (still running, or killed): {where}: no {SUMMARY_FILE}, "
                             f"{progress}")
    return lines


def best_induction_curve(rows: List[Dict[str, Any]]) -> List[Tuple[int, float]]:
    """(tokens, best layer>=1 induction score) at every evaluation (a failed run logs nulls)."""
    return [(r["tokens"], best_induction_head({k: v for k, v in r.items() if v is not None})[1])
            for r in rows]
