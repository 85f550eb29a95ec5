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


@pytest.mark.parametrize("checkpoint_every", [5, 40])  # caught at a checkpoint / an evaluation
def test_nan_loss_stops_keeping_the_last_good_checkpoint(tmp_path, checkpoint_every):
    run_dir = tmp_path / "nan"
    proc = run_train(run_dir, *TINY_OVERRIDES, *ABSURD_LR,
                     f"train.checkpoint_every={checkpoint_every}")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    bad_step = int(re.search(r"non-finite training loss at step (\d+)", proc.stderr).group(1))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
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
