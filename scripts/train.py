#!/usr/bin/env python
"""Train a two-layer attention-only transformer and watch its induction head form.

    python scripts/train.py                                   # the default run
    python scripts/train.py model.positional=shortformer optim.lr=3e-3
    python scripts/train.py -m model.positional=standard,shortformer seed=0,1,2
    python scripts/train.py resume=RUN_DIR ...                # continue a stopped run

Hydra composes `configs/train.yaml` over the typed schema `tinyinduct.config.RunConfig`; the run
directory (Hydra's output dir) receives config.yaml, metrics.jsonl, summary.json, checkpoints/
and the offline W&B run in wandb/.
"""

import time

_START = time.perf_counter()

import dataclasses  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from config_errors import config_composed, describe, run_with_one_line_errors  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from tinyinduct.config import ConfigError, RunConfig  # noqa: E402

ConfigStore.instance().store(name="run_schema", node=RunConfig)


def resume_command(run_dir: Path) -> str:
    """This command line again, continuing `run_dir`."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    return shlex.join(["python", sys.argv[0], *overrides, f"resume={run_dir}"])


def check_known_keys(cfg: DictConfig, schema: object = None, prefix: str = "") -> None:
    """`+key=value` slips past the schema: refuse it like any other unknown key."""
    schema = RunConfig() if schema is None else schema
    known = [f.name for f in dataclasses.fields(schema)]
    for key in cfg:
        if key not in known:
            raise ConfigError(prefix + key, cfg[key], f"unknown key; known: {', '.join(known)}")
        if dataclasses.is_dataclass(getattr(schema, key)):
            check_known_keys(cfg[key], getattr(schema, key), f"{prefix}{key}.")


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    config_composed()
    try:
        check_known_keys(cfg)
        run_cfg = OmegaConf.to_object(cfg)
        from tinyinduct.train import format_summary, train  # torch: only for a valid config

        # a resumed run writes into the run it continues (and keeps that run's config.yaml)
        run_dir = Path(run_cfg.resume or HydraConfig.get().runtime.output_dir)
        if not run_cfg.resume:
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        summary = train(run_cfg, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        print(f"error: {describe(err)}", file=sys.stderr)
        sys.exit(2)
    finished = summary.get("status") == "finished"
    print(format_summary(summary, run_dir), file=sys.stdout if finished else sys.stderr)
    if summary.get("status") == "interrupted":
        print(f"Resume with: {resume_command(run_dir)}", file=sys.stderr)
    print(f"Whole process: {time.perf_counter() - _START:.1f} s.")
    if summary.get("wandb_dir"):
        where = (summary["wandb_dir"] if summary.get("resumed_from_step") is None
                 else f"{run_dir}/wandb/offline-run-*")  # a resumed run has one dir per session
        print(f"W&B offline run: wandb sync {where}")
    if summary.get("exit_code"):
        sys.exit(summary["exit_code"])
    return summary


def _run_dir_follows_resume(argv: list) -> None:
    """`resume=RUN_DIR` alone makes Hydra's run directory RUN_DIR (not a fresh outputs/...)."""
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if resume and resume[-1] not in ("", "null") and "," not in resume[-1] \
            and not any(a.startswith("hydra.run.dir=") for a in argv):
        argv.append(f"hydra.run.dir={resume[-1]}")


if __name__ == "__main__":
    _run_dir_follows_resume(sys.argv)
    run_with_one_line_errors(main)
