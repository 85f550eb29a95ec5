"""The development record's weights: the model saved on a schedule (`train.snapshots`), float32,
no optimizer state, one file per step in `RUN_DIR/record/snapshots/step_0001234.pt`, each
written atomically.

Schedules (joined with `+`, e.g. `log:20+every:500`):
- `auto` (the default): every evaluation while the model is changing fast (the best layer-1
  induction score moved by at least 0.01, or the probe's second-copy loss by at least 0.05 nats,
  since the previous evaluation: formation), and 16 log-spaced steps elsewhere;
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
# What "changing fast" means for the auto schedule (between consecutive evaluations).
AUTO_INDUCTION_MOVE = 0.01
AUTO_LOSS_MOVE = 0.05
AUTO_LOG_POINTS = 16
_PART = re.compile(r"^(auto|every_eval|ends|every:[1-9][0-9]*|log:[1-9][0-9]*)$")


def schedule_problem(spec: str) -> str | None:
    """Why `spec` is not a schedule (None if it is one)."""
    parts = str(spec).split("+")
    bad = [p for p in parts if not _PART.match(p.strip())]
    return f"unknown schedule part(s) {bad}: allowed {SCHEDULE_FORMS}" if bad else None


class SnapshotSchedule:
    """Which steps of a run of `steps` steps keep a snapshot."""

    def __init__(self, spec: str, steps: int):
        self.parts = [p.strip() for p in str(spec).split("+")]
        self.steps = steps
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
        if "auto" in self.parts and len(rows) > 1:
            return changing(rows[-2], rows[-1])
        return False


def log_spaced(n: int, steps: int) -> Set[int]:
    """`n` steps spaced evenly in log(step) over [1, steps]."""
    if n <= 1 or steps <= 1:
        return {steps}
    return {round(math.exp(math.log(steps) * i / (n - 1))) for i in range(n)}


def changing(before: Dict[str, Any], now: Dict[str, Any]) -> bool:
    def moved(key: str, by: float) -> bool:
        a, b = before.get(key), now.get(key)
        ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (a, b))
        return ok and abs(b - a) >= by

    return (moved("phase_change/best_induction", AUTO_INDUCTION_MOVE)
            or moved("eval/loss_second_copy", AUTO_LOSS_MOVE))


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

