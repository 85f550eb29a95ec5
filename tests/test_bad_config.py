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
    assert not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "checkpoints").exists()
