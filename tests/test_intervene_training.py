"""Interventions during training: a clamped head holds its pattern at every evaluation, for one
seed or several stacked, and the stacked hooked path computes what a plain model with the same
hooks computes; freezing keeps parameters bit-unchanged; the summary names what was active."""

import pytest
import torch

from tinyinduct import AttnOnlyTransformer, ModelConfig, load_run, train
from tinyinduct.config import (
    DataConfig,
    InterveneConfig,
    LoggerConfig,
    RunConfig,
    TrainConfig,
)
from tinyinduct.interventions import intervened, intervention_hooks
from tinyinduct.stack import StackedTransformer, per_model_loss
from tinyinduct.tracking import read_metrics

SMALL = dict(n_layers=2, n_heads=3, d_model=24, d_head=5, n_ctx=16, d_vocab=40)


@pytest.mark.parametrize("spec", [
    InterveneConfig(clamp_pattern={"L0H1": "previous_token", "L1H0": "induction"}),
    InterveneConfig(ablate=["L0H2"], ablation="mean"),
    InterveneConfig(clamp_pattern={"L1H2": "uniform"}, ablate=["L0H0"]),
], ids=["clamps", "mean-ablation", "clamp-and-zero-ablation"])
def test_stacked_hooked_path_equals_each_plain_model_with_the_hooks(spec):
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(AttnOnlyTransformer(ModelConfig(**SMALL)))
    stacked = StackedTransformer(models)
    stacked.set_hooks(intervention_hooks(spec, models[0].cfg, lambda: stacked.tokens))
    tokens = torch.randint(1, 40, (2, 4, 16))
    tokens[:, :, 8:] = tokens[:, :, :8]  # copies, so the induction clamp has targets
    losses = per_model_loss(stacked, tokens)
    for k, model in enumerate(models):
        with intervened(model, spec):
            logits = model(tokens[k])
        alone = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                  tokens[k, :, 1:].flatten())
        torch.testing.assert_close(losses[k], alone, rtol=1e-5, atol=1e-6)


def tiny(**intervene) -> RunConfig:
    return RunConfig(
        device="cpu", seed=2,
        model=ModelConfig(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64),
        data=DataConfig(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=12, batch_size=8,
                        eval_batch_size=16),
        train=TrainConfig(steps=40, eval_every=20, checkpoint_every=40, n_seeds=2),
        logger=LoggerConfig(mode="disabled", progress=False),
        intervene=InterveneConfig(**intervene))


def test_a_clamped_head_holds_its_pattern_at_every_evaluation_and_frozen_weights_stay(tmp_path):
    overall = train(tiny(clamp_pattern={"L0H1": "previous_token"}, freeze=["blocks.1.attn.W_V"]),
                    tmp_path / "run")
    for seed in (2, 3):
        run_dir = tmp_path / "run" / f"seed{seed}"
        rows = read_metrics(run_dir / "metrics.jsonl")
        assert [r["step"] for r in rows] == [0, 20, 40]
        assert all(r["heads/prev_token/L0H1"] == pytest.approx(1.0) for r in rows)
        run = load_run(run_dir)
        assert torch.equal(run.model_at(0).blocks[1].attn.W_V, run.model.blocks[1].attn.W_V)
        assert not torch.equal(run.model_at(0).blocks[1].attn.W_Q, run.model.blocks[1].attn.W_Q)
        summary = overall["seed_summaries"][str(seed)]
        assert summary["interventions"] == {"clamp_pattern": {"L0H1": "previous_token"},
                                            "freeze": ["blocks.1.attn.W_V"],
                                            "freeze_from_step": 0}
