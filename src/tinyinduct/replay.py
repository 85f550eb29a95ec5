"""Metrics recomputed from a run's development record: the model at each saved step through the
run's own evaluation (the rows equal the logged ones) or through any function of the model.

From the command line, for one run or every run of a sweep (one JSON line per run and step):
    python -m tinyinduct.replay RUN_OR_SWEEP_DIR --metric mypkg.mymod:fn --out replay.jsonl
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch

from .evaluate import eval_batches, evaluate

if TYPE_CHECKING:
    from .model import AttnOnlyTransformer
    from .runs import Run

Metric = Callable[["AttnOnlyTransformer", int], Dict[str, Any]]


def own_evaluation(run: Run) -> Metric:
    """The evaluation the run logged at every eval step (on its fixed probe and batch)."""
    probe, train_batch = eval_batches(run.config, torch.device("cpu"))
    return lambda model, step: evaluate(model, probe, train_batch)


def replay(run: Run, fn: Metric | None = None,
           steps: Sequence[int] | None = None) -> List[Dict[str, Any]]:
    """`{"step": s, **fn(model_at(s), s)}` for every saved step (or `steps`), in order. A
    snapshot that cannot be read is named on stderr and skipped; the rest are replayed."""
    fn = own_evaluation(run) if fn is None else fn
    rows = []
    for step in sorted(run.snapshot_steps if steps is None else steps):
        try:
            model = run.model_at(step)
        except ValueError as err:
            print(f"replay: skipped step {step}: {err}", file=sys.stderr)
            continue
        with torch.no_grad():
            rows.append({"step": step, **fn(model, step)})
    return rows


# --- Command line: `python -m tinyinduct.replay RUN_OR_SWEEP_DIR [--metric mod:fn] [--out f]` ---

def runs_to_replay(root: str | Path) -> Tuple[List[Path], List[str]]:
    """The run directories under `root` (itself included) that have snapshots, and one line for
    each folder left out: a `train.n_seeds > 1` job folder (its `seed<s>/` runs are replayed
    instead) or a run without snapshots."""
    import yaml

    from .snapshots import snapshot_steps
    from .sweep_report import CONFIG_FILE, find_run_dirs

    runs, notes = [], []
    for run_dir in find_run_dirs(Path(root)):
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
        if (config.get("train") or {}).get("n_seeds", 1) > 1:
            notes.append(f"{run_dir}: a job of {config['train']['n_seeds']} seeds: "
                         "its seed<s>/ runs are replayed")
        elif not snapshot_steps(run_dir):
            notes.append(f"{run_dir}: no snapshots (record/snapshots/ is empty or missing): "
                         "skipped")
        else:
            runs.append(run_dir)
    return runs, notes


def conditions_of(run_dirs: List[Path]) -> Dict[Path, Tuple[Any, str]]:
    """`{run_dir: (seed, condition label)}`, conditions named as the sweep report names them."""
    import yaml

    from .sweep_report import CONFIG_FILE, SweepRun, condition_keys, condition_label

    runs = [SweepRun(d, yaml.safe_load((d / CONFIG_FILE).read_text()) or {}, [], None, "")
            for d in run_dirs]
    keys = condition_keys(runs)
    return {r.run_dir: (r.seed, condition_label(r.config, keys)) for r in runs}


def load_metric(spec: str) -> Metric:
    """`package.module:function` -> the function (ValueError naming the spec otherwise)."""
    import importlib

    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"--metric {spec!r}: expected module:function, e.g. mypkg.mymod:fn")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except ImportError as err:
        raise ValueError(f"--metric {spec!r}: cannot import {module_name} ({err})") from None
    except AttributeError:
        raise ValueError(f"--metric {spec!r}: {module_name} has no {name}") from None
    if not callable(fn):
        raise ValueError(f"--metric {spec!r}: {name} is not callable")
    return fn


def replay_rows(root: str | Path, fn: Metric | None = None,
                steps: Sequence[int] | None = None) -> Iterator[Dict[str, Any]]:
    """`{"run_dir", "seed", "condition", "step", **values}` for every run under `root` and
    every saved step (or `steps`), run by run; folders left out are named on stderr."""
    from .runs import load_run

    run_dirs, notes = runs_to_replay(root)
    for note in notes:
        print(f"replay: {note}", file=sys.stderr)
    if not run_dirs:
        raise ValueError(f"no run with snapshots under {root}")
    labels = conditions_of(run_dirs)
    for run_dir in run_dirs:
        seed, condition = labels[run_dir]
        run = load_run(run_dir)
        saved = set(run.snapshot_steps)
        for row in replay(run, fn, None if steps is None else [s for s in steps if s in saved]):
            yield {"run_dir": str(run_dir), "seed": seed, "condition": condition, **row}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import itertools
    import json

    from .tracking import _jsonable

    parser = argparse.ArgumentParser(
        prog="python -m tinyinduct.replay",
        description="Recompute metrics from the snapshots of a run, or of every run of a sweep: "
                    "one JSON line per run and saved step.")
    parser.add_argument("path", help="a run directory or a sweep directory")
    parser.add_argument("--metric", help="module:function taking (model, step) and returning a "
                        "dict (default: the run's own evaluation, as logged)")
    parser.add_argument("--out", default="-", help="JSON-lines file to write (default: stdout)")
    parser.add_argument("--steps", type=int, nargs="+", help="only these saved steps")
    args = parser.parse_args(argv)
    try:
        fn = load_metric(args.metric) if args.metric else None
        rows = replay_rows(args.path, fn, args.steps)
        first = next(rows, None)  # a path with no run fails here, before --out is created
        n = 0
        with nullcontext(sys.stdout) if args.out == "-" else open(args.out, "w") as out:
            for row in itertools.chain([] if first is None else [first], rows):
                out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
                out.flush()
                n += 1
    except (ValueError, FileNotFoundError) as err:
        print(f"replay: {err}", file=sys.stderr)
        return 2
    print(f"replay: {n} rows" + ("" if args.out == "-" else f" -> {args.out}"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
