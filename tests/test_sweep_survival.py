"""A sweep's runs as formation-time records (stacked jobs, interrupted and unfinished runs), and
the Kaplan-Meier figure read back as pixels."""

import matplotlib.colors
import matplotlib.image
import numpy as np

from tinyinduct.stats import survival_table
from tinyinduct.survival_plots import plot_formation_curves
from tinyinduct.sweep_report import Condition, SweepRun
from tinyinduct.sweep_survival import seed_conditions, sweep_records, sweep_survival


def config(blocked, n_seeds=1, seed=0, steps=4000):
    return {"seed": seed, "model": {"positional": "standard", "blocked_composition": blocked},
            "train": {"steps": steps, "n_seeds": n_seeds}}


def seed_run(tmp_path, blocked, seed, summary, rows=(), state="finished", steps=4000):
    return SweepRun(tmp_path / f"job{blocked}" / f"seed{seed}", config(blocked, seed=seed,
                    steps=steps), list(rows), summary, state)


def summary(formed, crossed, steps, status="finished", mechanism="K"):
    return {"status": status, "induction_formed": formed, "phase_change_step": crossed,
            "steps": steps, "mechanism": mechanism}


def test_stacked_jobs_are_skipped_and_conditions_relabelled_without_n_seeds(tmp_path):
    parent = SweepRun(tmp_path / "job", config(["Q"], n_seeds=2), [],
                      {"status": "finished", "seed_summaries": {}}, "finished",
                      "positional=standard, blocked=Q, n_seeds=2")
    k_only = [seed_run(tmp_path, ["Q"], s, summary(True, 500 + 50 * s, 1000)) for s in (0, 1)]
    q_only = [seed_run(tmp_path, ["K"], 0, summary(False, None, 8000, mechanism="none"),
                       steps=8000),
              seed_run(tmp_path, ["K"], 1, summary(False, None, 2500, "interrupted", None),
                       steps=8000),
              seed_run(tmp_path, ["K"], 2, None, rows=[{"step": 0}, {"step": 700}],
                       state="incomplete", steps=8000)]
    conditions = [Condition("positional=standard, blocked=Q, n_seeds=2", [parent]),
                  Condition("positional=standard, blocked=Q, n_seeds=1", k_only),
                  Condition("positional=standard, blocked=K, n_seeds=1", q_only)]
    records = sweep_records(conditions)
    assert [r["condition"] for r in records] == ["positional=standard, blocked=Q"] * 2 + [
        "positional=standard, blocked=K"] * 3
    assert [(r["run"], r["status"], r["last_step"], r["budget"]) for r in records[2:]] == [
        ("seed0", "finished", 8000, 8000), ("seed1", "interrupted", 2500, 8000),
        ("seed2", "incomplete", 700, 8000)]
    table = sweep_survival(conditions)
    k, q = table["conditions"]
    assert (k["formed"], k["median"], k["mechanisms"]) == (2, 500, {"K": 2})
    assert q["curve"]["censored_steps"] == [700, 2500, 8000] and q["mechanisms"] == {"none": 1}
    # the two stopped early (after forming) trained 2,000 of their 8,000 budgeted steps
    assert table["compute"] == {"seed_steps_trained": 2000 + 8000 + 2500 + 700,
                                "seed_steps_budget": 8000 + 3 * 8000}
    assert table["tests"][0]["z"] > 0
    assert [c.label for c in seed_conditions(conditions)] == [
        "positional=standard, blocked=Q", "positional=standard, blocked=K"]


def test_formation_figure_draws_each_condition_in_its_colour(tmp_path):
    def run(condition, s, step):
        return {"condition": condition, "run": f"seed{s}", "status": "finished",
                "induction_formed": step is not None, "phase_change_step": step,
                "last_step": step or 4000, "budget": 4000}

    records = [run("positional=standard, blocked=Q", s, 1000 + 100 * s) for s in range(4)]
    records += [run("positional=standard, blocked=K", s, None) for s in range(4)]
    path = plot_formation_curves(survival_table(records), tmp_path / "km.png")
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape == (528, 880, 3)

    def pixels(color):
        rgb = np.array(matplotlib.colors.to_rgb(color))
        return int((np.abs(image - rgb).sum(axis=-1) < 0.05).sum())

    assert pixels("tab:blue") > 200 and pixels("tab:red") > 200  # both curves drawn
