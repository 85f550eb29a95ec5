"""Analyses of a run's development record (its snapshots), each a pure function plus a picture:

- `token_loss`: loss by token index over training and the in-context learning score with its
  standard error (Olsson et al. 2022);
- `essential_dynamics`: PCA of per-token losses across snapshots, its turning points against the
  phase change (Hoogland et al. 2024);
- `llc`: the weight-restricted local learning coefficient of every head over training, with
  devinterp (optional extra `tinyinduct[llc]`).

`analyze_run(run_dir)` draws them into `RUN_DIR/plots/analysis/` and, when the run logged to
W&B, adds them to that W&B run. Command line: `python -m tinyinduct.analysis RUN_DIR [--llc]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict

from .essential_dynamics import (
    EssentialDynamics,
    essential_dynamics,
    nearest_snapshot,
    plot_essential_dynamics,
    turning_points,
)
from .token_loss import TokenLoss, plot_token_loss, token_losses

ANALYSIS_DIR = Path("plots") / "analysis"
RESULTS_FILE = "analysis.json"

__all__ = ["ANALYSIS_DIR", "EssentialDynamics", "TokenLoss", "analyze_run", "essential_dynamics",
           "nearest_snapshot", "plot_essential_dynamics", "plot_token_loss", "token_losses",
           "turning_points", "log_to_wandb"]


def analyze_run(run_dir: str | Path, out_dir: str | Path | None = None,
                llc: bool = False, llc_snapshots: int | None = None) -> Dict[str, Path]:
    """Draw the analyses of the run in `run_dir` from its snapshots: `{name: path}` of the PNGs
    written into `out_dir` (default `RUN_DIR/plots/analysis/`), plus `analysis.json` with the
    numbers drawn. `llc=True` adds the per-head LLC (needs devinterp; minutes per snapshot set)
    at `llc_snapshots` snapshots spread over the saved ones (default 12).
    W&B trouble is reported on stderr, never raised."""
    from ..runs import load_run

    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / ANALYSIS_DIR
    out.mkdir(parents=True, exist_ok=True)
    summary = run.summary
    paths: Dict[str, Path] = {}
    results: Dict[str, Any] = {"phase_change_step": summary.get("phase_change_step")}

    losses = token_losses(run)
    paths["loss_by_token"] = plot_token_loss(losses, run.metrics, summary,
                                             out / "loss_by_token.png")
    score, se = losses.icl()
    results["icl"] = {"steps": losses.steps, "score": score.tolist(), "se": se.tolist(),
                      "n_sequences": losses.loss.shape[1]}

    ed = essential_dynamics(losses.steps, losses.loss)
    paths["essential_dynamics"] = plot_essential_dynamics(ed, summary,
                                                          out / "essential_dynamics.png")
    results["essential_dynamics"] = {
        "explained": ed.explained.tolist(), "turning_steps": ed.turning_steps,
        "turning_angles": ed.turning_angles,
        "phase_change_snapshot": (None if (i := nearest_snapshot(
            ed.steps, summary.get("phase_change_step"))) is None else ed.steps[i])}

    if llc:
        from .llc import MAX_SNAPSHOTS, llc_per_head, plot_llc, spread_steps

        head_llc = llc_per_head(run, steps=spread_steps(run.snapshot_steps,
                                                        llc_snapshots or MAX_SNAPSHOTS))
        paths["llc_per_head"] = plot_llc(head_llc, run.metrics, summary,
                                         out / "llc_per_head.png")
        results["llc"] = {"steps": head_llc.steps, "mean": head_llc.mean, "std": head_llc.std,
                          "settings": head_llc.settings.__dict__,
                          "seconds_per_snapshot": head_llc.seconds_per_snapshot}

    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    problem = log_to_wandb(run.run_dir, paths, run.step)
    if problem:
        print(f"analysis: W&B: {problem}; the pictures are in {out}", file=sys.stderr)
    return paths


def wandb_id_of(run_dir: Path) -> str | None:
    """The W&B run id the run logged to (kept in its last checkpoint), None if it had none."""
    import torch

    from ..runs import CHECKPOINT_DIR, LAST_CHECKPOINT

    state = torch.load(Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT, map_location="cpu",
                       weights_only=True)
    return state.get("wandb_id")


def log_to_wandb(run_dir: Path, images: Dict[str, Path], step: int) -> str | None:
    """Add `images` as `analysis/<name>` to the run's W&B run, resumed offline in
    `RUN_DIR/wandb/` (sync it as usual); logged at the run's last `step`, after everything it
    logged during training. Returns what went wrong (None if it worked or there is no W&B run)."""
    try:
        wandb_id = wandb_id_of(run_dir)
        if wandb_id is None:
            return None
        import wandb

        with wandb.init(id=wandb_id, resume="allow", mode="offline", dir=str(run_dir),
                        reinit="create_new",
                        settings=wandb.Settings(console="off", silent=True)) as wandb_run:
            wandb_run.log({f"analysis/{k}": wandb.Image(str(v)) for k, v in images.items()},
                          step=step)
    except Exception as err:  # W&B never stops an analysis: the files are written already
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None
