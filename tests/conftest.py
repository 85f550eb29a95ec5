import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinyinduct.tracking import read_metrics

# Tiny test models gain nothing from a second thread, and two spin-waiting OpenMP threads slow
# many times over when another process holds a core: tests run single-threaded (the determinism
# test sets two threads itself).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"

# A run small enough for a test: a few dozen steps of a narrow model.
TINY_OVERRIDES = [
    "device=cpu", "train.steps=60", "train.eval_every=20", "train.checkpoint_every=40",
    "model.d_model=32", "model.n_heads=2", "model.d_head=8", "model.n_ctx=32",
    "data.d_vocab=64", "data.min_copy_len=4", "data.max_copy_len=12", "data.batch_size=8",
    "data.eval_batch_size=16",
]


@pytest.fixture
def two_threads():
    """Two torch threads for one test (the attention kernel chosen on a CPU depends on them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path_factory, monkeypatch):
    """W&B never touches the network or the home directory in tests."""
    base = tmp_path_factory.mktemp("wandb_env")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(base / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def child_env() -> dict:
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # a child must not attach to this process's W&B service
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_train(run_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python scripts/train.py` as a user runs it, into `run_dir`."""
    cmd = [sys.executable, str(TRAIN_SCRIPT), f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(),
                          cwd=ROOT, stdin=subprocess.DEVNULL)


def start_train(run_dir, *overrides):
    cmd = [sys.executable, str(TRAIN_SCRIPT), f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group, as in a terminal


def wait_for_step(proc, run_dir, step, timeout=180):
    """Poll metrics.jsonl until a row at `step` or later is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = read_metrics(run_dir / "metrics.jsonl")
        if rows and rows[-1]["step"] >= step:
            return rows
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no row at step {step} within {timeout} s")


@pytest.fixture(scope="session")
def recorded_sweep(tmp_path_factory):
    """Real tiny runs that kept their attention record, laid out as a sweep (see
    `record_runs.recorded_runs`): `(sweep_dir, {name: run_dir})`."""
    from record_runs import recorded_runs

    base = tmp_path_factory.mktemp("recorded") / "sweep"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            monkeypatch.setenv(name, str(base.parent / name.lower()))
        runs = recorded_runs(base, monkeypatch)
    return base, runs
