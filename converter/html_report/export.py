"""``export``'s page: how the model was exported, its inputs and outputs, the check against torch per batch,
and, with ``--then``, the conversion that followed (the same sections as ``convert``'s page).

The document holds ``{"export": ExportOutcome.to_json(), "then": ConvertOutcome.to_json() | absent}``; a
document with the export's fields at the top level is read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.html_report import artifact, convert, generic, golden
from converter.html_report.page import Body, Markup, code, dims, esc, items, join, kv, mapping, section

_SHOWN = {"spec", "weights", "exporter", "torch", "opset", "dynamic_axes", "trace_sizes", "check_sizes", "export_seconds", "inputs", "outputs",
          "verify", "written", "golden", "torch_warnings", "dynamic_batch", "trace_batch", "renamed_dims"}


def _axes(dynamic: Mapping[str, Any]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{axis}={sym}" for axis, sym in mapping(ax).items()) for name, ax in dynamic.items()) or "none (static)"


def export_section(ex: Mapping[str, Any]) -> Markup:
    opset = mapping(ex.get("opset"))
    facts: dict[str, Any] = {
        "spec": code(ex.get("spec", "?")),
        "weights": code(ex["weights"]) if ex.get("weights") else None,
        "exporter": ex.get("exporter"),
        "torch": ex.get("torch"),
        "opset written": opset.get("written"),
        "opset requested": opset.get("requested"),
        "dynamic axes": _axes(mapping(ex.get("dynamic_axes"))),
        "traced at": ", ".join(f"{k}={v}" for k, v in mapping(ex.get("trace_sizes")).items()) or ex.get("trace_batch"),
        "checked at": ", ".join(f"{k}={'/'.join(str(x) for x in items(v))}" for k, v in mapping(ex.get("check_sizes")).items()) or None,
        "export time": f"{ex['export_seconds']} s" if isinstance(ex.get("export_seconds"), (int, float)) else None,
        "written": Markup("<br>".join(str(code(w)) for w in items(ex.get("written")))) or None,
        "golden case": code(ex["golden"]) if ex.get("golden") else None,
    }
    parts = [kv({k: v for k, v in facts.items() if v is not None})]
    fixes = items(opset.get("fixes"))
    if fixes:
        parts.append("<h4>Repairs to the exported graph</h4><ul class=\"reasons\">" + "".join(f"<li>{esc(f)}</li>" for f in fixes[:100]) + "</ul>")
    renamed = mapping(ex.get("renamed_dims"))
    if renamed:
        parts.append("<h4>Renamed dims</h4>" + generic.obj(renamed))
    warnings = items(ex.get("torch_warnings"))
    if warnings:
        parts.append("<h4>torch's warnings</h4><ul class=\"reasons\">" + "".join(f"<li>{esc(w)}</li>" for w in warnings[:50]) + "</ul>")
    rest = {k: v for k, v in ex.items() if k not in _SHOWN}
    if rest:
        parts.append("<h4>Other fields</h4>" + generic.obj(rest, limit=60))
    return section("Export", join(parts), "export", note="what torch exported and how")


def verify_section(verify: Mapping[str, Any]) -> Markup:
    ok = verify.get("passed") if isinstance(verify.get("passed"), bool) else None
    parts = [f'<p class="verdict">{golden.badge(ok)} torch and ONNX Runtime on the same seeded inputs</p>']
    budget = [golden.MAX_HISTOGRAMS]
    for b in (mapping(x) for x in items(verify.get("batches"))):
        sizes = ", ".join(f"{k}={v}" for k, v in mapping(b.get("sizes")).items()) or f"batch {b.get('batch', '?')}"
        feeds = ", ".join(f"{k} {dims(v)}" for k, v in mapping(b.get("inputs")).items())
        parts.append(f"<h3>{esc(sizes)} {golden.badge(golden.verdict_of(b), 'ok' if golden.verdict_of(b) else None)}</h3>")
        if feeds:
            parts.append(f'<p class="note">inputs: {esc(feeds)}; seed {esc(b.get("seed", "?"))}</p>')
        parts.append(golden.comparison_table(b))
        parts.append(golden.histograms(b, sizes, budget))
    return section("Check against torch", join(parts), "verify", note="each output of the exported model against torch's, per checked size")


def build(doc: Mapping[str, Any]) -> Body:
    ex = mapping(doc.get("export")) or doc
    then = mapping(doc.get("then"))
    verify = mapping(ex.get("verify"))
    ok = golden.verdict_of(verify) if verify else None
    texts = []
    if verify:
        texts.append("the export matches torch" if ok else "the export does NOT match torch" if ok is False else "torch check: no result")
    if then:
        then_ok, then_text = convert.verdict(then)
        texts.append(f"then: {then_text}")
        ok = then_ok if ok is not False and then_ok is not None else ok
    written = items(ex.get("written"))
    when = mapping(mapping(then.get("artifact")).get("manifest")).get("created")
    body = Body(subject=str(written[0] if written else ex.get("spec") or "?"), verdict=ok, verdict_text="; ".join(texts) or "nothing was checked",
                when=str(when) if when else None)
    body.figures = [("exporter", ex.get("exporter")), ("opset", mapping(ex.get("opset")).get("written")), ("torch", ex.get("torch")),
                    ("inputs / outputs", f"{len(items(ex.get('inputs')))} / {len(items(ex.get('outputs')))}")]
    body.add("export", "Export", export_section(ex))
    if ex.get("inputs") or ex.get("outputs"):
        tables = artifact.interface_tables(None, {"inputs": ex.get("inputs"), "outputs": ex.get("outputs")})
        body.add("interface", "Inputs/outputs", section("Inputs and outputs", tables, "interface", note="as exported; dims by symbol name where dynamic"))
    if verify:
        body.add("verify", "Torch check", verify_section(verify))
    if then:
        body.sections.append(("then", "then: convert", section("Then: convert", f'<p class="note">{esc(then.get("model", ""))} through the --then pipeline</p>', "then")))
        convert.parts(then, body, prefix="then-", label_prefix="then: ")
    return body
