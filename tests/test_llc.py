"""The per-head local learning coefficient (devinterp, extra `tinyinduct[llc]`), calibrated on
losses with known answers: exactly quadratic in d weights (LLC d/2, or what localization and the
SGLD step make of it), restricted to k of them (k/2), and heads of a real model whose weights
cannot change the loss (0)."""

import numpy as np
import pytest
import torch

from tinyinduct import AttnOnlyTransformer, ModelConfig, load_run
from tinyinduct.analysis.llc import (
    DEFAULT_SETTINGS,
    LLCSettings,
    devinterp_model,
    estimate_llc,
    head_masks,
    llc_per_head,
    plot_llc,
    sampling_dataset,
    spread_steps,
)
from tinyinduct.config import DataConfig, LoggerConfig, RunConfig, TrainConfig, to_dict
from tinyinduct.runs import CHECKPOINT_DIR, LAST_CHECKPOINT
from tinyinduct.snapshots import save_snapshot

D, CURVATURE = 20, 10.0


class Quadratic(torch.nn.Module):
    """Loss `0.5 * sum(a * w^2)` at w* = 0, the same for every token of every sequence."""

    def __init__(self, d: int = D, a: float = CURVATURE):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(d))
        self.a = a


def quadratic_loss(model, input_ids):  # -> [batch, pos - 1], as devinterp wants
    loss = 0.5 * (model.a * model.w ** 2).sum()
    return loss.expand(input_ids.shape[0], input_ids.shape[1] - 1)


def expected(d, a, s: LLCSettings):
    """The estimator's target: d/2 shrunk by localization, inflated by the SGLD step."""
    stiffness = s.n_beta * a + s.localization
    return d / 2 * (s.n_beta * a / stiffness) / (1 - s.lr * stiffness / 4)


@pytest.fixture(scope="module")
def dataset():
    return sampling_dataset(torch.zeros(64, 4, dtype=torch.long))


CALIBRATED = LLCSettings(lr=1e-3, n_beta=30, localization=0, num_chains=2, num_draws=150,
                         batch_size=8)


def test_a_quadratic_loss_in_d_weights_has_llc_d_over_2(dataset):
    mean, std = estimate_llc(Quadratic(), dataset, CALIBRATED, loss_fn=quadratic_loss)
    assert mean == pytest.approx(D / 2, rel=0.1) and std < 1


def test_at_the_defaults_localization_and_the_step_shift_it_as_predicted(dataset):
    localized = LLCSettings(**{**DEFAULT_SETTINGS.__dict__, "batch_size": 8})
    mean, _ = estimate_llc(Quadratic(), dataset, localized, loss_fn=quadratic_loss)
    assert expected(D, CURVATURE, localized) == pytest.approx(8.3, abs=0.1)
    assert mean == pytest.approx(expected(D, CURVATURE, localized), rel=0.1)


def test_restricted_to_k_of_the_weights_the_llc_is_k_over_2(dataset):
    mask = torch.zeros(D, dtype=torch.bool)
    mask[[1, 4, 5, 9, 12, 17]] = True
    longer = LLCSettings(**{**CALIBRATED.__dict__, "num_draws": 400})  # 6 weights: noisier
    mean, _ = estimate_llc(Quadratic(), dataset, longer, {"w": mask}, loss_fn=quadratic_loss)
    assert mean == pytest.approx(expected(6, CURVATURE, longer), rel=0.12)
    assert expected(6, CURVATURE, longer) == pytest.approx(6 / 2, rel=0.1)


TINY = ModelConfig(d_model=16, n_heads=2, d_head=4, n_ctx=16, d_vocab=32, init_range=0.5)


def test_head_masks_select_exactly_that_heads_weights():
    model = devinterp_model(AttnOnlyTransformer(TINY))
    masks = head_masks(model, "L1H0")
    assert set(masks) == {f"blocks.1.attn.W_{x}" for x in "QKVO"}
    for name, mask in masks.items():
        assert mask.shape == model.get_parameter(name).shape
        assert mask[0].all() and not mask[1].any()
    # the TransformerLens signatures devinterp calls, same logits as the model
    tokens = torch.randint(0, 32, (2, 16))
    assert torch.equal(model.to("cpu", print_details=False)(tokens, return_type="logits"),
                       AttnOnlyTransformer.forward(model, tokens))


def tiny_run(run_dir, dead: bool):
    """A run folder with two snapshots of a random tiny model (a large init, so every head moves
    the loss); `dead`: W_U = 0, so no head's weights can change the loss (every logit is b_U)."""
    cfg = RunConfig(device="cpu", model=TINY,
                    data=DataConfig(d_vocab=32, seq_len=16, min_copy_len=3, max_copy_len=6),
                    train=TrainConfig(steps=10), logger=LoggerConfig(mode="disabled"))
    model = AttnOnlyTransformer(TINY)
    model.init_weights(torch.Generator().manual_seed(0))
    if dead:
        with torch.no_grad():
            model.unembed.W_U.zero_()
    for step in (0, 10):
        save_snapshot(run_dir, step, model)
    (run_dir / CHECKPOINT_DIR).mkdir(parents=True)
    torch.save({"config": to_dict(cfg), "step": 10, "model": model.state_dict()},
               run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT)
    return load_run(run_dir)


QUICK = LLCSettings(lr=1e-3, n_beta=30, localization=100, num_chains=1, num_draws=8,
                    batch_size=8, n_sequences=32)


def test_heads_that_cannot_change_the_loss_have_llc_0_and_live_ones_do_not(tmp_path):
    dead = llc_per_head(tiny_run(tmp_path / "dead", dead=True), [10], QUICK, ["L0H1", "L1H0"])
    assert dead.steps == [10]
    assert all(abs(dead.mean[h][0]) < 1e-3 for h in ("L0H1", "L1H0"))
    # the same weights with W_U intact: the head moves the loss (a random model is no minimum,
    # so the sampler walks downhill and the estimate is negative: snapshots of training are
    # what the estimator is for)
    live = llc_per_head(tiny_run(tmp_path / "live", dead=False), [0, 10], QUICK, ["L1H0"])
    assert live.steps == [0, 10] and min(abs(x) for x in live.mean["L1H0"]) > 1.0
    assert live.seconds_per_snapshot > 0
    rows = [{"step": s, "heads/induction/L1H0": 0.1, "heads/prev_token/L1H0": 0.2}
            for s in (0, 10)]
    path = plot_llc(live, rows, {"phase_change_step": 5}, tmp_path / "llc.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_spread_steps_keeps_the_ends_and_follows_the_record():
    steps = [0, 1, 2, 5, 10, 20, 50, 100, 150, 200, 250, 300, 1000, 3000]
    picked = spread_steps(steps, 5)
    assert picked[0] == 0 and picked[-1] == 3000 and len(picked) == 5
    assert set(picked) <= set(steps)
    assert spread_steps([3, 1], 5) == [1, 3]
    assert np.all(np.diff(picked) > 0)
