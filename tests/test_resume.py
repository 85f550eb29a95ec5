"""Never lose a run, with real `scripts/train.py` processes: Ctrl-C and SIGTERM checkpoint and
exit 130/143 with the command that resumes; kill -9 loses at most the steps since the last
checkpoint; a resumed run ends bit-identical (CPU) to one never stopped; the same seed gives the
same rows twice."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES, child_env, run_train, start_train, wait_for_step
from wandb_records import read_run

from tinyinduct.tracking import read_metrics

# end-to-end: real processes stopped, killed and resumed
pytestmark = pytest.mark.slow

STEPS = 400
# long enough to stop part-way; eval and checkpoint cadences that do not line up, so a stop
# falls inside an evaluation interval (the running training loss must resume too)
RUN = [*TINY_OVERRIDES, f"train.steps={STEPS}", "train.eval_every=50",
       "train.checkpoint_every=70"]


def comparable(rows):
    """Rows without their timing fields (the only thing allowed to differ between runs)."""
    return [{k: v for k, v in r.items() if "seconds" not in k and not k.startswith("time/")}
            for r in rows]


def wandb_runs(run_dir):
    return [read_run(p) for p in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]


def checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run never stopped."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = run_train(run_dir, *RUN)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def assert_same_run(run_dir, reference):
    rows = read_metrics(run_dir / "metrics.jsonl")
    ref_rows = read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, *range(50, STEPS + 1, 50)]  # none twice, none missing
    assert comparable(rows) == comparable(ref_rows)
    final, ref_final = checkpoint(run_dir), checkpoint(reference)
    assert final["step"] == ref_final["step"] == STEPS
    for name, tensor in ref_final["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["final_train_loss"] == ref_summary["final_train_loss"]


def test_ctrl_c_checkpoints_and_the_printed_command_resumes_bit_identically(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *RUN)
    wait_for_step(proc, run_dir, 50)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGINT"
    stopped = summary["last_step"]
    assert 50 <= stopped < STEPS
    assert checkpoint(run_dir)["step"] == stopped
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] <= stopped
    assert comparable(rows) == comparable(read_metrics(reference / "metrics.jsonl"))[:len(rows)]
    [record] = wandb_runs(run_dir)
    assert record["exit_code"] == 130
    assert record["summary"]["status"] == "interrupted"

    command = re.search(r"Resume with: (.+)", err).group(1)
    argv = shlex.split(command)
    assert argv[0] == "python" and argv[-1] == f"resume={run_dir}"
    resumed = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                             timeout=300, env=child_env(), cwd=ROOT, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference)
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] == stopped

    first, second = wandb_runs(run_dir)  # the same W&B run, continued offline
    assert first["run"].run_id == second["run"].run_id
    assert second["exit_code"] == 0
    logged = [h["_step"] for h in first["history"] + second["history"]]
    assert logged == [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *RUN)
    wait_for_step(proc, run_dir, 50)
    proc.send_signal(signal.SIGTERM)  # a scheduler ending the job
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    assert f"resume={run_dir}" in err and "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
    assert checkpoint(run_dir)["step"] == summary["last_step"] < STEPS
    [record] = wandb_runs(run_dir)
    assert record["exit_code"] == 143


def test_kill_9_loses_only_the_steps_since_the_last_checkpoint(reference, tmp_path):
    run_dir = tmp_path / "run"
    every = 10
    proc = start_train(run_dir, *RUN, f"train.checkpoint_every={every}")
    wait_for_step(proc, run_dir, 100)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    rows = read_metrics(run_dir / "metrics.jsonl")
    saved = checkpoint(run_dir)["step"]
    # a checkpoint every 10 steps: the one on disk is at most one save behind the last step
    assert rows[-1]["step"] - saved <= 2 * every
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 150, "tokens": 384')  # a line cut short by the kill
    assert read_metrics(run_dir / "metrics.jsonl") == rows  # still readable

    resumed = run_train(run_dir, *RUN, f"train.checkpoint_every={every}", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line and rows past the checkpoint
    assert_same_run(run_dir, reference)             # are gone, then recomputed identically


def test_same_seed_same_rows_twice(reference, tmp_path):
    again = tmp_path / "again"
    proc = run_train(again, *RUN)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(again, reference)


# --- the same guarantees for several seeds trained at once ---

TWO = [*RUN, "train.n_seeds=2"]


@pytest.fixture(scope="module")
def reference_two(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference_two") / "run"
    proc = run_train(run_dir, *TWO)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_two_seeds_ctrl_c_then_resume_equals_the_run_never_stopped(reference_two, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *TWO)
    wait_for_step(proc, run_dir / "seed1", 50)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    top = json.loads((run_dir / "summary.json").read_text())
    assert top["status"] == "interrupted" and top["exit_code"] == 130
    stopped = top["last_step"]
    for seed in (0, 1):
        summary = json.loads((run_dir / f"seed{seed}" / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["last_step"] == stopped
        assert checkpoint(run_dir / f"seed{seed}")["step"] == stopped

    command = re.search(r"Resume with: (.+)", err).group(1)
    argv = shlex.split(command)
    resumed = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                             timeout=300, env=child_env(), cwd=ROOT, stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr
    for seed in (0, 1):
        assert_same_run(run_dir / f"seed{seed}", reference_two / f"seed{seed}")
        first, second = wandb_runs(run_dir / f"seed{seed}")  # each seed's W&B run continued
        assert first["run"].run_id == second["run"].run_id
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("window", ["between the seeds' renames", "inside seed 0's renames"])
def test_a_kill_between_checkpoint_renames_still_resumes_as_the_run_never_stopped(
        reference_two, tmp_path, window):
    """Each seed's checkpoint is renamed over its last one in turn (the last one kept as
    previous.pt): a kill between two renames leaves one seed a checkpoint ahead of the other, or
    a seed with only previous.pt. The files are set to that state, as a kill there leaves them;
    resuming takes every seed back to the step they share."""
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *TWO, "train.checkpoint_every=10")
    wait_for_step(proc, run_dir / "seed1", 100)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    saved = [run_dir / f"seed{seed}" / "checkpoints" for seed in (0, 1)]
    # the step resuming reads: last.pt, or previous.pt where the kill itself came inside the
    # renames and left only that
    steps = [torch.load(d / "last.pt" if (d / "last.pt").is_file() else d / "previous.pt",
                        weights_only=True)["step"] for d in saved]
    both_last = all((d / "last.pt").is_file() for d in saved)
    if both_last and steps[0] == steps[1]:  # the kill came between checkpoints (else it made
        # the state itself)
        n = steps[0]
        for d in saved:
            assert torch.load(d / "previous.pt", weights_only=True)["step"] == n - 10
        # seed 1 not yet renamed: its last.pt is still the one at n - 10
        os.replace(saved[1] / "previous.pt", saved[1] / "last.pt")
        if window == "inside seed 0's renames":  # its last.pt (n - 10) already moved to
            (saved[0] / "last.pt").unlink()  # previous.pt, the new one not yet in place
    resumed = run_train(run_dir, *TWO, "train.checkpoint_every=10", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    for seed in (0, 1):
        assert_same_run(run_dir / f"seed{seed}", reference_two / f"seed{seed}")


def test_two_seeds_kill_9_then_resume_equals_the_run_never_stopped(reference_two, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *TWO, "train.checkpoint_every=10")
    wait_for_step(proc, run_dir / "seed1", 100)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    resumed = run_train(run_dir, *TWO, "train.checkpoint_every=10", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    for seed in (0, 1):
        assert_same_run(run_dir / f"seed{seed}", reference_two / f"seed{seed}")
