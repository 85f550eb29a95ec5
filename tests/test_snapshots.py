"""The development record: snapshots on the schedule the user sets, the model at any saved step
bit for bit, the run's own evaluation replayed equal to its log, and clear errors."""

import pytest
import torch

from tinyinduct import load_run, train
from tinyinduct.config import (
    ConfigError,
    DataConfig,
    LoggerConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from tinyinduct.snapshots import SnapshotSchedule, log_spaced, snapshot_path


def tiny(snapshots: str, steps: int = 60) -> RunConfig:
    return RunConfig(
        device="cpu", seed=1,
        model=ModelConfig(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64),
        data=DataConfig(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=12, batch_size=8,
                        eval_batch_size=16),
        train=TrainConfig(steps=steps, eval_every=20, checkpoint_every=40, snapshots=snapshots),
        logger=LoggerConfig(mode="disabled", progress=False))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("record") / "run"
    train(tiny("every_eval+every:7"), run_dir)
    return load_run(run_dir)


def test_the_schedule_is_what_the_user_set(recorded):
    assert recorded.snapshot_steps == [0, 7, 14, 20, 21, 28, 35, 40, 42, 49, 56, 60]


def test_model_at_is_the_model_as_it_was(recorded):
    final = recorded.model_at(60)
    for name, tensor in recorded.model.state_dict().items():
        assert torch.equal(final.state_dict()[name], tensor), name
    assert not torch.equal(recorded.model_at(0).embed.W_E, final.embed.W_E)


def test_replay_of_the_own_evaluation_equals_the_logged_rows(recorded):
    logged = {r["step"]: r for r in recorded.metrics}
    replayed = recorded.replay()
    assert [r["step"] for r in replayed] == recorded.snapshot_steps
    for row in replayed:
        if row["step"] in logged:
            for key, value in row.items():
                assert logged[row["step"]][key] == (None if value != value else value), key


def test_replay_takes_any_metric_and_skips_a_corrupt_snapshot(recorded, capsys):
    path = snapshot_path(recorded.run_dir, 14)
    kept = path.read_bytes()
    path.write_bytes(b"not a checkpoint")
    try:
        rows = recorded.replay(lambda model, step: {"norm": model.embed.W_E.norm().item()})
    finally:
        path.write_bytes(kept)
    assert 14 not in [r["step"] for r in rows] and len(rows) == 11
    assert f"skipped step 14: unreadable snapshot {path}" in capsys.readouterr().err


def test_a_missing_step_names_the_nearest_saved_ones(recorded):
    with pytest.raises(ValueError, match="no snapshot at step 33 .* nearest saved steps: 28, 35"):
        recorded.model_at(33)


def test_unknown_schedule_is_refused_with_the_allowed_forms():
    with pytest.raises(ConfigError, match="train.snapshots.*allowed: auto, every_eval"):
        tiny("sometimes")
    with pytest.raises(ConfigError, match="train.snapshots"):
        tiny("every:0")


def test_auto_is_dense_through_formation_and_sparse_elsewhere():
    schedule = SnapshotSchedule("auto", 3000, threshold=0.7)
    assert schedule.at_step(0) and schedule.at_step(3000)
    assert len(log_spaced(16, 3000)) <= 16 and 1 in log_spaced(16, 3000)
    # flat, then rising from evaluation 3, crossing 0.7 at 6, wobbling afterwards
    scores = [0.02, 0.02, 0.021, 0.04, 0.2, 0.5, 0.8, 0.85, 0.83, 0.86, 0.84, 0.87, 0.85]
    rows = [{"phase_change/best_induction": s} for s in scores]
    dense = [i for i in range(len(rows)) if schedule.at_evaluation(rows[:i + 1])]
    assert dense == [3, 4, 5, 6, 7, 8, 9, 10]  # from the rise to 4 evaluations past the crossing
    never = [{"phase_change/best_induction": 0.02 + 0.02 * (i > 5)} for i in range(100)]
    dense = [i for i in range(100) if schedule.at_evaluation(never[:i + 1])]
    assert dense == list(range(6, 47))  # a head that never settles: 40 evaluations at most
