"""Make the README's picture of the HTML report (``docs/report.png``) from a real conversion.

    python tools/report_screenshot.py [--out docs/report.png] [--full] [--keep DIR]

Converts PP-OCR's text-direction classifier (the golden zoo's ``ppocr_cls``; ``pip install --no-deps
rapidocr-onnxruntime==1.4.4``) to int8 with ``convert MODEL -p fold_constants,cleanup,qdq --calib-data ...
-b ort --golden golden/ppocr_cls --report report.html``, calibrated on text-line crops of scikit-image's
page photo (``tests/real_data.py``), then opens the page in headless Chromium (``/usr/bin/chromium``
driven by Playwright) and saves a screenshot: from the top through the golden comparison, or the whole
page with ``--full``. ``--keep DIR`` keeps the model, artifact, JSON document and page there.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
MODEL = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
CALIB_SAMPLES = 48


def model_path() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("rapidocr_onnxruntime is not installed: pip install --no-deps rapidocr-onnxruntime==1.4.4")
    return Path(next(iter(spec.submodule_search_locations))) / MODEL


def convert(work: Path) -> Path:
    """Run the real CLI in ``work``; returns the report page it wrote."""
    import numpy as np

    from tests import real_data

    model = work / Path(MODEL).name
    shutil.copyfile(model_path(), model)
    np.savez(work / "calib.npz", **real_data.cls_crops("calib", CALIB_SAMPLES))
    cmd = [sys.executable, "-m", "converter.cli", model.name, "-p", "fold_constants,cleanup,qdq", "--calib-data", "calib.npz",
           "-b", "ort", "-o", "cls.int8.onnx", "--golden", str(ROOT / "golden" / "ppocr_cls"), "--report", "report.html", "--json"]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        sys.exit(f"convert failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    (work / "report.json").write_text(res.stdout)
    return work / "report.html"


def screenshot(page_path: Path, out: Path, full: bool) -> None:
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            if errors:
                sys.exit(f"the page logged errors: {errors}")
            golden = page.locator("#golden").bounding_box()
            if full or golden is None:
                page.screenshot(path=str(out), full_page=True)
            else:
                page.screenshot(path=str(out), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": golden["y"] + golden["height"] + 16})
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    ap.add_argument("--full", action="store_true", help="the whole page, not just the top through the golden comparison")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the model, artifact, document and page in DIR")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
        work = Path(tmp)
        page_path = convert(work)
        screenshot(page_path, args.out, args.full)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for f in work.iterdir():
                if f.is_file():
                    shutil.copy2(f, args.keep / f.name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
