"""Pictures of a run (matplotlib, PNG), drawn from its metrics rows and attention snapshots.

`plot_run` writes into `plots/` of the run directory:
- `loss_curves.png`: train / first-copy / second-copy loss, the first-copy bump, the best
  induction and previous-token scores, with the phase change marked;
- `head_scores.png`: every head's induction and previous-token score over training;
- `composition.png`: Q/K/V composition scores of the final weights, baseline in the title;
- `attention_patterns.png`: the key heads on one probe sequence before, at and after the phase
  change.
Uses `matplotlib.figure.Figure` directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from .composition import composition_table
from .metrics import best_induction_head

Row = Dict[str, Any]
PLOTS_DIR = "plots"
PHASE_STYLE = dict(color="tab:red", lw=1.2, alpha=0.8)
STEEPEST_STYLE = dict(color="tab:purple", lw=1.2, ls="--", alpha=0.8)


def _figure(*args, **kwargs):
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def _series(rows: List[Row], key: str):
    points = [(r["step"], r[key]) for r in rows
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _mark_phase(ax, summary: Row, label: bool = False) -> None:
    step, steepest = summary.get("phase_change_step"), summary.get("phase_change_steepest_step")
    if step is not None:
        ax.axvline(step, **PHASE_STYLE,
                   label=f"score crosses {summary.get('threshold', '')} (step {step})"
                   if label else None)
    if steepest is not None:
        ax.axvline(steepest, **STEEPEST_STYLE,
                   label=f"steepest second-copy fall (step {steepest})" if label else None)


def _heads(rows: List[Row], kind: str) -> List[str]:
    prefix = f"heads/{kind}/"
    return sorted({k[len(prefix):] for r in rows for k in r if k.startswith(prefix)})


def plot_losses(rows: List[Row], summary: Row, path: Path) -> Path:
    fig = _figure(figsize=(9, 9), layout="constrained")
    top, bump, scores = fig.subplots(3, 1, sharex=True, height_ratios=[3, 1.4, 1.6])
    for key, label, color in (("train/loss", "train (training batches)", "black"),
                              ("eval/loss_first_copy", "probe, first copy (unpredictable)",
                               "tab:blue"),
                              ("eval/loss_second_copy", "probe, second copy (predictable)",
                               "tab:orange")):
        top.plot(*_series(rows, key), label=label, color=color, lw=1.6)
    _mark_phase(top, summary, label=True)
    top.set_ylabel("loss (nats)")
    top.set_title("Loss: the plateau, then the drop when the induction head forms")
    top.legend(loc="lower left", fontsize=9)
    top.grid(alpha=0.3)

    bump.plot(*_series(rows, "eval/loss_first_copy"), color="tab:blue", lw=1.6)
    _mark_phase(bump, summary)
    bump.set_ylabel("first copy (nats)")
    bump.set_title("The bump: loss on the unpredictable first copy rises as the model starts "
                   "copying", fontsize=10)
    bump.grid(alpha=0.3)

    steps = [r["step"] for r in rows]
    scores.plot(steps, [best_induction_head(r)[1] for r in rows], color="tab:green", lw=1.6,
                label="best induction score (layer >= 1)")
    prev = [max((v for k, v in r.items() if k.startswith("heads/prev_token/L0")),
                default=float("nan")) for r in rows]
    scores.plot(steps, prev, color="tab:gray", lw=1.4, label="best previous-token score (layer 0)")
    if summary.get("threshold") is not None:
        scores.axhline(summary["threshold"], color="tab:green", ls=":", lw=1)
    _mark_phase(scores, summary)
    scores.set_ylim(0, 1.02)
    scores.set_ylabel("score")
    scores.set_xlabel("training step")
    scores.legend(loc="upper left", fontsize=9)
    scores.grid(alpha=0.3)
    _token_axis(top, rows)
    fig.savefig(path, dpi=110)
    return path


def _token_axis(ax, rows: List[Row]) -> None:
    """A secondary x axis on top: tokens seen, in millions."""
    per_step = next((r["tokens"] / r["step"] for r in rows if r.get("step")), None)
    if per_step:
        top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step / 1e6,
                                                   lambda t: t * 1e6 / per_step))
        top.set_xlabel("tokens seen (millions)")


def plot_head_scores(rows: List[Row], summary: Row, path: Path) -> Path:
    fig = _figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    cmap = _colors()
    for ax, kind, title in ((axes[0], "induction", "Induction score"),
                            (axes[1], "prev_token", "Previous-token score")):
        for i, label in enumerate(_heads(rows, kind)):
            layer0 = label.startswith("L0")
            ax.plot(*_series(rows, f"heads/{kind}/{label}"), label=label, lw=1.5,
                    ls="--" if layer0 else "-", color=cmap[i % len(cmap)])
        _mark_phase(ax, summary)
        ax.set_title(f"{title} of every head (dashed: layer 0)")
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score on the probe")
    axes[1].legend(loc="upper left", fontsize=8, ncol=2)
    fig.savefig(path, dpi=110)
    return path


def _colors() -> List[str]:
    return [f"C{i}" for i in range(10)]


def plot_composition(row: Row, path: Path) -> Path:
    table = composition_table(row)
    writers = sorted({t[1] for t in table})
    readers = sorted({t[2] for t in table})
    fig = _figure(figsize=(4 + 2.6 * len(readers), 3.2 + 0.45 * len(writers)),
                  layout="constrained")
    axes = fig.subplots(1, 3)
    from matplotlib.colors import TwoSlopeNorm

    baseline = row.get("comp/baseline", float("nan"))
    vmax = max([t[3] for t in table] + [1e-6])
    center = baseline if 0 < baseline < vmax else vmax / 2
    # diverging around the random-matrix baseline: red composes more than chance, blue less
    norm = TwoSlopeNorm(vmin=0.0, vcenter=center, vmax=vmax)
    image = None
    for ax, kind in zip(axes, ("Q", "K", "V")):
        grid = torch.full((len(writers), len(readers)), float("nan"))
        for k, w, r, v, _ in table:
            if k == kind:
                grid[writers.index(w), readers.index(r)] = v
        image = ax.imshow(grid.numpy(), cmap="RdBu_r", norm=norm)
        for i in range(len(writers)):
            for j in range(len(readers)):
                v = grid[i, j].item()
                if math.isfinite(v):
                    strong = v > center + 0.6 * (vmax - center) or v < 0.4 * center
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                            color="white" if strong else "black")
        ax.set_xticks(range(len(readers)), readers)
        ax.set_yticks(range(len(writers)), writers)
        ax.set_xlabel("reading head")
        ax.set_title(f"{kind}-composition")
    axes[0].set_ylabel("writing head")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="composition score")
    fig.suptitle(f"Composition scores at step {row.get('step')}: white = random-matrix "
                 f"baseline {baseline:.3f}, red above it")
    fig.savefig(path, dpi=110)
    return path


def snapshot_steps(rows: List[Row], summary: Row) -> List[int]:
    """Indices into `rows` of the pattern pictures: halfway to the phase change, at it (the
    evaluation nearest the steepest second-copy fall, else the threshold crossing), and the end
    of the run."""
    steps = [r["step"] for r in rows]
    at = summary.get("phase_change_steepest_step") or summary.get("phase_change_step")
    if at is None:
        at = steps[len(steps) // 2]
    # ties go to the later evaluation: the one after the steepest fall shows the head forming
    nearest = lambda s: min(range(len(steps)), key=lambda i: (abs(steps[i] - s), -i))  # noqa: E731
    return sorted({nearest(at / 2), nearest(at), len(steps) - 1})


def plot_patterns(rows: List[Row], summary: Row, patterns: Sequence[torch.Tensor],
                  tokens: torch.Tensor, path: Path,
                  heads: List[str]) -> Path:
    """`patterns[i]` is `[layer, head, q, k]` at `rows[i]`; `tokens` the pictured sequence;
    `heads` the labels to draw, one row each."""
    columns = snapshot_steps(rows, summary)
    fig = _figure(figsize=(3.4 * len(columns) + 0.8, 3.4 * len(heads) + 0.4),
                  layout="constrained")
    axes = fig.subplots(len(heads), len(columns), squeeze=False)
    image = None
    n = tokens.shape[0]
    for r, head in enumerate(heads):
        layer, h = (int(x) for x in head[1:].split("H"))
        for c, i in enumerate(columns):
            ax = axes[r][c]
            image = ax.imshow(patterns[i][layer, h, :n, :n].float().numpy(), cmap="Blues",
                              vmin=0, vmax=1, interpolation="nearest")
            score = rows[i].get(f"heads/induction/{head}") if layer else rows[i].get(
                f"heads/prev_token/{head}")
            what = "induction" if layer else "prev-token"
            ax.set_title(f"{head}, step {rows[i]['step']}\n{what} score {score:.2f}",
                         fontsize=10)
            ax.set_xlabel("key position")
            if c == 0:
                ax.set_ylabel("query position")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention")
    fig.suptitle("Attention on a probe sequence [BOS, r, r]: before, at and after the phase "
                 "change")
    fig.savefig(path, dpi=100)
    return path


def plot_run(run_dir: str | Path, rows: List[Row], summary: Row,
             patterns: Sequence[torch.Tensor] = (),
             tokens: torch.Tensor | None = None) -> Dict[str, Path]:
    """Every picture of a run into `run_dir/plots/`; returns `{name: path}`."""
    out = Path(run_dir) / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "loss_curves": plot_losses(rows, summary, out / "loss_curves.png"),
        "head_scores": plot_head_scores(rows, summary, out / "head_scores.png"),
    }
    if composition_table(rows[-1]):  # a one-layer model has no pair of heads
        paths["composition"] = plot_composition(rows[-1], out / "composition.png")
    key_heads = [h for h in (summary.get("mechanism_head") or summary.get("best_induction_head"),
                             summary.get("composes_with")) if h]
    if len(patterns) == len(rows) and tokens is not None and key_heads:
        paths["attention_patterns"] = plot_patterns(rows, summary, patterns, tokens,
                                                    out / "attention_patterns.png", key_heads)
    return paths
