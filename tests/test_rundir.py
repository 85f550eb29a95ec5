"""A run directory is never overwritten and has one writer at a time; an unusable one is
refused in one line before anything is built."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_OVERRIDES, TRAIN_SCRIPT, child_env, run_train

from tinyinduct.rundir import RunDirError, claim


def test_a_fresh_run_refuses_a_directory_holding_a_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(RunDirError, match=r"already holds a run \(metrics.jsonl\): continue it "
                                          r"with resume="):
        claim(tmp_path, resuming=False)
    claim(tmp_path, resuming=True).close()  # resuming it is what the directory is for


def test_one_writer_at_a_time_and_a_dead_writer_leaves_no_lock(tmp_path):
    held = claim(tmp_path / "run", resuming=False)
    with pytest.raises(RunDirError, match=f"another run \\(pid {os.getpid()}\\) is writing"):
        claim(tmp_path / "run", resuming=False)
    held.close()  # what the kernel does when the holder dies, kill -9 included
    claim(tmp_path / "run", resuming=False).close()


def test_read_only_and_too_long_directories_are_refused_in_one_line(tmp_path):
    with pytest.raises(RunDirError, match="a name in the path is longer than the file system"):
        claim(tmp_path / ("x" * 300), resuming=False)
    if os.geteuid() != 0:  # root writes anywhere; the file-system case below covers it
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(RunDirError, match="cannot be written"):
            claim(locked / "run", resuming=False)
    (tmp_path / "file").write_text("")  # a path through a file: no directory can be made
    with pytest.raises(RunDirError, match="cannot be written"):
        claim(tmp_path / "file" / "run", resuming=False)


@pytest.mark.slow  # end-to-end: real processes
def test_a_new_run_pointed_at_a_finished_run_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    assert run_train(run_dir, *TINY_OVERRIDES, "logger.mode=disabled").returncode == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()
              and ".hydra" not in p.parts and p.name not in ("train.log", ".lock")}
    proc = run_train(run_dir, *TINY_OVERRIDES, "seed=5", "logger.mode=disabled")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: invalid config: run_dir='"
                                                           f"{run_dir}': already holds a run")
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow  # end-to-end: real processes
def test_sigterm_while_starting_still_ends_with_a_summary(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), f"hydra.run.dir={run_dir}",
                             *TINY_OVERRIDES, "logger.mode=disabled"], env=child_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    # as soon as the entry point runs (before torch has loaded)
    import time

    deadline = time.monotonic() + 60
    while not (run_dir / ".hydra").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err and "Resume with:" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["last_step"] <= 1


@pytest.mark.slow  # end-to-end: real processes
@pytest.mark.parametrize("where", ["x" * 300, "/sys/kernel/tinyinduct-run"],
                         ids=["name-too-long", "not-permitted"])
def test_a_run_directory_hydra_cannot_create_is_one_line(tmp_path, where):
    run_dir = tmp_path / where if not where.startswith("/") else where
    proc = run_train(run_dir, *TINY_OVERRIDES, "logger.mode=disabled", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: invalid config: hydra.run.dir=") and "cannot be created" in line
