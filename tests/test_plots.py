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
    # two key heads x three moments: halfway to the crossing (275: a tie between 250 and 300
    # goes to the later), the threshold crossing itself (550), the end (1000)
    assert snapshot_steps(rows, summary) == [6, 11, 20]
    # without a crossing, the steepest fall places the middle column
    assert snapshot_steps(rows, {"phase_change_steepest_step": 525}) == [5, 11, 20]


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


def write_synthetic_run(run_dir, rows, summary, patterns, tokens):
    """A run directory as the loop leaves it: metrics, summary, config, attention record."""
    import json

    from tinyinduct.record import save_attention, save_picture_tokens

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.yaml").write_text("data:\n  d_vocab: 64\n  kind: bigram\n")
    for row, pattern in zip(rows, patterns):
        save_attention(run_dir, row["step"], pattern)
    save_picture_tokens(run_dir, tokens, (1, 4), (5, 4))


def test_redraw_from_disk_goes_to_a_new_folder(tmp_path):
    from tinyinduct.plots import redraw_run

    rows, summary, patterns, tokens = synthetic_run()
    write_synthetic_run(tmp_path, rows, summary, patterns, tokens)
    own = plot_run(tmp_path, rows, summary)  # the run's own pictures, no patterns
    before = {p: p.read_bytes() for p in own.values()}
    first = redraw_run(tmp_path)
    assert set(first) == {"loss_curves", "head_scores", "composition", "attention_patterns"}
    assert {p.parent for p in first.values()} == {tmp_path / "plots-redrawn"}
    second = redraw_run(tmp_path)
    assert {p.parent for p in second.values()} == {tmp_path / "plots-redrawn-2"}
    assert {p: p.read_bytes() for p in own.values()} == before  # plots/ untouched
    assert not (tmp_path / "plots" / "attention_patterns.png").exists()
