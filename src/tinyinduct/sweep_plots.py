"""The sweep figure: best layer-1 induction score and second-copy loss against tokens seen, one
column per positional mode, one colour and one line style per blocking condition (curves that
overlap stay apart in greyscale too); the line is the mean over seeds, the band spans the seeds
(min to max), thin lines are single seeds. A seed that finished before the others (stopped early
once its head formed) counts with its last value from then on, so the mean does not jump when it
stops; a run still going or failed counts only where it has values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

from .sweep_report import Condition, best_induction_curve

PANELS = (("best layer-1 induction score", "induction"),
          ("second-copy loss (nats)", "eval/loss_second_copy"))
COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)),
               (0, (3, 1, 1, 1, 1, 1)))


def run_curve(rows: List[dict], key: str) -> Dict[int, float]:
    if key == "induction":
        points = best_induction_curve(rows)
    else:
        points = [(r["tokens"], r.get(key)) for r in rows]
    return {t: v for t, v in points if v is not None and math.isfinite(v)}


def seed_band(curves: List[Dict[int, float]], finished: List[bool] | None = None
              ) -> Tuple[list, list, list, list]:
    """Tokens, mean, min, max over the seeds at each evaluation. A curve marked `finished` holds
    its last value after its last evaluation (a run stopped early is done, not missing); any
    other curve counts only where it has a value."""
    finished = finished or [False] * len(curves)
    tokens = sorted({t for c in curves for t in c})
    last = [(max(c), c[max(c)]) if done and c else None for c, done in zip(curves, finished)]
    xs, mean, low, high = [], [], [], []
    for t in tokens:
        values = [c[t] if t in c else end[1] for c, end in zip(curves, last)
                  if t in c or (end is not None and t > end[0])]
        xs.append(t)
        mean.append(sum(values) / len(values))
        low.append(min(values))
        high.append(max(values))
    return xs, mean, low, high


def runs_band(runs: list, key: str) -> Tuple[list, Tuple[list, list, list, list]]:
    """The runs' curves of `key` (`(run, curve)` for each run with values) and their
    `seed_band`, a run that finished holding its last value: what the figure and the compare
    page draw."""
    per_run = [(r, run_curve(r.rows, key)) for r in runs]
    per_run = [(r, c) for r, c in per_run if c]
    if not per_run:
        return [], ([], [], [], [])
    return per_run, seed_band([c for _, c in per_run], [r.state == "finished" for r, _ in per_run])


def _split_label(label: str) -> Tuple[str, str]:
    """"positional=standard, blocked=K" -> ("standard", "blocked=K")."""
    parts = label.split(", ")
    column = next((p.split("=", 1)[1] for p in parts if p.startswith("positional=")), "")
    rest = ", ".join(p for p in parts if not p.startswith("positional="))
    return column, rest or label


def plot_sweep(conditions: List[Condition], path: str | Path, threshold: float | None = None,
               title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys(_split_label(c.label)[0] for c in conditions))
    styles = list(dict.fromkeys(_split_label(c.label)[1] for c in conditions))
    color = {s: COLORS[i % len(COLORS)] for i, s in enumerate(styles)}
    dash = {s: LINE_STYLES[i % len(LINE_STYLES)] for i, s in enumerate(styles)}
    fig, axes = plt.subplots(len(PANELS), len(columns), figsize=(6.0 * len(columns), 7.6),
                             sharex=True, sharey="row", squeeze=False)
    for condition in conditions:
        column, style = _split_label(condition.label)
        runs = [r for r in condition.runs if r.rows]
        seeds = len(runs)
        for row, (_, key) in enumerate(PANELS):
            ax = axes[row][columns.index(column)]
            per_run, (xs, mean, low, high) = runs_band(runs, key)
            if not per_run:
                continue
            for _, c in per_run:
                ax.plot([t / 1e6 for t in c], list(c.values()), color=color[style], lw=0.6,
                        alpha=0.35, ls=dash[style])
            xs = [t / 1e6 for t in xs]
            ax.fill_between(xs, low, high, color=color[style], alpha=0.15, lw=0)
            ax.plot(xs, mean, color=color[style], lw=2.0, ls=dash[style],
                    label=f"{style} ({seeds} seed{'' if seeds == 1 else 's'})")
    for col, column in enumerate(columns):
        axes[0][col].set_title(f"positional={column}" if column else "all runs")
        if threshold is not None:
            axes[0][col].axhline(threshold, color="black", lw=0.8, ls=":",
                                 label=f"threshold {threshold}")
        axes[-1][col].set_xlabel("training tokens (millions)")
        # below the plots: the curves fill every corner of the panels; side by side while
        # short labels fit a panel's width, one per line once they are long
        handles, labels = axes[0][col].get_legend_handles_labels()
        short = max((len(label) for label in labels), default=0) <= 24
        axes[-1][col].legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                             fontsize=9, ncol=min(len(labels), 3) if short else 1,
                             frameon=False, handlelength=3.0, columnspacing=1.0)
        for row in range(len(PANELS)):
            axes[row][col].grid(alpha=0.3)
    for row, (ylabel, _) in enumerate(PANELS):
        axes[row][0].set_ylabel(ylabel)
    axes[0][0].set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend below the axes included
    plt.close(fig)
    return path
