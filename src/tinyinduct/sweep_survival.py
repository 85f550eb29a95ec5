"""A sweep read back (`sweep_report.load_sweep`) as formation-time records for `stats`.

One record per seed's run. A stacked job (train.n_seeds > 1) is one folder holding a top
summary plus one run per seed in `seed<s>/`: the seed runs are the records and the job folder
is skipped. Conditions are relabelled without the settings that only decide when a run stops
(`train.steps`, `n_seeds`, `stop_after_formed`): a longer budget is later censoring, not another
condition. (The cosine schedule does depend on train.steps; a sweep whose runs differ in it
says so in its `budgets`.) A run without summary.json (killed, or still running) is
censored at the last step it logged; its budget is its config's train.steps.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List

from .stats import survival_table
from .sweep_report import Condition, SweepRun, condition_keys, condition_label

# Settings that decide when a run stops, not what it learns from: runs that differ only in
# these are one condition, each censored at its own budget.
CENSORING_SETTINGS = ("train.steps", "train.n_seeds", "train.stop_after_formed")


def is_stacked_job(run: SweepRun) -> bool:
    """The folder of a stacked job, not one seed's run."""
    n_seeds = (run.config.get("train") or {}).get("n_seeds", 1) or 1
    return n_seeds > 1 or "seed_summaries" in (run.summary or {})


def seed_runs(conditions: List[Condition]) -> List[SweepRun]:
    """Every seed's run of the sweep, relabelled by the settings that vary among them."""
    runs = [r for c in conditions for r in c.runs if not is_stacked_job(r)]
    keys = [k for k in (condition_keys(runs) if runs else []) if k not in CENSORING_SETTINGS]
    for run in runs:
        run.condition = condition_label(run.config, keys)
    return runs


def seed_conditions(conditions: List[Condition]) -> List[Condition]:
    """The sweep regrouped by those labels (for `sweep_plots.plot_sweep`)."""
    grouped: Dict[str, Condition] = {}
    for run in seed_runs(conditions):
        grouped.setdefault(run.condition, Condition(run.condition)).runs.append(run)
    return list(grouped.values())


def run_record(run: SweepRun) -> Dict[str, Any]:
    """The fields `stats.formation_time` reads, from the run's summary, metrics and config."""
    summary = run.summary or {}
    last = summary.get("last_step", summary.get("steps"))
    if last is None and run.rows:
        last = run.rows[-1].get("step")
    status = "incomplete" if run.summary is None else summary.get("status", "finished")
    return {
        "condition": run.condition,
        "run": f"seed{run.seed}",
        "run_dir": str(run.run_dir),
        "status": status,
        "induction_formed": bool(summary.get("induction_formed")),
        "phase_change_step": summary.get("phase_change_step"),
        "last_step": last,
        "budget": (run.config.get("train") or {}).get("steps"),
        "error": summary.get("error"),
        "mechanism": summary.get("mechanism") if isinstance(summary.get("mechanism"), str)
        else (summary.get("mechanism") or {}).get("verdict"),
    }


def sweep_records(conditions: List[Condition]) -> List[Dict[str, Any]]:
    return [run_record(r) for r in seed_runs(conditions)]


def sweep_survival(conditions: List[Condition], confidence: float = 0.95) -> dict:
    """`stats.survival_table` of a sweep (K-only vs Q-only tested per positional mode), plus
    the mechanism verdicts per condition and the compute the runs used against their budgets
    (steps trained, summed over seeds: what early stopping saves)."""
    records = sweep_records(conditions)
    table = survival_table(records, confidence=confidence)
    for condition in table["conditions"]:
        verdicts = Counter(r["mechanism"] for r in records
                           if r["condition"] == condition["condition"] and r["mechanism"])
        condition["mechanisms"] = dict(verdicts.most_common())
    trained = sum(r["last_step"] or 0 for r in records if r["status"] != "failed")
    budget = sum(r["budget"] or 0 for r in records if r["status"] != "failed")
    table["compute"] = {"seed_steps_trained": trained, "seed_steps_budget": budget}
    return table
