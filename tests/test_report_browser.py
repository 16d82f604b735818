"""The HTML report in a real browser: headless Chromium (Debian's, driven by Playwright) loads real report pages
from file URLs; what is rendered is asserted (title, every pass name, plots with a size), the console stays
free of errors, nothing but the page itself is requested, and full-page screenshots are kept as test artifacts
in ``build/test-artifacts/`` (``report.png``: the convert page; ``report-bench.png``: the bench page).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from converter.html_report import render
from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
DATA = ROOT / "tests" / "data" / "reports"
ARTIFACTS = ROOT / "build" / "test-artifacts"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium): the report's browser test needs a real Chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright; the system Chromium is used, no browser download)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


class Visit:
    """One page load with every console message, page error and request recorded."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.url = path.resolve().as_uri()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.goto(self.url, wait_until="load", timeout=15_000)

    def check_clean(self) -> None:
        assert not self.errors, self.errors
        assert self.requests == [self.url], f"the page requested more than itself: {self.requests}"

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        out = ARTIFACTS / name
        self.page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 10_000
        return out

    def close(self) -> None:
        self.context.close()


def _write(tmp_path: Path, name: str) -> tuple[dict[str, Any], Path]:
    doc = json.loads((DATA / f"{name}.json").read_text())
    path = tmp_path / f"{name}.html"
    path.write_text(render(doc), encoding="utf-8")
    return doc, path


def _plots_have_size(page: Any, least: int) -> None:
    svgs = page.locator("figure.plot svg")
    assert svgs.count() >= least
    for i in range(svgs.count()):
        box = svgs.nth(i).bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50, (i, box)


def test_convert_report_in_chromium(browser: Any, tmp_path: Path) -> None:
    doc, path = _write(tmp_path, "convert_qdq")
    visit = Visit(browser, path)
    try:
        page = visit.page
        assert page.title() == "convert report: ch_ppocr_mobile_v2.0_cls_infer.onnx"
        assert page.locator("h1").inner_text() == "convert report"
        names = page.locator("table.pipeline code")
        assert names.all_inner_texts() == [p["name"] for p in doc["passes"]]
        for i in range(names.count()):
            assert names.nth(i).is_visible()
        assert page.locator(".verdict .badge").first.inner_text() == "PASSED"
        assert page.get_by_text("Left in float, and why").is_visible()
        assert page.get_by_role("cell", name="Softmax@0", exact=True).first.is_visible()
        assert page.get_by_text(doc["artifact"]["manifest"]["artifact_sha256"]).is_visible()
        _plots_have_size(page, 2)  # pass times, the golden error histogram
        table = page.locator("table.pipeline").bounding_box()
        assert table is not None and table["width"] > 600
        visit.check_clean()
        visit.screenshot("report.png")
    finally:
        visit.close()


def test_bench_report_in_chromium(browser: Any, tmp_path: Path) -> None:
    doc, path = _write(tmp_path, "bench")
    visit = Visit(browser, path)
    try:
        page = visit.page
        assert page.locator("h1").inner_text() == "bench report"
        _plots_have_size(page, 1)
        rows = page.locator("#latency table tbody tr")
        assert rows.count() == len(doc["results"])
        assert page.get_by_role("heading", name="Compared with cls.fp32.onnx").is_visible()
        visit.check_clean()
        visit.screenshot("report-bench.png")
    finally:
        visit.close()
