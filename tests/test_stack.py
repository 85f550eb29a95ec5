"""Many seeds at once: the stacked computation equals K single models, its optimizer state splits
into single-model states and back, and a `train.n_seeds=2` run writes, per seed, what the two
single runs write, with the same numbers."""

import json
import math

import pytest
import torch
from conftest import TINY_OVERRIDES, run_train
from wandb_records import find_run_file, read_run

from tinyinduct import AttnOnlyTransformer, ModelConfig, RunConfig, load_run, native
from tinyinduct import stack as stack_module
from tinyinduct.loop import make_optimizer
from tinyinduct.stack import (
    StackedTransformer,
    clip_and_step,
    clip_grad_norm_per_model_,
    next_token_loss,
    per_model_loss,
    seed_optimizer_state,
    select_optimizer_state,
    stacked_optimizer_state,
)

SMALL = dict(n_layers=2, n_heads=3, d_model=24, d_head=5, n_ctx=16, d_vocab=40)


def perturbed_models(n, **overrides):
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = AttnOnlyTransformer(ModelConfig(**{**SMALL, **overrides}))
        with torch.no_grad():
            for p in model.parameters():  # non-trivial biases and norms too
                p.add_(0.05 * torch.randn_like(p))
        models.append(model)
    return models


VARIANTS = [
    dict(positional=pos, normalization=norm, attn_bias=bias, blocked_composition=blocked)
    for pos in ("standard", "shortformer") for norm in ("none", "LN") for bias in (False, True)
    for blocked in ([], ["K"], ["Q", "V"])
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_stacked_logits_and_gradients_equal_each_model_alone(variant):
    models = perturbed_models(3, **variant)
    stacked = StackedTransformer(models)
    tokens = torch.randint(0, 40, (3, 4, 16))
    logits = stacked(tokens)
    losses = per_model_loss(stacked, tokens)
    losses.sum().backward()
    for k, model in enumerate(models):
        alone = model(tokens[k])
        torch.testing.assert_close(logits[k], alone, atol=1e-5, rtol=1e-5)
        # the explicit (cached) path sees the same function
        torch.testing.assert_close(logits[k], model.run_with_cache(tokens[k])[0],
                                   atol=1e-5, rtol=1e-5)
        loss = next_token_loss(alone, tokens[k])
        torch.testing.assert_close(losses[k], loss)
        loss.backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(stacked.shell.get_parameter(name).grad[k], p.grad,
                                       atol=1e-6, rtol=1e-4, msg=name)


def test_one_stacked_model_at_the_default_shape_equals_the_plain_model():
    """K = 1, the path every single run trains through, at the default model and batch (several
    loss chunks), float32: loss and every gradient equal the plain model's."""
    torch.manual_seed(0)
    model = AttnOnlyTransformer(ModelConfig(attn_bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stacked = StackedTransformer([model])
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 32, model.cfg.n_ctx))
    (loss,) = per_model_loss(stacked, tokens)
    loss.backward()
    alone = next_token_loss(model(tokens[0]), tokens[0])
    alone.backward()
    torch.testing.assert_close(loss, alone)
    for name, p in model.named_parameters():
        torch.testing.assert_close(stacked.shell.get_parameter(name).grad[0], p.grad,
                                   atol=1e-6, rtol=1e-4, msg=name)


def test_gradient_clipping_is_per_model():
    models = perturbed_models(2)
    stacked = StackedTransformer(models)
    for p in stacked.parameters():
        p.grad = torch.randn_like(p)
    with torch.no_grad():  # model 1's gradient is small: it must not be scaled
        for p in stacked.parameters():
            p.grad[1] *= 1e-4
    expected = []
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            p.grad = stacked.shell.get_parameter(name).grad[k].clone()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        expected.append(norm)
    norms = clip_grad_norm_per_model_(list(stacked.parameters()), 1.0)
    torch.testing.assert_close(norms, torch.stack(expected))
    assert norms[0] > 1.0 > norms[1]
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(stacked.shell.get_parameter(name).grad[k], p.grad)


@pytest.mark.parametrize("scale", [10.0, 1e-3])  # clipped, and left alone
def test_one_models_clipping_is_torchs(scale):
    """K = 1 takes the single-factor path: the same norm and gradients as torch's clipping."""
    (model,) = perturbed_models(1)
    stacked = StackedTransformer([model])
    for p in stacked.parameters():
        p.grad = scale * torch.randn_like(p)
    for name, p in model.named_parameters():
        p.grad = stacked.shell.get_parameter(name).grad[0].clone()
    want = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    norms = clip_grad_norm_per_model_(list(stacked.parameters()), 1.0)
    torch.testing.assert_close(norms, want.view(1))
    assert (norms > 1.0).item() == (scale > 1.0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(stacked.shell.get_parameter(name).grad[0], p.grad)


@pytest.mark.skipif(native.extension() is None,
                    reason="tinyinduct's CPU kernels could not be built here")
@pytest.mark.parametrize("n_models", [1, 2])
@pytest.mark.parametrize("grad_clip", [0.0, 0.05, 100.0])  # none, clipping, a norm below it
def test_the_native_optimizer_step_is_torchs_bit_for_bit(n_models, grad_clip, monkeypatch):
    """`clip_and_step` by one C++ call and by `clip_grad_norm_per_model_` + `optimizer.step()`
    move the weights, moments and step counts identically over several steps; a step where a
    parameter has no gradient (frozen) is torch's own."""
    runs, native_adamw = {}, stack_module._native_adamw
    for path in ("native", "torch"):  # the same forward and backward; only the step differs
        monkeypatch.setattr(stack_module, "_native_adamw",
                            native_adamw if path == "native" else lambda optimizer: None)
        stacked = StackedTransformer(perturbed_models(n_models, attn_bias=True))
        cfg = RunConfig()
        optimizer = make_optimizer(stacked, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
        torch.manual_seed(5)
        for step in range(4):
            optimizer.zero_grad(set_to_none=True)
            per_model_loss(stacked, torch.randint(0, 40, (n_models, 4, 16))).sum().backward()
            if step == 2:
                stacked.shell.blocks[0].attn.W_Q.grad = None
            assert (stack_module._native_adamw(optimizer) is not None) == (
                path == "native" and step in (1, 3))
            clip_and_step(stacked, optimizer, grad_clip)
            scheduler.step()
        runs[path] = ({n: p.detach().clone() for n, p in stacked.named_parameters()},
                        optimizer.state_dict())
    (weights, state), (torch_weights, torch_state) = runs["native"], runs["torch"]
    for name in weights:
        assert torch.equal(weights[name], torch_weights[name]), name
    for i, moments in torch_state["state"].items():
        for key, t in moments.items():
            assert torch.equal(state["state"][i][key], t), (i, key)


def test_seed_optimizer_state_is_a_single_runs_state():
    cfg = RunConfig()  # only its optim section matters here
    models = perturbed_models(2)
    stacked = StackedTransformer(models)
    optimizer = make_optimizer(stacked, cfg)
    tokens = torch.randint(0, 40, (2, 4, 16))
    per_model_loss(stacked, tokens).sum().backward()
    optimizer.step()
    state = seed_optimizer_state(optimizer, 1)
    single = make_optimizer(models[1], cfg)
    single.load_state_dict(state)  # the shapes and groups of one model's optimizer
    names = [n for n, _ in models[1].named_parameters()]
    exp_avg = single.state[models[1].get_parameter(names[0])]["exp_avg"]
    torch.testing.assert_close(
        exp_avg, optimizer.state[stacked.shell.get_parameter(names[0])]["exp_avg"][1])
    assert exp_avg.untyped_storage().nbytes() == exp_avg.numel() * 4  # a copy, not a view


def test_optimizer_state_splits_restacks_and_selects():
    cfg = RunConfig()
    stacked = StackedTransformer(perturbed_models(3))
    optimizer = make_optimizer(stacked, cfg)
    per_model_loss(stacked, torch.randint(0, 40, (3, 4, 16))).sum().backward()
    optimizer.step()
    full = optimizer.state_dict()
    again = stacked_optimizer_state([seed_optimizer_state(optimizer, k) for k in range(3)])
    for i, moments in full["state"].items():
        for name, t in moments.items():
            assert torch.equal(again["state"][i][name], t), name
    kept = select_optimizer_state(optimizer, [2, 0])
    weights = {n: p.detach().clone() for n, p in stacked.shell.named_parameters()}
    stacked.keep_models([2, 0])
    assert stacked.n_models == 2
    for name, p in stacked.shell.named_parameters():
        assert torch.equal(p, weights[name][[2, 0]]), name
    rebuilt = make_optimizer(stacked, cfg)
    rebuilt.load_state_dict(kept)
    first = next(iter(full["state"]))
    assert torch.equal(rebuilt.state_dict()["state"][first]["exp_avg"],
                       full["state"][first]["exp_avg"][[2, 0]])


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_rows_close(got, want):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if value is None or isinstance(value, str):
                assert a[key] == value, key
            else:
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (a["step"], key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("multiseed")
    both = run_train(base / "both", *TINY_OVERRIDES, "seed=3", "train.n_seeds=2")
    assert both.returncode == 0, both.stderr
    singles = {}
    for seed in (3, 4):
        proc = run_train(base / f"single{seed}", *TINY_OVERRIDES, f"seed={seed}")
        assert proc.returncode == 0, proc.stderr
        singles[seed] = base / f"single{seed}"
    return base / "both", both, singles


@pytest.mark.slow  # end-to-end: real processes
def test_each_seed_equals_its_single_run(runs):
    both, _, singles = runs
    for seed, single in singles.items():
        got, want = read_rows(both / f"seed{seed}" / "metrics.jsonl"), read_rows(
            single / "metrics.jsonl")
        assert [r["step"] for r in got] == [0, 20, 40, 60]
        assert_rows_close(got, want)
        summary = json.loads((both / f"seed{seed}" / "summary.json").read_text())
        alone = json.loads((single / "summary.json").read_text())
        for key in ("best_induction_head", "induction_formed", "phase_change_step", "steps"):
            assert summary[key] == alone[key], key
        assert summary["best_induction_score"] == pytest.approx(alone["best_induction_score"],
                                                                rel=1e-4)
        assert summary["n_seeds_at_once"] == 2 and summary["status"] == "finished"


@pytest.mark.slow  # end-to-end: real processes
def test_each_seed_dir_is_a_loadable_run_with_its_own_wandb_run(runs):
    both, proc, singles = runs
    for seed in (3, 4):
        run = load_run(both / f"seed{seed}")
        alone = load_run(singles[seed])
        assert run.config.seed == seed and run.config.train.n_seeds == 1 and run.step == 60
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(run.model.state_dict()[name], value, rtol=1e-4,
                                       atol=1e-5)
        # the checkpoint's optimizer state is one model's, not the stack's
        state = torch.load(both / f"seed{seed}" / "checkpoints" / "last.pt", weights_only=True)
        single = torch.load(singles[seed] / "checkpoints" / "last.pt", weights_only=True)
        assert state["optimizer"]["param_groups"] == single["optimizer"]["param_groups"]
        for i, moments in single["optimizer"]["state"].items():
            assert state["optimizer"]["state"][i]["exp_avg"].shape == moments["exp_avg"].shape
        record = read_run(find_run_file(both / f"seed{seed}"))
        assert record["run"].display_name == f"standard-seed{seed}"
        assert record["config"]["seed"] == seed
        assert [h["_step"] for h in record["history"]] == [0, 20, 40, 60]
        assert record["summary"]["steps"] == 60 and record["exit_code"] == 0
        assert f"seed {seed}:" in proc.stdout
    overall = json.loads((both / "summary.json").read_text())
    assert overall["n_seeds"] == 2 and overall["seeds"] == [3, 4]
    assert overall["status"] == "finished" and overall["tokens_per_second"] > 0
    assert "2 seeds trained at once" in proc.stdout
    assert math.isfinite(overall["eval_fraction"])


@pytest.mark.slow  # end-to-end: real processes
def test_bad_n_seeds_is_refused_naming_the_field(tmp_path):
    proc = run_train(tmp_path / "bad", *TINY_OVERRIDES, "train.n_seeds=0", timeout=60)
    assert proc.returncode != 0
    assert "train.n_seeds" in proc.stderr and "Traceback" not in proc.stderr
