#!/usr/bin/env python
"""Regenerate every result in the docs: rerun the runs behind their tables and figures, write the
tables as small result files (docs/results/<part>.json), the figures under docs/, and the
tables of the pages (docs/guide.md, docs/sweep.md) between their `<!-- results:<part> -->`
markers.

    python scripts/reproduce.py                          # every part (hours on 2 CPU cores)
    python scripts/reproduce.py --only composition_sweep # one part (repeat --only for more)
    python scripts/reproduce.py --from-results           # doc tables from docs/results/ only
    python scripts/reproduce.py --check                  # exit 1 if docs and results differ
    python scripts/reproduce.py --quick                  # tiny runs into a temp folder (CI)
    python scripts/reproduce.py --reuse-runs multirun/reproduce/2026-12-01_10-00-00

Parts: default_runs (docs/guide.md "Train": `python scripts/train.py seed=S`, seeds 0-4, each
process timed whole), composition_sweep (`+experiment=composition_sweep`: 6 conditions x 8 seeds;
formation time per condition and the K-only vs Q-only test), footnote6 (`+experiment=footnote6`:
shortformer with keys blocked, 8 seeds, the sweep's budget; read from the composition sweep's
own job for that condition when both parts run together), intervention_sweep
(`+experiment=intervention_sweep`) and speed (`scripts/bench.py`, docs/speed.md; run it with
nothing else on the machine). Runs go to
multirun/reproduce/<date>_<time>/<part>/ (`--runs-dir`); `--reuse-runs DIR` analyses the runs
already in DIR/<part>/ instead of training. `--quick` trains a tiny model for a few steps, 2
seeds and 2 conditions, and writes everything (a copy of the pages included) under `--out`
(default: a new temp folder), never touching docs/ or README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from tinyinduct import load_run
from tinyinduct.analysis.position import layer0_position
from tinyinduct.config import TrainConfig
from tinyinduct.data import RepeatedSegmentData
from tinyinduct.report import write_sweep_report
from tinyinduct.report.browser import missing as browser_missing
from tinyinduct.report.browser import screenshot
from tinyinduct.results import (
    RENDERERS,
    SOURCES,
    doc_pages,
    mismatches,
    update_pages,
    write_results,
)
from tinyinduct.runs import RunFileError
from tinyinduct.survival_plots import plot_formation_curves
from tinyinduct.sweep_plots import plot_sweep
from tinyinduct.sweep_report import load_sweep, read_config
from tinyinduct.sweep_survival import seed_conditions, seed_runs, sweep_survival

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"
BENCH = ROOT / "scripts" / "bench.py"
# The default run's report page is shown at this step (before its phase change) and at its end.
REPORT_BEFORE = 800
STOP_AFTER_FORMED = 500  # steps a run goes on after its head formed (where the loop supports it)
# --quick: a narrow model for a few dozen steps (what the tests train), W&B off.
QUICK = ["device=cpu", "train.steps=60", "train.eval_every=20", "train.checkpoint_every=40",
         "model.d_model=32", "model.n_heads=2", "model.d_head=8", "model.n_ctx=32",
         "data.d_vocab=64", "data.min_copy_len=4", "data.max_copy_len=12", "data.batch_size=8",
         "data.eval_batch_size=16", "logger.mode=disabled"]


@dataclasses.dataclass
class Context:
    runs: Path        # this part's run folder
    docs_root: Path   # docs/results/ and docs/*.png go under here (the repository, or --out)
    quick: bool
    train: bool       # False with --reuse-runs: read the runs already in `runs`
    launcher: str


def stop_after_formed() -> int | None:
    """STOP_AFTER_FORMED where the training loop has the setting, else None."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return STOP_AFTER_FORMED if "stop_after_formed" in names else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> Dict[str, object]:
    import torch

    return {"cpu": f"{os.cpu_count()}-core {cpu_name()}", "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average_before": round(os.getloadavg()[0], 2)}


def run_train(args: List[str], log: Path, script: Path = TRAIN) -> float:
    """`python scripts/train.py ARGS` (or another script), its output in `log`; returns its wall
    seconds."""
    command = [sys.executable, str(script), *args]
    print("  $ " + " ".join(command[1:]), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              stdin=subprocess.DEVNULL).returncode
    seconds = time.perf_counter() - start
    if code != 0:  # a failed run is reported in the tables; say where its log is
        print(f"  exit code {code} after {seconds:.0f} s; log: {log}", flush=True)
    return seconds


WALL_FILE = "reproduce_wall.json"  # beside a part's runs: their training's wall time


def stamp(results: dict, command: str, wall_seconds: float | None, ctx: Context,
          runs: Path | None = None) -> dict:
    """The results with their provenance. The wall time of runs trained here is kept beside them
    (`WALL_FILE`), so that `--reuse-runs` reports it too, with the machine that trained them."""
    runs = runs or ctx.runs
    trained_on = None
    if ctx.train and wall_seconds is not None:
        (runs / WALL_FILE).write_text(json.dumps(
            {"wall_seconds": wall_seconds, "date": datetime.date.today().isoformat(),
             "machine": machine()}, indent=2) + "\n")
    elif not ctx.train and (runs / WALL_FILE).exists():
        kept = json.loads((runs / WALL_FILE).read_text())
        wall_seconds, trained_on = kept["wall_seconds"], kept.get("machine")
    return {"command": command, "date": datetime.date.today().isoformat(),
            "wall_seconds": wall_seconds, "quick": ctx.quick, "runs_dir": str(runs),
            "trained_here": ctx.train,  # False: runs reused (--reuse-runs), machine is the reader
            "machine": machine(), "trained_on": trained_on, **results}


def screenshots(shots: List[tuple]) -> None:
    """(page, png, step or None) each: the page opened offline in headless Chromium, saved
    whole. Without a browser the pictures are left as they are, and that is said."""
    why = browser_missing()
    if why:
        print(f"  screenshots not taken ({why}): " + ", ".join(str(s[1]) for s in shots))
        return
    for page, png, step in shots:
        problems = screenshot(page, png, step)
        if problems:
            raise SystemExit(f"error: {page} has problems in the browser: {problems}")
        print(f"  screenshot {png}", flush=True)


# --- default runs -------------------------------------------------------------------------------


def default_runs(ctx: Context) -> dict:
    seeds = [0, 1] if ctx.quick else [0, 1, 2, 3, 4]
    rows, total = [], 0.0
    for seed in seeds:
        run_dir = ctx.runs / f"seed{seed}"
        seconds = None
        if ctx.train:
            log = ctx.runs / f"seed{seed}.log"
            seconds = run_train([f"seed={seed}", f"hydra.run.dir={run_dir}",
                                 *(QUICK if ctx.quick else [])], log)
            total += seconds
            # the app's own "Whole process: X s." (from its first import), as docs/guide.md quotes
            printed = re.findall(r"^Whole process: ([\d.]+) s\.$", log.read_text(), flags=re.M)
            seconds = float(printed[-1]) if printed else seconds
        s = json.loads((run_dir / "summary.json").read_text())
        rows.append({"seed": seed, "status": s.get("status"), "head": s["best_induction_head"],
                     "score": s["best_induction_score"], "formed": s["induction_formed"],
                     "loss_second_copy": s["final_loss_second_copy"],
                     "loss_first_copy": s["final_loss_first_copy"],
                     "phase_change_step": s.get("phase_change_step"),
                     "phase_change_tokens": s.get("phase_change_tokens"),
                     "mechanism": s.get("mechanism"), "partner": s.get("composes_with"),
                     "tokens_per_second": s.get("tokens_per_second"),
                     "whole_process_seconds": seconds})
    figure = ctx.runs / "seed0" / "plots" / "loss_curves.png"
    if figure.exists():
        shutil.copyfile(figure, ctx.docs_root / "docs" / "loss_curves.png")
    page, docs = ctx.runs / "seed0" / "report.html", ctx.docs_root / "docs"
    screenshots([(page, docs / f"report_step{REPORT_BEFORE}.png", REPORT_BEFORE),
                 (page, docs / "report_end.png", None)])
    return stamp({"run_command": "python scripts/train.py seed=S", "threshold":
                  s.get("threshold", 0.7), "runs": rows},
                 "python scripts/reproduce.py --only default_runs", total if ctx.train else None,
                 ctx)


# --- sweeps read back as formation times --------------------------------------------------------


def survival_part(ctx: Context, args: List[str], command: str, sweep: bool,
                  read_from: Path | None = None) -> tuple:
    """Train (a multirun if `sweep`; nothing if the runs are `read_from` another part's), read
    the seed runs back, and return (results, conditions)."""
    seconds, stop = None, stop_after_formed()
    runs = read_from or ctx.runs
    if ctx.train and read_from is None:
        where = f"hydra.sweep.dir={ctx.runs}" if sweep else f"hydra.run.dir={ctx.runs}"
        stopping = [f"train.stop_after_formed={stop}"] if stop else []
        seconds = run_train([*(["-m"] if sweep else []), *args, where, *stopping],
                            ctx.runs.parent / f"{ctx.runs.name}.log")
    conditions = load_sweep(runs)
    if not conditions:
        raise SystemExit(f"error: no runs under {runs} (see {runs.name}.log beside it)")
    results = stamp(sweep_survival(conditions), command, seconds, ctx, runs)
    stops = {(r.config.get("train") or {}).get("stop_after_formed") for r in seed_runs(conditions)}
    results["stop_after_formed"] = stops.pop() if len(stops) == 1 else None
    return results, seed_conditions(conditions)


def composition_sweep(ctx: Context) -> dict:
    args = ["+experiment=composition_sweep"]
    if ctx.quick:
        args += ["model.positional=shortformer", "model.blocked_composition=[K],[Q]",
                 "train.n_seeds=2", *QUICK]
    else:
        args += [f"hydra/launcher={ctx.launcher}"]
    results, conditions = survival_part(
        ctx, args, "python scripts/reproduce.py --only composition_sweep", sweep=True)
    results["launcher"] = None if ctx.quick else ctx.launcher
    docs = ctx.docs_root / "docs"
    plot_formation_curves(results, docs / "formation_time.png")
    thresholds = {r.config.get("train", {}).get("induction_threshold")
                  for c in conditions for r in c.runs}
    plot_sweep(conditions, docs / "composition_sweep.png",
               threshold=thresholds.pop() if len(thresholds) == 1 else None)
    page = write_sweep_report(ctx.runs, load_sweep(ctx.runs))  # what scripts/compare.py writes
    screenshots([(page, docs / "compare_page.png", None)])
    return results


def last_layer0_score(rows: List[dict], kind: str) -> float | None:
    values = [v for k, v in (rows[-1] if rows else {}).items()
              if k.startswith(f"heads/{kind}/L0H") and v is not None]
    return max(values) if values else None


FOOTNOTE6 = {"positional": "shortformer", "blocked_composition": ["K"]}
FOOTNOTE6_CONTROL = {"positional": "shortformer", "blocked_composition": ["Q"]}
POSITION_DATA_SEED = 20_000  # fresh sequences, none a run trained or was evaluated on


def sweep_job(sweep_dir: Path, model: Dict[str, object]) -> Path | None:
    """The job directory of the composition sweep whose model settings include `model`."""
    for config in sorted(sweep_dir.glob("*/config.yaml")) if sweep_dir.is_dir() else []:
        settings = (read_config(config.parent).get("model") or {})
        if all(settings.get(k) == v for k, v in model.items()):
            return config.parent
    return None


def position_sources(run_dir: Path) -> dict:
    """How much position layer 0 of the run's last checkpoint writes (`analysis.position`), on
    256 fresh sequences of its own data."""
    try:
        run = load_run(run_dir)
    except (FileNotFoundError, RunFileError) as err:  # named in the table as "-"
        print(f"  no layer-0 position measure for {run_dir}: {err}", flush=True)
        return {"l0_position_r2": None, "l0_earlier_r2": None, "l0_earlier_r2_own": None,
                "l0_bos_attention": None}
    data = RepeatedSegmentData(run.config.data, seed=POSITION_DATA_SEED)
    found = layer0_position(run.model, data.sample(256))
    return {"l0_position_r2": found["position_r2"], "l0_earlier_r2": found["earlier_r2"],
            "l0_earlier_r2_own": found["earlier_r2_from_own_position"],
            "l0_bos_attention": max(found["bos_attention"].values())}


def footnote6(ctx: Context) -> dict:
    """Shortformer with keys blocked: the composition sweep's own condition when its runs are
    beside this part's (the same config as `+experiment=footnote6`, so the same runs), else
    trained alone."""
    job = sweep_job(ctx.runs.parent / "composition_sweep", FOOTNOTE6)
    if job is not None:
        print(f"  the composition sweep's {job.name}/ job is this condition: read from there",
              flush=True)
    args = ["+experiment=footnote6", *(["train.n_seeds=2", *QUICK] if ctx.quick else [])]
    results, conditions = survival_part(
        ctx, args, "python scripts/reproduce.py --only footnote6", sweep=False, read_from=job)
    results["runs"] = [
        {"seed": run.seed, "status": (run.summary or {}).get("status", "incomplete"),
         "head": (run.summary or {}).get("best_induction_head"),
         "score": (run.summary or {}).get("best_induction_score"),
         "loss_ratio": (run.summary or {}).get("loss_ratio"),
         "phase_change_step": (run.summary or {}).get("phase_change_step"),
         "mechanism": (run.summary or {}).get("mechanism"),
         "l0_prev_token": last_layer0_score(run.rows, "prev_token"),
         "l0_duplicate": last_layer0_score(run.rows, "duplicate"),
         **position_sources(run.run_dir)}
        for condition in conditions for run in condition.runs]
    # the same measures where K-composition does the work (queries blocked), for comparison
    control = sweep_job(ctx.runs.parent / "composition_sweep", FOOTNOTE6_CONTROL)
    if control is not None:
        seeds = [position_sources(d.parent) for d in sorted(control.glob("seed*/config.yaml"))]
        results["control"] = {"condition": "positional=shortformer, blocked=Q",
                              "runs": [s for s in seeds if s["l0_position_r2"] is not None]}
    plot_sweep(conditions, ctx.docs_root / "docs" / "footnote6.png")
    return results


def intervention_sweep(ctx: Context) -> dict:
    args = ["+experiment=intervention_sweep", "logger.mode=disabled"]
    if ctx.quick:
        args += ["train.n_seeds=2", *QUICK]
    else:
        args += [f"hydra/launcher={ctx.launcher}"]
    seconds = None
    if ctx.train:
        seconds = run_train(["-m", *args, f"hydra.sweep.dir={ctx.runs}"],
                            ctx.runs.parent / f"{ctx.runs.name}.log")
    conditions = load_sweep(ctx.runs)
    if not conditions:
        raise SystemExit(f"error: no runs under {ctx.runs} (see {ctx.runs.name}.log beside it)")
    results = {"conditions": [intervention_condition(c) for c in conditions]}
    plot_sweep(conditions, ctx.docs_root / "docs" / "intervention_sweep.png")
    return stamp(results, "python scripts/reproduce.py --only intervention_sweep", seconds, ctx)


def intervention_condition(condition) -> dict:
    """Per seed: when both formation criteria were first met, the second-copy loss early on, and
    the strongest layer-0 previous-token head at the end (is one still there when a clamp makes
    it unnecessary?)."""
    seeds = []
    for run in condition.runs:
        rows, summary = run.rows, run.summary or {}
        by_step = {r["step"]: r for r in rows}
        seeds.append({
            "seed": run.seed, "status": summary.get("status", run.state),
            "formed": summary.get("induction_formed"),
            "first_formed_step": summary.get("first_formed_step"),
            "phase_change_step": summary.get("phase_change_step"),
            "loss_second_copy_at_300": (by_step.get(300) or {}).get("eval/loss_second_copy"),
            "final_loss_second_copy": summary.get("final_loss_second_copy"),
            "l0_prev_token": last_layer0_score(rows, "prev_token"),
            "interventions": summary.get("interventions")})
    return {"condition": condition.label, "seeds": seeds}


# The parts, in the order the docs show them.
# --- speed (docs/speed.md) ------------------------------------------------------------------------


def speed(ctx: Context) -> dict:
    """`scripts/bench.py` with its defaults (every part, 1 and 2 threads); alone on the machine,
    or its ratios mean little."""
    out = ctx.runs / "bench.json"
    if ctx.train:
        quick = ["--quick", "--threads", "1", "--parts", "models,profile"]
        run_train(["--out", str(out), *(quick if ctx.quick else [])],
                  ctx.runs.parent / f"{ctx.runs.name}.log", script=BENCH)
    if not out.exists():
        raise SystemExit(f"error: no {out} (see {ctx.runs.name}.log beside it)")
    bench = json.loads(out.read_text())
    if not bench.get("complete"):  # a benchmark cut short: its parts stay in `out`, the pages
        # keep the last whole run's figures
        raise SystemExit(f"error: the benchmark in {out} stopped before its end (see "
                         f"{ctx.runs.name}.log beside it); the pages are left as they were")
    return {"command": "python scripts/reproduce.py --only speed", "bench": bench}


PARTS: Dict[str, Callable[[Context], dict]] = {
    "default_runs": default_runs,
    "composition_sweep": composition_sweep,
    "footnote6": footnote6,
    "intervention_sweep": intervention_sweep,
    "speed": speed,
}
# every part has its table; the other tables are made from parts' files (results.SOURCES)
assert set(PARTS) == set(RENDERERS) - set(SOURCES)
assert all(set(files) <= set(PARTS) for files in SOURCES.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=list(PARTS), metavar="PART",
                        help=f"rerun this part only (repeatable): {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny runs, 2 seeds, 2 conditions, everything under --out")
    parser.add_argument("--out", type=Path, help="--quick: where to write (default: a temp dir)")
    parser.add_argument("--from-results", action="store_true",
                        help="only regenerate the docs' tables from docs/results/")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a docs table differs from its result file")
    parser.add_argument("--runs-dir", type=Path, help="where the runs go (default: "
                        "multirun/reproduce/<date>_<time>)")
    parser.add_argument("--reuse-runs", type=Path, metavar="DIR",
                        help="analyse the runs already in DIR/<part>/ instead of training")
    parser.add_argument("--launcher", default="local",
                        help="Hydra launcher for the sweep (default: local, 2 jobs at a time)")
    args = parser.parse_args(argv)

    if args.quick:
        docs_root = args.out or Path(tempfile.mkdtemp(prefix="tinyinduct-reproduce-"))
        (docs_root / "docs").mkdir(parents=True, exist_ok=True)
        if not (args.check or args.from_results):  # a fresh copy of the pages to regenerate
            for page in doc_pages(ROOT):
                shutil.copyfile(page, docs_root / page.relative_to(ROOT))
    else:
        if args.out:
            parser.error("--out goes with --quick (a full run writes docs/ and README.md)")
        docs_root = ROOT

    if args.check:
        mismatched = mismatches(docs_root)
        for name in mismatched:
            print(f"docs block '{name}' differs from docs/results/{name}.json: run "
                  f"python scripts/reproduce.py --from-results", file=sys.stderr)
        return 1 if mismatched else 0

    if not args.from_results:
        runs_root = args.reuse_runs or args.runs_dir or (
            (docs_root / "runs") if args.quick else ROOT / "multirun" / "reproduce"
            / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
        (docs_root / "docs").mkdir(parents=True, exist_ok=True)
        for name in args.only or list(PARTS):
            print(f"{name}: runs in {runs_root / name}", flush=True)
            ctx = Context(runs_root / name, docs_root, args.quick, args.reuse_runs is None,
                          args.launcher)
            print(f"  wrote {write_results(docs_root, name, PARTS[name](ctx))}", flush=True)

    changed = update_pages(docs_root)
    print(f"{docs_root} pages: " + (f"regenerated {', '.join(changed)}" if changed
                                    else "up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
