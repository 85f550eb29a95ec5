#!/usr/bin/env python
"""Compare the runs of a sweep: a table per condition and overlaid curves with seed bands.

    python scripts/compare.py multirun/composition_sweep/2026-11-25_16-00-00
    python scripts/compare.py SWEEP_DIR --figure docs/composition_sweep.png --table sweep.md

Reads every run directory under SWEEP_DIR (config.yaml, metrics.jsonl, summary.json; each seed
of a `train.n_seeds > 1` job is a run), prints a Markdown table (one row per condition: runs, how
many formed an induction head, phase change step mean ± sd, mechanism verdicts, final losses) over
the finished runs, names every run that failed, was interrupted or has not finished (with the
step it reached), lists every directory it skipped (a file it cannot read, with the reason), and
writes the figure (default SWEEP_DIR/compare.png), the table (default SWEEP_DIR/compare.md) and
a self-contained page with both (SWEEP_DIR/compare.html, opens offline).
Works on a sweep still running.
"""

import argparse
import sys
from pathlib import Path

from tinyinduct.report import write_sweep_report
from tinyinduct.sweep_plots import plot_sweep
from tinyinduct.sweep_report import STATES, condition_row, load_sweep, markdown_table, run_problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (or any folder of runs)")
    parser.add_argument("--figure", type=Path, help="PNG path (default SWEEP_DIR/compare.png)")
    parser.add_argument("--table", type=Path, help="Markdown path (default SWEEP_DIR/compare.md)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    skipped = []
    conditions = load_sweep(args.sweep_dir, skipped)
    skipped = [f"skipped: {line}" for line in skipped]
    if not conditions:
        found = "no config.yaml found" if not skipped else f"{len(skipped)} skipped"
        print("\n".join([f"error: no runs under {args.sweep_dir} ({found})", *skipped]),
              file=sys.stderr)
        return 2

    table = markdown_table([condition_row(c) for c in conditions])
    problems = run_problems(conditions)
    counts = {s: sum(len(c.with_state(s)) for c in conditions) for s in STATES}
    status = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "interrupted")
    report = [f"{args.sweep_dir}: {sum(counts.values())} runs ({status})", "", table]
    if problems or skipped:
        report += ["", *problems, *skipped]
    text = "\n".join(report)
    print(text)

    thresholds = {r.config.get("train", {}).get("induction_threshold")
                  for c in conditions for r in c.runs}
    threshold = thresholds.pop() if len(thresholds) == 1 else None
    figure = plot_sweep(conditions, args.figure or args.sweep_dir / "compare.png",
                        threshold=threshold, title=str(args.sweep_dir))
    table_path = args.table or args.sweep_dir / "compare.md"
    table_path.write_text(text + "\n")
    page = write_sweep_report(args.sweep_dir, conditions)
    print(f"\nFigure: {figure}\nTable: {table_path}\nPage: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
