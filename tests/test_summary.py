"""The end-of-run account says what happened: which criterion failed, scores never rounded
across the threshold, the steepest fall only when the loss moved, every head above threshold."""

from pathlib import Path

from tinyinduct.summary import format_summary, heads_above, score_text, why_not_formed


def base_summary(**changes):
    s = {
        "status": "finished", "induction_formed": False, "best_induction_head": "L1H2",
        "best_induction_score": 0.85, "heads_above_threshold": ["L1H2"], "loss_ratio": 0.21,
        "loss_ratio_threshold": 0.2, "threshold": 0.7, "phase_change_step": 1000,
        "phase_change_tokens": 2_048_000, "phase_change_steepest_step": 975,
        "second_copy_loss_fell": True, "final_loss_second_copy": 1.3,
        "final_loss_first_copy": 6.2, "final_train_dist_loss_second_copy": 0.2,
        "final_train_dist_loss_first_copy": 6.2, "last_step": 3000, "train_seconds": 40.0,
        "tokens_per_second": 170_000.0, "eval_fraction": 0.08,
    }
    s.update(changes)
    return s


def test_the_failed_criterion_is_named_with_its_numbers():
    text = format_summary(base_summary(), Path("run"))
    assert text.startswith("No induction head formed (loss ratio 0.21 >= 0.2)")
    assert why_not_formed(base_summary(best_induction_score=0.5, loss_ratio=0.9)) == (
        "best layer-1 induction score 0.50 < 0.7 and loss ratio 0.90 >= 0.2")


def test_a_score_just_below_the_threshold_is_not_rounded_up_to_it():
    assert score_text(0.6985, 0.7) == "0.699"
    assert score_text(0.6999, 0.7) == "0.6999"
    assert score_text(0.85, 0.7) == "0.85"
    text = format_summary(base_summary(best_induction_score=0.6985, phase_change_step=None),
                          Path("run"))
    assert "0.70" not in text.replace("0.7 ", "") and "L1H2 scores 0.699" in text
    assert "no head crossed 0.7" in text


def test_steepest_fall_only_when_the_loss_moved():
    moved = format_summary(base_summary(), Path("run"))
    flat = format_summary(base_summary(second_copy_loss_fell=False), Path("run"))
    assert "fell fastest around step 975" in moved and "fell fastest" not in flat


def test_every_head_above_the_threshold_is_named():
    row = {"heads/induction/L0H1": 0.9, "heads/induction/L1H0": 0.75,
           "heads/induction/L1H2": 0.85, "heads/induction/L1H3": 0.71, "heads/induction/L1H1": 0.2}
    assert heads_above(row, 0.7) == ["L1H2", "L1H0", "L1H3"]
    text = format_summary(base_summary(induction_formed=True, loss_ratio=0.1,
                                       heads_above_threshold=["L1H2", "L1H0", "L1H3"]),
                          Path("run"))
    assert text.startswith("An induction head formed: L1H2 scores 0.85 on the probe (L1H0, L1H3 "
                           "above 0.7 too)")
