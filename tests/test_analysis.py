"""The analyses of the development record, on cases with known answers: a synthetic run whose
snapshots move from random weights to the hand-built induction circuit, a real tiny run, paths
built by hand for the turning-point rule, and quadratic losses for the LLC estimator."""

import json

import numpy as np
import pytest
import torch

from tinyinduct import AttnOnlyTransformer, ModelConfig, load_run, train
from tinyinduct.analysis import (
    ANALYSIS_DIR,
    analyze_run,
    essential_dynamics,
    nearest_snapshot,
    token_losses,
    turning_points,
)
from tinyinduct.analysis.essential_dynamics import pca
from tinyinduct.analysis.token_loss import analysis_batch
from tinyinduct.circuits import circuit_config, k_composition_weights
from tinyinduct.config import DataConfig, LoggerConfig, RunConfig, TrainConfig, to_dict
from tinyinduct.evaluate import eval_batches
from tinyinduct.metrics import icl_positions, icl_score, per_position_loss
from tinyinduct.runs import CHECKPOINT_DIR, LAST_CHECKPOINT
from tinyinduct.snapshots import save_snapshot

FORMATION = 400  # the synthetic run's weights reach the circuit around this step
STEPS = [0, 50, 100, 200, 300, 350, 375, 400, 425, 450, 500, 600, 800, 1000]


def synthetic_run(run_dir, wandb_id=None):
    """A run folder whose snapshots slide from random weights to the hand-built K-composition
    circuit along a sigmoid centred on step FORMATION (nothing trained: the answer is known)."""
    model_cfg = circuit_config(d_vocab=64, n_ctx=32)
    cfg = RunConfig(device="cpu", model=model_cfg,
                    data=DataConfig(d_vocab=64, seq_len=32, min_copy_len=8, max_copy_len=15),
                    train=TrainConfig(steps=STEPS[-1]), logger=LoggerConfig(mode="disabled"))
    start = AttnOnlyTransformer(model_cfg)
    start.init_weights(torch.Generator().manual_seed(0))
    circuit = k_composition_weights(model_cfg)
    model = AttnOnlyTransformer(model_cfg)
    for step in STEPS:
        a = 1 / (1 + np.exp(-(step - FORMATION) / 25))
        model.load_state_dict({k: (1 - a) * v + a * circuit[k]
                               for k, v in start.state_dict().items()})
        save_snapshot(run_dir, step, model)
    torch.save({"config": to_dict(cfg), "step": STEPS[-1], "model": model.state_dict(),
                "wandb_id": wandb_id}, run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
               if (run_dir / CHECKPOINT_DIR).mkdir(parents=True) is None else None)
    (run_dir / "summary.json").write_text(json.dumps({"phase_change_step": FORMATION}))
    return load_run(run_dir)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_run(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def synthetic_losses(synthetic):
    return token_losses(synthetic)


def test_loss_by_token_index_drops_on_the_second_copy_after_formation(synthetic_losses):
    losses = synthetic_losses
    assert losses.steps == STEPS
    assert losses.loss.shape == (len(STEPS), 256, 31)
    assert losses.mean_by_token().shape == (len(STEPS), 31)
    first, second = losses.copy_loss("first_copy"), losses.copy_loss("second_copy")
    before, after = STEPS.index(0), STEPS.index(1000)
    # random weights: a copy is no easier than the text it copies (~ln 64 either way)
    assert abs(second[before] - first[before]) < 0.1
    # the circuit predicts the second copy; the first stays unpredictable
    assert second[after] < 0.5 * first[after]
    assert second[after] < second[STEPS.index(300)] - 1.0


def test_icl_score_and_its_standard_error(synthetic, synthetic_losses):
    score, se = synthetic_losses.icl()
    early, late = icl_positions(32)
    # the same quantity as the logged icl/score, on the analysis batch
    batch = analysis_batch(synthetic)
    model = synthetic.model_at(1000)
    with torch.no_grad():
        loss = per_position_loss(model(batch.tokens), batch.tokens)
    assert score[-1] == pytest.approx(icl_score(loss, early, late), abs=1e-5)
    diff = (loss[:, late - 1] - loss[:, early - 1]).numpy()
    assert se[-1] == pytest.approx(diff.std(ddof=1) / np.sqrt(256), rel=1e-4)
    assert abs(score[0]) < 3 * se[0] + 0.05  # random weights use no context


def test_pca_of_points_on_a_line_has_one_component():
    direction = np.random.default_rng(0).normal(size=50)
    points = np.outer(np.arange(10.0) ** 2, direction)
    projections, explained = pca(points, k=3)
    assert explained[0] == pytest.approx(1.0)
    assert np.allclose(np.abs(np.diff(projections[:, 0])), np.diff(np.arange(10.0) ** 2)
                       * np.linalg.norm(direction))


def test_an_l_shaped_path_turns_at_its_corner():
    leg = np.linspace(0, 1, 11)
    path = np.concatenate([np.stack([leg, 0 * leg], 1), np.stack([1 + 0 * leg, leg], 1)[1:]])
    turns, angles = turning_points(path)
    assert turns == [10] and angles[0] == pytest.approx(90, abs=1)
    straight = np.stack([leg, 2 * leg], 1)
    assert turning_points(straight) == ([], [])
    # the same L in 30 dimensions with a tiny jitter on the second leg: still one turn there
    rng = np.random.default_rng(1)
    embed = np.linalg.qr(rng.normal(size=(30, 2)))[0].T
    noisy = path @ embed + np.concatenate([np.zeros((11, 30)), 1e-3 * rng.normal(size=(10, 30))])
    ed = essential_dynamics(list(range(21)), noisy)
    assert ed.turning_points == [10]


def test_essential_dynamics_of_the_synthetic_run(synthetic_losses):
    ed = essential_dynamics(synthetic_losses.steps, synthetic_losses.loss)
    assert ed.projections.shape == (len(STEPS), 3)
    assert ed.explained[0] > 0.5 and np.all(np.diff(ed.explained) <= 0)
    assert STEPS[nearest_snapshot(STEPS, 410)] == 400
    # the model barely moves far from FORMATION: most of the path is within 100 steps of it
    path = np.linalg.norm(np.diff(ed.projections, axis=0), axis=1)
    near = [i for i in range(len(path)) if abs(STEPS[i] - FORMATION) <= 100]
    assert path[near].sum() > 0.8 * path.sum()


def test_analyze_run_writes_its_pictures_only_into_plots_analysis(tmp_path):
    import wandb

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with wandb.init(project="t", mode="offline", dir=str(run_dir),
                    settings=wandb.Settings(silent=True)) as first:
        wandb_id = first.id
    synthetic_run(run_dir, wandb_id=wandb_id)
    before = {p for p in run_dir.rglob("*") if ANALYSIS_DIR.parts[0] not in p.parts
              and "wandb" not in p.parts}
    paths = analyze_run(run_dir)
    assert set(paths) == {"loss_by_token", "essential_dynamics"}
    for path in paths.values():
        assert path.parent == run_dir / ANALYSIS_DIR and path.read_bytes()[:4] == b"\x89PNG"
    results = json.loads((run_dir / ANALYSIS_DIR / "analysis.json").read_text())
    assert results["phase_change_step"] == FORMATION
    assert results["essential_dynamics"]["phase_change_snapshot"] == 400
    assert len(results["icl"]["score"]) == len(STEPS)
    after = {p for p in run_dir.rglob("*") if ANALYSIS_DIR.parts[0] not in p.parts
             and "wandb" not in p.parts}
    assert after == before
    # the pictures went to the same W&B run, resumed offline
    runs = sorted((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert len(runs) == 2
    media = sorted(p.name for p in (runs[-1] / "files" / "media" / "images").rglob("*.png"))
    assert any(m.startswith("loss_by_token") for m in media)
    assert any(m.startswith("essential_dynamics") for m in media)


def test_analysis_command_line_and_a_run_without_wandb(tmp_path, capsys):
    from tinyinduct.analysis.__main__ import main

    synthetic_run(tmp_path / "run")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "pics")]) == 0
    out = capsys.readouterr().out
    assert "phase change at step 400" in out and "essential_dynamics:" in out
    assert (tmp_path / "pics" / "loss_by_token.png").exists()
    assert not (tmp_path / "run" / "wandb").exists()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_the_logged_icl_score_is_this_score_on_the_64_sequence_eval_batch(tmp_path):
    """The run logs `icl/score` on its fixed eval batch: the analysis measures the same
    quantity, and on 4x the sequences its standard error is half (so a 64-sequence score can be
    off by a few tenths of a nat, the bias the analysis batch avoids)."""
    cfg = RunConfig(
        device="cpu", seed=1,
        model=ModelConfig(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64),
        data=DataConfig(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=12, batch_size=8,
                        eval_batch_size=64),
        train=TrainConfig(steps=20, eval_every=10, checkpoint_every=20, snapshots="every_eval"),
        logger=LoggerConfig(mode="disabled", progress=False))
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    _, eval_batch = eval_batches(run.config, torch.device("cpu"))
    logged = token_losses(run, batch=eval_batch)
    score, se64 = logged.icl()
    assert score.tolist() == pytest.approx([r["icl/score"] for r in run.metrics], abs=1e-6)
    _, se256 = token_losses(run, steps=[20]).icl()
    assert se256[0] == pytest.approx(se64[-1] / 2, rel=0.3)


@pytest.mark.slow  # end-to-end: SGLD chains on every head at two snapshots
def test_analysis_command_line_with_the_llc_at_a_few_snapshots(tmp_path, capsys):
    import json

    from tinyinduct.analysis.__main__ import main

    synthetic_run(tmp_path / "run")
    assert main([str(tmp_path / "run"), "--llc", "--llc-snapshots", "2", "--out",
                 str(tmp_path / "pics")]) == 0
    assert "per-head LLC:" in capsys.readouterr().out
    results = json.loads((tmp_path / "pics" / "analysis.json").read_text())
    assert len(results["llc"]["steps"]) == 2  # the first and the last saved step
    assert (tmp_path / "pics" / "llc_per_head.png").exists()
