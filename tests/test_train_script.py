"""`python scripts/train.py` end to end, as a user runs it: files, W&B offline run, load_run."""

import json
import math

import pytest
import torch
import yaml
from conftest import TINY_OVERRIDES, run_train
from wandb_records import find_run_file, read_run

from tinyinduct import AttnOnlyTransformer, load_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_train(run_dir, *TINY_OVERRIDES, "seed=3", "logger.tags=[smoke,tiny]",
                     "logger.group=tests")
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


@pytest.mark.slow  # end-to-end: real processes
def test_metrics_jsonl_holds_every_evaluation(tiny_run):
    run_dir, _ = tiny_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    assert [r["tokens"] for r in rows] == [0, 20 * 8 * 32, 40 * 8 * 32, 60 * 8 * 32]
    for row in rows[1:]:
        assert math.isfinite(row["train/loss"]) and row["train/loss"] > 0
        for key in ("eval/loss_first_copy", "eval/loss_second_copy", "train_dist/loss",
                    "heads/induction/L1H0", "heads/induction/L1H1", "heads/prev_token/L0H0",
                    "heads/duplicate/L0H1"):
            assert key in row and math.isfinite(row[key]), key
    # the loss starts near ln(d_vocab) and falls
    assert rows[0]["eval/loss"] == pytest.approx(math.log(64), abs=0.5)
    assert rows[-1]["train/loss"] < rows[1]["train/loss"]


@pytest.mark.slow  # end-to-end: real processes
def test_summary_config_and_checkpoint(tiny_run):
    run_dir, proc = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("induction_formed", "phase_change_step", "best_induction_head",
                "best_induction_score", "wall_seconds", "tokens_per_second", "steps"):
        assert key in summary, key
    assert summary["steps"] == 60 and summary["status"] == "finished"
    assert summary["best_induction_head"].startswith("L1H")
    assert summary["tokens_per_second"] > 0
    # step-0 evaluation counts in both the eval and the training time, so the share is a share
    assert 0 < summary["eval_fraction"] < 1 and summary["eval_seconds"] < summary["train_seconds"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] == 3 and config["model"]["d_model"] == 32
    assert config["model"]["d_vocab"] == 64  # interpolated from data.d_vocab
    assert "No induction head formed" in proc.stdout or "An induction head formed" in proc.stdout
    assert "wandb sync" in proc.stdout

    run = load_run(run_dir)
    assert isinstance(run.model, AttnOnlyTransformer) and run.step == 60
    assert run.config.seed == 3 and run.model.cfg.d_model == 32
    assert [r["step"] for r in run.metrics] == [0, 20, 40, 60]
    assert run.summary["steps"] == 60
    # the saved weights reproduce the logged final evaluation
    from tinyinduct.data import make_probe
    from tinyinduct.evaluate import PROBE_SEED, evaluate
    probe = make_probe(run.config.data, PROBE_SEED)
    row = evaluate(run.model, probe, probe)
    assert row["eval/loss"] == pytest.approx(run.metrics[-1]["eval/loss"], rel=1e-5)


@pytest.mark.slow  # end-to-end: real processes
def test_offline_wandb_run_holds_what_was_logged(tiny_run):
    run_dir, _ = tiny_run
    record = read_run(find_run_file(run_dir))
    history = record["history"]
    assert [h["_step"] for h in history] == [0, 20, 40, 60]
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for logged, row in zip(history[1:], local[1:]):
        for key in ("train/loss", "eval/loss_second_copy", "heads/induction/L1H0", "tokens"):
            assert logged[key] == pytest.approx(row[key]), key
    assert record["config"]["seed"] == 3
    assert record["config"]["model"]["d_model"] == 32
    assert record["summary"]["steps"] == 60
    assert record["summary"]["best_induction_head"].startswith("L1H")
    assert record["exit_code"] == 0
    assert record["run"].display_name == "standard-seed3"
    assert record["run"].run_group == "tests"
    assert list(record["run"].tags) == ["smoke", "tiny"]


@pytest.mark.slow  # end-to-end: real processes
def test_shortformer_override_and_disabled_logger(tmp_path):
    run_dir = tmp_path / "sf"
    proc = run_train(run_dir, *TINY_OVERRIDES, "model.positional=shortformer",
                     "logger.mode=disabled", "train.steps=20")
    assert proc.returncode == 0, proc.stderr
    assert not (run_dir / "wandb").exists()
    run = load_run(run_dir)
    assert run.config.model.positional == "shortformer"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 20


def test_one_layer_run_summary_reads_cleanly(tmp_path):
    from tinyinduct import train
    from tinyinduct.config import run_config_from_dict
    from tinyinduct.summary import format_summary

    cfg = run_config_from_dict({
        "device": "cpu",
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_head": 8, "n_ctx": 32,
                  "d_vocab": 64},
        "data": {"d_vocab": 64, "seq_len": 32, "min_copy_len": 4, "max_copy_len": 12,
                 "batch_size": 8, "eval_batch_size": 16},
        "train": {"steps": 10, "eval_every": 5, "checkpoint_every": 10},
        "logger": {"mode": "disabled", "progress": False},
    })
    summary = train(cfg, tmp_path / "one")
    assert summary["best_induction_head"] is None and not summary["induction_formed"]
    text = format_summary(summary, tmp_path / "one")
    assert "a one-layer model has no layer-1 head" in text and "None" not in text


@pytest.mark.parametrize("name", ["plain-run_1", "a,b", "key=value", "two words", "café ü",
                                  "it's", "back\\slash\\", "dollar${x}", "[1,2]", "null", "42"])
def test_printed_resume_command_names_the_directory_for_hydra_and_the_shell(name):
    """The override the "Resume with:" line prints, split as a shell splits it and parsed by
    Hydra's own override parser (then resolved as OmegaConf resolves it), is the directory."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from tinyinduct.cli import resume_command

    run_dir = f"/tmp/runs/{name}"
    command = resume_command(run_dir, ["seed=3", "resume=/old", "train.steps=60"],
                             "python scripts/train.py")
    argv = shlex.split(command)
    assert argv[:4] == ["python", "scripts/train.py", "seed=3", "train.steps=60"]
    override = OverridesParser.create().parse_override(argv[-1])
    assert override.key_or_group == "resume" and not override.is_sweep_override()
    assert OmegaConf.create({"resume": override.value()}).resume == run_dir
    if name == "plain-run_1":
        assert argv[-1] == f"resume={run_dir}"  # no quotes where none are needed


@pytest.mark.slow  # end-to-end: real processes
def test_the_printed_resume_command_reaches_a_directory_with_commas_spaces_and_accents(
        tmp_path):
    """The printed command, run as printed, on a finished run: Hydra reads the quoted directory
    back, the run directory follows it, and the resume is refused for the right reason (the run
    is finished), not "no checkpoint" or "Ambiguous value"."""
    import shlex
    import subprocess
    import sys

    from conftest import ROOT, child_env

    from tinyinduct.cli import hydra_quote, resume_command

    def train_script(*args):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              timeout=300, env=child_env(), cwd=ROOT, stdin=subprocess.DEVNULL)

    run_dir = tmp_path / "lr=1e-2, seed 3 (café)"
    quick = [*TINY_OVERRIDES, "logger.mode=disabled", "train.steps=20"]
    first = train_script("scripts/train.py", f"hydra.run.dir={hydra_quote(str(run_dir))}", *quick)
    assert first.returncode == 0, first.stderr
    argv = shlex.split(resume_command(run_dir, quick, "python scripts/train.py"))
    again = train_script(*argv[1:])
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip() == (f"error: invalid config: resume={str(run_dir)!r}: that run "
                                    "already finished its train.steps=20")
    assert "resume=" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # ran in run_dir
