"""Plots as inline SVG, drawn with matplotlib's object API (``Figure``, never pyplot's global state).

Each SVG is made to sit inside an HTML page: text stays text (``svg.fonttype=none``, no embedded or
external fonts), the hash salt is fixed so the same data gives the same bytes, and the XML prolog, DTD,
metadata and namespace declarations are dropped (an HTML parser needs none of them, and they are the
only URLs matplotlib writes). Ids are kept only where something refers to them (clip paths, markers) and
are prefixed with a hash of the plot, renumbered in page order by :func:`number_plots`, so several plots on
one page never share an id.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

from converter.html_report.page import Markup, esc

RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "converter-html-report",
    "svg.image_inline": True,
    "font.family": "sans-serif",
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e7ee",
    "grid.linewidth": 0.7,
    "axes.axisbelow": True,
    "text.usetex": False,
}
BLUE, ORANGE, RED, GREEN, GREY = "#2f6db5", "#e08a2c", "#c62828", "#1a7f37", "#98a2b3"
MAX_BARS = 30
LABEL_CHARS = 42


def label(text: Any, limit: int = LABEL_CHARS) -> str:
    """A name as a plot label: clipped, and with ``$`` escaped so matplotlib never reads it as mathtext."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("$", r"\$")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=72, layout="constrained")


_DROP = [re.compile(p, re.DOTALL) for p in (r"<metadata>.*?</metadata>\s*", r"<defs>\s*<style[^>]*>.*?</style>\s*</defs>\s*", r"<!--.*?-->\s*")]
_NS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_ID = re.compile(r'\sid="([^"]*)"')
_REF = re.compile(r'(url\(#|href="#)([^")]+)')


def to_svg(fig: Any, description: str) -> Markup:
    """The figure as one ``<svg>`` element ready to inline (``role=img`` with ``description`` as its label)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    for pattern in _DROP:
        text = pattern.sub("", text)
    text = _NS.sub("", text)
    prefix = "g" + hashlib.sha1(text.encode()).hexdigest()[:8] + "-"
    used = {m.group(2) for m in _REF.finditer(text)}
    text = _ID.sub(lambda m: f' id="{prefix}{m.group(1)}"' if m.group(1) in used else "", text)
    text = _REF.sub(lambda m: m.group(1) + prefix + m.group(2), text)
    text = text.replace("<svg ", f'<svg role="img" aria-label="{esc(description)}" ', 1)
    return Markup(text.strip())


_SVG = re.compile(r"<svg\b.*?</svg>", re.DOTALL)
_PREFIXED = re.compile(r'(id="|url\(#|href="#)g[0-9a-f]{8}-')


def number_plots(html: str) -> str:
    """Renumber the plots' id prefixes in page order (``p1-``, ``p2-`` ...): two plots of the same data
    (the same output checked after several passes) would otherwise share ids."""
    counter = itertools.count(1)

    def one(match: re.Match[str]) -> str:
        k = next(counter)
        return _PREFIXED.sub(lambda m: f"{m.group(1)}p{k}-", match.group(0))

    return _SVG.sub(one, html)


def _rc(fn):
    """Draw inside the report's rc settings (fonts, grid), which matplotlib reads while artists are made."""

    def wrapped(*args: Any, **kwargs: Any) -> Markup:
        import matplotlib

        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@_rc
def pass_times(names: Sequence[str], seconds: Sequence[float]) -> Markup:
    """Horizontal bars: each pass's time in ms, in pipeline order, the value written beside each bar."""
    n = len(names)
    fig = _figure(7.2, 0.9 + 0.32 * n)
    ax = fig.subplots()
    values = [max(0.0, s) * 1000 for s in seconds]
    y = list(range(n))
    ax.barh(y, values, color=BLUE, height=0.6)
    ax.set_yticks(y, [label(x, 28) for x in names])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.grid(axis="y", visible=False)
    top = max(values, default=0.0) or 1.0
    ax.set_xlim(0, top * 1.18)
    for yi, v in zip(y, values, strict=True):
        ax.text(v + top * 0.01, yi, f"{v:.1f}", va="center", fontsize=8.5, color="#344054")
    ax.set_title("time per pass")
    return to_svg(fig, "time per pass in milliseconds: " + ", ".join(f"{a} {v:.1f} ms" for a, v in zip(names, values, strict=True)))


@_rc
def error_histogram(edges: Sequence[float], counts: Sequence[int], exact: int, title: str) -> Markup | None:
    """|actual − reference| in log-spaced bins (as the document gives them); exact matches noted in the title."""
    def finite(v: Any, low: float) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= low

    if len(edges) < 2 or len(counts) != len(edges) - 1 or not all(finite(e, 1e-300) for e in edges) or not all(finite(c, 0) for c in counts):
        return None
    if any(b <= a for a, b in itertools.pairwise(edges)):
        return None
    exact = exact if finite(exact, 0) else 0
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4.6, 2.5)
    ax = fig.subplots()
    ax.stairs(counts, edges, fill=True, color=BLUE, alpha=0.85)
    lo, hi = float(edges[0]), float(edges[-1])
    if hi > lo * 1.0001:
        ax.set_xscale("log")
        ticks = [lo * (hi / lo) ** (i / 3) for i in range(4)]
        ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlim(lo, hi)
    ax.set_xlabel("|actual − reference|")
    ax.set_ylabel("values")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    total = sum(counts) + max(exact, 0)
    ax.set_title(label(title, 48) + (f"  ({exact} of {total} exact)" if exact else ""))
    return to_svg(fig, f"histogram of absolute errors of {title}")


@_rc
def ranked_bars(names: Sequence[str], values: Sequence[float], xlabel: str, title: str, cutoff: float | None = None) -> Markup:
    """Worst first, top down: one bar per name, red beyond ``cutoff`` (drawn as a dashed line)."""
    names, values = list(names)[:MAX_BARS], [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in values][:MAX_BARS]
    n = len(names)
    fig = _figure(7.6, 1.0 + 0.24 * n)
    ax = fig.subplots()
    y = list(range(n))
    colors = [RED if cutoff is not None and v > cutoff else BLUE for v in values]
    ax.barh(y, values, color=colors, height=0.65)
    ax.set_yticks(y, [label(x, 36) for x in names], fontsize=8.5)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    if cutoff is not None and cutoff > 0:
        ax.axvline(cutoff, color=RED, linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return to_svg(fig, f"{title}: " + ", ".join(f"{a} {v:.3g}" for a, v in zip(names, values, strict=True)))


@_rc
def by_batch(series: Sequence[dict[str, Any]]) -> Markup:
    """Latency (median, with p90 and p99) and throughput by batch size; one line per artifact in ``series``.

    Each series: ``{"label", "batch": [...], "median": [...], "p90": [...], "p99": [...], "throughput": [...]}``."""
    fig = _figure(9.6, 3.3)
    left, right = fig.subplots(1, 2)
    colors = [BLUE, ORANGE, GREEN, GREY]
    batches: set[int] = set()
    def values(s: dict[str, Any], key: str) -> list[float]:
        return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in s[key]]

    for i, s in enumerate(series):
        color, xs = colors[i % len(colors)], s["batch"]
        batches.update(xs)
        median, p90, p99 = values(s, "median"), values(s, "p90"), values(s, "p99")
        left.plot(xs, median, marker="o", color=color, label=f"{label(s['label'], 30)} median")
        if any(math.isfinite(v) for v in p90):
            left.fill_between(xs, median, [m if math.isnan(p) else p for m, p in zip(median, p90, strict=True)], color=color, alpha=0.18, linewidth=0)
        if any(math.isfinite(v) for v in p99):
            left.plot(xs, p99, linestyle=":", marker="^", markersize=4, color=color, label=f"{label(s['label'], 30)} p99")
        right.plot(xs, values(s, "throughput"), marker="o", color=color, label=label(s["label"], 30))
    ticks = sorted(batches)
    for ax in (left, right):
        if len(ticks) > 1 and ticks[0] > 0 and ticks[-1] / ticks[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylim(bottom=0)
    left.set_ylabel("latency (ms)")
    left.set_title("latency by batch (band: median to p90)")
    right.set_ylabel("samples / s")
    right.set_title("throughput by batch")
    left.legend(fontsize=8, frameon=False)
    if len(series) > 1:
        right.legend(fontsize=8, frameon=False)
    return to_svg(fig, "latency and throughput by batch size")
