"""The page's building blocks: escaping, number formats, tables, badges, sections and the HTML skeleton with its CSS.

Every string that comes from a report document goes through :func:`esc` (or :func:`cell`, which escapes
anything that is not already :class:`Markup`). Nothing here loads anything: the CSS is inline and the page's
Content-Security-Policy forbids every fetch, so a page that slipped in a reference would show it as an error
in the browser's console instead of calling out.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_ROWS = 200
"""Longest table on a page; the rest is counted ("N more")."""


class Markup(str):
    """A string of HTML made by this package (already escaped): :func:`cell` passes it through as it is."""


@dataclass
class Body:
    """What a command's module makes of its document; :func:`converter.html_report.render` puts it in the page."""

    subject: str = ""
    """The model or artifact the report is about (the header's second line)."""
    verdict: bool | None = None
    verdict_text: str = ""
    figures: list[tuple[str, Any]] = field(default_factory=list)
    """Headline figures for the summary: (label, value)."""
    sections: list[tuple[str, str, str]] = field(default_factory=list)
    """(anchor, table-of-contents label, section HTML)."""
    when: str | None = None

    def add(self, anchor: str, label: str, html_: str | None) -> None:
        if html_:
            self.sections.append((anchor, label, html_))


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def join(parts: Iterable[str], sep: str = "") -> Markup:
    return Markup(sep.join(parts))


def cell(value: Any) -> str:
    """A table cell's content: Markup as it is, numbers formatted, everything else escaped."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return esc(num(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return '<span class="dim">–</span>'
    return esc(value)


def num(value: Any, digits: int = 4) -> str:
    """Numbers as people read them: ints as they are, floats with ``digits`` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if 10**digits <= abs(value) < 1e12:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def cosine(value: Any) -> str:
    return num(value) if not isinstance(value, float) else f"{value:.6f}"


def ms(seconds: Any) -> str:
    """Seconds as milliseconds (what pass times read best in)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "–"
    return f"{seconds * 1000:.1f} ms"


def dims(shape: Any) -> str:
    """A shape as ``1×3×?×?``: symbolic dims by name, unknown ones (None, -1, '?') as ``?``, a scalar as ``scalar``."""
    if not isinstance(shape, (list, tuple)):
        return "?" if shape is None else str(shape)
    if not shape:
        return "scalar"
    out = []
    for d in shape:
        out.append("?" if d is None or d == -1 or d == "" else str(d))
    return "×".join(out)


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def code(text: Any) -> Markup:
    return Markup(f"<code>{esc(text)}</code>")


def badge(passed: bool | None, text: str | None = None) -> Markup:
    """PASSED / FAILED / a neutral word, coloured."""
    kind = "na" if passed is None else ("ok" if passed else "fail")
    label = text or ("PASSED" if passed else "FAILED" if passed is not None else "NO CHECK")
    return Markup(f'<span class="badge {kind}">{esc(label)}</span>')


def more(shown: int, total: int, what: str = "rows") -> Markup:
    if total <= shown:
        return Markup("")
    return Markup(f'<p class="more">… and {total - shown} more {esc(what)} (first {shown} shown)</p>')


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, cap: int = MAX_ROWS, numeric: Iterable[int] = (), classes: str = "",
          row_classes: Sequence[str] | None = None, caption: str | None = None) -> Markup:
    """A real ``<table>``; ``numeric`` columns align right; at most ``cap`` rows, then a count of the rest."""
    right = set(numeric)
    parts = [f'<div class="scroll"><table class="{esc(classes)}">']
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    attr = ['' if i not in right else ' class="num"' for i in range(max(len(head), *(len(r) for r in rows[:cap]), 0))]
    parts.append("<thead><tr>" + "".join(f"<th{attr[i]}>{esc(h)}</th>" for i, h in enumerate(head)) + "</tr></thead><tbody>")
    for r, row in enumerate(rows[:cap]):
        extra = row_classes[r] if row_classes and r < len(row_classes) and row_classes[r] else ""
        parts.append(f'<tr class="{esc(extra)}">' if extra else "<tr>")
        parts.extend(f"<td{attr[i]}>{cell(v)}</td>" for i, v in enumerate(row))
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    parts.append(more(cap, len(rows)))
    return join(parts)


def kv(pairs: Mapping[str, Any] | Sequence[tuple[str, Any]], classes: str = "kv") -> Markup:
    """A two-column table of labels and values (values as :func:`cell` shows them)."""
    rows = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    body = "".join(f"<tr><th>{esc(k)}</th><td>{cell(v)}</td></tr>" for k, v in rows[:MAX_ROWS])
    return Markup(f'<table class="{esc(classes)}"><tbody>{body}</tbody></table>{more(MAX_ROWS, len(rows))}')


def section(title: str, body: str, anchor: str, note: str | None = None) -> Markup:
    lead = f'<p class="note">{esc(note)}</p>' if note else ""
    return Markup(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{lead}{body}</section>')


def details(summary: str, body: str, open_: bool = False) -> Markup:
    return Markup(f'<details{" open" if open_ else ""}><summary>{esc(summary)}</summary>{body}</details>')


def cards(values: Sequence[tuple[str, Any]]) -> Markup:
    """The summary's row of headline figures."""
    out = ['<div class="cards">']
    for label, value in values:
        out.append(f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{cell(value)}</div></div>')
    out.append("</div>")
    return join(out)


def figure(svg: str, caption: str) -> Markup:
    return Markup(f'<figure class="plot">{svg}<figcaption>{esc(caption)}</figcaption></figure>')


CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'; font-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'"

CSS = """
:root { --fg:#1d2430; --dim:#667085; --line:#d9dee7; --bg:#ffffff; --band:#f5f7fa; --ok:#1a7f37; --fail:#c62828; --na:#6b7280; --accent:#2456a6; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 48px; }
header.top { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 8px; }
header.top h1 { margin: 0 0 4px; font-size: 24px; }
header.top .subject { font-size: 15px; word-break: break-all; }
header.top .meta { color: var(--dim); font-size: 12.5px; margin-top: 6px; }
header.top .meta span { margin-right: 14px; white-space: nowrap; }
nav.toc { font-size: 13px; margin: 10px 0 0; }
nav.toc a { color: var(--accent); margin-right: 14px; text-decoration: none; }
h2 { font-size: 19px; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15.5px; margin: 20px 0 8px; }
h4 { font-size: 13.5px; margin: 14px 0 4px; }
p.note { color: var(--dim); margin: 4px 0 10px; }
p.more { color: var(--dim); font-style: italic; margin: 4px 0 12px; }
.dim { color: var(--dim); }
code { font: 12.5px/1.3 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; background: var(--band); padding: 1px 4px; border-radius: 3px; word-break: break-all; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: var(--band); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.pipeline code { word-break: normal; white-space: nowrap; }
table.pipeline td:last-child { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { background: var(--band); font-weight: 600; white-space: nowrap; }
table.kv td { word-break: break-word; }
tr.bad td { background: #fdecec !important; }
tr.warn td { background: #fff6e0 !important; }
.badge { display: inline-block; padding: 2px 9px; border-radius: 10px; font-size: 12px; font-weight: 700; letter-spacing: .04em; color: #fff; }
.badge.ok { background: var(--ok); } .badge.fail { background: var(--fail); } .badge.na { background: var(--na); }
.verdict { margin: 14px 0 6px; font-size: 15px; }
.verdict .badge { font-size: 14px; padding: 3px 12px; margin-right: 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0 4px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 7px 12px; min-width: 130px; background: var(--band); }
.card .label { color: var(--dim); font-size: 11.5px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 16px; font-weight: 600; word-break: break-all; }
.delta { display: inline-block; margin: 1px 3px 1px 0; padding: 0 5px; border-radius: 3px; font-size: 12px; white-space: nowrap; }
.delta.up { background: #e3effd; color: #1b4f9c; } .delta.down { background: #fbe9e7; color: #a23a20; }
.plots { display: flex; flex-wrap: wrap; gap: 14px; }
figure.plot { margin: 6px 0 14px; max-width: 100%; }
figure.plot svg { display: block; max-width: 100%; height: auto; }
figure.plot svg * { stroke-linejoin: round; stroke-linecap: butt; }
figcaption { color: var(--dim); font-size: 12.5px; margin-top: 2px; }
details { margin: 6px 0; }
details > summary { cursor: pointer; color: var(--accent); }
.sides { display: flex; flex-wrap: wrap; gap: 24px; }
ul.reasons { margin: 4px 0 10px; padding-left: 20px; }
footer { margin-top: 40px; color: var(--dim); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { nav.toc { display: none; } details { display: block; } }
"""


def page(title: str, header: str, body: str, toc: Sequence[tuple[str, str]], footer: str) -> str:
    """The whole document: head with CSP and CSS, the header, a table of contents, the sections, the footer."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in toc)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="converter html_report"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head>\n<body><main>\n{header}\n"
        + (f'<nav class="toc">{nav}</nav>\n' if nav else "")
        + f"{body}\n<footer>{footer}</footer>\n</main></body></html>\n"
    )
