"""Output comparisons (``Comparison.to_json()``): the per-output table and error histograms, and the golden case section.

A comparison is what a golden check, ``--verify`` after a pass, a batch check and ``export``'s check against
torch all produce: per output max abs/rel error, cosine, top-1/top-5 agreement, the tolerance that would
have passed, and (when the document has it) a histogram of |actual − reference|.
"""

from __future__ import annotations

from typing import Any

from converter.html_report import plots
from converter.html_report.page import Body, Markup, badge, cosine, dims, esc, figure, items, join, mapping, num, section, table

MAX_HISTOGRAMS = 16
"""Error histograms per comparison list (the table still lists every output)."""


def comparison_table(comp: dict[str, Any]) -> Markup:
    """One row per output, failing rows marked, then the tolerance it was judged by."""
    outs = [mapping(o) for o in items(comp.get("outputs"))]
    rows, marks = [], []
    for o in outs:
        passed = o.get("passed")
        problems = "; ".join(str(p) for p in items(o.get("problems")))
        result = badge(passed, "ok" if passed else "FAIL") if passed is not None else badge(None, "?")
        rows.append([o.get("name"), dims(o.get("shape")), o.get("max_abs"), o.get("max_rel"), Markup(esc(cosine(o.get("cosine")))),
                     o.get("top1"), o.get("top5"), o.get("needed_atol"), join([result, f" {esc(problems)}" if problems else ""])])
        marks.append("" if passed is not False else "bad")
    head = ["output", "shape", "max abs", "max rel", "cosine", "top-1", "top-5", "needed atol", "result"]
    out = [table(head, rows, numeric=[2, 3, 4, 5, 6, 7], row_classes=marks)]
    tol = mapping(comp.get("tolerance"))
    if tol:
        parts = ", ".join(f"{k} {num(v, 6)}" for k, v in tol.items())
        out.append(f'<p class="note">tolerance ({esc(comp.get("precision", "?"))}): {esc(parts)}; atol is relative to each output\'s largest magnitude</p>')
    return join(out)


def histograms(comp: dict[str, Any], where: str, budget: list[int]) -> Markup:
    """One error histogram per output that has one, while ``budget[0]`` lasts (shared over a page's comparisons)."""
    figs = []
    for o in (mapping(o) for o in items(comp.get("outputs"))):
        hist = mapping(o.get("error_histogram"))
        if not hist:
            continue
        name = str(o.get("name", "?"))
        exact = hist.get("exact") if isinstance(hist.get("exact"), int) else 0
        edges, counts = items(hist.get("edges")), items(hist.get("counts"))
        if not edges:
            figs.append(f'<p class="note">{esc(name)}: every value equals the reference ({esc(exact)} values).</p>')
            continue
        if budget[0] <= 0:
            continue
        svg = plots.error_histogram(edges, counts, exact, name)
        if svg is not None:
            budget[0] -= 1
            figs.append(figure(svg, f"{where}: {name}, |actual − reference| (log-spaced bins)"))
    return join(['<div class="plots">', *figs, "</div>"]) if figs else Markup("")


def verdict_of(comp: Any) -> bool | None:
    comp = mapping(comp)
    if "passed" in comp and isinstance(comp["passed"], bool):
        return comp["passed"]
    outs = [mapping(o) for o in items(comp.get("outputs"))]
    return all(o.get("passed") is True for o in outs) if outs else None


def min_cosine(golden: dict[str, Any]) -> float | None:
    values = [o.get("cosine") for ds in mapping(golden.get("data_sets")).values() for o in (mapping(x) for x in items(mapping(ds).get("outputs")))]
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return min(values) if values else None


def golden_section(golden: dict[str, Any], anchor: str = "golden", title: str = "Golden comparison") -> Markup:
    """The case, the precision policy and, per data set, the per-output table and histograms."""
    passed = golden.get("passed") if isinstance(golden.get("passed"), bool) else None
    head = f'<p class="verdict">{badge(passed)} case <code>{esc(golden.get("case", "?"))}</code> at {esc(golden.get("precision", "?"))} tolerance</p>'
    parts = [head]
    budget = [MAX_HISTOGRAMS]
    data_sets = mapping(golden.get("data_sets"))
    for name, ds in data_sets.items():
        ds = mapping(ds)
        parts.append(f"<h3>{esc(name)} {badge(verdict_of(ds), 'ok' if verdict_of(ds) else None) if verdict_of(ds) is not None else ''}</h3>")
        parts.append(comparison_table(ds))
        parts.append(histograms(ds, str(name), budget))
    if not data_sets:
        parts.append('<p class="note">no data sets in this result</p>')
    return section(title, join(parts), anchor, note="per output: error against the reference outputs the case recorded, and the tolerance that would have passed")


def build_check(doc: dict[str, Any]) -> Body:
    """``golden check``'s page: the verdict and the golden section (the document is ``CaseResult.to_json()``)."""
    passed = doc.get("passed") if isinstance(doc.get("passed"), bool) else None
    failing = [str(mapping(o).get("name")) for ds in mapping(doc.get("data_sets")).values() for o in items(mapping(ds).get("outputs")) if mapping(o).get("passed") is False]
    text = f"case {doc.get('case', '?')} at {doc.get('precision', '?')}: " + ("every output within tolerance" if passed else f"outside tolerance: {', '.join(dict.fromkeys(failing)) or '?'}")
    body = Body(subject=str(doc.get("artifact") or doc.get("case") or "?"), verdict=passed, verdict_text=text)
    body.figures = [("case", doc.get("case")), ("precision", doc.get("precision")), ("data sets", len(mapping(doc.get("data_sets")))),
                    ("min cosine", Markup(esc(cosine(min_cosine(doc)))))]
    body.add("golden", "Golden", golden_section(doc))
    return body
