"""The published page in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven
through Selenium) opens ``results/index.html`` and a page published from a small store, checks that every table
renders its rows, that a click on a column header sorts the rows and a filter hides rows, and saves a screenshot
(copied to ``$MQBENCH_SCREENSHOTS`` when set, to look at). Skips when Chromium or Selenium is not installed;
``.ci/run`` installs both."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from mqbench.report import publish
from mqbench.store import Store
from tests.helpers import REPO
from tests.unit.test_publish import RECORDS

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="Chromium not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _published(tmp_path: Path) -> Path:
    store = Store(tmp_path)
    for r in RECORDS:
        store.append(dict(r))
    publish.publish(store.load(), store.root)
    return store.root


@pytest.fixture(params=["committed", "fixture"])
def page(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """``results/`` as committed, and a page published from three records in a temporary store."""
    return REPO / "results" if request.param == "committed" else _published(tmp_path)


def _column(driver, table, index: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).map(r => r.cells[arguments[1]].getAttribute('data-sort')"
        " ?? r.cells[arguments[1]].textContent.trim());", table, index)


def test_tables_render_sort_and_filter_in_chromium(browser, page: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get((page / "index.html").as_uri())
    rows = json.loads((page / "leaderboard.json").read_text())["rows"]
    tables = browser.find_elements(By.CSS_SELECTOR, "table.sortable")
    captions = [t.find_element(By.TAG_NAME, "caption").text for t in tables]
    accuracy = [t for t, c in zip(tables, captions, strict=True) if c == "Accuracy"]
    # one accuracy table per (suite, model, weights, environment), together holding every row of the leaderboard
    assert len(accuracy) == len({(r["suite"], r["model"], r["weights"], r["environment"]) for r in rows}) >= 1
    shown = Counter(browser.execute_script(
        "return Array.from(document.querySelectorAll('table.sortable')).filter(t => t.caption.textContent == "
        "'Accuracy').flatMap(t => Array.from(t.tBodies[0].rows).map(r => r.cells[0].textContent + ' ' + "
        "r.cells[1].textContent + ' ' + r.cells[2].textContent));"))
    assert shown == Counter(f"{r['pipeline']} {r['scheme']} {r['backend']}" for r in rows)
    # every embedded plot decoded
    assert browser.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert len(browser.find_elements(By.TAG_NAME, "img")) >= len(accuracy)

    table = max(accuracy, key=lambda t: len(t.find_elements(By.CSS_SELECTOR, "tbody tr")))
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    top1 = [h.text for h in headers].index("top-1 % [95% CI]")
    before = [float(v) for v in _column(browser, table, top1)]
    button = headers[top1].find_element(By.TAG_NAME, "button")
    browser.execute_script("arguments[0].scrollIntoView()", button)
    button.click()
    assert [float(v) for v in _column(browser, table, top1)] == sorted(before)
    assert headers[top1].get_attribute("aria-sort") == "ascending"
    button.click()
    assert [float(v) for v in _column(browser, table, top1)] == sorted(before, reverse=True)
    assert headers[top1].get_attribute("aria-sort") == "descending"

    anchor = table.get_attribute("id")
    box = browser.find_element(By.CSS_SELECTOR, f'input.filter[data-table="{anchor}"]')
    box.send_keys("fp32")
    visible = [r for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]
    assert visible and all("fp32" in r.text for r in visible) and len(visible) < len(before)
    count = browser.find_element(By.CSS_SELECTOR, f'span.count[data-table="{anchor}"]').text
    assert count == f"{len(visible)} of {len(before)} rows"

    box.clear()
    browser.execute_script("arguments[0].dispatchEvent(new Event('input')); window.scrollTo(0, 0)", box)
    shot = tmp_path / f"index-{page.name}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    if os.environ.get("MQBENCH_SCREENSHOTS"):
        target = Path(os.environ["MQBENCH_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
