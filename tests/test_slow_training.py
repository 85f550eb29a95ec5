"""The default configuration forms an induction head (slow: a full default run)."""

import json

import pytest
from conftest import run_train


@pytest.mark.slow
@pytest.mark.parametrize("positional", ["standard", "shortformer"])
def test_default_run_forms_an_induction_head(tmp_path, positional):
    run_dir = tmp_path / positional
    proc = run_train(run_dir, f"model.positional={positional}", timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["induction_formed"], summary
    assert summary["best_induction_head"].startswith("L1")
    assert summary["best_induction_score"] >= 0.7
    assert summary["loss_ratio"] < 0.2
    assert summary["phase_change_step"] is not None
    assert "An induction head formed" in proc.stdout
    # how and when: the head's keys need layer 0 (shortformer cannot Q-compose at all)
    assert summary["mechanism"] in ("K", "mixed"), summary["mechanism_scores"]
    assert summary["mechanism_scores"]["k_removed"] < 0.5 * summary["mechanism_scores"]["full"]
    assert summary["composes_with"].startswith("L0")
    assert summary["phase_change_steepest_step"] is not None
    assert (run_dir / "plots" / "loss_curves.png").exists()
