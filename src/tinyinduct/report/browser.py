"""The report pages in a real browser: headless Chromium from the OS packages (no browser
download), driven by Playwright, with every request that leaves the file blocked. The browser
tests open the pages this way, and `scripts/reproduce.py` takes the docs' screenshots with it.

    python -m tinyinduct.report.browser RUN_DIR/report.html page.png --step 800
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

# Debian's package; TINYINDUCT_CHROMIUM points elsewhere.
CHROMIUM = Path(os.environ.get("TINYINDUCT_CHROMIUM", "/usr/bin/chromium"))
# Headless in a container, and nothing that phones home.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}


def missing() -> str | None:
    """Why no browser can be started here, or None."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'no Playwright (pip install -e ".[browser]")'
    return None


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium for the duration of the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_offline(browser, path: Path) -> Tuple[object, List[str]]:
    """The page at `path`, ready, with every non-file request aborted; returns (page, problems),
    where problems collects console errors, page errors and outside requests as they happen."""
    page = browser.new_page(viewport=VIEWPORT)
    problems: List[str] = []
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
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    return page, problems


def show_step(page, step: int) -> int:
    """Move a run page's slider to the first evaluation at or after `step`; returns its step."""
    slider = page.locator("#step")
    last = int(slider.get_attribute("max"))
    for index in range(last + 1):
        slider.fill(str(index))
        shown = int(page.locator("#step-label").get_attribute("data-step"))
        if shown >= step:
            return shown
    return shown


def screenshot(page_path: Path, out: Path, step: int | None = None,
               browser=None) -> List[str]:
    """A full-page PNG of a report page (a run page at `step` if given, else as it opens, which
    for a run page is its last evaluation); returns the page's problems (empty when clean).
    Starts a browser unless given one."""
    if browser is None:
        with chromium() as browser:
            return screenshot(page_path, out, step, browser)
    page, problems = open_offline(browser, page_path)
    if step is not None:
        show_step(page, step)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    page.close()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinyinduct.report.browser",
                                     description="Screenshot a report page offline.")
    parser.add_argument("page", type=Path, help="a report.html or compare.html")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--step", type=int, help="a run page: show this training step")
    args = parser.parse_args(argv)
    why = missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    if not args.page.is_file():
        print(f"error: {args.page} is not a file", file=sys.stderr)
        return 2
    problems = screenshot(args.page, args.out, args.step)
    for problem in problems:
        print(f"page problem: {problem}", file=sys.stderr)
    print(f"Screenshot: {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
