"""A sweep directory read back: every run's config, metrics and summary, grouped by condition
(positional mode x blocked inputs, plus any other setting that varies across runs), and the
per-condition table. Works on any folder of runs a user can make: plain runs, jobs of
`train.n_seeds > 1` (each seed in `JOB/seed<s>/` is a run; the job directory itself is not),
runs that failed, were interrupted or are still running (kept apart and named), and folders
holding files tinyinduct did not write (skipped, each with the file and the reason)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from .config import RunConfig, to_dict
from .metrics import best_induction_head
from .sweeps import blocked_label
from .tracking import METRICS_FILE, SUMMARY_FILE, read_metrics

CONFIG_FILE = "config.yaml"
# Settings that never define a condition: the seed is what repeats within one, the rest is
# bookkeeping.
NOT_A_CONDITION = ("seed", "device", "logger.", "resume", "train.allow_large")
ALWAYS_SHOWN = ("model.positional", "model.blocked_composition")
SHORT_NAMES = {"model.blocked_composition": "blocked", "intervene.clamp_pattern": "clamp"}
# settings whose value is a mapping that names a condition as a whole (head -> pattern), not
# one setting per key: a run without a head's key has no clamp there, not a clamp "None"
WHOLE_MAPPINGS = ("intervene.clamp_pattern",)
STATES = ("finished", "failed", "interrupted", "incomplete")
SCHEMA_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig))


class NotARun(ValueError):
    """A directory that holds a config.yaml but no run tinyinduct can read: the message names the
    file and the problem."""


@dataclass
class SweepRun:
    run_dir: Path
    config: Dict[str, Any]
    rows: List[Dict[str, Any]]
    summary: Dict[str, Any] | None
    # finished | failed | interrupted (Ctrl-C, SIGTERM: a checkpoint to resume from) |
    # incomplete (no summary.json: still running, or killed)
    state: str
    condition: str = ""

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def last_step(self) -> int | None:
        """The last step the run reached: its summary's word, else its last metrics row."""
        for key in ("last_step", "steps"):
            if isinstance((self.summary or {}).get(key), int):
                return self.summary[key]
        return self.rows[-1]["step"] if self.rows else None


@dataclass
class Condition:
    label: str
    runs: List[SweepRun] = field(default_factory=list)

    def with_state(self, state: str) -> List[SweepRun]:
        return [r for r in self.runs if r.state == state]


def find_run_dirs(sweep_dir: Path) -> List[Path]:
    """Every directory under `sweep_dir` (itself included) that holds a config.yaml, outside
    the folders runs keep for W&B, Hydra and checkpoints."""
    dirs = [p.parent for p in Path(sweep_dir).rglob(CONFIG_FILE)
            if not any(part in ("wandb", ".hydra", "checkpoints") for part in p.parts)]
    return sorted(dirs, key=_natural_key)


def _natural_key(path: Path) -> list:
    """Job folders in number order (2 before 10, seed2 before seed10), other names after them."""
    key = []
    for part in path.parts:
        digits = part.removeprefix("seed")
        key.append((0, int(digits), part[:len(part) - len(digits)]) if digits.isdigit()
                   else (1, 0, part))
    return key


def read_config(run_dir: Path) -> Dict[str, Any]:
    """A run's config.yaml as a mapping; `NotARun` for a file tinyinduct did not write."""
    path = run_dir / CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise NotARun(f"{path}: cannot read it ({type(err).__name__}: {err})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise NotARun(f"{path}: invalid YAML{line}") from None
    if not isinstance(config, dict):
        raise NotARun(f"{path}: a YAML {type(config).__name__}, not a tinyinduct config")
    unknown = sorted(str(k) for k in config if k not in SCHEMA_KEYS)
    if unknown or not all(isinstance(config.get(k), dict) for k in ("model", "train")):
        what = f"unknown keys {', '.join(unknown[:5])}" if unknown else "no model and train"
        raise NotARun(f"{path}: not a tinyinduct config ({what})")
    return config


def read_summary(run_dir: Path) -> Dict[str, Any] | None:
    """summary.json as a mapping, None where there is none yet; `NotARun` when it is corrupt."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise NotARun(f"{path}: cannot read it ({type(err).__name__})") from None
    except json.JSONDecodeError as err:
        raise NotARun(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(summary, dict):
        raise NotARun(f"{path}: a JSON {type(summary).__name__}, not a run summary")
    return summary


def is_job(config: Dict[str, Any], summary: Dict[str, Any] | None) -> bool:
    """The directory of a `train.n_seeds > 1` job: its seeds are the runs, it is none itself."""
    n_seeds = config.get("train", {}).get("n_seeds", 1)
    return (isinstance(n_seeds, int) and n_seeds > 1) or "seed_summaries" in (summary or {})


def run_state(summary: Dict[str, Any] | None, path: Path) -> str:
    if summary is None:
        return "incomplete"
    status = summary.get("status", "finished" if "induction_formed" in summary else None)
    if status not in ("finished", "failed", "interrupted"):
        raise NotARun(f"{path / SUMMARY_FILE}: status {status!r} is none of finished, failed, "
                      "interrupted")
    return status


def _usable_rows(run_dir: Path) -> List[Dict[str, Any]]:
    """metrics.jsonl rows with a step and a token count (a torn or foreign line is left out)."""
    try:
        rows = read_metrics(run_dir / METRICS_FILE)
    except (OSError, UnicodeDecodeError) as err:
        raise NotARun(f"{run_dir / METRICS_FILE}: cannot read it ({type(err).__name__})") from None
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)
            and isinstance(r.get("tokens"), int)]


def load_sweep_run(run_dir: Path) -> SweepRun:
    """One run directory; `NotARun` (naming the file and the problem) for anything else."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    summary = read_summary(run_dir)
    if is_job(config, summary):
        raise NotARun(f"{run_dir}: the directory of a job of {config['train'].get('n_seeds')} "
                      "seeds, not a run (its runs are its seed<s>/ folders)")
    state = run_state(summary, run_dir)
    if state == "finished" and "mechanism" not in summary:
        summary["mechanism"] = attribute_from_checkpoint(run_dir)
    return SweepRun(run_dir, config, _usable_rows(run_dir), summary, state)


def attribute_from_checkpoint(run_dir: Path) -> str | None:
    """The run's mechanism verdict, for runs whose summary predates mechanism attribution:
    `mechanism_attribution` of the final checkpoint on the probe every run is scored on."""
    from .data import make_probe
    from .evaluate import PROBE_SEED
    from .metrics import mechanism_attribution
    from .runs import load_run

    try:
        run = load_run(run_dir)
    except (OSError, ValueError, RuntimeError, KeyError):  # no checkpoint, or not one of ours
        return None
    if run.config.model.n_layers < 2:
        return None
    probe = make_probe(run.config.data, seed=PROBE_SEED)
    return mechanism_attribution(run.model, probe.tokens)["run"]["verdict"]


def _merge(defaults: Dict[str, Any], config: Dict[str, Any]) -> Dict[str, Any]:
    """`config` over the schema's defaults: a run written before a field existed compares
    equal to one that has the default."""
    merged = dict(defaults)
    for key, value in config.items():
        merged[key] = (_merge(defaults[key], value)
                       if isinstance(value, dict) and isinstance(defaults.get(key), dict)
                       else value)
    return merged


def _flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in WHOLE_MAPPINGS:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _format_value(name: str, value: Any) -> str:
    if name == "model.blocked_composition":
        return blocked_label(value or [])
    if name in WHOLE_MAPPINGS:  # {"L1H0": "induction"} -> L1H0:induction; {} -> none
        return "+".join(f"{k}:{v}" for k, v in sorted((value or {}).items())) or "none"
    return str(value)


def _flat_config(config: Dict[str, Any]) -> Dict[str, Any]:
    return _flatten(_merge(to_dict(RunConfig()), config))


def condition_keys(runs: List[SweepRun]) -> List[str]:
    """The settings that name a condition: positional mode and blocked inputs always, then any
    other setting whose value differs between runs."""
    flats = [_flat_config(r.config) for r in runs]
    names = sorted({k for f in flats for k in f})
    varying = [k for k in names
               if k not in ALWAYS_SHOWN and not k.startswith(NOT_A_CONDITION)
               and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    return list(ALWAYS_SHOWN) + varying


def condition_label(config: Dict[str, Any], keys: List[str]) -> str:
    flat = _flat_config(config)
    parts = []
    for key in keys:
        short = SHORT_NAMES.get(key, key.split(".")[-1])
        parts.append(f"{short}={_format_value(key, flat.get(key))}")
    return ", ".join(parts)


def load_runs(sweep_dir: str | Path) -> Tuple[List[SweepRun], List[str]]:
    """Every run under `sweep_dir`, and one line for each directory left out and why (job
    directories, whose seeds are the runs, are left out silently)."""
    runs, skipped = [], []
    for run_dir in find_run_dirs(Path(sweep_dir)):
        try:
            config = read_config(run_dir)
            summary = read_summary(run_dir)
            if is_job(config, summary):
                if not any((run_dir / f"seed{s}" / CONFIG_FILE).exists()
                           for s in _job_seeds(config, summary)):
                    skipped.append(f"{run_dir}: a job of {config['train'].get('n_seeds')} "
                                   "seeds with no seed<s>/ run yet")
                continue
            runs.append(load_sweep_run(run_dir))
        except NotARun as err:
            skipped.append(str(err))
    return runs, skipped


def _job_seeds(config: Dict[str, Any], summary: Dict[str, Any] | None) -> List[Any]:
    if summary and isinstance(summary.get("seeds"), list):
        return summary["seeds"]
    seed, n = config.get("seed", 0), config["train"].get("n_seeds", 1)
    return list(range(seed, seed + n)) if isinstance(seed, int) and isinstance(n, int) else []


def load_sweep(sweep_dir: str | Path, skipped: List[str] | None = None) -> List[Condition]:
    """Every run under `sweep_dir`, grouped by condition, in the order the sweep ran them.
    A list passed as `skipped` receives one line per directory left out (file and reason)."""
    runs, left_out = load_runs(sweep_dir)
    if skipped is not None:
        skipped.extend(left_out)
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
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
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
    others = [f"{len(condition.with_state(s))} {s}" for s in STATES[1:]
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
            steps = run.config.get("train", {}).get("steps")
            if run.state == "failed":
                lines.append(f"failed: {where}: {run.summary.get('error')}")
            elif run.state == "interrupted":
                by = run.summary.get("interrupted_by") or "a signal"
                lines.append(f"interrupted: {where}: stopped by {by} at step {run.last_step} of "
                             f"{steps}")
            elif run.state == "incomplete":
                last = run.last_step
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
