"""The report pages written from real runs: one self-contained file each, the numbers of the run
in them, and a page (not a crash) for a run or sweep with pieces missing. The browser test
(test_report_browser.py) opens them."""

import json
import re
import shutil
import subprocess
import sys

from conftest import ROOT, child_env

from tinyinduct.report import run_report_data, write_run_report, write_sweep_report
from tinyinduct.report.page import pack_patterns
from tinyinduct.sweep_report import load_sweep


def page_data(path):
    match = re.search(r'<script type="application/json" id="page-data">(.*?)</script>',
                      path.read_text(), flags=re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def assert_self_contained(path):
    text = path.read_text()
    assert not re.search(r"<(link|img|iframe)\b|\b(src|href)\s*=", text, flags=re.I)
    assert "@import" not in text and "url(" not in text
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)  # the SVG namespace only


def test_run_page_holds_the_run(recorded_sweep):
    _, runs = recorded_sweep
    path = write_run_report(runs["standard"])
    assert path == runs["standard"] / "report.html"
    assert_self_contained(path)
    data = page_data(path)
    rows = [json.loads(line) for line in (runs["standard"] / "metrics.jsonl").open()]
    assert data["steps"] == [r["step"] for r in rows] == [0, 20, 40, 60]
    last = rows[-1]
    for head in ("L0H0", "L1H1"):
        for kind in ("induction", "prev_token", "duplicate"):
            assert abs(data["scores"][kind][head][-1] - last[f"heads/{kind}/{head}"]) < 1e-4
    assert data["attention"]["steps"] == [0, 20, 40, 60]
    assert data["attention"]["shape"] == [2, 2, 32, 32]
    assert data["attention"]["first_copy"][1] == data["attention"]["second_copy"][1]
    assert data["notes"] == []
    summary = json.loads((runs["standard"] / "summary.json").read_text())
    assert any(summary["mechanism_head"] in line and "Mechanism" in line
               for line in data["verdict"])


def test_patterns_are_packed_as_uint8_lower_triangles():
    import base64
    import zlib

    import numpy as np

    array = np.zeros((1, 1, 1, 3, 3), dtype=np.float16)
    array[0, 0, 0] = [[1, 0, 0], [0.5, 0.5, 0], [0.25, 0.25, 0.5]]
    raw = zlib.decompress(base64.b64decode(pack_patterns(array)))
    assert list(raw) == [255, 128, 128, 64, 64, 128]


def test_pages_for_runs_with_pieces_missing(recorded_sweep, tmp_path):
    _, runs = recorded_sweep
    empty = tmp_path / "empty"  # started, nothing evaluated yet
    empty.mkdir()
    (empty / "config.yaml").write_text("train:\n  steps: 600\n")
    data = page_data(write_run_report(empty))
    assert any("No evaluations" in n for n in data["notes"])
    assert data["steps"] == [] and "nothing evaluated yet" in data["verdict"][0]

    running = tmp_path / "running"
    shutil.copytree(runs["incomplete"], running)
    data = page_data(write_run_report(running))
    assert any("still in progress" in n for n in data["notes"])
    assert data["verdict"] == ["No verdict yet: the run has no summary.json (still running, or "
                               "killed); last evaluation at step 20 of 60."]

    broken = tmp_path / "broken"
    shutil.copytree(runs["standard"], broken)
    (broken / "record" / "attention" / "step_0000040.npy").write_bytes(b"torn")
    data = run_report_data(broken)
    assert data["attention"]["steps"] == [0, 20, 60]
    assert any("step_0000040.npy" in n for n in data["notes"])
    assert any("3 of 4 evaluations" in n for n in data["notes"])

    shutil.rmtree(broken / "record")
    data = run_report_data(broken)
    assert data["attention"]["packed"] == ""
    assert any("No attention record" in n for n in data["notes"])

    failed = page_data(write_run_report(runs["failed"]))
    assert failed["verdict"][0].startswith("The run failed after step 20: ")


def test_sweep_page_with_failed_and_unfinished_runs(recorded_sweep):
    sweep_dir, runs = recorded_sweep
    conditions = load_sweep(sweep_dir)
    path = write_sweep_report(sweep_dir, conditions)
    assert path == sweep_dir / "compare.html"
    assert_self_contained(path)
    data = page_data(path)
    labels = [c["label"] for c in data["conditions"]]
    assert [row["condition"] for row in data["table"]] == labels == [c.label for c in conditions]
    assert len(labels) == 3  # standard (finished + incomplete), shortformer, lr=1e30 (failed)
    notes = " ".join(data["notes"])
    assert f"failed: {runs['failed']}" in notes and f"{runs['incomplete']}" in notes
    standard = next(c for c in data["conditions"] if c["states"]["incomplete"] == 1)
    assert standard["formed"]["steps"] == [0, 20, 40, 60]
    band = standard["curves"]["eval/loss_second_copy"]
    assert len(band["runs"]) == 2 and band["tokens"] == [0, 5120, 10240, 15360]
    assert all(lo <= m <= hi for lo, m, hi in zip(band["low"], band["mean"], band["high"]))


def test_report_command_writes_pages_and_redraws(recorded_sweep, tmp_path):
    _, runs = recorded_sweep
    run_dir = tmp_path / "run"
    shutil.copytree(runs["shortformer"], run_dir)
    (run_dir / "report.html").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "tinyinduct.report", str(run_dir), "--pictures"],
                          capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"Report: {run_dir / 'report.html'}" in proc.stdout
    assert f"Pictures: {run_dir / 'plots-redrawn'}" in proc.stdout
    assert (run_dir / "plots-redrawn" / "attention_patterns.png").stat().st_size > 10_000
    proc = subprocess.run([sys.executable, "-m", "tinyinduct.report", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=60)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


def test_report_command_on_a_several_seed_job_writes_each_seeds_page(recorded_sweep, tmp_path,
                                                                      capsys):
    from tinyinduct.report.__main__ import main

    _, runs = recorded_sweep
    job = tmp_path / "job"
    for seed, name in ((0, "standard"), (1, "shortformer")):
        shutil.copytree(runs[name], job / f"seed{seed}")
    (job / "config.yaml").write_text("train:\n  n_seeds: 2\n")
    assert main([str(job)]) == 0
    out = capsys.readouterr().out
    assert not (job / "report.html").exists()
    for seed in (0, 1):
        page = job / f"seed{seed}" / "report.html"
        assert f"Report: {page}" in out
        assert page_data(page)["run_dir"] == str(job / f"seed{seed}")
