"""`python -m tinyinduct.replay` over a sweep folder: every run with snapshots replayed with a
user's metric (one JSON line per run and step), job folders of several seeds replayed through
their seed<s>/ runs, runs without snapshots named and skipped, bad input one line."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, child_env

from tinyinduct import load_run, train
from tinyinduct.config import DataConfig, LoggerConfig, ModelConfig, RunConfig, TrainConfig
from tinyinduct.replay import main

METRIC = '''
def embedding_norm(model, step):
    return {"norm": model.embed.W_E.norm().item(), "twice_step": 2 * step}
'''


def tiny(positional: str, n_seeds: int = 1, seed: int = 1) -> RunConfig:
    return RunConfig(
        device="cpu", seed=seed,
        model=ModelConfig(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64,
                          positional=positional),
        data=DataConfig(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=12, batch_size=8,
                        eval_batch_size=16),
        train=TrainConfig(steps=20, eval_every=10, checkpoint_every=20, n_seeds=n_seeds,
                          snapshots="every_eval"),
        logger=LoggerConfig(mode="disabled", progress=False))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    train(tiny("standard", n_seeds=2, seed=0), root / "0")  # a job: seed0/ and seed1/ are runs
    train(tiny("shortformer"), root / "1")
    shutil.copytree(root / "1", root / "2")
    shutil.rmtree(root / "2" / "record")  # a run from before snapshots existed
    return root


def replay_command(*args, env_path=None):
    env = child_env()
    if env_path is not None:
        env["PYTHONPATH"] = f"{env_path}:{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-m", "tinyinduct.replay", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_a_sweep_replayed_with_a_new_metric(sweep, tmp_path):
    (tmp_path / "mymetric.py").write_text(METRIC)
    out = tmp_path / "replay.jsonl"
    done = replay_command(sweep, "--metric", "mymetric:embedding_norm", "--out", out,
                          env_path=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    runs = [sweep / "0" / "seed0", sweep / "0" / "seed1", sweep / "1"]
    assert [r["run_dir"] for r in rows] == [str(d) for d in runs for _ in range(3)]
    assert [r["step"] for r in rows] == [0, 10, 20] * 3
    assert [r["seed"] for r in rows] == [0] * 3 + [1] * 3 + [1] * 3
    assert {r["run_dir"]: r["condition"] for r in rows} == {
        str(runs[0]): "positional=standard, blocked=none",
        str(runs[1]): "positional=standard, blocked=none",
        str(runs[2]): "positional=shortformer, blocked=none"}
    for row in rows:
        model = load_run(row["run_dir"]).model_at(row["step"])
        assert row["norm"] == pytest.approx(model.embed.W_E.norm().item(), abs=0)
        assert row["twice_step"] == 2 * row["step"]
    assert f"{sweep / '0'}: a job of 2 seeds: its seed<s>/ runs are replayed" in done.stderr
    assert f"{sweep / '2'}: no snapshots" in done.stderr
    assert "replay: 9 rows" in done.stderr


def test_by_default_a_run_is_replayed_through_its_own_evaluation(sweep):
    done = replay_command(sweep / "1", "--steps", "10", "20")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    logged = {r["step"]: r for r in load_run(sweep / "1").metrics}
    assert [r["step"] for r in rows] == [10, 20]
    for row in rows:
        for key, value in logged[row["step"]].items():
            if key.startswith(("eval/", "heads/", "icl/")):
                assert row[key] == value, key


@pytest.mark.parametrize("args, message", [
    (["--metric", "nodots"], "expected module:function"),
    (["--metric", "tinyinduct.metrics:no_such_fn"], "tinyinduct.metrics has no no_such_fn"),
    (["--metric", "no_such_module:fn"], "cannot import no_such_module"),
])
def test_bad_metric_is_one_line(sweep, args, message, capsys):
    assert main([str(sweep / "1"), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and len(err.strip().splitlines()) == 1


def test_a_folder_without_runs_with_snapshots_is_one_line(sweep, tmp_path, capsys):
    assert main([str(sweep / "2"), "--out", str(tmp_path / "x.jsonl")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"replay: no run with snapshots under {sweep / '2'}"
    assert not (tmp_path / "x.jsonl").exists()
