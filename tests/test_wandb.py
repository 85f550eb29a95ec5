"""W&B in depth, read back from the offline `.wandb` file: history, summary, config, metric
definitions, the head-score table, run names, sweep groups, and the README's `wandb sync` line."""

import dataclasses
import glob
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_OVERRIDES, run_train
from wandb_records import find_run_file, read_run

from tinyinduct import config as schema
from tinyinduct.config import RunConfig, run_config_from_dict, to_dict
from tinyinduct.sweeps import sweep_group
from tinyinduct.tracking import MIN_SUMMARY_METRICS, run_name

# end-to-end: real runs read back from their W&B files
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "noK"
    proc = run_train(run_dir, *TINY_OVERRIDES, "seed=3", "model.blocked_composition=[K]")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, proc, rows, read_run(find_run_file(run_dir))


def test_every_logged_key_is_in_the_wandb_history(blocked_run):
    _, _, rows, record = blocked_run
    history = record["history"]
    assert [h["step"] for h in history] == [r["step"] for r in rows]
    for logged, row in zip(history, rows):
        for key, value in row.items():
            if value is None:  # NaN (the untrained step-0 loss): null locally, absent in W&B
                assert key not in logged, key
            else:
                assert logged[key] == pytest.approx(value), key
    assert "train/loss" not in history[0] and "train/loss" in history[1]


def test_summary_holds_the_verdict_and_the_best_values(blocked_run):
    run_dir, _, rows, record = blocked_run
    summary, local = record["summary"], json.loads((run_dir / "summary.json").read_text())
    for key in ("induction_formed", "best_induction_head", "best_induction_score",
                "phase_change_step", "loss_ratio", "status", "steps", "tokens_per_second"):
        if local[key] is not None:
            assert summary[key] == pytest.approx(local[key]), key
    assert summary["status"] == "finished" and summary["steps"] == 60
    head = "heads/induction/L1H0"
    assert summary[head]["max"] == pytest.approx(max(r[head] for r in rows))
    assert summary[head]["last"] == pytest.approx(rows[-1][head])
    for key in MIN_SUMMARY_METRICS:
        values = [r[key] for r in rows if r.get(key) is not None]
        assert summary[key]["min"] == pytest.approx(min(values)), key
    assert record["exit_code"] == 0


def test_config_is_logged_whole(blocked_run):
    run_dir, _, _, record = blocked_run
    logged = {k: v for k, v in record["config"].items() if not k.startswith("_")}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert logged == to_dict(run_config_from_dict(saved))
    assert set(logged) == {f.name for f in dataclasses.fields(RunConfig)}
    assert logged["model"]["blocked_composition"] == ["K"]


def test_every_metric_is_plotted_against_step(blocked_run):
    _, _, rows, record = blocked_run
    defined = {m.name or m.glob_name: m for m in record["metrics"]}
    assert defined["step"].options.defined and not defined["step"].step_metric
    assert defined["*"].step_metric == "step"  # everything else, glob
    assert defined["tokens"].step_metric == "step"  # logged in every row: an x-axis in the UI
    assert all(m.step_metric == "step" for name, m in defined.items() if name != "step")
    assert defined["heads/induction/L1H1"].summary.max
    assert defined["eval/loss_second_copy"].summary.min
    assert all("tokens" in h for h in record["history"])


def test_head_score_table_is_logged_with_the_final_scores(blocked_run):
    run_dir, _, rows, record = blocked_run
    files = glob.glob(str(run_dir / "wandb/offline-run-*/files/media/table/tables/"
                               "head_scores_*.json"))
    assert len(files) == 1, files
    table = json.loads(open(files[0]).read())
    assert table["columns"][:4] == ["head", "induction", "prev_token", "duplicate"]
    assert [r[0] for r in table["data"]] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    for logged in table["data"]:
        for column, kind in enumerate(("induction", "prev_token", "duplicate"), start=1):
            assert logged[column] == pytest.approx(rows[-1][f"heads/{kind}/{logged[0]}"])
    assert record["summary"]["tables/head_scores/nrows"] == 4


def test_run_name_says_the_condition(blocked_run):
    _, _, _, record = blocked_run
    assert record["run"].display_name == "standard-noK-seed3"
    names = {
        (): "standard-seed0", ("K",): "standard-noK-seed0", ("V", "Q"): "standard-noQV-seed0",
    }
    for blocked, name in names.items():
        cfg = RunConfig()
        cfg.model.blocked_composition = list(blocked)
        assert run_name(cfg) == name
    cfg = RunConfig(seed=3)
    cfg.model.positional = "shortformer"
    assert run_name(cfg) == "shortformer-seed3"
    cfg.logger.name = "mine"
    assert run_name(cfg) == "mine"
    assert set(schema.COMPOSITION_INPUTS) == {"Q", "K", "V"}


def test_a_sweep_shares_one_group_named_after_its_folder(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(tmp_path / "unused", *TINY_OVERRIDES, "train.steps=20",
                     f"hydra.sweep.dir={sweep_dir}", "seed=0,1", "-m")
    assert proc.returncode == 0, proc.stderr
    names = set()
    for job in ("0", "1"):
        record = read_run(find_run_file(sweep_dir / job))
        assert record["run"].run_group == sweep_group(sweep_dir)  # "<parent>-sweep"
        names.add(record["run"].display_name)
        # the README's sweep path, with this sweep's folder and job, finds the job's W&B run
        pattern = readme_sync_patterns()["multirun"]
        placeholder = "multirun/<date>/<time>/<job>"
        assert pattern.startswith(placeholder + "/"), pattern
        matches = glob.glob(str(sweep_dir / job) + pattern[len(placeholder):])
        assert len(matches) == 1 and find_run_file(sweep_dir / job).parent == Path(matches[0])
    assert names == {"standard-seed0", "standard-seed1"}


def readme_sync_patterns() -> dict:
    """The offline-run folders the README points `wandb sync` at, by the folder they start from."""
    text = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"((?:outputs|multirun)/\S*wandb/offline-run-[^\s`]*)", text))
    found = {p.split("/")[0]: p for p in paths}
    assert set(found) == {"outputs", "multirun"} and len(paths) == 2, paths
    assert re.search(r"^wandb sync " + re.escape(found["outputs"]), text, flags=re.M)
    return found


def test_readme_wandb_sync_points_at_the_offline_run_folder(blocked_run):
    run_dir, proc, _, _ = blocked_run
    printed = re.search(r"wandb sync (\S+)", proc.stdout).group(1)
    # the README's placeholder for the run dir, replaced by this run's dir, globs to that folder
    pattern = readme_sync_patterns()["outputs"]
    placeholder = "outputs/<date>/<time>"
    assert pattern.startswith(placeholder + "/"), pattern
    matches = glob.glob(str(run_dir) + pattern[len(placeholder):])
    assert matches == [printed]
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
