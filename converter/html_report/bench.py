"""``bench``'s page: latency (median, p90, p99) and throughput by batch size, and the comparison with a second artifact.

Results are ``[{"batch", "iterations", "latency_ms": {"min","mean","median","p90","p99","max","std"},
"throughput_per_s", "queries_per_s"}]``; ``compare`` holds the other artifact's results and the ratios.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.html_report import generic, plots
from converter.html_report.page import Body, Markup, code, figure, items, join, kv, mapping, section, table

STATS = ("min", "median", "mean", "p90", "p99", "max", "std")


def _results(results: Any) -> list[Mapping[str, Any]]:
    rows = [mapping(r) for r in items(results)]
    return sorted((r for r in rows if isinstance(r.get("batch"), int)), key=lambda r: r["batch"])


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _series(name: str, results: list[Mapping[str, Any]]) -> dict[str, Any]:
    lat = [mapping(r.get("latency_ms")) for r in results]
    return {"label": name, "batch": [r["batch"] for r in results], "median": [_number(x.get("median")) for x in lat],
            "p90": [_number(x.get("p90")) for x in lat], "p99": [_number(x.get("p99")) for x in lat],
            "throughput": [_number(r.get("throughput_per_s")) for r in results]}


def results_table(results: list[Mapping[str, Any]]) -> Markup:
    rows = []
    for r in results:
        lat = mapping(r.get("latency_ms"))
        rows.append([r.get("batch"), r.get("iterations"), *(lat.get(s) for s in STATS), r.get("throughput_per_s"), r.get("queries_per_s")])
    head = ["batch", "runs", *(f"{s} ms" for s in STATS), "samples/s", "queries/s"]
    return table(head, rows, numeric=range(len(head)))


def _name(path: Any) -> str:
    return str(path).replace("\\", "/").rsplit("/", 1)[-1] if path else "?"


def build(doc: Mapping[str, Any]) -> Body:
    results = _results(doc.get("results"))
    compare = mapping(doc.get("compare"))
    other = _results(compare.get("results"))
    body = Body(subject=str(doc.get("artifact") or "?"))
    best = max((r for r in results if _number(r.get("throughput_per_s")) is not None), key=lambda r: r["throughput_per_s"], default=None)
    first = mapping(results[0].get("latency_ms")) if results else {}
    body.figures = [("backend", doc.get("backend")), ("threads", doc.get("threads")), ("batch sizes", len(results))]
    if first:
        body.figures.append((f"median latency, batch {results[0]['batch']}", f"{first.get('median', '?')} ms"))
    if best is not None:
        body.figures.append(("best throughput", f"{best['throughput_per_s']}/s at batch {best['batch']}"))
    body.verdict_text = f"{len(results)} batch size(s) timed" + (f", compared with {_name(compare.get('artifact'))}" if compare else "")
    parts = []
    series = [_series(_name(doc.get("artifact")), results)] if results else []
    if other:
        series.append(_series(_name(compare.get("artifact")), other))
    if series and any(v is not None for s in series for v in s["median"]):
        parts.append(figure(plots.by_batch(series), "median latency with p90 band and p99, and throughput, by batch size"))
    parts.append(results_table(results) if results else '<p class="note">no results</p>')
    body.add("latency", "Latency by batch", section("Latency and throughput by batch size", join(parts), "latency"))
    if compare:
        cparts = [kv({"artifact": code(compare.get("artifact", "?")), "backend": compare.get("backend")})]
        if other:
            cparts.append(results_table(other))
        ratios = items(compare.get("ratios"))
        if ratios:
            cparts.append("<h4>Ratios: the other artifact / this one</h4>"
                          "<p class=\"note\">latency above 1: the other is slower; throughput above 1: the other is faster</p>"
                          + generic.value(ratios))
        body.add("compare", "Comparison", section(f"Compared with {_name(compare.get('artifact'))}", join(cparts), "compare"))
    settings = {k: v for k, v in doc.items() if k not in ("schema", "command", "versions", "results", "compare")}
    body.add("settings", "Settings", section("Settings", generic.obj(settings), "settings"))
    return body
