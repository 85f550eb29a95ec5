"""Continue a run from its last checkpoint, bit-identically on CPU: the state of every random
generator, the loop's running loss, the metrics file cut back to the checkpoint, and a check,
before anything is built, that the checkpoint belongs to the run this config describes."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from .atomic import write_text_atomic
from .config import ConfigError, RunConfig, to_dict
from .data import RepeatedSegmentData
from .runs import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    checkpoint_state,
    read_checkpoint,
)
from .tracking import METRICS_FILE, read_metrics

# Config fields a resumed run may change: none of them alters what is computed.
RESUMABLE_CHANGES = ("resume", "device", "logger", "train.checkpoint_every")


def rng_state(data: RepeatedSegmentData) -> Dict[str, Any]:
    """Every generator a run draws from (numpy and Python too, should any code use them)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "data": data.generator.get_state(),
             "python": random.getstate(),
             "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any], data: RepeatedSegmentData) -> None:
    torch.set_rng_state(state["torch"])
    data.generator.set_state(state["data"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(cfg: RunConfig, model: torch.nn.Module, optimizer, scheduler,
                   data: RepeatedSegmentData, step: int, loss_sum: torch.Tensor,
                   steps_since_eval: int, wandb_id: str | None) -> Dict[str, Any]:
    """A checkpoint: what `load_run` reads, plus all that resuming needs, the loop's running
    training loss included (a stop may fall inside an evaluation interval)."""
    return checkpoint_state(cfg, model, optimizer, scheduler, step, rng=rng_state(data),
                            loss_sum=loss_sum.detach().cpu(), steps_since_eval=steps_since_eval,
                            wandb_id=wandb_id, device=loss_sum.device.type)


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES)


@dataclass
class ResumePoint:
    """A checkpoint checked against the config that resumes it."""

    run_dir: Path
    state: Dict[str, Any]

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def wandb_id(self) -> str | None:
        return self.state.get("wandb_id")

    def restore_generators(self, data: RepeatedSegmentData) -> None:
        """The data stream's generator and the process-wide ones (torch, numpy, Python)."""
        restore_rng(self.state["rng"], data)


def load_resume_point(cfg: RunConfig, run_dir: Path, device: torch.device,
                      ended: bool = False, checkpoint: str = LAST_CHECKPOINT
                      ) -> ResumePoint | None:
    """The checkpoint `cfg.resume` names (its `checkpoint` file), or None for a fresh run;
    `ConfigError` (field `resume` or `device`) when it is missing, unreadable, finished or from
    another config. A seed killed between renaming its last checkpoint to
    `PREVIOUS_CHECKPOINT` and the new one into place resumes from the previous one."""
    if not cfg.resume:
        return None
    where = Path(cfg.resume)
    if where.resolve() != Path(run_dir).resolve():
        raise ConfigError("resume", cfg.resume,
                          f"a resumed run writes into the run it continues, not into {run_dir}")
    path = where / CHECKPOINT_DIR / checkpoint
    if not path.is_file() and (where / CHECKPOINT_DIR / PREVIOUS_CHECKPOINT).is_file():
        path = where / CHECKPOINT_DIR / PREVIOUS_CHECKPOINT
    if not path.is_file():
        raise ConfigError("resume", cfg.resume, f"no checkpoint at {path}: give the directory "
                          "of a run that wrote one")
    try:
        state = read_checkpoint(path)
        saved = _flatten(state["config"])
        step, saved_device = state["step"], state["device"]
    except Exception as err:
        raise ConfigError("resume", cfg.resume,
                          f"cannot read {path} ({type(err).__name__}: {err})") from None
    now = _flatten(to_dict(cfg))
    for key in sorted(set(saved) | set(now)):
        if not _may_change(key) and saved.get(key) != now.get(key):
            raise ConfigError("resume", cfg.resume,
                              f"that run has {key}={saved.get(key)!r} but this command "
                              f"{key}={now.get(key)!r}: resume with the run's own arguments "
                              f"(see {where / 'config.yaml'})")
    if step >= cfg.train.steps and not ended:  # `ended`: the caller knows, and only checks
        raise ConfigError("resume", cfg.resume,
                          f"that run already finished its train.steps={cfg.train.steps}")
    if saved_device != device.type:
        raise ConfigError("device", cfg.device, f"the checkpoint in {where} was written on "
                          f"{saved_device}: resume there so the data stream continues exactly")
    return ResumePoint(where, state)


def cut_metrics(run_dir: Path, step: int) -> List[Dict[str, Any]]:
    """Keep the metrics rows up to `step` (a killed run may have logged past its checkpoint, or
    left a torn last line), rewriting the file atomically; return them (null read back as NaN)."""
    path = Path(run_dir) / METRICS_FILE
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]
