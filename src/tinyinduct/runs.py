"""Run directories: checkpoints written atomically, and `load_run` to open a finished run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from .atomic import write_all_atomic
from .config import ConfigError, RunConfig, run_config_from_dict, to_dict
from .model import AttnOnlyTransformer
from .snapshots import load_snapshot, snapshot_steps
from .tracking import METRICS_FILE, SUMMARY_FILE, read_metrics

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
# a stack's seed keeps its checkpoint before last.pt: a kill between the seeds' renames leaves
# each seed with the step of the others in one of the two
PREVIOUS_CHECKPOINT = "previous.pt"


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """`torch.save` to a temp file, then rename: a reader never sees a half-written file."""
    save_checkpoints([(path, state)])


def save_checkpoints(items: List[Tuple[Path, Dict[str, Any]]], keep_previous: bool = False
                     ) -> None:
    """`save_checkpoint` for files that belong together (a stack's seeds): every temp file is
    written first, then all are renamed in a row. With `keep_previous`, each replaced file
    becomes `PREVIOUS_CHECKPOINT` beside it, so a kill between two renames still leaves every
    seed a checkpoint at the step the others are at."""
    write_all_atomic([(path, lambda f, state=state: torch.save(state, f))
                      for path, state in items],
                     previous=PREVIOUS_CHECKPOINT if keep_previous else None)


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


class RunFileError(ValueError):
    """A file in a run directory that tinyinduct cannot read: the message names it and why."""


def read_checkpoint(path: Path, device: str | None = "cpu") -> Dict[str, Any]:
    """A checkpoint's contents; `RunFileError` for a file that is not a tinyinduct checkpoint."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise
    except Exception:  # random bytes, a foreign pickle, a truncated file
        raise RunFileError(f"not a tinyinduct checkpoint: {path}") from None
    if not isinstance(state, dict) or not {"config", "model", "step"} <= set(state):
        raise RunFileError(f"not a tinyinduct checkpoint: {path} (no config, model and step)")
    return state


def read_summary(path: Path) -> Dict[str, Any]:
    """summary.json as a mapping ({} where there is none); `RunFileError` when it is corrupt."""
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"{path}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(summary, dict):
        raise RunFileError(f"{path}: a JSON {type(summary).__name__}, not a run summary")
    return summary


def load_run(run_dir: str | Path, checkpoint: str = LAST_CHECKPOINT,
             device: str | None = "cpu") -> Run:
    """Open a run directory written by `tinyinduct.train` (or `scripts/train.py`).

    A file tinyinduct did not write (random bytes as a checkpoint, a corrupt summary.json)
    raises `RunFileError` naming the file and the problem."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_DIR / checkpoint
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: is {run_dir} a tinyinduct run dir?")
    state = read_checkpoint(path, device)
    try:
        config = run_config_from_dict(state["config"])
    except (ConfigError, TypeError, AttributeError) as err:
        raise RunFileError(f"{path}: the config inside is not a valid run config ({err})") \
            from None
    model = AttnOnlyTransformer(config.model).to(device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError):
        raise RunFileError(f"{path}: its weights do not fit the model its config describes") \
            from None
    model.eval()
    summary = read_summary(run_dir / SUMMARY_FILE)
    return Run(model, config, read_metrics(run_dir / METRICS_FILE), summary, run_dir,
               state["step"])
