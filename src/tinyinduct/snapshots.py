"""The development record's weights: the model saved on a schedule (`train.snapshots`), float32,
no optimizer state, one file per step in `RUN_DIR/record/snapshots/step_0001234.pt`, each
written atomically.

Schedules (joined with `+`, e.g. `log:20+every:500`):
- `auto` (the default): every evaluation through formation, from the one where the best layer-1
  induction score has risen 0.01 above its lowest value so far until 4 evaluations after it first
  reached `train.induction_threshold` (at most 40 evaluations in all), and 16 log-spaced steps
  elsewhere;
- `every_eval`: every evaluation;
- `every:N`: every N steps;
- `log:N`: N steps spaced evenly in log(step) between 1 and `train.steps`;
- `ends`: nothing besides step 0 and the last step, which every schedule saves.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Set

from .atomic import write_atomic

if TYPE_CHECKING:  # torch is imported where it is used: config validation imports this module
    import torch

SNAPSHOT_DIR = Path("record") / "snapshots"
SCHEDULE_FORMS = "auto, every_eval, every:N, log:N, ends, or several joined with +"
# The auto schedule's formation window: it opens when the best induction score has risen this
# far above its lowest value, closes this many evaluations after the threshold crossing, and
# never spans more evaluations than the cap (a head that never settles).
AUTO_RISE = 0.01
AUTO_SETTLE_EVALS = 4
AUTO_MAX_EVALS = 40
AUTO_LOG_POINTS = 16
_PART = re.compile(r"^(auto|every_eval|ends|every:[1-9][0-9]*|log:[1-9][0-9]*)$")


def schedule_problem(spec: str) -> str | None:
    """Why `spec` is not a schedule (None if it is one)."""
    parts = str(spec).split("+")
    bad = [p for p in parts if not _PART.match(p.strip())]
    return f"unknown schedule part(s) {bad}: allowed {SCHEDULE_FORMS}" if bad else None


class SnapshotSchedule:
    """Which steps of a run of `steps` steps keep a snapshot."""

    def __init__(self, spec: str, steps: int, threshold: float = 0.7):
        self.parts = [p.strip() for p in str(spec).split("+")]
        self.steps, self.threshold = steps, threshold
        self.fixed: Set[int] = {0, steps}
        self.every = [int(p.split(":")[1]) for p in self.parts if p.startswith("every:")]
        logs = [int(p.split(":")[1]) for p in self.parts if p.startswith("log:")]
        if "auto" in self.parts:
            logs.append(AUTO_LOG_POINTS)
        for n in logs:
            self.fixed |= log_spaced(n, steps)

    def at_step(self, step: int) -> bool:
        """A snapshot after this training step, whatever the metrics say."""
        return step in self.fixed or any(step % n == 0 for n in self.every)

    def at_evaluation(self, rows: List[Dict[str, Any]]) -> bool:
        """A snapshot at the evaluation that logged `rows[-1]` (all rows so far)."""
        if "every_eval" in self.parts:
            return True
        if "auto" in self.parts:
            return in_formation_window(rows, self.threshold)
        return False


def log_spaced(n: int, steps: int) -> Set[int]:
    """`n` steps spaced evenly in log(step) over [1, steps]."""
    if n <= 1 or steps <= 1:
        return {steps}
    return {round(math.exp(math.log(steps) * i / (n - 1))) for i in range(n)}


def in_formation_window(rows: List[Dict[str, Any]], threshold: float) -> bool:
    """Whether the newest of `rows` falls in the auto schedule's formation window (decided from
    the rows alone, so a resumed run decides as the uninterrupted one did)."""
    scores = [r.get("phase_change/best_induction") for r in rows]
    scores = [s if isinstance(s, (int, float)) and math.isfinite(s) else None for s in scores]
    lowest, rise = math.inf, None
    for i, s in enumerate(scores):
        if s is None:
            continue
        lowest = min(lowest, s)
        if s - lowest >= AUTO_RISE:
            rise = i
            break
    if rise is None:
        return False
    crossing = next((i for i, s in enumerate(scores) if s is not None and s >= threshold), None)
    end = rise + AUTO_MAX_EVALS
    if crossing is not None:
        end = min(end, max(crossing, rise) + AUTO_SETTLE_EVALS)
    return rise <= len(rows) - 1 <= end


def snapshot_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / f"step_{step:07d}.pt"


def save_snapshot(run_dir: Path, step: int, model: torch.nn.Module) -> Path:
    """The model's weights after `step`, float32, atomically (a unique temp file, then rename)."""
    import torch

    path = snapshot_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    return write_atomic(path, lambda f: torch.save({"step": step, "model": state}, f))


def snapshot_steps(run_dir: Path) -> List[int]:
    """The steps that have a snapshot file, sorted."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    steps = []
    for p in folder.glob("step_*.pt") if folder.is_dir() else []:
        match = re.fullmatch(r"step_(\d+)\.pt", p.name)
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)


def load_snapshot(run_dir: Path, step: int) -> Dict[str, torch.Tensor]:
    """The state dict saved at `step`; ValueError naming the file if it cannot be read, and
    naming the nearest saved steps if there is none."""
    path = snapshot_path(run_dir, step)
    if not path.is_file():
        steps = snapshot_steps(run_dir)
        near = sorted(steps, key=lambda s: abs(s - step))[:2]
        raise ValueError(f"no snapshot at step {step} in {Path(run_dir) / SNAPSHOT_DIR}; "
                         + (f"nearest saved steps: {', '.join(map(str, sorted(near)))}"
                            if near else "the run saved none"))
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)["model"]
    except Exception as err:
        raise ValueError(f"unreadable snapshot {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None


def drop_snapshots_after(run_dir: Path, step: int) -> None:
    """A resumed run recomputes what came after its checkpoint: its snapshots go too."""
    for s in snapshot_steps(run_dir):
        if s > step:
            snapshot_path(run_dir, s).unlink(missing_ok=True)

