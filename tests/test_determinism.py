"""Bit-identical on CPU: the same seed and config give the same metrics rows twice, at the default
model and batch size on two threads (where a parallel gradient accumulation would differ)."""

import math

import torch

from tinyinduct import train
from tinyinduct.config import LoggerConfig, RunConfig, TrainConfig
from tinyinduct.tracking import read_metrics


def test_two_default_size_runs_on_two_threads_agree_bit_for_bit(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = RunConfig(device="cpu", seed=3,
                        train=TrainConfig(steps=100, eval_every=50, checkpoint_every=100),
                        logger=LoggerConfig(mode="disabled", progress=False))
        for name in ("a", "b"):
            train(cfg, tmp_path / name)
    finally:
        torch.set_num_threads(threads)
    a, b = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("a", "b"))
    assert [r["step"] for r in a] == [0, 50, 100]
    assert a == b  # every logged value, compared exactly
    assert math.isfinite(a[-1]["train/loss"])
    for name, tensor in torch.load(tmp_path / "a" / "checkpoints" / "last.pt",
                                   weights_only=True)["model"].items():
        other = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
        assert torch.equal(other["model"][name], tensor), name
