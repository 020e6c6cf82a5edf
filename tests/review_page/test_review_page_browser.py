"""The review page in a real browser: headless Chromium from Debian's
``chromium`` package, driven by Selenium through Debian's ``chromium-driver``
(no browser download). Skipped where they are missing, except in CI (CI is
set), where that fails: .ci/run installs them.

``WBC_EDGE_REVIEW_SCREENSHOT=docs/review-page.png pytest -m browser`` also
writes the README's screenshot.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.review_page.support import FakeCamClassifier, need, start

pytestmark = pytest.mark.browser


def _missing(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must run the browser tests: .ci/run installs chromium and chromium-driver)",
                    pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    need("selenium", "pip install selenium (in the test extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                              else None)
    if binary is None or driver is None:
        _missing("headless Chromium is not installed: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,960", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


class Page:
    def __init__(self, driver, server):
        from selenium.webdriver.common.by import By

        self.d, self.server, self.By = driver, server, By
        driver.get_log("browser")  # the log so far is other tests'
        driver.get(server.url)
        self.wait(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        self.session = server.session

    def wait(self, condition, timeout=20):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.d, timeout).until(condition)

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def press(self, *keys):
        from selenium.webdriver.common.action_chains import ActionChains

        for key in keys:
            ActionChains(self.d).send_keys(key).perform()

    def text(self, element_id) -> str:
        return self.d.find_element(self.By.ID, element_id).text

    def progress_is(self, reviewed: int):
        want = f"{reviewed} of {len(self.session.flagged)} flagged reviewed"
        self.wait(lambda d: self.text("progress").startswith(want))

    @property
    def selected(self) -> int | None:
        value = self.js("return document.body.dataset.selected")
        return int(value) if value else None

    def visible_cells(self) -> list[int]:
        return self.js("return [...document.querySelectorAll('section.group:not([hidden]) figure.cell')]"
                       ".map(f => Number(f.dataset.cell))")

    def group_of(self, cell: int) -> str:
        return self.js("return document.getElementById('cell-' + arguments[0]).closest('section').dataset.class",
                       cell)

    def click(self, element_id):
        self.d.find_element(self.By.ID, element_id).click()

    def message(self) -> str:
        return self.js("const m = document.getElementById('message'); return m.hidden ? '' : m.textContent")

    def errors(self) -> list[str]:
        """Script errors and failed requests, but for the refusals a test
        asked for (409: sign-off refused, the review signed off)."""
        return [e["message"] for e in self.d.get_log("browser")
                if e["level"] == "SEVERE" and "favicon" not in e["message"] and "status of 409" not in e["message"]]


def screenshot(page: Page, path: Path) -> None:
    assert page.d.save_screenshot(str(path)), path
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def served(report_path):
    servers = []

    def serve(**kw):
        server = start(report_path, **kw)
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


def test_the_page_shows_the_cells_by_class_flagged_first(browser, served, tmp_path):
    server = served()
    page = Page(browser, server)
    report = server.session.report
    flagged = server.session.flagged
    page.progress_is(0)
    assert len(page.visible_cells()) == len(server.session.cells)
    # the differential beside the gallery, with one key per class
    rows = page.js("return [...document.querySelectorAll('#differential tbody tr')].map(r => "
                   "[...r.cells].map(c => c.textContent))")
    keys = server.session.session()["keys"]
    assert [r[1] for r in rows] == report["model"]["classes"]
    for key, name, count, percent, left in rows:
        assert key == keys[name] and int(count) == report["differential"]["counts"][name]
        assert float(percent) == pytest.approx(report["differential"]["percent"][name], abs=0.051)
        assert int(left or 0) == report["differential"]["flagged_by_class"][name]
    # grouped by class; in each group the flagged cells come first, with their reason
    for name in report["model"]["classes"]:
        cells = page.js("return [...document.querySelectorAll('#group-' + arguments[0] + ' figure.cell')]"
                        ".map(f => Number(f.dataset.cell))", name)
        assert sorted(cells) == sorted(i for i in server.session.cells if report["images"][i]["label"] == name)
        marks = [i in flagged for i in cells]
        assert marks == sorted(marks, reverse=True), name
    for i in flagged:
        reason = page.js("return document.querySelector('#cell-' + arguments[0] + ' .reason').textContent", i)
        assert reason == report["images"][i]["review_reason"]
    assert page.selected in flagged
    # the images are the report's, loaded
    page.wait(lambda d: page.js("return document.querySelector('#cell-' + arguments[0] + ' img').naturalWidth",
                                flagged[0]) > 0)
    # filters: flagged cells only, one class only
    page.js("const s = document.getElementById('flag-filter'); s.value = 'flagged';"
            "s.dispatchEvent(new Event('change'))")
    assert sorted(page.visible_cells()) == sorted(flagged)
    page.js("const s = document.getElementById('flag-filter'); s.value = 'all'; s.dispatchEvent(new Event('change'))")
    name = report["images"][flagged[0]]["label"]
    page.d.find_element(page.By.CSS_SELECTOR, f"#differential tr[data-class='{name}']").click()
    assert {page.group_of(c) for c in page.visible_cells()} == {name}
    page.d.find_element(page.By.CSS_SELECTOR, f"#differential tr[data-class='{name}']").click()
    assert len(page.visible_cells()) == len(server.session.cells)
    # enlarge a cell, then close it
    page.press(" ")
    page.wait(lambda d: page.js("return !document.getElementById('zoom').hidden && "
                                "document.getElementById('zoom-img').naturalWidth > 0"))
    assert page.text("zoom-title") == os.path.basename(report["images"][page.selected]["path"])
    assert page.js("return document.querySelectorAll('#zoom-probs tr').length") == len(report["model"]["classes"])
    screenshot(page, tmp_path / "zoom.png")
    page.press("\ue00c")  # Escape
    page.wait(lambda d: page.js("return document.getElementById('zoom').hidden"))
    screenshot(page, tmp_path / "review-page.png")
    assert page.errors() == []


def test_reclassify_with_the_keyboard_undo_approve_and_export(browser, served, tmp_path):
    from selenium.webdriver.common.keys import Keys

    server = served()
    page = Page(browser, server)
    session = server.session
    keys = session.session()["keys"]
    first = page.selected
    predicted = session.entry(first)["label"]
    new = next(c for c in session.classes if c != predicted)

    page.press(keys[new])  # reclassify
    page.progress_is(1)
    assert session.decisions[first]["corrected"] == new and session.decisions[first]["reviewer"] == "Test Reviewer"
    assert json.loads(session.state_path.read_text())["decisions"][str(first)]["corrected"] == new  # saved at once
    assert page.group_of(first) == new
    assert page.js("return document.querySelector('#cell-' + arguments[0] + ' .verdict').textContent", first) \
        == "→ " + new
    count = page.js("return document.querySelector('#differential tr[data-class=\"' + arguments[0] + '\"]')"
                    ".cells[2].textContent", new)
    assert int(count) == session.report["differential"]["counts"][new] + 1  # the differential follows
    assert page.selected != first  # on to the next cell

    page.press("u")  # undo
    page.progress_is(0)
    assert first not in session.decisions and page.selected == first and page.group_of(first) == predicted

    page.press(Keys.ENTER)  # approve
    page.progress_is(1)
    assert session.decisions[first]["corrected"] == predicted
    second = page.selected
    assert second != first

    page.press(Keys.BACKSPACE)  # undo again
    page.progress_is(0)
    assert session.decisions == {} and page.selected == first

    page.press(keys[new])  # first: reclassified
    page.progress_is(1)
    approved = page.selected
    page.press(Keys.ENTER)  # the next: approved
    page.wait(lambda d: f" 2 of {len(session.cells)} cells reviewed" in page.text("progress"))
    if os.environ.get("WBC_EDGE_REVIEW_SCREENSHOT"):
        screenshot(page, Path(os.environ["WBC_EDGE_REVIEW_SCREENSHOT"]))
    page.click("export")
    page.wait(lambda d: page.message().startswith("Wrote"))

    rows = list(csv.DictReader(open(session.corrections_path, newline="")))
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 2
    row = by_path[str(session.image_path(first))]
    assert row["predicted"] == predicted and row["corrected"] == new and row["reviewer"] == "Test Reviewer"
    row = by_path[str(session.image_path(approved))]
    assert row["corrected"] == row["predicted"] == session.entry(approved)["label"]
    reviewed = json.loads(session.reviewed_path.read_text())
    assert reviewed["images"][first]["reviewed"]["label"] == new
    assert reviewed["images"][first]["label"] == predicted  # the prediction is kept
    assert reviewed["images"][approved]["reviewed"]["changed"] is False
    assert reviewed["review_session"]["status"] == "in progress"
    assert reviewed["reviewed_differential"]["counts"][new] == session.report["differential"]["counts"][new] + 1
    screenshot(page, tmp_path / "after-export.png")
    assert page.errors() == []


def test_sign_off_is_refused_then_allowed(browser, served, tmp_path):
    from selenium.webdriver.common.keys import Keys

    server = served()
    page = Page(browser, server)
    session = server.session
    n = len(session.flagged)
    page.click("signoff")
    page.wait(lambda d: "sign-off refused" in page.message())
    assert f"{n} of {n} flagged cells are not reviewed" in page.message()
    assert session.signed_off is None and not session.reviewed_path.exists()
    # the page now shows what is left to review
    assert page.js("return document.getElementById('flag-filter').value") == "todo"
    assert sorted(page.visible_cells()) == sorted(session.flagged)
    for done in range(1, n + 1):
        page.press(Keys.ENTER)
        page.progress_is(done)
    assert page.visible_cells() == []
    page.click("signoff")
    page.wait(lambda d: page.message().startswith("Signed off by Test Reviewer"))
    reviewed = json.loads(session.reviewed_path.read_text())
    assert reviewed["review_session"]["status"] == "signed off"
    assert reviewed["review_session"]["signed_off"]["by"] == "Test Reviewer"
    assert len(list(csv.DictReader(open(session.corrections_path)))) == n
    assert "signed off by Test Reviewer" in page.text("progress")
    # signed: no more changes
    page.js("const s = document.getElementById('flag-filter'); s.value = 'all'; s.dispatchEvent(new Event('change'))")
    before = dict(session.decisions)
    page.press(session.session()["keys"][session.classes[0]])
    page.wait(lambda d: "signed off" in page.message())
    assert session.decisions == before
    screenshot(page, tmp_path / "signed-off.png")


def test_reopening_continues_from_the_saved_review(browser, served, report_path):
    from selenium.webdriver.common.keys import Keys

    page = Page(browser, served())
    keys = page.session.session()["keys"]
    first = page.selected
    page.press(keys["lymphocyte"] if page.session.entry(first)["label"] != "lymphocyte" else keys["monocyte"])
    page.progress_is(1)
    # the next cell shown need not be flagged: pick a flagged one still to review, then approve it
    second = next(c for c in page.session.flagged if c not in page.session.decisions)
    page.d.find_element(page.By.ID, f"cell-{second}").click()
    page.wait(lambda d: page.selected == second)
    page.press(Keys.ENTER)
    page.progress_is(2)
    saved = dict(page.session.decisions)
    page.server.stop()  # as if the browser and the command were closed

    again = Page(browser, served())
    assert again.session.resumed and again.session.decisions == saved
    again.progress_is(2)
    for cell, d in saved.items():
        verdict = again.js("return document.querySelector('#cell-' + arguments[0] + ' .verdict').textContent", cell)
        assert verdict == ("✓ approved" if d["corrected"] == d["predicted"] else "→ " + d["corrected"])
    assert again.selected not in saved  # the first flagged cell not reviewed yet


def test_cam_toggle_draws_the_map_over_the_cells(browser, served, report_path):
    from wbc_edge.review_page.cam import CamProvider

    model = json.loads(report_path.read_text())["model"]
    fake = FakeCamClassifier(model["classes"])
    server = served(cam=CamProvider(model, model["classes"], loader=lambda path: fake))
    page = Page(browser, server)
    cell = page.selected
    page.press("c")
    assert page.text("cam-toggle") == "CAM: on"
    drawn = ("const c = document.querySelector('#cell-' + arguments[0] + ' canvas');"
             "if (c.hidden || !c.dataset.drawn) return 0;"
             "const p = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
             "let n = 0; for (let i = 3; i < p.length; i += 4) n += p[i] > 0; return n / (p.length / 4);")
    page.wait(lambda d: page.js(drawn, cell) > 0.9)
    # the map is over the cell: its hottest corner (the fake's gradient) is red, the coldest blue
    corners = page.js("const c = document.querySelector('#cell-' + arguments[0] + ' canvas');"
                      "const g = c.getContext('2d');"
                      "return [g.getImageData(2, 2, 1, 1).data, g.getImageData(c.width - 3, c.height - 3, 1, 1).data]"
                      ".map(p => [...p]);", cell)
    cold, hot = corners
    assert hot[0] > hot[2] and cold[2] > cold[0]
    page.press(" ")
    page.wait(lambda d: page.js("const c = document.getElementById('zoom-cam'); return !c.hidden && "
                                "!!c.dataset.drawn"))
    page.press("\ue00c")
    page.press("c")
    assert page.text("cam-toggle") == "CAM: off"
    assert page.js("return document.querySelector('#cell-' + arguments[0] + ' canvas').hidden", cell)
    assert page.errors() == []


def test_cam_toggle_with_the_reports_own_model(browser, served):
    """The shipped model for real: its maps where it has them, else the page says so."""
    page = Page(browser, served())
    cell = page.selected
    page.press("c")
    page.wait(lambda d: "CAM not available" in page.message() or page.js(
        "const c = document.querySelector('#cell-' + arguments[0] + ' canvas'); return !c.hidden", cell), 60)
    if "CAM not available" in page.message():
        assert page.text("cam-toggle") == "CAM: not available"
    assert page.errors() == []
