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

from .config import RunConfig, to_dict

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads back as null
    return value


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2) + "\n")
    os.replace(tmp, path)


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
    return cfg.logger.name or f"{cfg.model.positional}-seed{cfg.seed}"


class Tracker:
    """Writes rows to metrics.jsonl and W&B; use as a context manager around the run."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb_run = None
        self._file = None

    def __enter__(self) -> Tracker:
        self._file = open(self.run_dir / METRICS_FILE, "a")
        if self.cfg.logger.mode != "disabled":
            self.wandb_run = self._init_wandb()
        return self

    def _init_wandb(self):
        logger = self.cfg.logger
        try:
            import wandb

            run = wandb.init(
                project=logger.project,
                group=logger.group,
                tags=list(logger.tags),
                name=run_name(self.cfg),
                config=to_dict(self.cfg),
                mode=logger.mode,
                dir=str(self.run_dir),
                settings=wandb.Settings(console="off", silent=True, init_timeout=30),
            )
            run.define_metric("step")
            run.define_metric("tokens", step_metric="step")
            run.define_metric("*", step_metric="step")
            return run
        except Exception as err:  # W&B trouble never stops training: local files stay complete
            print(f"W&B unavailable ({type(err).__name__}: {err}); logging to "
                  f"{self.run_dir / METRICS_FILE} only.", file=sys.stderr)
            return None

    def log(self, row: Dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=row["step"])

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
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        if self.wandb_run is not None:
            for key, value in summary.items():
                if value is not None:
                    self.wandb_run.summary[key] = value

    @property
    def wandb_dir(self) -> str | None:
        return None if self.wandb_run is None else str(Path(self.wandb_run.dir).parent)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None:
            self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if exc_type is None else 1)
