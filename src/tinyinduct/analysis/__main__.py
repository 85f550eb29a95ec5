"""`python -m tinyinduct.analysis RUN_DIR [--llc] [--out DIR]`: draw a run's analyses from its
snapshots into RUN_DIR/plots/analysis/ (and its W&B run, if it has one)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyinduct.analysis",
        description="Loss by token index, essential dynamics and (with --llc) the per-head local "
                    "learning coefficient of a run, drawn from its snapshots.")
    parser.add_argument("run_dir", help="a run directory (for a job of several seeds: one of "
                        "its seed<s>/ folders)")
    parser.add_argument("--llc", action="store_true", help="also estimate the per-head LLC "
                        "(needs: pip install \"tinyinduct[llc]\"; tens of seconds per snapshot)")
    parser.add_argument("--llc-snapshots", type=int, default=None, metavar="N",
                        help="with --llc: estimate at N snapshots spread over the saved ones "
                        "(default 12)")
    parser.add_argument("--out", help="folder for the pictures (default RUN_DIR/plots/analysis)")
    args = parser.parse_args(argv)
    from . import RESULTS_FILE, analyze_run

    try:
        paths = analyze_run(args.run_dir, args.out, llc=args.llc, llc_snapshots=args.llc_snapshots)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"analysis: {err}", file=sys.stderr)
        return 2
    folder = next(iter(paths.values())).parent
    results = json.loads((folder / RESULTS_FILE).read_text())
    ed = results["essential_dynamics"]
    print(f"phase change at step {results['phase_change_step']}; essential dynamics turns at "
          f"steps {ed['turning_steps'] or 'none'} (PC1-3 explain "
          f"{', '.join(f'{x:.0%}' for x in ed['explained'])})")
    if "llc" in results:
        print(f"per-head LLC: {results['llc']['seconds_per_snapshot']:.0f} s per snapshot")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
