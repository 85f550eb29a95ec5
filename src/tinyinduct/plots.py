"""Pictures of a run (matplotlib, PNG), drawn from its metrics rows and attention snapshots.

`plot_run` writes into `plots/` of the run directory (or another folder):
- `loss_curves.png`: train / first-copy / second-copy loss, the first-copy bump, the best
  induction and previous-token scores, with the phase change marked;
- `head_scores.png`: every head's induction and previous-token score over training;
- `composition.png`: Q/K/V composition scores of the final weights, baseline in the title;
- `attention_patterns.png`: the key heads on one probe sequence before, at and after the phase
  change, copy boundaries marked.
`redraw_run` draws them again from the run directory alone (metrics, summary, config and the
attention record), into a new folder beside `plots/`, never over it.
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


def _mark_phase(ax, summary: Row) -> None:
    """The phase change as two labelled vertical lines (each panel's legend names them)."""
    step, steepest = summary.get("phase_change_step"), summary.get("phase_change_steepest_step")
    if step is not None:
        ax.axvline(step, **PHASE_STYLE,
                   label=f"score crosses {summary.get('threshold', '')} (step {step})")
    if steepest is not None:
        ax.axvline(steepest, **STEEPEST_STYLE,
                   label=f"steepest second-copy fall (step {steepest})")


def _mark_threshold(ax, summary: Row) -> None:
    if summary.get("threshold") is not None:
        ax.axhline(summary["threshold"], color="tab:green", ls=":", lw=1,
                   label=f"threshold {summary['threshold']}")


BUMP_CAPTIONS = {
    "uniform": "The bump: loss on the unpredictable first copy rises as the model starts copying",
    "bigram": "First-copy loss on the probe (uniform tokens): it rises while the model learns the "
              "bigram chain, not because it copies",
}


def _heads(rows: List[Row], kind: str) -> List[str]:
    prefix = f"heads/{kind}/"
    return sorted({k[len(prefix):] for r in rows for k in r if k.startswith(prefix)})


def plot_losses(rows: List[Row], summary: Row, path: Path, d_vocab: int | None = None,
                data_kind: str = "uniform") -> Path:
    """Losses with `ln d_vocab` (the loss of a uniform guess) for reference; `data_kind` picks
    the caption of the first-copy panel."""
    fig = _figure(figsize=(9, 9), layout="constrained")
    top, bump, scores = fig.subplots(3, 1, sharex=True, height_ratios=[3, 1.4, 1.6])
    for key, label, color in (("train/loss", "train (training batches)", "black"),
                              ("eval/loss_first_copy", "probe, first copy (unpredictable)",
                               "tab:blue"),
                              ("eval/loss_second_copy", "probe, second copy (predictable)",
                               "tab:orange")):
        top.plot(*_series(rows, key), label=label, color=color, lw=1.6)
    if d_vocab:
        top.axhline(math.log(d_vocab), color="gray", ls="-.", lw=1,
                    label=f"ln d_vocab = {math.log(d_vocab):.2f} (uniform guess)")
    _mark_phase(top, summary)
    top.set_ylabel("loss (nats)")
    top.set_title("Loss: the plateau, then the drop when the induction head forms")
    top.legend(loc="lower left", fontsize=9)
    top.grid(alpha=0.3)

    bump.plot(*_series(rows, "eval/loss_first_copy"), color="tab:blue", lw=1.6,
              label="probe, first copy")
    _mark_phase(bump, summary)
    bump.set_ylabel("first copy (nats)")
    bump.set_title(BUMP_CAPTIONS.get(data_kind, BUMP_CAPTIONS["uniform"]), fontsize=10)
    bump.legend(loc="best", fontsize=8)
    bump.grid(alpha=0.3)

    steps = [r["step"] for r in rows]
    scores.plot(steps, [best_induction_head(r)[1] for r in rows], color="tab:green", lw=1.6,
                label="best induction score (layer >= 1)")
    prev = [max((v for k, v in r.items() if k.startswith("heads/prev_token/L0")),
                default=float("nan")) for r in rows]
    scores.plot(steps, prev, color="tab:gray", lw=1.4, label="best previous-token score (layer 0)")
    _mark_threshold(scores, summary)
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
    fig = _figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    cmap = _colors()
    for ax, kind, title in ((axes[0], "induction", "Induction score"),
                            (axes[1], "prev_token", "Previous-token score")):
        for i, label in enumerate(_heads(rows, kind)):
            layer0 = label.startswith("L0")
            ax.plot(*_series(rows, f"heads/{kind}/{label}"), label=label, lw=1.5,
                    ls="--" if layer0 else "-", color=cmap[i % len(cmap)])
        if kind == "induction":
            _mark_threshold(ax, summary)
        _mark_phase(ax, summary)
        ax.set_title(f"{title} of every head (dashed: layer 0)")
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score on the probe")
    # one legend below both panels (the curves fill the panels): heads, threshold, phase lines
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8,
               ncol=min(len(labels), 8), frameon=False)
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
    evaluation where the best induction score crosses the threshold, else the one nearest the
    steepest second-copy fall), and the end of the run."""
    steps = [r["step"] for r in rows]
    at = summary.get("phase_change_step") or summary.get("phase_change_steepest_step")
    if at is None:
        at = steps[len(steps) // 2]
    # ties go to the later evaluation, where the head is further along
    nearest = lambda s: min(range(len(steps)), key=lambda i: (abs(steps[i] - s), -i))  # noqa: E731
    return sorted({nearest(at / 2), nearest(at), len(steps) - 1})


def _mark_copies(ax, copies) -> None:
    """Where the copies start: the second copy's first query (row) and first-copy keys
    (columns); the induction stripe sits below the row, right of the first column."""
    (first, length), (second, _) = copies
    ax.axhline(second - 0.5, color="tab:orange", lw=0.9, ls="--",
               label=f"second copy starts (query {second})")
    ax.axvline(first - 0.5, color="tab:gray", lw=0.9, ls=":",
               label=f"first copy, keys {first}-{first + length - 1}")
    ax.axvline(first + length - 0.5, color="tab:gray", lw=0.9, ls=":")


def plot_patterns(rows: List[Row], summary: Row, patterns: Sequence[torch.Tensor],
                  tokens: torch.Tensor, path: Path,
                  heads: List[str], copies=None) -> Path:
    """`patterns[i]` is `[layer, head, q, k]` at `rows[i]`; `tokens` the pictured sequence;
    `heads` the labels to draw, one row each; `copies` `((start, length), (start, length))` of
    the two copies (found from the tokens if not given)."""
    from .record import spans_from_tokens

    copies = copies or spans_from_tokens(tokens)
    columns = snapshot_steps(rows, summary)
    fig = _figure(figsize=(3.4 * len(columns) + 0.8, 4.0 * len(heads) + 1.0),
                  layout="constrained")
    axes = fig.subplots(len(heads), len(columns), squeeze=False)
    image = None
    n = tokens.shape[0]
    for r, head in enumerate(heads):
        layer, h = (int(x) for x in head[1:].split("H"))
        for c, i in enumerate(columns):
            ax = axes[r][c]
            pattern = torch.as_tensor(patterns[i][layer, h, :n, :n]).float()
            image = ax.imshow(pattern.numpy(), cmap="Blues", vmin=0, vmax=1,
                              interpolation="nearest")
            if copies:
                _mark_copies(ax, copies)
            score = rows[i].get(f"heads/induction/{head}") if layer else rows[i].get(
                f"heads/prev_token/{head}")
            what = "induction" if layer else "prev-token"
            ax.set_title(f"{head}, step {rows[i]['step']}\n{what} score {score:.2f}",
                         fontsize=10)
            ax.set_xlabel("key position")
            if c == 0:
                ax.set_ylabel("query position")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention")
    if copies:
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center",
                   ncol=2, fontsize=9, frameon=False)
    fig.suptitle("Attention on a probe sequence [BOS, r, r]: halfway to the phase change, at "
                 "the threshold crossing, at the end")
    fig.savefig(path, dpi=100)
    return path


def run_data_config(run_dir: str | Path) -> Row:
    """The `data` section of the run's config.yaml (empty if there is none)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return config.get("data") or {}


def plot_run(run_dir: str | Path, rows: List[Row], summary: Row,
             patterns: Sequence[torch.Tensor] = (),
             tokens: torch.Tensor | None = None, out_dir: str | Path | None = None,
             copies=None) -> Dict[str, Path]:
    """Every picture of a run into `out_dir` (default `run_dir/plots/`); returns
    `{name: path}`. `patterns[i]` is `[layer, head, q, k]` at `rows[i]`; `copies` as in
    `plot_patterns`."""
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    data = run_data_config(run_dir)
    paths = {
        "loss_curves": plot_losses(rows, summary, out / "loss_curves.png",
                                   d_vocab=data.get("d_vocab"),
                                   data_kind=data.get("kind", "uniform")),
        "head_scores": plot_head_scores(rows, summary, out / "head_scores.png"),
    }
    if composition_table(rows[-1]):  # a one-layer model has no pair of heads
        paths["composition"] = plot_composition(rows[-1], out / "composition.png")
    heads = key_heads(summary)
    if len(patterns) == len(rows) and len(rows) and tokens is not None and heads:
        paths["attention_patterns"] = plot_patterns(rows, summary, patterns, tokens,
                                                    out / "attention_patterns.png", heads, copies)
    return paths


def key_heads(summary: Row) -> List[str]:
    """The heads the pattern picture shows: the induction head and its partner."""
    return [h for h in (summary.get("mechanism_head") or summary.get("best_induction_head"),
                        summary.get("composes_with")) if h]


def new_plots_dir(run_dir: str | Path) -> Path:
    """`run_dir/plots-redrawn`, or `plots-redrawn-2`, `-3`, ... : a folder not there yet."""
    base = Path(run_dir) / f"{PLOTS_DIR}-redrawn"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def redraw_run(run_dir: str | Path, out_dir: str | Path | None = None) -> Dict[str, Path]:
    """Draw every picture of a run again from its directory (metrics.jsonl, summary.json,
    config.yaml and the attention record), into `out_dir` (default: a new folder from
    `new_plots_dir`, so the run's own `plots/` stays as the run drew it)."""
    import json

    from .record import load_attention, load_picture_tokens
    from .tracking import METRICS_FILE, SUMMARY_FILE, read_metrics

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / METRICS_FILE)
    if not rows:
        raise FileNotFoundError(f"no evaluations in {run_dir / METRICS_FILE}")
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    steps, array = load_attention(run_dir)
    picture = load_picture_tokens(run_dir)
    # the pattern picture needs a pattern at every row it draws: keep the recorded ones
    by_step = dict(zip(steps, array))
    recorded = [r for r in rows if r["step"] in by_step]
    out = Path(out_dir) if out_dir is not None else new_plots_dir(run_dir)
    paths = plot_run(run_dir, rows, summary, out_dir=out)
    if recorded and picture and key_heads(summary):
        paths["attention_patterns"] = plot_patterns(
            recorded, summary, [torch.from_numpy(by_step[r["step"]]) for r in recorded],
            torch.tensor(picture["tokens"]), out / "attention_patterns.png", key_heads(summary),
            (picture["first_copy"], picture["second_copy"]))
    return paths
