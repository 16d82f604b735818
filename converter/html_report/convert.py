"""``convert``'s page: the pipeline (time, node counts and op deltas per pass), inputs/outputs before and after,
what quantization left in float, each pass's facts and checks, the golden comparison, the artifact's manifest.

:func:`parts` is also what ``export --then`` shows for its conversion (with its own anchor prefix).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.html_report import artifact, generic, golden, plots, quantization
from converter.html_report.page import Body, Markup, badge, code, cosine, details, esc, figure, items, join, mapping, ms, section, table

MAX_CHIPS = 10
FACT_ROWS = 40


def op_delta(delta: Mapping[str, Any]) -> Markup:
    """``+61 QuantizeLinear −35 BatchNormalization`` as coloured chips, largest changes first."""
    pairs = sorted(((str(k), v) for k, v in delta.items() if isinstance(v, int) and v), key=lambda kv: (-abs(kv[1]), kv[0]))
    if not pairs:
        return Markup('<span class="dim">–</span>')
    chips = [f'<span class="delta {"up" if v > 0 else "down"}">{"+" if v > 0 else "−"}{abs(v)} {esc(k)}</span>' for k, v in pairs[:MAX_CHIPS]]
    if len(pairs) > MAX_CHIPS:
        chips.append(f'<span class="dim">+{len(pairs) - MAX_CHIPS} more</span>')
    return join(chips)


def _verify_cell(rec: Mapping[str, Any]) -> Markup:
    out = []
    verify = mapping(rec.get("verify"))
    if verify:
        ok = golden.verdict_of(verify)
        cos = [mapping(o).get("cosine") for o in items(verify.get("outputs"))]
        cos = [c for c in cos if isinstance(c, float)]
        out.append(str(badge(ok, "ok" if ok else "DRIFT")) + (f' <span class="dim">cos {esc(cosine(min(cos)))}</span>' if cos else ""))
    check = mapping(rec.get("batch_check"))
    if check:
        ok = check.get("passed") if isinstance(check.get("passed"), bool) else None
        out.append(f"{badge(ok, 'batch ok' if ok else 'batch FAILED')}")
    return join(out, "<br>") if out else Markup('<span class="dim">–</span>')


def _delta_nodes(rec: Mapping[str, Any]) -> Any:
    a, b = rec.get("nodes_before"), rec.get("nodes_after")
    if isinstance(a, int) and isinstance(b, int):
        return Markup(f'<span class="{"dim" if a == b else ""}">{b - a:+d}</span>')
    return None


def pipeline_section(passes: list[Mapping[str, Any]], anchor: str) -> Markup:
    rows = []
    for i, rec in enumerate(passes, 1):
        a, b = rec.get("nodes_before"), rec.get("nodes_after")
        nodes = f"{a} → {b}" if isinstance(a, int) and isinstance(b, int) else None
        rows.append([i, code(rec.get("name", "?")), Markup(esc(ms(rec.get("seconds")))), nodes, _delta_nodes(rec),
                     rec.get("modified") if isinstance(rec.get("modified"), bool) else None, op_delta(mapping(rec.get("op_delta"))), _verify_cell(rec)])
    head = ["#", "pass", "time", "nodes", "Δ nodes", "changed", "op delta", "checks"]
    parts = [table(head, rows, numeric=[0, 2, 3, 4], classes="pipeline")]
    timed = [(str(r.get("name", "?")), r.get("seconds")) for r in passes]
    if timed and all(isinstance(s, (int, float)) and not isinstance(s, bool) for _, s in timed):
        parts.append(figure(plots.pass_times([n for n, _ in timed], [float(s) for _, s in timed]), "time per pass (ms)"))
    pipeline = " → ".join(str(r.get("name", "?")) for r in passes)
    return section("Pipeline", join(parts), anchor, note=f"passes in order: {pipeline}" if passes else "no passes ran")


def _batch_check(check: Mapping[str, Any]) -> Markup:
    rows = []
    for b in (mapping(x) for x in items(check.get("batches"))):
        outs = [mapping(o) for o in items(b.get("outputs"))]
        worst = max((o.get("max_abs") for o in outs if isinstance(o.get("max_abs"), (int, float))), default=None)
        cos = min((o.get("cosine") for o in outs if isinstance(o.get("cosine"), (int, float))), default=None)
        rows.append([b.get("batch"), badge(b.get("passed") if isinstance(b.get("passed"), bool) else None, "ok" if b.get("passed") else "FAIL"),
                     worst, Markup(esc(cosine(cos))), b.get("error")])
    axes = {**mapping(check.get("input_axes")), **mapping(check.get("output_axes"))}
    lead = f'<p class="note">batch N against N stacked batch-1 runs; batch axes: {esc(", ".join(f"{k}:{v}" for k, v in axes.items()))}</p>' if axes else ""
    return join([lead, table(["batch", "result", "max abs", "min cosine", "error"], rows, numeric=[0, 2, 3])])


def details_section(passes: list[Mapping[str, Any]], anchor: str) -> Markup:
    """Per pass, collapsed: options, facts, what it left alone, its --verify comparison and batch check."""
    blocks = []
    budget = [golden.MAX_HISTOGRAMS // 2]
    for i, rec in enumerate(passes, 1):
        name = str(rec.get("name", "?"))
        inner = []
        options = mapping(rec.get("options"))
        if options:
            inner.append("<h4>Options</h4>" + generic.obj(options, limit=FACT_ROWS))
        facts = mapping(rec.get("facts"))
        if facts:
            inner.append("<h4>Facts</h4>" + generic.obj(facts, limit=FACT_ROWS))
        refused = items(rec.get("refused"))
        if refused and not quantization.is_lowering(rec):
            inner.append("<h4>Left alone</h4>" + table(["node", "op", "why"], [list(quantization.split_refusal(r)) for r in refused]))
        verify = mapping(rec.get("verify"))
        if verify:
            inner.append("<h4>--verify after this pass</h4>" + golden.comparison_table(verify) + golden.histograms(verify, f"after {name}", budget))
        check = mapping(rec.get("batch_check"))
        if check:
            inner.append("<h4>Batch check</h4>" + _batch_check(check))
        flags = []
        if refused:
            flags.append(f"{len(refused)} left alone")
        if verify and golden.verdict_of(verify) is False:
            flags.append("DRIFT")
        summary = f"{i}. {name}" + (f" ({', '.join(flags)})" if flags else "")
        blocks.append(details(summary, join(inner) or '<p class="note">nothing recorded</p>', open_=bool(verify) and golden.verdict_of(verify) is False))
    return section("Pass details", join(blocks), anchor, note="each pass's options, facts and checks (click to open)")


def quantization_section(passes: list[Mapping[str, Any]], anchor: str) -> Markup | None:
    lowering = [r for r in passes if quantization.is_lowering(r)]
    if not lowering:
        return None
    body = join(quantization.lowering_block(r) for r in lowering)
    return section("Quantization: what stayed in float, and why", body, anchor)


def verdict(conv: Mapping[str, Any]) -> tuple[bool | None, str]:
    g = mapping(conv.get("golden"))
    passes = [mapping(p) for p in items(conv.get("passes"))]
    drift = [str(p.get("name")) for p in passes if p.get("verify") and golden.verdict_of(p.get("verify")) is False]
    broken = [str(p.get("name")) for p in passes if mapping(p.get("batch_check")).get("passed") is False]
    if drift or broken:
        what = [f"--verify drift after {', '.join(drift)}"] if drift else []
        what += [f"batch check failed after {', '.join(broken)}"] if broken else []
        return False, "; ".join(what)
    if g:
        ok = g.get("passed") if isinstance(g.get("passed"), bool) else None
        failing = [str(mapping(o).get("name")) for ds in mapping(g.get("data_sets")).values() for o in items(mapping(ds).get("outputs")) if mapping(o).get("passed") is False]
        text = f"golden case {g.get('case', '?')} at {g.get('precision', '?')}: " + ("every output within tolerance" if ok else f"outside tolerance: {', '.join(dict.fromkeys(failing)) or '?'}")
        return ok, text
    if any(p.get("verify") for p in passes):
        return True, "--verify: every pass kept the outputs within tolerance"
    return None, "no golden case or --verify was given: nothing was checked"


def figures(conv: Mapping[str, Any]) -> list[tuple[str, Any]]:
    passes = [mapping(p) for p in items(conv.get("passes"))]
    out: list[tuple[str, Any]] = [("passes", len(passes))]
    if passes and isinstance(passes[0].get("nodes_before"), int) and isinstance(passes[-1].get("nodes_after"), int):
        out.append(("nodes", f"{passes[0]['nodes_before']} → {passes[-1]['nodes_after']}"))
    seconds = [p.get("seconds") for p in passes if isinstance(p.get("seconds"), (int, float))]
    if seconds:
        out.append(("pass time", ms(sum(seconds))))
    art = mapping(conv.get("artifact"))
    if art.get("backend"):
        out.append(("backend", art.get("backend")))
    for p in passes:
        facts = mapping(p.get("facts"))
        if isinstance(facts.get("quantized_nodes"), int):
            out.append(("quantized / left float", f"{facts['quantized_nodes']} / {len(items(p.get('refused')))}"))
    g = mapping(conv.get("golden"))
    if g:
        out.append(("golden min cosine", Markup(esc(cosine(golden.min_cosine(g))))))
    return out


def parts(conv: Mapping[str, Any], body: Body, prefix: str = "", label_prefix: str = "") -> None:
    """Add the conversion's sections to ``body`` (anchors prefixed, so a page can hold two conversions)."""
    passes = [mapping(p) for p in items(conv.get("passes"))]
    body.add(f"{prefix}pipeline", f"{label_prefix}Pipeline", pipeline_section(passes, f"{prefix}pipeline"))
    body.add(f"{prefix}interface", f"{label_prefix}Inputs/outputs", artifact.interface_section(conv, f"{prefix}interface"))
    body.add(f"{prefix}quantization", f"{label_prefix}Quantization", quantization_section(passes, f"{prefix}quantization"))
    g = mapping(conv.get("golden"))
    if g:
        body.add(f"{prefix}golden", f"{label_prefix}Golden", golden.golden_section(g, f"{prefix}golden"))
    if passes:
        body.add(f"{prefix}passes", f"{label_prefix}Pass details", details_section(passes, f"{prefix}passes"))
    art = mapping(conv.get("artifact"))
    if art:
        body.add(f"{prefix}artifact", f"{label_prefix}Artifact", artifact.artifact_section(art, f"{prefix}artifact"))
    elif conv.get("passes") is not None:
        body.add(f"{prefix}artifact", f"{label_prefix}Artifact", section("Artifact", '<p class="note">no artifact was written</p>', f"{prefix}artifact"))


def build(doc: Mapping[str, Any]) -> Body:
    art = mapping(doc.get("artifact"))
    ok, text = verdict(doc)
    model = doc.get("model") or art.get("path") or "?"
    when = mapping(art.get("manifest")).get("created")
    body = Body(subject=str(model), verdict=ok, verdict_text=text, figures=figures(doc), when=str(when) if when else None)
    if doc.get("model_sha256"):
        body.figures.append(("model sha256", code(str(doc["model_sha256"])[:16] + "…")))
    parts(doc, body)
    return body
