"""Any JSON value as readable HTML: objects as key/value tables, lists of like objects as tables, the rest inline.

Used for a command this package has no page for (a plugin's command), and for free-form parts of known
documents (a pass's facts, a manifest's extra keys). Depth and length are capped so a huge document still
makes a page of reasonable size; nothing here raises on any JSON value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.html_report.page import MAX_ROWS, Markup, cell, esc, join, more, table

MAX_DEPTH = 4
MAX_INLINE = 40
"""Scalars of a list shown inline before the rest is counted."""
MAX_COLUMNS = 12
MAX_TEXT = 4000


def value(v: Any, depth: int = 0, limit: int = MAX_ROWS) -> Markup:
    """One value: a scalar formatted, a list or an object as a nested table (collapsed past MAX_DEPTH);
    ``limit`` caps the rows of every table inside."""
    if isinstance(v, Mapping):
        if not v:
            return Markup('<span class="dim">{}</span>')
        if depth >= MAX_DEPTH:
            return Markup(f'<span class="dim">{{… {len(v)} keys}}</span>')
        return obj(v, depth + 1, limit)
    if isinstance(v, (list, tuple)):
        return _list(list(v), depth, limit)
    if isinstance(v, str) and len(v) > MAX_TEXT:
        return Markup(esc(v[:MAX_TEXT]) + f'<span class="dim">… ({len(v) - MAX_TEXT} more characters)</span>')
    return Markup(cell(v))


def obj(d: Mapping[str, Any], depth: int = 0, limit: int = MAX_ROWS) -> Markup:
    rows = list(d.items())
    body = "".join(f"<tr><th>{esc(k)}</th><td>{value(v, depth, limit)}</td></tr>" for k, v in rows[:limit])
    return Markup(f'<table class="kv"><tbody>{body}</tbody></table>{more(limit, len(rows), "keys")}')


def _list(v: list[Any], depth: int, limit: int) -> Markup:
    if not v:
        return Markup('<span class="dim">none</span>')
    if all(not isinstance(x, (Mapping, list, tuple)) for x in v):
        shown = ", ".join(cell(x) for x in v[:MAX_INLINE])
        rest = f' <span class="dim">… and {len(v) - MAX_INLINE} more</span>' if len(v) > MAX_INLINE else ""
        return Markup(shown + rest)
    if depth >= MAX_DEPTH:
        return Markup(f'<span class="dim">[… {len(v)} items]</span>')
    if all(isinstance(x, Mapping) for x in v):
        keys: list[str] = []
        for x in v:
            keys.extend(k for k in x if k not in keys)
        if len(keys) <= MAX_COLUMNS:
            rows = [[value(x.get(k), depth + 1, limit) for k in keys] for x in v]
            numeric = [i for i, k in enumerate(keys) if all(isinstance(x.get(k), (int, float)) and not isinstance(x.get(k), bool) for x in v)]
            return table(keys, rows, cap=limit, numeric=numeric)
    return join(["<ol>", *(f"<li>{value(x, depth + 1, limit)}</li>" for x in v[:limit]), "</ol>", more(limit, len(v), "items")])
