"""The Hydra training app behind `scripts/train.py` and the `tinyinduct-train` console script.

The package's only Hydra importer: the rest of the library takes a `RunConfig` and never sees
Hydra. Configs: `tinyinduct.resources.config_dir()`.
"""

import sys
import time
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ._clock import IMPORT_START
from .config import ConfigError, RunConfig
from .resources import config_dir
from .train import format_summary, train

CONFIG_DIR = config_dir()
ConfigStore.instance().store(name="run_schema", node=RunConfig)


def sweep_group(cfg: DictConfig) -> None:
    """In a multirun, runs without `logger.group` share one W&B group: the sweep's folder."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and cfg.logger.group is None:
        cfg.logger.group = str(hydra_cfg.sweep.dir)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        sweep_group(cfg)
        run_cfg = OmegaConf.to_object(cfg)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        summary = train(run_cfg, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(summary, run_dir))
    print(f"Whole process: {time.perf_counter() - IMPORT_START:.1f} s.")
    if summary.get("wandb_dir") and run_cfg.logger.mode == "offline":
        print(f"W&B offline run: wandb sync {summary['wandb_dir']}")
    if summary.get("status") == "failed":
        sys.exit(1)
    return summary
