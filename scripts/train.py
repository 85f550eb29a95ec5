#!/usr/bin/env python
"""Train a two-layer attention-only transformer and watch its induction head form.

    python scripts/train.py                                   # the default run
    python scripts/train.py model.positional=shortformer optim.lr=3e-3
    python scripts/train.py -m model.positional=standard,shortformer seed=0,1,2

Hydra composes `configs/train.yaml` over the typed schema `tinyinduct.config.RunConfig`; the run
directory (Hydra's output dir) receives config.yaml, metrics.jsonl, summary.json, checkpoints/
and the offline W&B run in wandb/.
"""

import time

_START = time.perf_counter()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from tinyinduct.config import ConfigError, RunConfig  # noqa: E402
from tinyinduct.sweeps import label_sweep_run  # noqa: E402
from tinyinduct.train import format_summary, train  # noqa: E402

ConfigStore.instance().store(name="run_schema", node=RunConfig)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run_cfg = OmegaConf.to_object(cfg)
        if hydra_cfg.mode == RunMode.MULTIRUN:  # one W&B group per sweep, tags per condition
            label_sweep_run(run_cfg, hydra_cfg.sweep.dir)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        summary = train(run_cfg, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(summary, run_dir))
    print(f"Whole process: {time.perf_counter() - _START:.1f} s.")
    if summary.get("wandb_dir"):
        print(f"W&B offline run: wandb sync {summary['wandb_dir']}")
    if summary.get("status") == "failed":
        if hydra_cfg.mode == RunMode.MULTIRUN:  # Hydra records the job as failed, runs the rest
            raise RuntimeError(f"run failed: {summary.get('error')} ({run_dir})")
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
