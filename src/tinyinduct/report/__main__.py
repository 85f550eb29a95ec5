"""Write the report page of an existing run (or of each seed of a several-seed run):

    python -m tinyinduct.report RUN_DIR               # RUN_DIR/report.html
    python -m tinyinduct.report RUN_DIR --pictures    # also redraw the PNGs, into a new folder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import write_run_report


def run_dirs(path: Path) -> list:
    """`path` itself, or its `seed<s>/` runs when it holds a several-seed job."""
    seeds = sorted(p for p in path.glob("seed*") if (p / "config.yaml").exists())
    return seeds if seeds and not (path / "metrics.jsonl").exists() else [path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinyinduct.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory written by tinyinduct")
    parser.add_argument("--pictures", action="store_true",
                        help="also redraw the run's PNG pictures into a new plots-redrawn folder")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: {args.run_dir} is not a directory", file=sys.stderr)
        return 2
    for run_dir in run_dirs(args.run_dir):
        print(f"Report: {write_run_report(run_dir)}")
        if args.pictures:
            from ..plots import redraw_run

            try:
                paths = redraw_run(run_dir)
            except FileNotFoundError as err:
                print(f"no pictures: {err}", file=sys.stderr)
                continue
            print(f"Pictures: {next(iter(paths.values())).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
