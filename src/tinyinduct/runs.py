"""Run directories: checkpoints written atomically, and `load_run` to open a finished run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from .atomic import write_atomic
from .config import RunConfig, run_config_from_dict, to_dict
from .model import AttnOnlyTransformer
from .snapshots import load_snapshot, snapshot_steps
from .tracking import METRICS_FILE, SUMMARY_FILE, read_metrics

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """`torch.save` to a temp file, then rename: a reader never sees a half-written file."""
    write_atomic(path, lambda f: torch.save(state, f))


def checkpoint_state(cfg: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, step: int,
                     **extra: Any) -> Dict[str, Any]:
    """What `load_run` reads, plus `extra` (what resuming needs: generator states, ...)."""
    return {
        "config": to_dict(cfg),
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **extra,
    }


@dataclass
class Run:
    """A run directory read back: the trained model, its config, every metrics row, the summary,
    and its development record (the model at every saved step)."""

    model: AttnOnlyTransformer
    config: RunConfig
    metrics: List[Dict[str, Any]]
    summary: Dict[str, Any]
    run_dir: Path
    step: int

    @property
    def snapshot_steps(self) -> List[int]:
        """The steps whose weights the run kept (`train.snapshots`), sorted."""
        return snapshot_steps(self.run_dir)

    def model_at(self, step: int) -> AttnOnlyTransformer:
        """The model exactly as it was after `step` (bit for bit); ValueError naming the nearest
        saved steps if that step has no snapshot."""
        model = AttnOnlyTransformer(self.config.model)
        model.load_state_dict(load_snapshot(self.run_dir, step))
        return model.eval()

    def replay(self, fn: Callable[[AttnOnlyTransformer, int], Dict[str, Any]] | None = None,
               steps: Sequence[int] | None = None) -> List[Dict[str, Any]]:
        """Metrics rows recomputed from the snapshots (`replay.replay`): by default the run's own
        evaluation (equal to the logged rows at those steps), or `fn(model, step) -> dict`."""
        from .replay import replay

        return replay(self, fn, steps)


def load_run(run_dir: str | Path, checkpoint: str = LAST_CHECKPOINT,
             device: str | None = "cpu") -> Run:
    """Open a run directory written by `tinyinduct.train` (or `scripts/train.py`)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_DIR / checkpoint
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: is {run_dir} a tinyinduct run dir?")
    state = torch.load(path, map_location=device, weights_only=True)
    config = run_config_from_dict(state["config"])
    model = AttnOnlyTransformer(config.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    summary_path = run_dir / SUMMARY_FILE
    summary = {}
    if summary_path.exists():
        import json

        summary = json.loads(summary_path.read_text())
    return Run(model, config, read_metrics(run_dir / METRICS_FILE), summary, run_dir,
               state["step"])
