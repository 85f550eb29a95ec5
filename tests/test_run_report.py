"""A real (tiny) training run reports mechanism, phase change and pictures, locally and in W&B."""

import json
import math

import pytest
from conftest import TINY_OVERRIDES, run_train
from wandb_records import find_run_file, read_run

PICTURES = ("loss_curves", "head_scores", "composition", "attention_patterns")


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "report"
    proc = run_train(run_dir, *TINY_OVERRIDES, "seed=1")
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.mark.slow  # end-to-end: a real run
def test_rows_hold_the_new_metrics(report_run):
    rows = [json.loads(line) for line in (report_run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key in ("comp/K/L0H0->L1H1", "comp/Q/L0H1->L1H0", "comp/V/L0H0->L1H0",
                    "comp/baseline", "heads/copying/L1H0", "icl/score",
                    "mechanism/L1H0/full", "mechanism/L1H0/k_removed",
                    "mechanism/L1H1/q_removed", "mechanism/L1H1/qk_removed",
                    "phase_change/best_induction"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), key
        assert row["mechanism/verdict"] in ("K", "Q", "mixed", "none")
        assert row["mechanism/head"] in ("L1H0", "L1H1")
    assert "phase_change/loss_second_copy_slope" not in rows[0]
    assert "phase_change/loss_second_copy_slope" in rows[1]


@pytest.mark.slow  # end-to-end: a real run
def test_summary_names_mechanism_partner_and_phase_change(report_run):
    summary = json.loads((report_run / "summary.json").read_text())
    # 60 steps of a tiny model form no head: nothing composes (a formed head: test_circuits.py
    # and the slow default run)
    assert summary["mechanism"] == "none" and not summary["induction_formed"]
    assert summary["mechanism_head"] in ("L1H0", "L1H1")
    assert set(summary["mechanism_scores"]) == {"full", "k_removed", "q_removed", "qk_removed"}
    assert summary["mechanism_scores"]["full"] < 0.3
    assert summary["composes_with"] is None and summary["previous_token_head"] is None
    for key in ("phase_change_step", "phase_change_steepest_step",
                "phase_change_steepest_tokens", "icl_score", "plot_seconds"):
        assert key in summary, key
    if summary["phase_change_steepest_step"] is not None:
        assert summary["phase_change_steepest_tokens"] == summary["phase_change_steepest_step"] \
            * 8 * 32


@pytest.mark.slow  # end-to-end: a real run
def test_pictures_in_run_dir_and_in_wandb(report_run):
    for name in PICTURES:
        assert (report_run / "plots" / f"{name}.png").stat().st_size > 10_000, name
    run_file = find_run_file(report_run)
    media = run_file.parent / "files" / "media"
    images = sorted(p.name for p in (media / "images").rglob("*.png"))
    assert len(images) == len(PICTURES)
    for name in PICTURES:
        assert any(n.startswith(name) for n in images), (name, images)
    tables = [json.loads(p.read_text()) for p in (media / "table").rglob("*.table.json")]
    assert len(tables) == 2
    heads = next(t for t in tables if t["columns"][0] == "head")
    assert [r[0] for r in heads["data"]] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    comp = next(t for t in tables if t["columns"][0] == "kind")
    assert len(comp["data"]) == 3 * 2 * 2
    # the .wandb log records them in the history row of the last step
    last = read_run(run_file)["history"][-1]
    assert last["_step"] == 60
    for name in PICTURES:  # nested values come back as "key/field"
        assert last[f"plots/{name}/_type"] == "image-file"
        assert last[f"plots/{name}/path"].startswith(f"media/images/plots/{name}_60_")
    assert last["tables/composition/_type"] == "table-file"
    assert last["tables/composition/nrows"] == 3 * 2 * 2
    assert last["tables/head_scores/nrows"] == 4
