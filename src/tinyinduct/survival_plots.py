"""The formation-time figure: the Kaplan-Meier fraction of runs formed against training steps,
one step curve per condition (colour: blocked input; line style: positional mode), its
confidence band shaded, censored runs marked with a tick where they left the curve.

Draws from `stats.survival_table(...)` output (or the JSON file it was saved to), so the
figure can be redrawn from committed results without the runs."""

from __future__ import annotations

from pathlib import Path

from .sweep_plots import COLORS
from .sweep_plots import _split_label as _style_keys  # (positional mode, the rest)

LINESTYLES = ("-", "--", ":", "-.")


def _steps_curve(curve: dict, key: str, end: float) -> tuple:
    """x, y of a right-continuous step function from 0 at step 0 to `end`."""
    xs = [0.0] + list(curve["steps"]) + [end]
    ys = [0.0] + list(curve[key])
    return xs, ys + ys[-1:]


def _level_at(curve: dict, step: float) -> float:
    level = 0.0
    for s, y in zip(curve["steps"], curve["fraction_formed"]):
        if s <= step:
            level = y
    return level


def plot_formation_curves(table: dict, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [c for c in table["conditions"] if c.get("curve")]
    modes = list(dict.fromkeys(_style_keys(c["condition"])[0] for c in conditions))
    rests = list(dict.fromkeys(_style_keys(c["condition"])[1] for c in conditions))
    end = max((c["longest"] for c in conditions), default=1)
    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    for c in conditions:
        mode, rest = _style_keys(c["condition"])
        color = COLORS[rests.index(rest) % len(COLORS)]
        style = LINESTYLES[modes.index(mode) % len(LINESTYLES)]
        curve = c["curve"]
        last = c["longest"]
        xs, ys = _steps_curve(curve, "fraction_formed", last)
        label = f"{c['condition']} ({c['formed']}/{c['formed_of']} formed)"
        ax.step(xs, ys, where="post", color=color, ls=style, lw=1.8, label=label)
        _, low = _steps_curve(curve, "lower", last)
        _, high = _steps_curve(curve, "upper", last)
        ax.fill_between(xs, low, high, step="post", color=color, alpha=0.10, lw=0)
        ticks = curve["censored_steps"]
        ax.plot(ticks, [_level_at(curve, s) for s in ticks], ls="none", marker="|",
                markersize=11, mew=1.6, color=color)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_xlim(0, end * 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of runs with an induction head")
    confidence = round(100 * table.get("confidence", 0.95))
    ax.set_title(title or f"Formation time (Kaplan-Meier, {confidence}% band; | censored run)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
