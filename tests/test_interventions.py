"""Interventions: a clamped head holds its pattern exactly, an ablated head writes nothing, a
frozen parameter survives an AdamW step bit for bit, a graft copies exactly what it names."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tinyinduct import AttnOnlyTransformer, ModelConfig
from tinyinduct.config import (
    ConfigError,
    DataConfig,
    InterveneConfig,
    RunConfig,
    parameter_names,
    run_config_from_dict,
    to_dict,
)
from tinyinduct.data import RepeatedSegmentData, induction_sources, make_probe
from tinyinduct.evaluate import evaluate
from tinyinduct.interventions import (
    clamp_target,
    describe,
    drop_frozen_grads,
    graft,
    intervened,
    intervention_hooks,
)
from tinyinduct.runs import CHECKPOINT_DIR, LAST_CHECKPOINT, save_checkpoint

SMALL = dict(n_layers=2, n_heads=3, d_model=24, d_head=6, n_ctx=32, d_vocab=64)
DATA = DataConfig(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=15, eval_batch_size=16)
PROBE = make_probe(DATA, seed=1)
TRAIN = RepeatedSegmentData(DATA, seed=2).sample(8)


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return AttnOnlyTransformer(ModelConfig(**{**SMALL, **overrides}))


def test_clamp_targets_by_hand():
    tokens = torch.tensor([[0, 5, 6, 7, 5, 6, 9]])
    rows = lambda kind: clamp_target(kind, tokens)[0].argmax(-1).tolist()  # noqa: E731
    assert rows("previous_token") == [0, 0, 1, 2, 3, 4, 5]
    assert rows("induction") == [0, 0, 0, 0, 2, 3, 0]  # 5 -> after the earlier 5, i.e. 6
    assert rows("bos") == [0] * 7
    uniform = clamp_target("uniform", tokens)[0]
    assert uniform[3, :4].tolist() == [0.25] * 4 and uniform[3, 4:].sum() == 0


@pytest.mark.parametrize("positional", ["standard", "shortformer"])
@pytest.mark.parametrize("kind", ["previous_token", "induction", "uniform", "bos"])
def test_a_clamped_head_holds_its_pattern_exactly(kind, positional):
    model = make_model(positional=positional)
    _, plain = model.run_with_cache(PROBE.tokens)
    spec = InterveneConfig(clamp_pattern={"L1H2": kind, "L0H0": kind})
    with intervened(model, spec):
        _, cache = model.run_with_cache(PROBE.tokens)
        train_logits = model(TRAIN.tokens)  # another batch, other tokens: its own targets
        _, train_cache = model.run_with_cache(TRAIN.tokens)
    target = clamp_target(kind, PROBE.tokens)
    assert torch.equal(cache["pattern", 1][:, 2], target)
    assert torch.equal(cache["pattern", 0][:, 0], target)
    assert torch.equal(train_cache["pattern", 1][:, 2], clamp_target(kind, TRAIN.tokens))
    # layer 0's other heads are untouched; the clamp is gone afterwards
    torch.testing.assert_close(cache["pattern", 0][:, 1:], plain["pattern", 0][:, 1:])
    assert not model.has_hooks() and not model.embed._forward_pre_hooks
    assert not torch.allclose(train_logits, model(TRAIN.tokens))


def test_evaluation_sees_the_clamp():
    model = make_model()
    spec = InterveneConfig(clamp_pattern={"L0H1": "previous_token", "L1H0": "induction"})
    with intervened(model, spec):
        row = evaluate(model, PROBE, TRAIN)
    assert row["heads/prev_token/L0H1"] == pytest.approx(1.0)
    assert row["heads/induction/L1H0"] == pytest.approx(1.0)
    assert row["mechanism/L1H0/k_removed"] == pytest.approx(1.0)  # a clamp needs no keys
    assert evaluate(model, PROBE, TRAIN)["heads/induction/L1H0"] < 0.5


def test_zero_ablation_removes_the_heads_output():
    model = make_model(attn_bias=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with intervened(model, InterveneConfig(ablate=["L0H1"])):
        logits, cache = model.run_with_cache(PROBE.tokens)
    z = cache["z", 0]
    assert torch.equal(z[:, :, 1], torch.zeros_like(z[:, :, 1]))
    attn = model.blocks[0].attn
    others = torch.einsum("bphe,hed->bpd", z, attn.W_O) + attn.b_O
    torch.testing.assert_close(cache["attn_out", 0], others)
    # the same as a model whose head never writes: W_O of that head zero
    silent = copy.deepcopy(model)
    with torch.no_grad():
        silent.blocks[0].attn.W_O[1] = 0
    torch.testing.assert_close(logits, silent(PROBE.tokens), atol=1e-5, rtol=1e-5)


def test_mean_ablation_writes_the_heads_mean_over_batch_and_positions():
    model = make_model()
    _, plain = model.run_with_cache(PROBE.tokens)
    with intervened(model, InterveneConfig(ablate=["L1H0"], ablation="mean")):
        _, cache = model.run_with_cache(PROBE.tokens)
    mean = plain["z", 1][:, :, 0].mean((0, 1))
    torch.testing.assert_close(cache["z", 1][:, :, 0], mean.expand_as(cache["z", 1][:, :, 0]))
    torch.testing.assert_close(cache["z", 1][:, :, 1:], plain["z", 1][:, :, 1:])


def adamw_step(model, tokens):
    logits = model(tokens)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def test_a_frozen_parameter_is_bit_unchanged_by_adamw_with_momentum_and_decay():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    spec = InterveneConfig(freeze=["blocks.0", "unembed.W_U"], freeze_from_step=1)
    for step in range(3):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad(set_to_none=True)
        with intervened(model, spec):  # no clamps: the loop's shape, hooks or not
            adamw_step(model, TRAIN.tokens).backward()
        frozen = drop_frozen_grads(model, spec, step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        assert frozen == ([] if step == 0 else
                          ["blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V",
                           "blocks.0.attn.W_O", "unembed.W_U"])
        for name, p in model.named_parameters():
            assert torch.equal(p, before[name]) == (name in frozen), (step, name)


def test_graft_copies_exactly_the_named_parameters(tmp_path):
    donor, model = make_model(seed=1), make_model(seed=2)
    cfg = RunConfig(model=ModelConfig(**SMALL), data=DATA)
    save_checkpoint(tmp_path / "donor" / CHECKPOINT_DIR / LAST_CHECKPOINT,
                    {"config": to_dict(cfg), "model": donor.state_dict()})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec = InterveneConfig(graft_from=str(tmp_path / "donor"), graft=["blocks.0", "embed"])
    copied = graft(model, spec)
    assert copied == ["embed.W_E", "blocks.0.attn.W_Q", "blocks.0.attn.W_K",
                      "blocks.0.attn.W_V", "blocks.0.attn.W_O"]
    donor_params = dict(donor.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, donor_params[name] if name in copied else before[name]), name
    # a checkpoint file works as well; a missing one or another shape names the field
    graft(model, InterveneConfig(graft_from=str(tmp_path / "donor" / CHECKPOINT_DIR /
                                                 LAST_CHECKPOINT), graft=["unembed"]))
    assert torch.equal(model.unembed.W_U, donor.unembed.W_U)
    with pytest.raises(ConfigError, match="intervene.graft_from"):
        graft(model, InterveneConfig(graft_from=str(tmp_path / "nowhere"), graft=["embed"]))
    wider = make_model(d_model=32)
    untouched = {n: p.detach().clone() for n, p in wider.named_parameters()}
    with pytest.raises(ConfigError, match=r"intervene.graft='embed.W_E': shape \(64, 24\)"):
        graft(wider, spec)
    assert all(torch.equal(p, untouched[n]) for n, p in wider.named_parameters())


def test_parameter_names_are_the_models():
    for overrides in ({}, dict(normalization="LN", attn_bias=True, n_layers=3)):
        cfg = ModelConfig(**{**SMALL, **overrides})
        assert parameter_names(cfg) == [n for n, _ in AttnOnlyTransformer(cfg).named_parameters()]


@pytest.mark.parametrize("fields,field,allowed", [
    (dict(clamp_pattern={"L5H0": "previous_token"}), "intervene.clamp_pattern", "layer in 0..1"),
    (dict(clamp_pattern={"L1H0": "diagonal"}), "intervene.clamp_pattern.L1H0", "induction"),
    (dict(clamp_pattern={"head0": "bos"}), "intervene.clamp_pattern", "L{layer}H{head}"),
    (dict(ablate=["L0H3"]), "intervene.ablate", "head in 0..2"),
    (dict(ablation="resample"), "intervene.ablation", "zero, mean"),
    (dict(freeze=["blocks.2"]), "intervene.freeze", "blocks.1"),
    (dict(freeze_from_step=-1), "intervene.freeze_from_step", ">= 0"),
    (dict(graft=["blocks.0"]), "intervene.graft_from", "run directory"),
    (dict(graft_from="runs/a"), "intervene.graft", "blocks.0"),
])
def test_bad_interventions_name_the_field_and_the_allowed_values(fields, field, allowed):
    with pytest.raises(ConfigError) as err:
        RunConfig(model=ModelConfig(**SMALL), data=DATA, intervene=InterveneConfig(**fields))
    assert err.value.field == field and allowed in str(err.value) and "\n" not in str(err.value)


def test_the_spec_round_trips_and_describes_what_is_active():
    spec = InterveneConfig(clamp_pattern={"L0H1": "previous_token"}, ablate=["L1H0"])
    cfg = RunConfig(model=ModelConfig(**SMALL), data=DATA, intervene=spec)
    assert run_config_from_dict(to_dict(cfg)) == cfg
    assert describe(spec) == {"clamp_pattern": {"L0H1": "previous_token"}, "ablate": ["L1H0"],
                              "ablation": "zero"}
    assert describe(InterveneConfig()) == {}
    names = [name for name, _ in intervention_hooks(spec, cfg.model, lambda: None)]
    assert names == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z"]


def test_induction_clamp_follows_the_batch_in_training():
    """The clamp reads the tokens of each pass: a gradient step on one batch, then another."""
    model = make_model()
    spec = InterveneConfig(clamp_pattern={"L1H1": "induction"})
    seen = []
    with intervened(model, spec):
        for tokens in (TRAIN.tokens, PROBE.tokens):
            model.zero_grad()
            adamw_step(model, tokens).backward()
            _, cache = model.run_with_cache(tokens)
            src = induction_sources(tokens)
            seen.append(cache["pattern", 1][:, 1].argmax(-1).equal(torch.where(src >= 0, src, 0)))
    assert seen == [True, True]
    assert model.blocks[1].attn.W_Q.grad[1].abs().max() == 0  # a clamped head's query: no grad
