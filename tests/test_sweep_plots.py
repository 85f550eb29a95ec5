"""The sweep figure keeps its legend inside the picture, short labels or long."""

import matplotlib.image
import pytest

from tinyinduct.sweep_plots import plot_sweep
from tinyinduct.sweep_report import Condition, SweepRun


def runs(seeds, final_score):
    rows = [{"tokens": 1000 * step, "heads/induction/L1H0": final_score * step / 10,
             "eval/loss_second_copy": 6.0 - 0.5 * step} for step in range(11)]
    return [SweepRun(run_dir=f"seed{s}", config={"seed": s}, rows=rows, summary={},
                     state="finished") for s in range(seeds)]


@pytest.mark.parametrize("styles", [
    ["blocked=none", "blocked=K", "blocked=Q"],  # the composition sweep: side by side
    ["blocked=none, clamp=none", "blocked=none, clamp=L0H0:previous_token",
     "blocked=none, clamp=L0H1:previous_token+L1H0:induction"]])  # one per line
def test_the_legend_is_whole_in_the_picture(tmp_path, styles):
    conditions = [Condition(label=f"positional=standard, {style}", runs=runs(4, 0.3 * (i + 1)))
                  for i, style in enumerate(styles)]
    image = matplotlib.image.imread(plot_sweep(conditions, tmp_path / "sweep.png"))
    # nothing drawn on the picture's edges: no legend text cut off at either side or below
    for edge in (image[:, :3], image[:, -3:], image[-3:]):
        assert (edge[..., :3] > 0.95).all()
