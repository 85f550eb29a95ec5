"""What names a run inside a sweep: its condition (positional mode x blocked inputs), the W&B
group shared by every run of one sweep, and the W&B tags of its condition."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

from .config import RunConfig


def blocked_label(blocked: Iterable[str]) -> str:
    """`["K"]` -> "K", `["Q", "K"]` -> "Q+K", `[]` -> "none"."""
    return "+".join(blocked) or "none"


def condition_tags(cfg: RunConfig) -> List[str]:
    return [f"positional:{cfg.model.positional}",
            f"blocked:{blocked_label(cfg.model.blocked_composition)}"]


def sweep_group(sweep_dir: str | Path) -> str:
    """One W&B group per sweep, named after the last two parts of its directory:
    `multirun/composition_sweep/2026-11-25_16-00-00` -> `composition_sweep-2026-11-25_16-00-00`."""
    return "-".join(Path(sweep_dir).parts[-2:])


def label_sweep_run(cfg: RunConfig, sweep_dir: str | Path) -> None:
    """Fill what the user left unset: the group (the sweep) and the condition tags (the run
    name, `tracking.run_name`, already tells the conditions apart)."""
    logger = cfg.logger
    if logger.group is None:
        logger.group = sweep_group(sweep_dir)
    logger.tags = list(logger.tags) + [t for t in condition_tags(cfg) if t not in logger.tags]
