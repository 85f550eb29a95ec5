"""Both report pages opened in a real browser (headless Chromium, the OS package) with the
network cut off: no script error, no request leaving the file, and the slider shows the logged
numbers of the step it is moved to."""

import json
import subprocess
import sys

import pytest
from conftest import child_env

from tinyinduct.report import write_run_report, write_sweep_report
from tinyinduct.report.browser import (
    CHROMIUM,
    chromium,
    open_offline,
    screenshot,
    show_step,
)
from tinyinduct.report.browser import main as screenshot_main
from tinyinduct.sweep_report import load_sweep

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def shown_scores(page) -> dict:
    return page.eval_on_selector_all(
        "#head-scores td[data-key]",
        "cells => Object.fromEntries(cells.map(c => [c.dataset.key, c.textContent]))")


def canvas_ink(page, index: int) -> float:
    """Mean darkness of one head's attention canvas (0 white .. 255 black)."""
    return page.eval_on_selector_all("#attention canvas", """(cs, i) => {
        const c = cs[i], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let sum = 0; for (let k = 0; k < d.length; k += 4) sum += 255 - d[k];
        return sum / (d.length / 4); }""", index)


def test_run_page_slider_shows_each_steps_logged_scores(browser, recorded_sweep):
    _, runs = recorded_sweep
    run_dir = runs["standard"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    page, problems = open_offline(browser, write_run_report(run_dir))
    slider = page.locator("#step")
    assert slider.get_attribute("max") == str(len(rows) - 1)
    for i in (len(rows) - 1, 0):
        slider.fill(str(i))
        assert page.locator("#step-label").get_attribute("data-step") == str(rows[i]["step"])
        scores = shown_scores(page)
        assert len(scores) == 4 * 3  # every head, three scores
        for key, text in scores.items():
            assert text == f"{rows[i][key]:.3f}", (rows[i]["step"], key)
        assert page.locator("#attention-step").text_content() == \
            f"Patterns at step {rows[i]['step']}."
        # every head's pattern is drawn: a causal pattern puts ink on at least the lower half
        assert min(canvas_ink(page, k) for k in range(4)) > 5
    assert page.locator("#verdict").text_content().count("Phase change") == 1
    assert page.locator("#composition svg line[data-pair]").count() == 3 * 2 * 2
    assert problems == []


def test_run_page_of_a_run_in_progress_names_what_is_missing(browser, recorded_sweep):
    _, runs = recorded_sweep
    page, problems = open_offline(browser, write_run_report(runs["incomplete"]))
    assert "No summary.json: the run is still in progress" in page.locator("#notes").text_content()
    page.locator("#step").fill("1")
    assert page.locator("#step-label").get_attribute("data-step") == "20"
    assert problems == []


def test_sweep_page_opens_offline_with_every_condition(browser, recorded_sweep):
    sweep_dir, runs = recorded_sweep
    conditions = load_sweep(sweep_dir)
    page, problems = open_offline(browser, write_sweep_report(sweep_dir, conditions))
    assert page.locator("#conditions tbody tr").count() == len(conditions) == 3
    first_cells = page.locator("#conditions tbody tr td:first-child").all_text_contents()
    assert first_cells == [c.label for c in conditions]
    notes = page.locator("#notes").text_content()
    assert str(runs["failed"]) in notes and str(runs["incomplete"]) in notes
    # every condition drawn as a mean line in each chart of curves, each with its own dash
    for c in conditions:
        assert page.locator(f'#sweep-curves path[data-label^="{c.label} ("]').count() >= 3
    dashes = page.eval_on_selector_all(
        "#sweep-curves figure:first-child path[data-label]:not([data-label=''])",
        "ps => ps.map(p => p.getAttribute('stroke-dasharray'))")
    assert len(set(dashes)) == len(dashes) == 3
    assert problems == []


def test_show_step_moves_to_the_first_evaluation_at_or_after_a_step(browser, recorded_sweep):
    _, runs = recorded_sweep
    run_dir = runs["standard"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    page, problems = open_offline(browser, write_run_report(run_dir))
    assert show_step(page, steps[2] - 1) == steps[2]
    assert page.locator("#step-label").get_attribute("data-step") == str(steps[2])
    assert show_step(page, steps[-1] + 1000) == steps[-1]  # past the end: the last one
    assert problems == []


def test_screenshots_show_the_page_at_a_step(browser, recorded_sweep, tmp_path, capsys):
    import matplotlib.image

    _, runs = recorded_sweep
    run_dir = runs["standard"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    page = write_run_report(run_dir)
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    assert screenshot(page, first, steps[0], browser) == []
    # the command, in its own process (it starts its own browser)
    proc = subprocess.run([sys.executable, "-m", "tinyinduct.report.browser", str(page),
                           str(last)], capture_output=True, text=True, env=child_env())
    assert proc.returncode == 0 and f"Screenshot: {last}" in proc.stdout, proc.stderr
    a, b = matplotlib.image.imread(first), matplotlib.image.imread(last)
    assert a.shape[1] == b.shape[1] == 1280 and a.shape[0] > 900  # the full page, not the view
    assert a.shape != b.shape or (a != b).any()  # step 0's patterns are not the last step's
    assert screenshot_main([str(tmp_path / "nothing.html"), str(tmp_path / "x.png")]) == 2
    assert "nothing.html is not a file" in capsys.readouterr().err
