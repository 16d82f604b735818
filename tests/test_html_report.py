"""``converter.html_report.render``: every command's real document makes a self-contained, escaped, deterministic page.

The documents under ``tests/data/reports/`` are real ``--json`` output (trimmed): ``convert`` of PP-OCR's
text-direction classifier through ``fold_constants,cleanup,qdq`` with the golden zoo's ``ppocr_cls`` (passing,
and failing at fp32), ``fold_constants,dynamic_batch,cleanup --verify``, ``export --then`` of a small
transformer, ``golden check``, ``debug accuracy`` and ``bench``.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from converter.html_report import plots, render
from converter.html_report.page import Markup

DATA = Path(__file__).resolve().parent / "data" / "reports"
FIXTURES = sorted(p.stem for p in DATA.glob("*.json"))
FALLBACK = "could not be shown in its own layout"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


@cache
def page(name: str) -> str:
    return render(load(name))


class Scan(HTMLParser):
    """Tags, attributes, text and <style> content of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        (self.styles if self._in and self._in[-1] == "style" else self.text).append(data)


def scan(html: str) -> Scan:
    s = Scan()
    s.feed(html)
    s.close()
    return s


def test_fixtures_are_real_and_small() -> None:
    assert {"convert_qdq", "convert_failed", "convert_verify", "export_then", "golden_check", "debug_accuracy", "bench"} <= set(FIXTURES)
    for name in FIXTURES:
        assert (DATA / f"{name}.json").stat().st_size < 50_000, name
        doc = load(name)
        assert doc["schema"] == "converter.report/1" and doc["command"] and doc["versions"]["converter"]


@pytest.mark.parametrize("name", FIXTURES)
def test_each_document_renders_in_its_own_layout(name: str) -> None:
    html = page(name)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert FALLBACK not in html
    doc = load(name)
    assert f"<h1>{doc['command']} report</h1>" in html
    for key, value in doc["versions"].items():
        assert f"{key} {value}" in html
    assert len(html) < 400_000, len(html)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids on one page must be unique (plots of the same data, two conversions on one page)"
    assert render(load(name)) == html, "the same document must give the same page"


@pytest.mark.parametrize("name", FIXTURES)
def test_page_is_self_contained(name: str) -> None:
    html = page(name)
    s = scan(html)
    tags = {t for t, _ in s.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base", "form", "audio", "video", "source"}, tags
    for tag, attrs in s.tags:
        for key, value in attrs.items():
            if value is None:
                continue
            assert key not in ("src", "srcset", "background", "action", "formaction") and not key.startswith("on"), (tag, key)
            if key in ("href", "xlink:href"):
                assert value.startswith("#"), (tag, key, value)
            if key not in ("content", "aria-label"):
                assert not re.search(r"https?:|//|url\((?!#)", value), (tag, key, value)
    css = "\n".join(s.styles)
    assert "@import" not in css and "@font-face" not in css and not re.search(r"url\((?!#)", css)
    outside_text = re.sub(r">[^<]*<", "><", html)  # drop text nodes: URLs may appear only as text
    assert not re.search(r"https?://", outside_text), re.findall(r".{40}https?://.{40}", outside_text)[:3]
    csp = next(a["content"] for t, a in s.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'none'" in csp


def test_convert_page_shows_the_pipeline_quantization_golden_and_manifest() -> None:
    doc, html = load("convert_qdq"), page("convert_qdq")
    text = " ".join(scan(html).text)
    for rec in doc["passes"]:
        assert f"<code>{rec['name']}</code>" in html
        assert f"{rec['nodes_before']} → {rec['nodes_after']}" in text
    assert "+61 QuantizeLinear" in text and "−308 Constant" in text
    assert "Left in float, and why" in text and "Softmax@0" in text and "TensorRT's transformer recipe" in text
    assert "PASSED" in text and "ppocr_cls" in text and "0.997176" in text
    manifest = doc["artifact"]["manifest"]
    assert manifest["artifact_sha256"] in text and manifest["source_model_sha256"] in text and manifest["onnxruntime_version"] in text
    assert "inputs before" in text and "outputs after" in text and "?×3×?×?" in text
    assert html.count("<svg") >= 2  # pass times + the golden error histogram
    assert '<table class="pipeline">' in html


def test_failed_golden_is_a_failed_page_without_an_artifact() -> None:
    text = " ".join(scan(page("convert_failed")).text)
    assert "FAILED" in text and "outside tolerance: save_infer_model/scale_0.tmp_1" in text
    assert "beyond tolerance" in text  # the output's problem
    assert "NOT WRITTEN" in text and "the artifact was built but not written" in text


def test_verify_and_batch_check_per_pass() -> None:
    html = page("convert_verify")
    text = " ".join(scan(html).text)
    assert "batch ok" in text and "Batch check" in text and "--verify after this pass" in text
    assert "batch×3×?×?" in text and "changed" in text  # dynamic_batch changed the input's dims


def test_export_page_with_then() -> None:
    doc, html = load("export_then"), page("export_then")
    text = " ".join(scan(html).text)
    assert "Check against torch" in text and "batch=1" in text and "batch=4" in text
    assert "split sizes [32, 32, 32]" in text
    assert "then: Pipeline" in text and 'id="then-pipeline"' in html
    assert "LayerNormalization" in text and "normalization runs in float" in text
    assert doc["then"]["golden"]["case"] in text


def test_debug_accuracy_worst_first() -> None:
    doc, html = load("debug_accuracy"), page("debug_accuracy")
    rows = re.findall(r"<tr[^>]*><td class=\"num\">(\d+)</td><td><code>([^<]+)</code>", html)
    names = [n for _, n in rows]
    by_own = sorted(doc["tensors"], key=lambda t: -t["own_rel_l2"])
    assert names[:5] == [t["tensor"] for t in by_own[:5]]
    assert "qdq{exclude=[Conv@51]}" in html
    assert '<tr class="bad">' in html  # the tensor above the cutoff
    assert "<svg" in html


def test_debug_accuracy_ranks_even_when_the_document_is_unsorted() -> None:
    doc = load("debug_accuracy")
    doc["tensors"] = list(reversed(doc["tensors"]))
    html = render(doc)
    first = re.search(r"<td><code>([^<]+)</code>", html)
    assert first is not None and first.group(1) == max(doc["tensors"], key=lambda t: t["own_rel_l2"])["tensor"]


def test_bench_page() -> None:
    doc, html = load("bench"), page("bench")
    text = " ".join(scan(html).text)
    assert "latency by batch" in html and "throughput by batch" in html
    assert "Compared with cls.fp32.onnx" in text and "Ratios" in text
    for r in doc["results"]:
        assert f"<td class=\"num\">{r['batch']}</td>" in html


def test_golden_check_page() -> None:
    text = " ".join(scan(page("golden_check")).text)
    assert "PASSED" in text and "test_data_set_0" in text and "needed atol" in text


HOSTILE = '<script>alert("x")</script>&amp;$\\frac{1}{0}$ "\' onload=alert(1)'


def _hostile_convert() -> dict[str, Any]:
    doc = load("convert_qdq")
    doc["model"] = HOSTILE
    doc["passes"][0]["name"] = HOSTILE
    doc["passes"][0]["op_delta"] = {HOSTILE: 3}
    doc["passes"][0]["facts"] = {HOSTILE: [HOSTILE], "x": {HOSTILE: HOSTILE}}
    doc["passes"][2]["refused"] = [f"{HOSTILE} (Softmax): {HOSTILE}", HOSTILE]
    doc["interface"]["before"]["inputs"][0]["name"] = HOSTILE
    doc["interface"]["after"]["outputs"][0]["shape"] = [HOSTILE, 2]
    out = doc["golden"]["data_sets"]["test_data_set_0"]["outputs"][0]
    out["name"], out["problems"] = HOSTILE, [HOSTILE]
    doc["golden"]["data_sets"] = {HOSTILE: doc["golden"]["data_sets"]["test_data_set_0"]}
    doc["artifact"]["manifest"][HOSTILE] = HOSTILE
    doc["versions"][HOSTILE] = HOSTILE
    return doc


@pytest.mark.parametrize("kind", ["convert", "accuracy", "bench", "unknown"])
def test_hostile_names_are_escaped(kind: str) -> None:
    if kind == "convert":
        doc = _hostile_convert()
    elif kind == "accuracy":
        doc = load("debug_accuracy")
        doc["tensors"][0]["tensor"] = HOSTILE
        doc["tensors"][0]["consumers"] = [HOSTILE]
        doc["suggested_exclude"] = [HOSTILE]
    elif kind == "bench":
        doc = load("bench")
        doc["artifact"] = HOSTILE
        doc["compare"]["artifact"] = HOSTILE
    else:
        doc = {"schema": "converter.report/1", "command": HOSTILE, "versions": {}, HOSTILE: {HOSTILE: [HOSTILE, {HOSTILE: HOSTILE}]}}
    html = render(doc)
    assert FALLBACK not in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    s = scan(html)
    assert not any(t == "script" or any(k.startswith("on") for k in a) for t, a in s.tags)
    assert any("<script>" in t for t in s.text), "the name must still be readable as text"


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plots stubbed out (matplotlib takes ~0.1 s a plot): for tests that render hundreds of odd documents.
    The plot functions' own handling of odd data is tested directly (test_plots_take_odd_data)."""
    for name in ("pass_times", "error_histogram", "ranked_bars", "by_batch"):
        monkeypatch.setattr(plots, name, lambda *a, **k: Markup('<svg role="img"></svg>'))


def _strip(value: Any, parity: int) -> Any:
    """The document with every object losing every other key (by position): optional keys missing everywhere."""
    if isinstance(value, dict):
        return {k: _strip(v, parity) for i, (k, v) in enumerate(value.items()) if (i + parity) % 2 or k in ("command", "schema")}
    if isinstance(value, list):
        return [_strip(v, parity) for v in value]
    return value


@pytest.mark.usefixtures("no_plots")
@pytest.mark.parametrize("name", FIXTURES)
def test_missing_optional_keys_do_not_crash(name: str) -> None:
    doc = load(name)
    envelope = {k: doc[k] for k in ("schema", "command")}
    assert FALLBACK not in render(envelope)
    for key in doc:
        if key in ("schema", "command"):
            continue
        smaller = {k: v for k, v in doc.items() if k != key}
        assert FALLBACK not in render(smaller), key
    for parity in (0, 1):
        assert FALLBACK not in render(_strip(copy.deepcopy(doc), parity)), parity


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a document (the first item of each list only)."""
    out: list[tuple[Any, ...]] = []
    children = list(value.items()) if isinstance(value, dict) else [(0, value[0])] if isinstance(value, list) and value else []
    for key, child in children:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


@pytest.mark.usefixtures("no_plots")
@pytest.mark.parametrize("name", FIXTURES)
def test_odd_values_anywhere_do_not_crash(name: str) -> None:
    """Any field of a real document replaced by null, text, a number, a list or an object still renders in the
    command's own layout: a page must come out of a document from another version or a buggy plugin."""
    doc = load(name)
    paths = [p for p in _paths(doc) if p[0] not in ("schema", "command")]
    for i, path in enumerate(paths):
        junk = (None, "text", -1.5, [None], {"x": [1]}, True)[i % 6]
        odd = copy.deepcopy(doc)
        target = odd
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = junk
        html = render(odd)
        assert FALLBACK not in html, (path, junk, re.findall(FALLBACK + r" \((.*?)\); every", html))


@pytest.mark.usefixtures("no_plots")
@pytest.mark.parametrize("name", FIXTURES)
def test_wrong_types_at_the_top_do_not_crash(name: str) -> None:
    doc = load(name)
    for key in [k for k in doc if k not in ("schema", "command")]:
        for junk in (None, 3, "text", [], {}, [None, 1, "x"]):
            assert FALLBACK not in render({**doc, key: junk}), (key, junk)


def test_plots_take_odd_data() -> None:
    assert plots.error_histogram([], [], 5, "x") is None
    assert plots.error_histogram([1e-3, 1e-2], [1, 2], 0, "x") is None  # counts do not fit the edges
    assert plots.error_histogram([1e-3, None, 1e-1], [1, 2], 0, "x") is None
    assert plots.error_histogram([1e-3, 1e-2, 1e-1], [1, "2"], 0, "x") is None
    assert plots.error_histogram([1e-2, 1e-3, 1e-1], [1, 2], 0, "x") is None  # not increasing
    assert plots.error_histogram([0.5, 1.5], [3], "odd", "$x$ {y}") is not None  # one bin; the name is not mathtext
    assert "<svg" in plots.by_batch([{"label": "$a", "batch": [1, 2], "median": [None, 2.0], "p90": [True, None], "p99": ["x", 3.0], "throughput": [None, None]}])
    assert "<svg" in plots.ranked_bars(["a", "b$"], [float("nan"), float("inf")], "x", "t", cutoff=0.5)
    assert "<svg" in plots.pass_times(["p"], [-1.0])


def test_unknown_command_shows_every_field() -> None:
    doc = {"schema": "converter.report/1", "command": "lint", "versions": {"converter": "0.1.0"}, "model": "m.onnx", "passed": False,
           "findings": [{"rule": "r1", "node": "Conv_0", "detail": "bad"}, {"rule": "r2", "node": "Add_1"}],
           "deep": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}, "many": list(range(500)), "nothing": None, "flag": True}
    html = render(doc)
    text = " ".join(scan(html).text)
    assert "<h1>lint report</h1>" in html and "FAILED" in text and "Conv_0" in text and "r2" in text
    assert "more" in text  # the long list is capped
    for odd in ({}, {"command": None}, {"command": "x", "versions": "nope"}, {"command": "x", "a": float("nan")}, [1, 2]):
        assert render(odd).startswith("<!DOCTYPE html>")  # type: ignore[arg-type]


def test_long_lists_are_capped() -> None:
    doc = load("debug_accuracy")
    doc["tensors"] = [dict(doc["tensors"][0], tensor=f"t{i}", own_rel_l2=1.0 / (i + 1)) for i in range(1000)]
    html = render(doc)
    assert html.count("<tr") < 300 and "800 more rows" in html
    assert len(html) < 200_000


def test_plots_are_inline_svg_without_external_fonts_or_clashing_ids() -> None:
    html = page("convert_qdq")
    svgs = re.findall(r"<svg.*?</svg>", html, re.DOTALL)
    assert svgs
    for svg in svgs:
        assert "xmlns" not in svg and "<metadata" not in svg and "@font-face" not in svg and "<image" not in svg
        assert 'role="img"' in svg and "aria-label=" in svg
        refs = set(re.findall(r'(?:url\(#|href="#)([^")]+)', svg))
        ids = set(re.findall(r'\sid="([^"]+)"', svg))
        assert refs <= ids, refs - ids
