"""The notebook runs as written: it trains in-process, shows the phase change, knocks out the
previous-token head through a TransformerLens-style hook and reads the verdict."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT, child_env

NOTEBOOK = ROOT / "notebooks" / "watch_an_induction_head_form.py"


@pytest.mark.slow  # end-to-end: trains a default-size model for 1,200 steps
def test_the_notebook_runs_and_the_knockout_breaks_the_induction_head(tmp_path):
    proc = subprocess.run([sys.executable, str(NOTEBOOK)], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("True L1H")  # a head formed
    knockout = next(line for line in lines if "knocked out" in line)
    intact, ablated = (float(x) for x in re.findall(r"\d+\.\d+", knockout))
    assert ablated < 0.5 * intact
    assert "mechanism K" in lines[-1]
    [run_dir] = (tmp_path / "runs").iterdir()
    assert (run_dir / "notebook_phase_change.png").stat().st_size > 10_000
    assert (run_dir / "report.html").is_file()
