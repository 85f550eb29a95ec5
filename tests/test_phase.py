"""Phase-change detection on synthetic metrics rows, and the ICL score."""

import math

import pytest
import torch

from tinyinduct.metrics import icl_positions, icl_score
from tinyinduct.phase import (
    phase_change_row,
    phase_change_summary,
    steepest_fall,
    threshold_crossing,
)


def rows_with_a_phase_change(at=1000, every=50, steps=2000, tokens_per_step=10):
    """A plateau, a sigmoid jump of the induction score at `at`, the second-copy loss falling
    with it (fastest between at - 25 and at + 25)."""
    rows = []
    for step in range(0, steps + 1, every):
        s = 1 / (1 + math.exp(-(step - at) / 40))
        rows.append({"step": step, "tokens": step * tokens_per_step,
                     "heads/induction/L0H0": 0.9,  # layer 0 never counts
                     "heads/induction/L1H0": 0.05 + 0.85 * s, "heads/induction/L1H1": 0.1,
                     "eval/loss_second_copy": 6.2 - 5.5 * s + 0.01 * (step % 100 == 0)})
    return rows


def test_threshold_crossing_and_steepest_fall():
    rows = rows_with_a_phase_change()
    crossing = threshold_crossing(rows, 0.7)
    # 0.05 + 0.85 s >= 0.7 at s >= 0.765, i.e. step >= 1000 + 40 ln(3.25) = 1047
    assert crossing["step"] == 1050
    fall = steepest_fall(rows)
    assert fall["step"] == 1025  # 1000-1050: the +0.01 blip at 1000 makes it the steeper side
    assert fall["tokens"] == fall["step"] * 10
    assert fall["slope"] < -0.02
    assert threshold_crossing(rows, 0.95) is None


def test_steepest_fall_needs_a_fall_and_skips_missing_values():
    flat = [{"step": s, "tokens": s, "eval/loss_second_copy": 6.0 + 0.001 * s}
            for s in range(0, 500, 50)]
    assert steepest_fall(flat) is None
    flat[3]["eval/loss_second_copy"] = float("nan")
    flat[5]["eval/loss_second_copy"] = 1.0
    assert steepest_fall(flat)["step"] == 225  # between 200 and 250, nan at 150 skipped


def test_summary_and_per_row_keys():
    rows = rows_with_a_phase_change()
    summary = phase_change_summary(rows, 0.7)
    assert summary["phase_change_step"] == 1050
    assert summary["phase_change_tokens"] == 10500
    assert summary["phase_change_steepest_step"] == 1025
    assert summary["phase_change_steepest_tokens"] == summary["phase_change_steepest_step"] * 10
    before = phase_change_row(rows[:10], 0.7)  # up to step 450: nothing yet
    assert "phase_change/threshold_step" not in before
    assert before["phase_change/best_induction"] == pytest.approx(rows[9]["heads/induction/L1H1"])
    after = phase_change_row(rows, 0.7)
    assert after["phase_change/threshold_step"] == 1050
    assert after["phase_change/best_induction"] > 0.85
    assert after["phase_change/loss_second_copy_slope"] == pytest.approx(
        (rows[-1]["eval/loss_second_copy"] - rows[-2]["eval/loss_second_copy"]) / 50)
    empty = phase_change_summary(rows[:5], 0.7)
    assert empty["phase_change_step"] is None and empty["phase_change_tokens"] is None


def test_icl_score():
    assert icl_positions(512) == (50, 500)
    assert icl_positions(64) == (6, 62)
    loss = torch.full((4, 63), 6.0)  # per_position_loss: column t - 1 is the loss of token t
    loss[:, 61] = 1.0  # token 62 predicted well
    assert icl_score(loss, *icl_positions(64)) == pytest.approx(-5.0)
    assert icl_score(torch.full((4, 63), 6.0), 6, 62) == 0.0
