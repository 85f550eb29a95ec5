"""The Hydra training app behind `scripts/train.py` and the `tinyinduct-train` console script.

With `hydra_errors.py`, the package's only Hydra importer: the rest of the library takes a
`RunConfig` and never sees Hydra. Configs: `tinyinduct.resources.config_dir()`. Torch is imported
only once the config is valid, so a bad command line is answered in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ._clock import IMPORT_START
from .config import ConfigError, RunConfig
from .hydra_errors import config_composed, describe, run_with_one_line_errors
from .interrupt import catch_early_signals
from .resources import config_dir
from .rundir import RunFault, os_reason
from .sweeps import label_sweep_run

CONFIG_DIR = config_dir()
def run_schema() -> DictConfig:
    """`RunConfig` as Hydra's schema; `intervene.clamp_pattern` is a dict a user fills
    (`intervene.clamp_pattern={L0H1:previous_token}`), so it takes new keys despite struct mode."""
    schema = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(schema.intervene.clamp_pattern, False)
    return schema


ConfigStore.instance().store(name="run_schema", node=run_schema())


def hydra_quote(value: str) -> str:
    """`value` as Hydra's override grammar reads it back: as it is where it parses to itself
    (`/runs/a-1`), else a quoted string in which `,`, `=`, spaces and any other character stay
    part of the one value, and `${` stays literal rather than an interpolation."""
    if "${" not in value and _override_value(f"key={value}") == value:
        return value
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)  # before a quote, or last
    return "'" + escaped.replace("'", "\\'").replace("${", "\\${") + "'"


def resume_command(run_dir: Path, overrides: list, program: str) -> str:
    """`program` with `overrides` again, continuing `run_dir` (quoted for Hydra, then for the
    shell: a directory with `,`, `=`, spaces or any other character resumes as it is)."""
    kept = [o for o in overrides if not o.startswith("resume=")]
    return " ".join([program, *map(shlex.quote, kept),
                     shlex.quote(f"resume={hydra_quote(str(run_dir))}")])


HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}  # what Hydra puts in .hydra/
_GIVEN_RUN_DIRS: set = set()  # directories named by hydra.run.dir that existed before the run


def remove_refused_run_dir(run_dir: Path) -> None:
    """A run refused before it started leaves nothing behind: remove what Hydra created for this
    job (`.hydra/`, the job's log), and the directory with the empty folders above it inside the
    working directory (`outputs/<date>/<time>`) unless it existed before. A directory holding
    anything else is left as it is."""
    hydra_dir, log = run_dir / ".hydra", run_dir / f"{HydraConfig.get().job.name}.log"
    if not run_dir.is_dir() or set(run_dir.iterdir()) - {hydra_dir, log}:
        return
    if hydra_dir.is_dir() and {p.name for p in hydra_dir.iterdir()} - HYDRA_FILES:
        return
    shutil.rmtree(hydra_dir, ignore_errors=True)
    log.unlink(missing_ok=True)
    if str(run_dir.resolve()) in _GIVEN_RUN_DIRS:
        return
    here, cwd = run_dir.resolve(), Path.cwd().resolve()
    while here != cwd and not any(here.iterdir()):
        here.rmdir()
        if cwd not in here.parents:
            break
        here = here.parent


def check_known_keys(cfg: DictConfig, schema: object = None, prefix: str = "") -> None:
    """`+key=value` slips past the schema: refuse it like any other unknown key."""
    schema = RunConfig() if schema is None else schema
    known = [f.name for f in dataclasses.fields(schema)]
    for key in cfg:
        if key not in known:
            raise ConfigError(prefix + key, cfg[key], f"unknown key; known: {', '.join(known)}")
        if dataclasses.is_dataclass(getattr(schema, key)):
            check_known_keys(cfg[key], getattr(schema, key), f"{prefix}{key}.")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def app(cfg: DictConfig) -> dict:
    job_start = time.perf_counter()
    config_composed()
    try:
        check_known_keys(cfg)
        run_cfg = OmegaConf.to_object(cfg)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # one W&B group per sweep, tags per condition
            label_sweep_run(run_cfg, hydra_cfg.sweep.dir)
        from .loop import train  # torch: only for a valid config
        from .summary import format_summary

        # a resumed run writes into the run it continues (and keeps that run's config.yaml)
        run_dir = Path(run_cfg.resume or HydraConfig.get().runtime.output_dir)
        summary = train(run_cfg, run_dir)
    except RunFault as err:
        print(f"error: run failed: {err}", file=sys.stderr)
        sys.exit(1)
    except (ConfigError, OmegaConfBaseException) as err:  # e.g. an unresolvable interpolation
        remove_refused_run_dir(Path(HydraConfig.get().runtime.output_dir))  # Hydra's files only
        print(f"error: {err if isinstance(err, ConfigError) else describe(err)}",
              file=sys.stderr)
        sys.exit(2)
    finished = summary.get("status") == "finished"
    print(format_summary(summary, run_dir), file=sys.stdout if finished else sys.stderr)
    if summary.get("status") == "interrupted":
        program = "python scripts/train.py" if sys.argv[0].endswith(".py") else "tinyinduct-train"
        command = resume_command(run_dir, list(HydraConfig.get().overrides.task), program)
        print(f"Resume with: {command}", file=sys.stderr)
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # one process may run many jobs
        print(f"This job: {time.perf_counter() - job_start:.1f} s.")
    else:
        print(f"Whole process: {time.perf_counter() - IMPORT_START:.1f} s.")
    if summary.get("wandb_dir") and run_cfg.logger.mode == "offline":
        where = (summary["wandb_dir"] if summary.get("resumed_from_step") is None
                 else f"{run_dir}/wandb/offline-run-*")  # a resumed run has one dir per session
        print(f"W&B offline run: wandb sync {where}")
    if summary.get("exit_code"):
        if HydraConfig.get().mode == RunMode.MULTIRUN and summary.get("status") == "failed":
            # Hydra records the job as failed and runs the rest of the sweep
            raise RuntimeError(f"run failed: {summary.get('error')} ({run_dir})")
        sys.exit(summary["exit_code"])
    return summary


def _run_dir_follows_resume(argv: list) -> None:
    """`resume=RUN_DIR` alone makes Hydra's run directory RUN_DIR (not a fresh outputs/...)."""
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not resume or resume[-1] in ("", "null") \
            or any(a.startswith("hydra.run.dir=") for a in argv):
        return
    value = _override_value(f"resume={resume[-1]}")
    if isinstance(value, str):  # one directory, however quoted (not a sweep over several)
        argv.append(f"hydra.run.dir={resume[-1]}")


def _override_value(override: str) -> object:
    """The value Hydra's parser reads from one `key=value` (None where it cannot parse it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).value()
    except Exception:  # Hydra itself reports the bad override, in one line
        return None


def _note_given_run_dirs(argv: list) -> None:
    """Remember which directories named by hydra.run.dir existed already: a refused run never
    removes those."""
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            value = _override_value(arg)
            if isinstance(value, str) and Path(value).is_dir():
                _GIVEN_RUN_DIRS.add(str(Path(value).resolve()))


def main() -> None:
    """`python scripts/train.py ...` / `tinyinduct-train ...`: Hydra overrides from sys.argv."""
    catch_early_signals()
    try:
        _run_dir_follows_resume(sys.argv)
        _note_given_run_dirs(sys.argv)
        run_with_one_line_errors(app)
    except OSError as err:  # Hydra creates the run directory before the app starts
        print(f"error: invalid config: hydra.run.dir={err.filename}: cannot be created "
              f"({os_reason(err)}): choose a directory you can write to", file=sys.stderr)
        sys.exit(2)
