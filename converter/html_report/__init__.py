"""A report document (``converter.report/1``) as one self-contained HTML page: :func:`render`.

The page needs nothing else: CSS inline, plots inline SVG (matplotlib), no script, no font or image to
fetch (its Content-Security-Policy forbids all of it), and every table is a real ``<table>``. The same
document always gives the same bytes.

    page.py          escaping, number formats, tables, badges, the skeleton and its CSS
    plots.py         matplotlib figures -> inline SVG (pass times, error histograms, ranked bars, latency)
    generic.py       any JSON value as tables (unknown commands, facts, manifests)
    golden.py        output comparisons, error histograms, the golden section; ``golden check``'s page
    convert.py       ``convert``'s page: pipeline, pass details, verdict
    quantization.py  what qdq / fp16 lowered, and what stayed float and why
    artifact.py      inputs/outputs before and after; the artifact and its manifest (versions, hashes)
    export.py        ``export``'s page (with ``--then``'s conversion)
    accuracy.py      ``debug accuracy``'s page: per-tensor error, worst first
    bench.py         ``bench``'s page: latency and throughput by batch size
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from converter.html_report import accuracy, bench, convert, export, generic, golden, plots
from converter.html_report.page import Body, Markup, badge, cards, code, esc, page, section

__all__ = ["render"]

BUILDERS: dict[str, Callable[[Mapping[str, Any]], Body]] = {
    "convert": convert.build,
    "export": export.build,
    "golden check": golden.build_check,
    "debug accuracy": accuracy.build,
    "bench": bench.build,
}
_ENVELOPE = ("schema", "command", "versions")


def _generic(doc: Mapping[str, Any]) -> Body:
    """A command without its own page: every field of the document as tables."""
    subject = next((str(doc[k]) for k in ("model", "artifact", "case", "path") if isinstance(doc.get(k), str)), "")
    passed = doc.get("passed") if isinstance(doc.get("passed"), bool) else None
    body = Body(subject=subject, verdict=passed, verdict_text="" if passed is None else ("passed" if passed else "failed"))
    rest = {k: v for k, v in doc.items() if k not in _ENVELOPE}
    body.add("document", "Document", section("Document", generic.obj(rest) if rest else '<p class="note">the document holds no fields</p>', "document"))
    return body


def _build(command: str, doc: Mapping[str, Any]) -> Body:
    builder = BUILDERS.get(command, _generic)
    try:
        return builder(doc)
    except Exception as exc:  # noqa: BLE001 - a page must come out of any document: the plain view, saying why
        body = _generic(doc)
        note = f"this {command} document could not be shown in its own layout ({type(exc).__name__}: {exc}); every field follows as it is"
        body.sections.insert(0, ("fallback", "Note", section("Note", f'<p class="note">{esc(note)}</p>', "fallback")))
        return body


def _header(command: str, doc: Mapping[str, Any], body: Body) -> str:
    versions = doc.get("versions") if isinstance(doc.get("versions"), Mapping) else {}
    meta = []
    when = body.when or (doc.get("created") if isinstance(doc.get("created"), str) else None)
    if when:
        meta.append(f"<span>when: {esc(when)}</span>")
    meta += [f"<span>{esc(k)} {esc(v)}</span>" for k, v in versions.items()]
    if doc.get("schema"):
        meta.append(f"<span>schema {esc(doc['schema'])}</span>")
    subject = f'<div class="subject">{code(body.subject)}</div>' if body.subject else ""
    return f'<header class="top"><h1>{esc(command)} report</h1>{subject}<div class="meta">{"".join(meta)}</div></header>'


def _summary(body: Body) -> str:
    verdict = ""
    if body.verdict is not None or body.verdict_text:
        mark = badge(body.verdict) if body.verdict is not None else ""
        verdict = f'<p class="verdict">{mark}{esc(body.verdict_text)}</p>'
    figures = cards([(k, v) for k, v in body.figures if v is not None]) if body.figures else ""
    return str(section("Summary", Markup(verdict + figures), "summary"))


def render(doc: dict) -> str:
    """The whole HTML page for a report document (any command; unknown ones as plain tables). Writes nothing."""
    if not isinstance(doc, Mapping):
        doc = {"value": doc}
    command = str(doc.get("command") or "report")
    body = _build(command, doc)
    title = f"{command} report" + (f": {body.subject.replace(chr(92), '/').rsplit('/', 1)[-1]}" if body.subject else "")
    sections = [_summary(body), *(html for _, _, html in body.sections)]
    toc = [("summary", "Summary"), *((anchor, label) for anchor, label, _ in body.sections)]
    from converter.version import __version__

    footer = f"made by converter {esc(__version__)} from a {esc(doc.get('schema', 'report'))} document; self-contained: no script, nothing fetched"
    return plots.number_plots(page(title, _header(command, doc, body), "\n".join(sections), toc, footer))
