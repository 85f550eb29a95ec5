"""Faults that must not cost a run: a NaN loss stops it keeping the last good checkpoint and every
metric; W&B that cannot reach its server falls back to offline and training goes on."""

import json
import math
import re
import socket

import pytest
import torch
from conftest import TINY_OVERRIDES, run_train
from wandb_records import find_run_file, read_run

from tinyinduct import load_run
from tinyinduct.config import LoggerConfig, RunConfig
from tinyinduct.tracking import Tracker, read_metrics

# lr 1000 reached by a 30-step warmup: the loss goes non-finite a dozen steps in
ABSURD_LR = ["optim.lr=1000", "optim.warmup_steps=30", "train.eval_every=20"]


@pytest.mark.slow  # end-to-end: real processes
@pytest.mark.parametrize("checkpoint_every,n_seeds", [(5, 1), (40, 1), (5, 2)],
                         ids=["at-checkpoint", "at-evaluation", "two-seeds"])
def test_nan_loss_stops_keeping_the_last_good_checkpoint(tmp_path, checkpoint_every, n_seeds):
    job_dir = tmp_path / "nan"
    proc = run_train(job_dir, *TINY_OVERRIDES, *ABSURD_LR,
                     f"train.checkpoint_every={checkpoint_every}", f"train.n_seeds={n_seeds}")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    top = json.loads((job_dir / "summary.json").read_text())
    assert top["status"] == "failed" and top["exit_code"] == 1
    dirs = [job_dir] if n_seeds == 1 else [job_dir / f"seed{s}" for s in range(n_seeds)]
    for run_dir in dirs:
        assert_failed_with_a_good_checkpoint(run_dir, checkpoint_every, proc)


def assert_failed_with_a_good_checkpoint(run_dir, checkpoint_every, proc):
    summary = json.loads((run_dir / "summary.json").read_text())
    bad_step = int(re.search(r"non-finite training loss at step (\d+)",
                             summary["error"]).group(1))
    assert f"non-finite training loss at step {bad_step}" in proc.stderr
    assert summary["status"] == "failed" and summary["exit_code"] == 1
    assert f"non-finite training loss at step {bad_step}" in summary["error"]
    assert bad_step <= summary["last_step"] < 60

    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] < bad_step
    assert summary["last_step"] - state["step"] <= checkpoint_every  # the latest good one
    assert f"last good checkpoint: step {state['step']}" in summary["error"]
    for name, param in load_run(run_dir).model.named_parameters():
        assert torch.isfinite(param).all(), name

    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(0, summary["last_step"] + 1, 20))
    if checkpoint_every == 40:  # stopped by the evaluation that saw it: its row is kept
        assert rows[-1]["train/loss"] is None  # NaN is written as null
    assert read_run(find_run_file(run_dir))["exit_code"] == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # end-to-end: real processes
@pytest.mark.parametrize("api_key", ["x" * 40, None], ids=["no-network", "no-credentials"])
def test_online_wandb_without_server_falls_back_to_offline(tmp_path, monkeypatch, api_key):
    # Nothing outside this machine is ever contacted: the W&B server and any proxy are a closed
    # local port, and W&B's own error reporting is off.
    url = f"http://127.0.0.1:{closed_port()}"
    for name, value in {"WANDB_BASE_URL": url, "HTTP_PROXY": url, "HTTPS_PROXY": url,
                        "WANDB_ERROR_REPORTING": "false", "WANDB_INIT_TIMEOUT": "3",
                        "NETRC": str(tmp_path / "netrc")}.items():
        monkeypatch.setenv(name, value)
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    run_dir = tmp_path / "online"
    proc = run_train(run_dir, *TINY_OVERRIDES, "logger.mode=online")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("W&B online unavailable") == 1, proc.stderr
    assert "logging offline instead" in proc.stderr

    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    assert all(math.isfinite(r["eval/loss"]) for r in rows)
    record = read_run(find_run_file(run_dir))
    assert [h["_step"] for h in record["history"]] == [0, 20, 40, 60]
    assert record["exit_code"] == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_a_crash_still_leaves_a_summary(tmp_path):
    cfg = RunConfig(device="cpu", logger=LoggerConfig(mode="disabled"))
    with pytest.raises(RuntimeError, match="disk full"):
        with Tracker(cfg, tmp_path) as tracker:
            tracker.log({"step": 0, "tokens": 0, "train/loss": float("nan")})
            tracker.log({"step": 50, "tokens": 3200, "train/loss": 4.2})
            raise RuntimeError("disk full")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"status": "failed", "error": "RuntimeError: disk full", "steps": 50}
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 50]


def tiny_config(**train):
    from tinyinduct.config import DataConfig, ModelConfig, TrainConfig

    return RunConfig(
        device="cpu", seed=3,
        model=ModelConfig(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64),
        data=DataConfig(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=12, batch_size=8,
                        eval_batch_size=16),
        train=TrainConfig(**{"steps": 60, "eval_every": 20, "checkpoint_every": 40, **train}),
        logger=LoggerConfig(mode="disabled", progress=False))


def test_one_seed_going_non_finite_stops_alone_while_the_other_trains_on(tmp_path, monkeypatch):
    """Seed 4's weights are poisoned after step 25 (as an overflow would); seed 3 trains on to
    the end and equals its run alone; seed 4 keeps its last good checkpoint."""
    from tinyinduct import loop, train

    real_step = loop.train_step

    def poisoned(model, optimizer, scheduler, tokens, grad_clip, **kwargs):
        losses = real_step(model, optimizer, scheduler, tokens, grad_clip, **kwargs)
        if scheduler.last_epoch == 25:
            with torch.no_grad():
                model.shell.blocks[0].attn.W_Q[1].fill_(float("nan"))
        return losses

    monkeypatch.setattr(loop, "train_step", poisoned)
    overall = train(tiny_config(n_seeds=2, checkpoint_every=10), tmp_path / "both")
    monkeypatch.setattr(loop, "train_step", real_step)
    alone = train(tiny_config(), tmp_path / "alone")

    assert overall["status"] == "failed" and overall["exit_code"] == 1
    assert overall["failed_seeds"] == [4]
    good, bad = overall["seed_summaries"]["3"], overall["seed_summaries"]["4"]
    assert good["status"] == "finished" and good["last_step"] == 60
    assert good["best_induction_score"] == pytest.approx(alone["best_induction_score"], rel=1e-4)
    assert bad["status"] == "failed" and "non-finite training loss at step 26" in bad["error"]
    assert torch.load(tmp_path / "both" / "seed4" / "checkpoints" / "last.pt",
                      weights_only=True)["step"] == 20
    rows = read_metrics(tmp_path / "both" / "seed3" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    # caught by the checkpoint at step 30, before the evaluation at 40
    assert bad["last_step"] == 30
    assert [r["step"] for r in read_metrics(tmp_path / "both" / "seed4" / "metrics.jsonl")] \
        == [0, 20]


@pytest.mark.slow  # end-to-end: real processes
def test_disk_full_ends_in_one_line_and_a_summary(tmp_path):
    """A file-size limit stands in for a full disk: the first checkpoint cannot be written."""
    import resource
    import subprocess
    import sys

    from conftest import ROOT, TRAIN_SCRIPT, child_env

    run_dir = tmp_path / "full"
    limit = 60_000  # bytes: metrics and summary fit, a checkpoint does not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), f"hydra.run.dir={run_dir}", *TINY_OVERRIDES,
         "logger.mode=disabled"], capture_output=True, text=True, env=child_env(), cwd=ROOT,
        timeout=300, preexec_fn=small_files, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "disk full or a file-size limit" in line and "writing" in line
    assert "checkpoints/last.pt" in line and "are kept" in line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "disk full or a file-size limit" in summary["error"]
    assert not list(run_dir.rglob("*.tmp"))  # nothing half-written left behind


def test_out_of_memory_ends_in_one_line_and_a_summary(tmp_path, monkeypatch):
    """The machine runs out of memory at step 5 (an allocation failing inside torch): the run
    stops with one line naming the cause and what to shrink, and its summary says failed."""
    from tinyinduct import loop, train
    from tinyinduct.rundir import RunFault

    real_step = loop.train_step

    def allocation_fails(model, optimizer, scheduler, tokens, grad_clip, **kwargs):
        if scheduler.last_epoch == 5:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                               "allocate memory: you tried to allocate 1099511627776 bytes.")
        return real_step(model, optimizer, scheduler, tokens, grad_clip, **kwargs)

    monkeypatch.setattr(loop, "train_step", allocation_fails)
    with pytest.raises(RunFault, match=r"^out of memory \(try a smaller model.d_model, "
                                       r"data.batch_size or train.n_seeds\); files of .* are kept"):
        train(tiny_config(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "can't allocate memory" in summary["error"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 0
