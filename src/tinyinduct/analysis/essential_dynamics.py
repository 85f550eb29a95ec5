"""Essential dynamics (Hoogland et al. 2024, "The developmental landscape of in-context
learning"): PCA of the model's behaviour across snapshots. Each snapshot is one point, the vector
of its per-token losses on a fixed batch (`token_loss.token_losses`, flattened); the points are
centred across snapshots and the top principal components (SVD) give a low-dimensional
trajectory of development.

Turning points: where the trajectory changes direction. The rule, chosen to ignore the jitter of
slow phases: resample the path (in the top `k` components, Euclidean, as PCA keeps distances) at
`n_resample` points equally spaced in arc length, measure at each point the angle between the
chord from `window` points back and the chord to `window` points ahead, and keep the local
maxima above `min_angle` degrees, each mapped to the nearest snapshot. A stretch where the model
barely moves adds little arc length and so can add no turn; an L-shaped path turns at its
corner by 90 degrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

MIN_ANGLE = 45.0  # degrees of direction change that count as a turning point
N_RESAMPLE = 101  # odd: the middle of the path is a sample point
WINDOW = 4


@dataclass
class EssentialDynamics:
    steps: List[int]
    projections: np.ndarray  # [snapshot, component]
    explained: np.ndarray  # [component] share of the variance across snapshots
    turning_points: List[int]  # indices into steps
    turning_angles: List[float]  # degrees, one per turning point

    @property
    def turning_steps(self) -> List[int]:
        return [self.steps[i] for i in self.turning_points]


def pca(points: np.ndarray, k: int = 3) -> tuple:
    """(projections [n, k], explained variance ratio [k]) of `points` [n, d] centred across
    its rows (`k` is cut to what the rank allows)."""
    centred = points - points.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(k, len(s)))
    total = (s ** 2).sum()
    explained = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return u[:, :k] * s[:k], explained


def turning_points(path: np.ndarray, min_angle: float = MIN_ANGLE,
                   n_resample: int = N_RESAMPLE, window: int = WINDOW) -> tuple:
    """(indices, angles in degrees) of the points of `path` [n, k] where its direction of
    travel turns by more than `min_angle` (the rule in the module docstring)."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if len(path) < 3 or arc[-1] == 0:
        return [], []
    s = np.linspace(0, arc[-1], n_resample)
    even = np.stack([np.interp(s, arc, path[:, j]) for j in range(path.shape[1])], axis=1)
    angles = np.zeros(n_resample)
    for i in range(window, n_resample - window):
        a, b = even[i] - even[i - window], even[i + window] - even[i]
        cos = a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
        angles[i] = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    found: Dict[int, float] = {}
    for i in range(1, n_resample - 1):
        is_peak = angles[i] >= angles[i - 1] and angles[i] > angles[i + 1]
        if is_peak and angles[i] > min_angle:
            nearest = int(np.argmin(np.abs(arc - s[i])))  # the snapshot at that arc length
            found[nearest] = max(found.get(nearest, 0.0), float(angles[i]))
    order = sorted(found)
    return order, [found[i] for i in order]


def essential_dynamics(steps: Sequence[int], losses: np.ndarray, k: int = 3,
                       min_angle: float = MIN_ANGLE) -> EssentialDynamics:
    """PCA of `losses` [snapshot, ...] (flattened per snapshot) and the turning points of the
    trajectory in its top `k` components."""
    points = losses.reshape(len(steps), -1).astype(np.float64)
    projections, explained = pca(points, k)
    turns, angles = turning_points(projections, min_angle)
    return EssentialDynamics(list(steps), projections, explained, turns, angles)


def nearest_snapshot(steps: Sequence[int], step: int | None) -> int | None:
    """Index of the saved step closest to `step` (a tie goes to the later one)."""
    if step is None or not len(steps):
        return None
    return min(range(len(steps)), key=lambda i: (abs(steps[i] - step), -steps[i]))


def plot_essential_dynamics(ed: EssentialDynamics, summary: Dict[str, Any], path: Path) -> Path:
    """The trajectory in PC1-PC2 (and PC1-PC3), coloured by step, turning points and the
    phase-change snapshot marked."""
    from matplotlib.colors import SymLogNorm
    from matplotlib.figure import Figure

    pairs = [(0, 1), (0, 2)][: max(1, ed.projections.shape[1] - 1)]
    if ed.projections.shape[1] < 2:
        pairs = [(0, 0)]
    fig = Figure(figsize=(6 * len(pairs) + 1, 5.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    steps = np.asarray(ed.steps)
    norm = SymLogNorm(linthresh=max(1, steps[steps > 0].min() if (steps > 0).any() else 1),
                      vmin=steps.min(), vmax=max(steps.max(), 1))
    phase = nearest_snapshot(ed.steps, summary.get("phase_change_step"))
    for ax, (a, b) in zip(axes, pairs):
        x, y = ed.projections[:, a], ed.projections[:, b]
        ax.plot(x, y, color="lightgray", lw=1, zorder=1)
        points = ax.scatter(x, y, c=steps, cmap="viridis", norm=norm, s=18, zorder=2)
        for i, angle in zip(ed.turning_points, ed.turning_angles):
            ax.scatter(x[i], y[i], s=120, facecolors="none", edgecolors="tab:orange", lw=2,
                       zorder=3)
            ax.annotate(f"step {ed.steps[i]} ({angle:.0f}°)", (x[i], y[i]), fontsize=8,
                        xytext=(6, 6), textcoords="offset points", color="tab:orange")
        if phase is not None:
            ax.scatter(x[phase], y[phase], marker="*", s=220, color="tab:red", zorder=4,
                       label=f"phase change (step {summary['phase_change_step']}; "
                             f"snapshot {ed.steps[phase]})")
        ax.scatter([], [], s=120, facecolors="none", edgecolors="tab:orange", lw=2,
                   label=f"turning point (> {MIN_ANGLE:.0f}° turn)")
        ax.set_xlabel(f"PC{a + 1} ({ed.explained[a]:.0%} of variance)")
        ax.set_ylabel(f"PC{b + 1} ({ed.explained[b]:.0%} of variance)")
        ax.legend(fontsize=8, loc="best")
    fig.colorbar(points, ax=list(axes), label="step")
    fig.suptitle("Essential dynamics: PCA of per-token losses across snapshots")
    fig.savefig(path, dpi=110)
    return path
