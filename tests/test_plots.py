"""Pictures are drawn from metrics rows and attention snapshots into plots/."""

import math

import torch
from PIL import Image

from tinyinduct.plots import plot_run, snapshot_steps


def synthetic_run(n_rows=21, every=50, at=500):
    rows, patterns = [], []
    n = 9
    for i in range(n_rows):
        step = i * every
        s = 1 / (1 + math.exp(-(step - at) / 40))
        row = {"step": step, "tokens": step * 100, "train/loss": 6 - 2 * s,
               "eval/loss_first_copy": 6.2 + 0.2 * s * (1 - s) * 4,
               "eval/loss_second_copy": 6.2 - 5 * s, "comp/baseline": 0.1}
        for h in range(2):
            row[f"heads/induction/L1H{h}"] = 0.05 + 0.8 * s * (h == 1)
            row[f"heads/prev_token/L0H{h}"] = 0.1 + 0.6 * s * (h == 0)
            row[f"heads/induction/L0H{h}"] = 0.02
            row[f"heads/prev_token/L1H{h}"] = 0.05
            for kind in "QKV":
                for a in range(2):
                    row[f"comp/{kind}/L0H{a}->L1H{h}"] = 0.1 + 0.3 * (kind == "K" and a == 0)
        rows.append(row)
        pattern = torch.full((2, 2, n, n), 1.0 / n).tril()
        patterns.append(pattern.half())
    summary = {"phase_change_step": 550, "phase_change_steepest_step": 525, "threshold": 0.7,
               "mechanism_head": "L1H1", "best_induction_head": "L1H1", "composes_with": "L0H0"}
    return rows, summary, patterns, torch.arange(n)


def test_plot_run_writes_every_picture(tmp_path):
    rows, summary, patterns, tokens = synthetic_run()
    paths = plot_run(tmp_path, rows, summary, patterns, tokens)
    assert set(paths) == {"loss_curves", "head_scores", "composition", "attention_patterns"}
    for name, path in paths.items():
        assert path == tmp_path / "plots" / f"{name}.png"
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] > 300 and image.size[1] > 200
    # two key heads x three moments
    # steps 250 (262 -> 250), 550 (525: a tie between 500 and 550 goes to the later), 1000
    assert snapshot_steps(rows, summary) == [5, 11, 20]


def test_plot_run_without_snapshots_or_phase_change(tmp_path):
    rows, summary, _, _ = synthetic_run(n_rows=3)
    summary = {"threshold": 0.7}
    paths = plot_run(tmp_path, rows, summary)
    assert set(paths) == {"loss_curves", "head_scores", "composition"}


def test_one_layer_run_draws_no_composition_or_patterns(tmp_path):
    rows, _, patterns, tokens = synthetic_run(n_rows=3)
    rows = [{k: v for k, v in r.items() if "L1" not in k and not k.startswith("comp/")}
            | {"comp/baseline": 0.1} for r in rows]
    paths = plot_run(tmp_path, rows, {"best_induction_head": None}, patterns, tokens)
    assert set(paths) == {"loss_curves", "head_scores"}
