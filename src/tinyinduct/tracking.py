"""Metric sinks: `metrics.jsonl` in the run directory always, W&B (offline by default) beside it.

Every row is `{"step": int, "tokens": int, "section/name": value, ...}`, appended and flushed at
once, so a run killed at any moment leaves every row it had logged readable.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from .atomic import write_text_atomic
from .config import COMPOSITION_INPUTS, RunConfig, to_dict

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# How long `logger.mode=online` may wait for the W&B server before falling back to offline
# (W&B's own default is 90 s); WANDB_INIT_TIMEOUT overrides it.
ONLINE_INIT_TIMEOUT = 15.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads back as null
    return value


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2)
                      + "\n")


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (a killed writer) is skipped."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def run_name(cfg: RunConfig) -> str:
    """`logger.name`, else the condition: `shortformer-seed3`, `standard-noK-seed3`, ..."""
    if cfg.logger.name:
        return cfg.logger.name
    blocked = "".join(x for x in COMPOSITION_INPUTS if x in cfg.model.blocked_composition)
    condition = cfg.model.positional + (f"-no{blocked}" if blocked else "")
    return f"{condition}-seed{cfg.seed}"


# W&B summaries beyond the last value: the best each of these reached during the run.
MIN_SUMMARY_METRICS = ("train/loss", "eval/loss_second_copy", "eval/loss_ratio")


def define_wandb_metrics(run: Any, cfg: RunConfig) -> None:
    """Plot every metric against `step`; `tokens` is logged in every row, so any chart can switch
    its x-axis to it. Losses also keep their minimum, induction scores their maximum."""
    run.define_metric("step")
    run.define_metric("tokens", step_metric="step")
    run.define_metric("*", step_metric="step")
    for key in MIN_SUMMARY_METRICS:
        run.define_metric(key, step_metric="step", summary="min,last")
    for layer in range(cfg.model.n_layers):  # W&B applies summaries to named metrics, not globs
        for head in range(cfg.model.n_heads):
            run.define_metric(f"heads/induction/L{layer}H{head}", step_metric="step",
                              summary="max,last")



class Tracker:
    """Writes rows to metrics.jsonl and W&B; use as a context manager around the run."""

    def __init__(self, cfg: RunConfig, run_dir: Path, wandb_id: str | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb_run = None
        self.resume_id = wandb_id  # continue this W&B run (a resumed training run)
        self.exit_code = 0  # what W&B records at the end, unless an exception escapes
        self._file = None
        self._last_row: Dict[str, Any] | None = None
        self._summarized = False
        self._closed = False

    def __enter__(self) -> Tracker:
        self._file = open(self.run_dir / METRICS_FILE, "a")
        if self.cfg.logger.mode != "disabled":
            self.wandb_run = self._init_wandb(self.cfg.logger.mode)
            if self.wandb_run is None and self.cfg.logger.mode == "online":
                self.wandb_run = self._init_wandb("offline")
        return self

    def _init_wandb(self, mode: str):
        logger = self.cfg.logger
        try:
            import wandb

            # offline only starts a local service: a long wait there is a busy machine, not a
            # dead network
            timeout = (float(os.environ.get("WANDB_INIT_TIMEOUT", ONLINE_INIT_TIMEOUT))
                       if mode == "online" else 90.0)
            run = wandb.init(
                project=logger.project,
                group=logger.group,
                tags=list(logger.tags),
                name=run_name(self.cfg),
                config=to_dict(self.cfg),
                mode=mode,
                dir=str(self.run_dir),
                id=self.resume_id,
                reinit="create_new",  # several runs may be open at once (train.n_seeds > 1)
                resume="allow" if self.resume_id else None,
                settings=wandb.Settings(console="off", silent=True, init_timeout=timeout),
            )
            define_wandb_metrics(run, self.cfg)
            return run
        except Exception as err:  # W&B trouble never stops training: local files stay complete
            then = ("logging offline instead (sync later with `wandb sync`)" if mode == "online"
                    else f"logging to {self.run_dir / METRICS_FILE} only")
            reason = " ".join(str(err).split())  # the whole reason, on one line (pydantic's
            # first line is only "1 validation error for Settings")
            print(f"W&B {mode} unavailable ({type(err).__name__}: {reason}); {then}.",
                  file=sys.stderr)
            return None

    def _wandb_failed(self, err: Exception) -> None:
        print(f"W&B stopped working ({type(err).__name__}: {err}); logging to "
              f"{self.run_dir / METRICS_FILE} only from here.", file=sys.stderr)
        self.wandb_run = None

    def log(self, row: Dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._file.flush()
        self._last_row = row
        if self.wandb_run is not None:  # as in the file, a NaN is a missing value, not a minimum
            try:
                self.wandb_run.log({k: v for k, v in row.items() if _jsonable(v) is not None},
                                   step=row["step"])
            except Exception as err:
                self._wandb_failed(err)

    def media(self, step: int, images: Dict[str, Path], tables: Dict[str, tuple]) -> None:
        """PNG files as `plots/<name>` W&B images and `(columns, rows)` as `tables/<name>`
        W&B tables, logged at `step` (local copies stay in the run directory)."""
        if self.wandb_run is None:
            return
        import wandb

        media: Dict[str, Any] = {f"plots/{k}": wandb.Image(str(v)) for k, v in images.items()}
        media.update({f"tables/{k}": wandb.Table(columns=list(cols), data=[list(r) for r in rows])
                      for k, (cols, rows) in tables.items()})
        self.wandb_run.log({"step": step, **media}, step=step)

    def summary(self, summary: Dict[str, Any]) -> None:
        self._summarized = True
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        if self.wandb_run is not None:
            try:
                for key, value in summary.items():
                    if value is not None:
                        self.wandb_run.summary[key] = value
            except Exception as err:
                self._wandb_failed(err)

    @property
    def wandb_id(self) -> str | None:
        return None if self.wandb_run is None else self.wandb_run.id

    @property
    def wandb_dir(self) -> str | None:
        return None if self.wandb_run is None else str(Path(self.wandb_run.dir).parent)

    def close(self) -> None:
        """End the run's W&B run and metrics file (once; `__exit__` after it does nothing)."""
        self.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        self._closed = True
        if exc is not None and not self._summarized:  # a crash still leaves a summary saying so
            stopped = isinstance(exc, KeyboardInterrupt)
            self.summary({"status": "interrupted" if stopped else "failed",
                          "error": f"{exc_type.__name__}: {exc}",
                          "steps": self._last_row["step"] if self._last_row else None})
        if self._file is not None:
            self._file.close()
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish(exit_code=self.exit_code if exc_type is None else 1)
            except Exception as err:
                self._wandb_failed(err)
