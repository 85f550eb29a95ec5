"""Every bad command line exits with code 2 within seconds, before any model is built, with one
line on stderr naming the field, and no traceback: real `scripts/train.py` processes."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import TINY_OVERRIDES, run_train

# a device this machine lacks (whichever machine runs the tests)
MISSING_DEVICE = "mps" if torch.cuda.is_available() else "cuda"

# (overrides, substrings the one-line message must hold: the field first)
CASES = {
    "unknown positional mode": (["model.positional=rotary"], ["model.positional", "rotary"]),
    "copies longer than the sequence": (["data.max_copy_len=40"], ["data.max_copy_len"]),
    "negative learning rate": (["optim.lr=-1"], ["optim.lr"]),
    "infinite learning rate": (["optim.lr=inf"], ["optim.lr"]),
    "unknown device": (["device=tpu"], ["device", "tpu"]),
    "device not on this machine": ([f"device={MISSING_DEVICE}"], ["device", "not available"]),
    "zero heads": (["model.n_heads=0"], ["model.n_heads"]),
    "sequence longer than n_ctx": (["data.seq_len=64"], ["data.seq_len", "model.n_ctx"]),
    "data vocab beyond the model's": (["model.d_vocab=32"], ["data.d_vocab"]),
    "vocab too small for the data": (["data.d_vocab=2"], ["data.d_vocab"]),
    "bigram successors beyond the vocab": (["data=bigram", "data.bigram_successors=64"],
                                           ["data.bigram_successors"]),
    "zero eval cadence": (["train.eval_every=0"], ["train.eval_every"]),
    "negative checkpoint cadence": (["train.checkpoint_every=-5"], ["train.checkpoint_every"]),
    "beta2 of one": (["optim.beta2=1.0"], ["optim.beta2"]),
    "unknown logger mode": (["logger.mode=cloud"], ["logger.mode"]),
    "empty copy": (["data.min_copy_len=0"], ["data.min_copy_len"]),
    "probe batch too small": (["data.eval_batch_size=4"], ["data.eval_batch_size"]),
    "blocked input twice": (["model.blocked_composition=[Q,Q]"], ["model.blocked_composition"]),
    "unknown key": (["model.shortformer=true"], ["model.shortformer", "positional"]),
    "unknown key added with +": (["+model.rotary=true"], ["model.rotary"]),
    "unknown top-level key added with +": (["+foo=1"], ["foo"]),
    "wrong type": (["train.steps=many"], ["train.steps", "many"]),
    "missing config option": (["data=nope"], ["data/nope", "bigram"]),
    "unparsable override": (["seed=[1"], ["seed=[1"]),
    "resume from nowhere": (["resume={tmp}/nowhere"], ["resume", "no checkpoint"]),
    "resume with another model": (["resume={finished}", "train.steps=2", "model.d_model=16"],
                                  ["resume", "model.d_model=32", "model.d_model=16"]),
    "resume a finished run": (["resume={finished}", "train.steps=2"], ["resume", "finished"]),
    "clamp a head of a layer that does not exist": (
        ["intervene.clamp_pattern={{L5H0:previous_token}}"], ["intervene.clamp_pattern", "L5H0"]),
    "unknown clamp pattern": (["intervene.clamp_pattern={{L1H0:diagonal}}"],
                              ["intervene.clamp_pattern.L1H0", "previous_token"]),
    "ablate an unknown head": (["intervene.ablate=[L0H7]"], ["intervene.ablate", "L0H7"]),
    "freeze a layer that does not exist": (["intervene.freeze=[blocks.4]"],
                                           ["intervene.freeze", "blocks.1"]),
    "graft without a source": (["intervene.graft=[blocks.0]"], ["intervene.graft_from"]),
    "seed the generators cannot tell apart": (["seed=1180591620717411303424"], ["seed", "[0, "]),
    "copies of one token in a tiny context": (["model.n_ctx=3", "data.min_copy_len=1",
                                               "data.max_copy_len=1"],
                                              ["model.n_ctx=3", "data.seq_len follows it"]),
    "blocking on one layer": (["model.n_layers=1", "model.blocked_composition=[K]"],
                              ["model.blocked_composition", "n_layers >= 2"]),
    "a model too big for memory": (["model.d_model=1000000"],
                                   ["model.d_model", "GiB", "train.allow_large=true"]),
    "too many seeds for memory": (["train.n_seeds=1000000"],
                                  ["train.n_seeds", "GiB", "train.allow_large=true"]),
    "W&B tag over 64 characters": ([f"logger.tags=[{'x' * 65}]"], ["logger.tags", "64"]),
    "experiment group without +": (["experiment=composition_sweep"],
                                   ["experiment", "+experiment=composition_sweep"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """All cases at once (a few processes at a time): each one is a second or two of imports."""
    tmp = tmp_path_factory.mktemp("bad")
    finished = tmp / "finished"
    proc = run_train(finished, *TINY_OVERRIDES, "train.steps=2", "logger.mode=disabled")
    assert proc.returncode == 0, proc.stderr
    before = (finished / "metrics.jsonl").read_text()

    def run(name):
        overrides, _ = CASES[name]
        overrides = [o.format(tmp=tmp, finished=finished) for o in overrides]
        run_dir = tmp / f"case{list(CASES).index(name)}"
        return run_dir, run_train(run_dir, *TINY_OVERRIDES, *overrides, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        out = dict(zip(CASES, pool.map(run, CASES)))
    assert (finished / "metrics.jsonl").read_text() == before  # a refused resume touches nothing
    yield out
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow  # end-to-end: real processes
@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_exits_early_in_one_line(results, name):
    run_dir, proc = results[name]
    _, needles = CASES[name]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not run_dir.exists()  # Hydra made it for the refused run: nothing is left behind


@pytest.mark.slow  # end-to-end: real processes
def test_a_refused_run_leaves_no_outputs_folder_and_keeps_a_given_directory(tmp_path):
    """Without hydra.run.dir Hydra makes outputs/<date>/<time>/ with .hydra/ and train.log: a
    refused run removes them all; an empty directory the user named is kept (emptied of Hydra's
    files), and one holding anything else is left as it was."""
    import subprocess
    import sys

    from conftest import TRAIN_SCRIPT, child_env

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    empty = tmp_path / "empty"
    empty.mkdir()
    for extra in ([], [f"hydra.run.dir={mine}"], [f"hydra.run.dir={empty}"]):
        proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "model.n_heads=0", *extra],
                              capture_output=True, text=True, cwd=tmp_path, env=child_env(),
                              timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2 and "model.n_heads" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine"]  # no outputs/
    assert (mine / "notes.txt").read_text() == "keep me"  # a folder with other files: untouched
    assert list(empty.iterdir()) == []  # existed before: kept, emptied of Hydra's files


@pytest.mark.slow  # end-to-end: real processes
def test_shortest_sequence_trains_with_finite_losses(tmp_path):
    """The smallest sizes validation accepts give a finite loss for every copy and the probe."""
    import json
    import math

    from tinyinduct import train

    cfg = tiny_config(model={"n_ctx": 5}, data={"seq_len": 5, "min_copy_len": 2,
                                                "max_copy_len": 2},
                      train={"steps": 4, "eval_every": 2, "checkpoint_every": 4})
    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("eval/loss_first_copy", "eval/loss_second_copy", "train_dist/loss_first_copy",
                "train_dist/loss_second_copy", "heads/induction/L1H0"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in rows), key


# --- values checked for what they will do (validate_run_config, no process) -------------------

def tiny_config(**sections):
    """A valid tiny RunConfig with `sections` ({"model": {...}, "seed": 3, ...}) replaced."""
    from tinyinduct.config import (
        DataConfig,
        LoggerConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        TrainConfig,
    )

    base = {"model": dict(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64),
            "data": dict(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=12, batch_size=8,
                         eval_batch_size=16),
            "optim": {}, "train": dict(steps=60, eval_every=20, checkpoint_every=40),
            "logger": dict(mode="disabled")}
    classes = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
               "train": TrainConfig, "logger": LoggerConfig}
    kwargs = {"device": "cpu"}
    for key, value in sections.items():
        if key in classes:
            base[key] = {**base[key], **value}
        else:
            kwargs[key] = value
    return RunConfig(**{k: classes[k](**v) for k, v in base.items()}, **kwargs)


def refusal(**sections):
    from tinyinduct.config import ConfigError

    with pytest.raises(ConfigError) as info:
        tiny_config(**sections)
    return info.value


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 2**70])
def test_seeds_the_generators_would_alias_are_refused(seed):
    err = refusal(seed=seed)
    assert err.field == "seed" and "[0, " in str(err)


def test_seed_range_is_what_torch_tells_apart():
    """The CPU generator keeps 32 bits of a seed: 2**32 draws what 0 draws, so the limit sits
    below 2**32, leaving room for the bigram chain's offset seed."""
    from tinyinduct.config import CHAIN_SEED_OFFSET, MAX_SEED

    draw = lambda s: torch.rand(3, generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(draw(2**32), draw(0)) and torch.equal(draw(2**63), draw(0))
    assert MAX_SEED + CHAIN_SEED_OFFSET == 2**32 - 1
    assert not torch.equal(draw(MAX_SEED + CHAIN_SEED_OFFSET), draw(0))
    tiny_config(seed=MAX_SEED, data={"kind": "bigram"})  # the largest seed is accepted
    err = refusal(seed=MAX_SEED - 2, train={"n_seeds": 4})  # seeds MAX-2 .. MAX+1
    assert err.field == "train.n_seeds" and "at most 3" in str(err)


def test_the_smallest_sizes_that_predict_anything():
    """BOS plus two copies of two tokens: n_ctx 5 trains with finite copy losses (tested in
    test_shortest_sequence_trains_with_finite_losses); below it every copy loss is nan."""
    err = refusal(model={"n_ctx": 3}, data={"seq_len": 3, "min_copy_len": 1, "max_copy_len": 1})
    assert err.field == "model.n_ctx" and "data.seq_len follows it" in str(err)
    err = refusal(model={"n_ctx": 32}, data={"seq_len": 4, "min_copy_len": 1, "max_copy_len": 1})
    assert err.field == "data.seq_len"  # set apart from n_ctx: the user typed data.seq_len
    err = refusal(data={"min_copy_len": 1, "max_copy_len": 4})
    assert err.field == "data.min_copy_len" and ">= 2" in str(err)
    err = refusal(model={"n_ctx": 8}, data={"seq_len": 8})
    assert err.field == "data.max_copy_len" and "which follows model.n_ctx" in str(err)
    assert "model.n_ctx >= 25" in str(err)
    tiny_config(model={"n_ctx": 5}, data={"seq_len": 5, "min_copy_len": 2, "max_copy_len": 2})


def test_bigram_successors_is_checked_only_for_the_bigram_kind():
    tiny_config(data={"d_vocab": 3})  # uniform: bigram_successors=4 means nothing here
    err = refusal(data={"d_vocab": 3, "kind": "bigram"})
    assert err.field == "data.bigram_successors"


def test_blocking_on_a_one_layer_model_is_refused():
    err = refusal(model={"n_layers": 1, "blocked_composition": ["K"]})
    assert err.field == "model.blocked_composition" and "n_layers >= 2" in str(err)
    tiny_config(model={"n_layers": 1})


@pytest.mark.parametrize("tag", ["x" * 65, ""])
def test_wandb_tags_are_checked_up_front(tag):
    err = refusal(logger={"tags": ["ok", tag]})
    assert err.field == "logger.tags" and "1 to 64 characters" in str(err)
    tiny_config(logger={"tags": ["x" * 64]})


def test_warmup_longer_than_the_run_warns_once(capsys):
    from tinyinduct.config import warn_once

    cfg = tiny_config(optim={"warmup_steps": 61})  # a warning, not an error
    assert warn_once(cfg) and not warn_once(cfg)
    err = capsys.readouterr().err
    assert err.count("warning: optim.warmup_steps=61 is longer than the run") == 1
    assert warn_once(tiny_config(optim={"warmup_steps": 60})) == []


def test_memory_estimate_follows_the_sizes_and_refuses_what_cannot_fit():
    from tinyinduct import AttnOnlyTransformer
    from tinyinduct.config import ConfigError
    from tinyinduct.memory import available_bytes, check_memory, estimate_bytes, parameter_count

    for extra in ({}, {"attn_bias": True, "normalization": "LN"}):
        cfg = tiny_config(model=extra)
        model = AttnOnlyTransformer(cfg.model)
        assert parameter_count(cfg) == sum(p.numel() for p in model.parameters()), extra
    cfg = tiny_config()
    two = tiny_config(train={"n_seeds": 2})
    assert estimate_bytes(cfg) < estimate_bytes(two) < 2 * estimate_bytes(cfg)
    assert available_bytes("cpu") > 0  # /proc/meminfo (or psutil) on this machine
    gib = 2**30
    with pytest.raises(ConfigError) as info:
        check_memory(tiny_config(model={"d_model": 1_000_000}), "cpu", available=16 * gib)
    assert info.value.field == "model.d_model"
    message = str(info.value)
    assert "GiB on cpu, 16.0 GiB is free" in message and "train.allow_large=true" in message
    with pytest.raises(ConfigError) as info:
        check_memory(tiny_config(train={"n_seeds": 100_000}), "cpu", available=16 * gib)
    assert info.value.field == "train.n_seeds"
    big = tiny_config(model={"d_model": 1_000_000}, train={"allow_large": True})
    assert check_memory(big, "cpu", available=16 * gib) > 16 * gib  # allowed anyway
    assert check_memory(cfg, "cpu", available=16 * gib) == estimate_bytes(cfg)
