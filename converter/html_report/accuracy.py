"""``debug accuracy``'s page: per-tensor error of the lowered model (int8 Q/DQ or fp16) against the float one, worst first.

The document (``AccuracyReport.to_json``) lists tensors ranked by the command; the page ranks them again by the
same measure (``own_rel_l2`` when ``sort`` is ``own``, else ``rel_l2``) so the worst is first whatever the order,
draws the worst as bars with the suggestion cutoff, and lists every tensor (capped) in a table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from converter.html_report import plots
from converter.html_report.page import Body, Markup, code, cosine, esc, figure, items, join, kv, mapping, section, table


def _key(sort: str) -> str:
    return "own_rel_l2" if sort == "own" else "rel_l2"


def _score(entry: Mapping[str, Any], key: str) -> float:
    v = entry.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else -math.inf


def ranked(doc: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], str]:
    key = _key(str(doc.get("sort", "own")))
    tensors = [mapping(t) for t in items(doc.get("tensors"))]
    if key == "own_rel_l2" and tensors and not any(isinstance(t.get(key), (int, float)) for t in tensors):
        key = "rel_l2"  # fp16 mode has no own error
    return sorted(tensors, key=lambda t: -_score(t, key)), key


def build(doc: Mapping[str, Any]) -> Body:
    tensors, key = ranked(doc)
    cutoff = doc.get("cutoff") if isinstance(doc.get("cutoff"), (int, float)) else None
    above = [t for t in tensors if cutoff is not None and _score(t, key) > cutoff]
    suggested = [str(s) for s in items(doc.get("suggested_exclude"))]
    subject = doc.get("quant_model") or doc.get("model") or "lowered model"
    body = Body(subject=str(subject))
    body.verdict_text = (f"{len(above)} tensor(s) above the cutoff; suggested: qdq{{exclude=[{','.join(suggested)}]}}" if suggested
                         else "no tensor stands out: nothing to exclude")
    body.figures = [("mode", doc.get("mode")), ("samples", doc.get("samples")), ("tensors compared", len(tensors)),
                    ("ranked by", key), ("above cutoff", len(above)), ("suggested exclusions", len(suggested))]
    worst = [t for t in tensors if _score(t, key) > -math.inf][: plots.MAX_BARS]
    parts = []
    if worst:
        svg = plots.ranked_bars([str(t.get("tensor", "?")) for t in worst], [_score(t, key) for t in worst], f"{key} (relative L2 error)",
                                f"worst {len(worst)} tensors by {key}", cutoff)
        parts.append(figure(svg, f"worst tensors first; red: above the cutoff {cutoff:.3g}" if cutoff is not None else "worst tensors first"))
    rows, marks = [], []
    for rank, t in enumerate(tensors, 1):
        consumers = ", ".join(str(c) for c in items(t.get("consumers"))[:6]) + (" …" if len(items(t.get("consumers"))) > 6 else "")
        rows.append([rank, code(t.get("tensor", "?")), t.get("kind"), consumers, t.get("own_rel_l2"), t.get("rel_l2"),
                     Markup(esc(cosine(t.get("cosine")))), t.get("max_abs"), t.get("problem")])
        marks.append("bad" if t in above else ("warn" if t.get("problem") else ""))
    parts.append(table(["#", "tensor", "kind", "read by", "own rel L2", "rel L2", "cosine", "max abs", "problem"], rows, numeric=[0, 4, 5, 6, 7], row_classes=marks))
    note = ("own: the tensor's own quantization error (DQ(Q(x)) vs x inside the lowered model); rel L2: accumulated error against the float model "
            "up to that tensor; worst first")
    body.add("tensors", "Per-tensor error", section("Per-tensor error, worst first", join(parts), "tensors", note=note))
    suggestion = Markup(f"<p>exclude the readers of the worst tensors: {code('qdq{exclude=[' + ','.join(suggested) + ']}')}</p>") if suggested else ""
    settings = {k: doc.get(k) for k in ("mode", "samples", "sort", "chunk_size", "cutoff", "float_model", "quant_model") if k in doc}
    if items(doc.get("marked_per_session")):
        settings["tensors per session"] = ", ".join(str(x) for x in items(doc.get("marked_per_session")))
    unmapped = items(doc.get("unmapped"))
    extra = f'<h4>Not paired with a float tensor</h4><p>{esc(", ".join(str(u) for u in unmapped[:100]))}</p>' if unmapped else ""
    body.add("suggestion", "Suggestion", section("Suggestion and settings", join([suggestion, kv(settings), extra]), "suggestion"))
    return body
