"""The composition sweep end to end: a 2-run Hydra multirun of the experiment (tiny config),
its W&B group and tags, and scripts/compare.py on it with a failed and an unfinished run."""

import json
import shutil
import subprocess
import sys

import matplotlib.image
import pytest
import yaml
from conftest import ROOT, TINY_OVERRIDES, TRAIN_SCRIPT, child_env, run_train
from wandb_records import find_run_file, read_run

COMPARE_SCRIPT = ROOT / "scripts" / "compare.py"


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=ROOT, stdin=subprocess.DEVNULL)


def multirun(sweep_dir, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # one seed per job (the experiment stacks 8): these tests read one run per job folder
    return run_script(str(TRAIN_SCRIPT), "-m", "+experiment=composition_sweep",
                      f"hydra.sweep.dir={sweep_dir}", *TINY_OVERRIDES, "train.n_seeds=1",
                      *overrides,
                      timeout=timeout)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two conditions of the experiment (blocked none and K), seed 0, two runs side by side."""
    sweep_dir = tmp_path_factory.mktemp("multirun") / "composition_sweep" / "test"
    proc = multirun(sweep_dir, "hydra/launcher=local", "seed=0", "model.positional=standard",
                    "model.blocked_composition=[],[K]")
    assert proc.returncode == 0, proc.stderr
    return sweep_dir


@pytest.mark.slow  # end-to-end: real multiruns
def test_multirun_writes_one_finished_run_per_condition(sweep):
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    blocked = []
    for run_dir in runs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 60
        assert config["seed"] == 0 and config["train"]["steps"] == 60  # the override beat 12000
        blocked.append(config["model"]["blocked_composition"])
    assert blocked == [[], ["K"]]


@pytest.mark.slow  # end-to-end: real multiruns
def test_sweep_runs_share_a_wandb_group_and_carry_condition_tags(sweep):
    records = [read_run(find_run_file(sweep / n)) for n in ("0", "1")]
    assert {r["run"].run_group for r in records} == {"composition_sweep-test"}
    assert list(records[0]["run"].tags) == ["positional:standard", "blocked:none"]
    assert list(records[1]["run"].tags) == ["positional:standard", "blocked:K"]
    assert [r["run"].display_name for r in records] == ["standard-seed0",
                                                        "standard-noK-seed0"]
    assert records[1]["config"]["model"]["blocked_composition"] == ["K"]


@pytest.mark.slow  # end-to-end: real multiruns
def test_compare_reports_finished_failed_and_unfinished_runs(sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(sweep, sweep_dir)
    # a run that really fails: the loss goes non-finite, the run records status "failed"
    failed = run_train(sweep_dir / "2", *TINY_OVERRIDES, "optim.lr=1e30", "logger.mode=disabled")
    assert failed.returncode == 1, failed.stderr
    assert json.loads((sweep_dir / "2" / "summary.json").read_text())["status"] == "failed"
    # a run killed (or still running) at step 20: no summary.json, two metrics rows
    shutil.copytree(sweep_dir / "1", sweep_dir / "3")
    (sweep_dir / "3" / "summary.json").unlink()
    rows = (sweep_dir / "3" / "metrics.jsonl").read_text().splitlines()
    (sweep_dir / "3" / "metrics.jsonl").write_text("\n".join(rows[:2]) + "\n")

    proc = run_script(str(COMPARE_SCRIPT), str(sweep_dir))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "4 runs (2 finished, 1 failed, 1 incomplete)" in out
    table = [line for line in out.splitlines() if line.startswith("| positional=")]
    assert len(table) == 3  # the failed run's learning rate makes a condition of its own
    none_row, k_row, failed_row = table
    assert none_row.startswith("| positional=standard, blocked=none, lr=0.01 | 1 | ")
    assert k_row.startswith("| positional=standard, blocked=K, lr=0.01 | 1 (+1 incomplete) | ")
    assert failed_row.startswith("| positional=standard, blocked=none, lr=1e+30 | 0 (+1 failed) |")
    assert " | none 1 | " in none_row  # the verdict each run recorded in summary.json
    failed_line = next(line for line in out.splitlines() if line.startswith("failed:"))
    assert str(sweep_dir / "2") in failed_line and "non-finite" in failed_line
    unfinished = next(line for line in out.splitlines() if line.startswith("incomplete"))
    assert str(sweep_dir / "3") in unfinished and "at step 20 of 60" in unfinished
    image = matplotlib.image.imread(sweep_dir / "compare.png")
    assert image.shape[0] > 400 and image.shape[1] > 400
    assert (sweep_dir / "compare.md").read_text().startswith(str(sweep_dir))
    page = (sweep_dir / "compare.html").read_text()  # opened in test_report_browser.py
    assert f"Page: {sweep_dir / 'compare.html'}" in out
    assert str(sweep_dir / "2") in page and "lr=1e+30" in page


def test_compare_refuses_a_folder_without_runs(tmp_path):
    proc = run_script(str(COMPARE_SCRIPT), str(tmp_path))
    assert proc.returncode == 2
    assert "no runs under" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # end-to-end: real multiruns
def test_trained_with_k_blocked_the_layer1_keys_read_only_the_direct_path(tmp_path):
    """After training with K blocked (Hydra override -> checkpoint -> load_run), layer-1 keys are
    exactly (W_E[tok] + W_pos) @ W_K: nothing layer 0 writes reaches them."""
    import torch

    from tinyinduct import load_run

    proc = run_train(tmp_path / "k", *TINY_OVERRIDES, "model.blocked_composition=[K]",
                     "logger.mode=disabled", "train.steps=40")
    assert proc.returncode == 0, proc.stderr
    model = load_run(tmp_path / "k").model
    assert model.cfg.blocked_composition == ["K"]
    tokens = torch.randint(1, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    direct = model.embed.W_E[tokens] + model.pos_embed.W_pos[:32]
    keys = torch.einsum("bpd,hde->bphe", direct, model.blocks[1].attn.W_K)
    torch.testing.assert_close(cache["blocks.1.attn.hook_k"], keys)
    queries = torch.einsum("bpd,hde->bphe", direct, model.blocks[1].attn.W_Q)
    assert not torch.allclose(cache["blocks.1.attn.hook_q"], queries, atol=1e-4)  # not blocked


@pytest.mark.slow  # end-to-end: real multiruns
def test_bad_blocked_composition_on_the_command_line_names_the_field(tmp_path):
    proc = run_train(tmp_path / "bad", *TINY_OVERRIDES, "model.blocked_composition=[X]",
                     timeout=60)
    assert proc.returncode == 2
    assert "model.blocked_composition" in proc.stderr and "Traceback" not in proc.stderr


def test_slurm_launcher_config_composes():
    proc = run_script(str(TRAIN_SCRIPT), "+experiment=composition_sweep", "hydra/launcher=slurm",
                      "hydra.launcher.partition=cpu", "--cfg", "hydra", "-p", "hydra.launcher",
                      timeout=60)
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout.split("\n", 1)[1])  # after "# @package hydra.launcher"
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "cpu" and launcher["cpus_per_task"] == 2


@pytest.mark.slow  # end-to-end: real multiruns
def test_wandb_sweep_command_is_valid_hydra(tmp_path):
    """Build the command exactly as `wandb agent` does from configs/wandb_sweep.yaml, for one grid
    point, and run it: Hydra must take `model.blocked_composition=[K]` as a list."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = yaml.safe_load((ROOT / "configs" / "wandb_sweep.yaml").read_text())
    params = spec["parameters"]
    point = {name: {"value": p["values"][1] if "values" in p else p["value"]}
             for name, p in params.items()}
    point["logger.mode"] = {"value": "disabled"}  # no W&B server in a test
    args = create_sweep_command_args({"args": point})["args_no_hyphens"]
    assert "model.blocked_composition=[K]" in args
    command = [a for a in spec["command"] if not a.startswith("${")]
    assert spec["command"][:3] == ["${env}", "${interpreter}", "${program}"]
    run_dir = tmp_path / "agent"
    proc = run_script(spec["program"], *command, *args, *TINY_OVERRIDES, "train.steps=20",
                      f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["blocked_composition"] == ["K"]
    assert config["model"]["positional"] == "shortformer" and config["seed"] == 1


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    """The submitit path (as on SLURM), on this machine."""
    sweep_dir = tmp_path / "composition_sweep" / "submitit"
    proc = multirun(sweep_dir, "hydra/launcher=submitit_local", "seed=0",
                    "model.positional=shortformer", "model.blocked_composition=[],[Q]",
                    "logger.mode=disabled", timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name, blocked in (("0", []), ("1", ["Q"])):
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        config = yaml.safe_load((sweep_dir / name / "config.yaml").read_text())
        assert summary["status"] == "finished"
        assert config["model"]["blocked_composition"] == blocked


def test_condition_row_counts_mechanism_verdicts_and_leaves_out_unfinished_runs(tmp_path):
    from tinyinduct.sweep_report import Condition, SweepRun, condition_row

    def run(state, **summary):
        base = {"induction_formed": True, "phase_change_step": 1000, "best_induction_score": 0.8,
                "final_loss_second_copy": 1.0, "final_loss_first_copy": 6.0,
                "final_train_loss": 3.0, "status": state}
        return SweepRun(tmp_path, {"seed": 0}, [], {**base, **summary}, state)

    condition = Condition("positional=standard, blocked=none", [
        run("finished", mechanism="K"),
        run("finished", mechanism={"verdict": "K", "L1H0": {"K": 0.1}}, phase_change_step=2000),
        run("finished", mechanism="Q", induction_formed=False, phase_change_step=None),
        run("failed", mechanism="Q"),
    ])
    row = condition_row(condition)
    assert row["runs"] == "3 (+1 failed)"
    assert row["formed"] == "2/3"
    assert row["phase change step"] == "1500 ± 707 (2/3 crossed)"
    assert row["mechanism"] == "K 2, Q 1"
    assert row["second-copy loss"] == "1.00 ± 0.00"
    assert condition_row(Condition("x", [run("finished")]))["mechanism"] == "n/a"


@pytest.mark.slow  # end-to-end: real multiruns
def test_a_failed_run_does_not_stop_the_sweep(tmp_path):
    sweep_dir = tmp_path / "composition_sweep" / "failing"
    proc = multirun(sweep_dir, "seed=0", "model.positional=standard",
                    "model.blocked_composition=[]", "optim.lr=1e30,1e-2", "logger.mode=disabled")
    assert proc.returncode != 0  # Hydra reports the failed job at the end
    statuses = [json.loads((sweep_dir / n / "summary.json").read_text())["status"]
                for n in ("0", "1")]
    assert statuses == ["failed", "finished"]  # the run after the failure still ran


@pytest.mark.slow  # end-to-end: real multiruns
def test_compare_attributes_runs_whose_summary_has_no_mechanism(sweep):
    """Runs from before mechanism attribution: the verdict comes from their final checkpoint."""
    import json
    import shutil

    from tinyinduct.sweep_report import load_sweep_run

    run_dir = sweep / "0"
    recorded = json.loads((run_dir / "summary.json").read_text())["mechanism"]
    old = run_dir.parent / "old_run"
    shutil.copytree(run_dir, old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["mechanism"]
    (old / "summary.json").write_text(json.dumps(summary))
    assert load_sweep_run(old).summary["mechanism"] == recorded
    shutil.rmtree(old)


# --- any sweep a user can make, and folders holding files tinyinduct did not write -------------

def tiny_run_config(**changes):
    """The config dict a tiny run writes to config.yaml, with `changes` ({"seed": 1,
    "train.steps": 120, ...}) applied."""
    from tinyinduct.config import (
        DataConfig,
        LoggerConfig,
        ModelConfig,
        RunConfig,
        TrainConfig,
        to_dict,
    )

    cfg = to_dict(RunConfig(
        device="cpu", model=ModelConfig(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64),
        data=DataConfig(d_vocab=64, seq_len=32, min_copy_len=4, max_copy_len=12, batch_size=8,
                        eval_batch_size=16),
        train=TrainConfig(steps=60, eval_every=20, checkpoint_every=40),
        logger=LoggerConfig(mode="disabled", progress=False)))
    for key, value in changes.items():
        *sections, name = key.split(".")
        target = cfg
        for section in sections:
            target = target[section]
        target[name] = value
    return cfg


def write_run(run_dir, config, last_step, summary=None):
    """A run directory as the loop writes it: config.yaml, metrics.jsonl up to `last_step` (every
    20 steps), summary.json unless `summary` is None."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": s, "tokens": s * 256, "train/loss": 4.0 - s / 100,
             "heads/induction/L1H0": s / 100, "heads/induction/L1H1": 0.1,
             "eval/loss_second_copy": 4.0 - s / 30} for s in range(0, last_step + 1, 20)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))


def finished_summary(step=60, **extra):
    return {"status": "finished", "exit_code": 0, "last_step": step, "steps": step,
            "induction_formed": False, "phase_change_step": None, "best_induction_score": 0.6,
            "final_loss_second_copy": 2.0, "final_loss_first_copy": 4.0,
            "final_train_loss": 3.4, "mechanism": "K", **extra}


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory):
    """Plain runs, a two-seed job (one seed finished, one stopped by Ctrl-C), a killed run, a run
    stopped by Ctrl-C before the loop could write its summary, a longer budget, a real run
    trained through the Python API, and folders that are not runs at all."""
    from tinyinduct import train
    from tinyinduct.config import run_config_from_dict

    root = tmp_path_factory.mktemp("mixed") / "sweep"
    write_run(root / "plain" / "0", tiny_run_config(), 60, finished_summary())
    write_run(root / "plain" / "1", tiny_run_config(**{"model.blocked_composition": ["K"]}), 60,
              finished_summary())
    job = root / "job"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump(tiny_run_config(seed=1, **{
        "train.n_seeds": 2})))
    interrupted = {"status": "interrupted", "exit_code": 130, "interrupted_by": "SIGINT",
                   "last_step": 40, "steps": 40}
    (job / "summary.json").write_text(json.dumps({
        "status": "interrupted", "exit_code": 130, "n_seeds": 2, "seeds": [1, 2],
        "best_induction_score": [0.6, 0.3], "seed_summaries": {
            "1": finished_summary(), "2": interrupted}}))
    write_run(job / "seed1", tiny_run_config(seed=1), 60, finished_summary())
    write_run(job / "seed2", tiny_run_config(seed=2), 40, interrupted)
    write_run(root / "killed", tiny_run_config(seed=3), 20)  # kill -9: no summary.json
    write_run(root / "ctrl_c_early", tiny_run_config(seed=4), 20, {
        "status": "interrupted", "error": "KeyboardInterrupt: ", "steps": 20})
    write_run(root / "longer", tiny_run_config(seed=5, **{"train.steps": 120}), 120,
              finished_summary(120))
    api = root / "api"
    config = tiny_run_config(seed=6)
    summary = train(run_config_from_dict(config), api)
    assert summary["status"] == "finished"
    if not (api / "config.yaml").exists():  # the loop writes it itself; older loops did not
        (api / "config.yaml").write_text(yaml.safe_dump(config))

    (root / "notes").mkdir()
    (root / "notes" / "config.yaml").write_text("- lr\n- epochs\n")
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("model: [1, 2\n")
    (root / "other_tool").mkdir()
    (root / "other_tool" / "config.yaml").write_text("lr: 0.1\nepochs: 3\n")
    write_run(root / "corrupt_summary", tiny_run_config(seed=7), 60)
    (root / "corrupt_summary" / "summary.json").write_text('{"status": "fini')
    (root / "empty_job").mkdir()
    (root / "empty_job" / "config.yaml").write_text(yaml.safe_dump(tiny_run_config(**{
        "train.n_seeds": 3})))
    return root


def compare_main(*args: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_script", COMPARE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def test_compare_reads_jobs_interrupted_killed_api_and_foreign_folders(mixed_sweep, capsys):
    assert compare_main(str(mixed_sweep)) == 0
    out = capsys.readouterr().out
    root = str(mixed_sweep)
    assert f"{root}: 8 runs (5 finished, 0 failed, 2 interrupted, 1 incomplete)" in out
    table = [line for line in out.splitlines() if line.startswith("| positional=")]
    assert [row.split(" | ")[:2] for row in table] == [
        ["| positional=standard, blocked=none, steps=60", "3 (+2 interrupted, 1 incomplete)"],
        ["| positional=standard, blocked=none, steps=120", "1"],  # folders in name order
        ["| positional=standard, blocked=K, steps=60", "1"]]
    lines = out.splitlines()

    def line_about(prefix, where):
        return next(x for x in lines if x.startswith(prefix) and f"{root}/{where} " in x + " ")

    assert "stopped by SIGINT at step 40 of 60" in line_about("interrupted:", "job/seed2")
    assert "at step 20 of 60" in line_about("interrupted:", "ctrl_c_early")
    assert "no summary.json, at step 20 of 60" in line_about("incomplete", "killed")
    skipped = [x for x in lines if x.startswith("skipped: ")]
    assert len(skipped) == 5, skipped
    assert any(f"{root}/notes/config.yaml: a YAML list" in x for x in skipped)
    assert any(f"{root}/broken/config.yaml: invalid YAML at line" in x for x in skipped)
    assert any(f"{root}/other_tool/config.yaml: not a tinyinduct config (unknown keys "
               "epochs, lr)" in x for x in skipped)
    assert any(f"{root}/corrupt_summary/summary.json: invalid JSON" in x for x in skipped)
    assert any(f"{root}/empty_job: a job of 3 seeds with no seed<s>/ run yet" in x
               for x in skipped)
    assert f"{root}/job " not in out and f"{root}/job:" not in out  # the job is not a run


def test_load_sweep_groups_each_seed_of_a_job_as_a_run(mixed_sweep):
    from tinyinduct.sweep_report import NotARun, load_sweep, load_sweep_run

    skipped = []
    runs = {str(r.run_dir.relative_to(mixed_sweep)): r
            for c in load_sweep(mixed_sweep, skipped) for r in c.runs}
    assert sorted(runs) == ["api", "ctrl_c_early", "job/seed1", "job/seed2", "killed", "longer",
                            "plain/0", "plain/1"]
    assert {k: r.state for k, r in runs.items() if r.state != "finished"} == {
        "ctrl_c_early": "interrupted", "job/seed2": "interrupted", "killed": "incomplete"}
    assert runs["job/seed2"].last_step == 40 and runs["job/seed1"].seed == 1
    assert runs["api"].rows[-1]["step"] == 60 and runs["api"].summary["status"] == "finished"
    with pytest.raises(NotARun, match="the directory of a job of 2 seeds"):
        load_sweep_run(mixed_sweep / "job")


def test_compare_on_a_folder_of_foreign_files_only_names_them(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text(": : :\n")
    proc = run_script(str(COMPARE_SCRIPT), str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"no runs under {tmp_path} (1 skipped)" in proc.stderr
    assert f"skipped: {tmp_path}/x/config.yaml: invalid YAML" in proc.stderr


def test_load_run_names_a_corrupt_checkpoint_or_summary(mixed_sweep, tmp_path):
    from tinyinduct import load_run
    from tinyinduct.runs import RunFileError

    run_dir = tmp_path / "api"
    shutil.copytree(mixed_sweep / "api", run_dir)
    assert load_run(run_dir).step == 60
    (run_dir / "summary.json").write_text("{oops")
    with pytest.raises(RunFileError, match=f"^{run_dir}/summary.json: not valid JSON"):
        load_run(run_dir)
    (run_dir / "summary.json").write_text("[]")
    with pytest.raises(RunFileError, match="a JSON list, not a run summary"):
        load_run(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    checkpoint.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(RunFileError) as info:
        load_run(run_dir)
    assert str(info.value) == f"not a tinyinduct checkpoint: {checkpoint}"
    import torch

    torch.save({"weights": torch.zeros(2)}, checkpoint)  # a real torch file, someone else's
    with pytest.raises(RunFileError, match="not a tinyinduct checkpoint: .*no config, model"):
        load_run(run_dir)


def test_a_clamp_names_its_condition_as_one_setting():
    """The intervention sweep's conditions: no clamp, a previous-token clamp on L0H0, an
    induction clamp on L1H0. The clamp mapping is one setting, not one per head."""
    from types import SimpleNamespace

    from tinyinduct.sweep_report import condition_keys, condition_label

    clamps = [{}, {"L0H0": "previous_token"}, {"L1H0": "induction", "L0H1": "previous_token"}]
    configs = [{"seed": s, "intervene": {"clamp_pattern": c}} for s, c in enumerate(clamps)]
    keys = condition_keys([SimpleNamespace(config=c) for c in configs])
    assert keys == ["model.positional", "model.blocked_composition", "intervene.clamp_pattern"]
    assert [condition_label(c, keys) for c in configs] == [
        "positional=standard, blocked=none, clamp=none",
        "positional=standard, blocked=none, clamp=L0H0:previous_token",
        "positional=standard, blocked=none, clamp=L0H1:previous_token+L1H0:induction"]
