"""Both report pages opened in a real browser (headless Chromium, the OS package) with the
network cut off: no script error, no request leaving the file, and the slider shows the logged
numbers of the step it is moved to."""

import json
from pathlib import Path

import pytest

from tinyinduct.report import write_run_report, write_sweep_report
from tinyinduct.sweep_report import load_sweep

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def open_offline(browser, path: Path):
    """The page at `path`, every non-file request aborted; returns (page, problems) where
    problems collects console errors, page errors and outside requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            problems.append(f"request: {route.request.url}")
            route.abort()

    page.route("**/*", only_files)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    return page, problems


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
