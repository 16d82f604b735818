"""What a lowering pass (``qdq``, ``fp16``) changed precision of, and what it left in float and why.

The passes say it in their records: ``facts`` count the quantized nodes by op (``quantized_ops``) or the
nodes kept in float32 (``kept_float32_ops``), and ``refused`` holds one line per node left alone,
``LABEL (Op): reason`` (qdq) or ``node 'LABEL' (Op) kept in float32: reason`` (fp16). Those lines are
split into node, op and reason here; a line in another form is shown whole as the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from converter.html_report.page import Markup, cards, code, esc, items, join, mapping, table

_FORMS = (
    re.compile(r"^node '(?P<node>.*?)' \((?P<op>[^()]*)\) kept in float32: (?P<reason>.*)$", re.DOTALL),
    re.compile(r"^initializer '(?P<node>.*?)' kept in float32: (?P<reason>.*)$", re.DOTALL),
    re.compile(r"^(?P<node>.+?) \((?P<op>[A-Za-z_][\w.]*)\): (?P<reason>.*)$", re.DOTALL),
)
MAX_REASON_EXAMPLES = 4


def split_refusal(text: Any) -> tuple[str, str, str]:
    """(node, op, reason) of one ``refused`` line; ('', '', text) when it has no node in it."""
    s = str(text)
    for i, form in enumerate(_FORMS):
        m = form.match(s)
        if m:
            op = "initializer" if i == 1 else m.group("op")
            return m.group("node"), op, m.group("reason")
    return "", "", s


def is_lowering(record: Mapping[str, Any]) -> bool:
    """A pass that changes precision: qdq, fp16, or any pass whose facts count quantized or kept-float nodes."""
    facts = mapping(record.get("facts"))
    return record.get("name") in ("qdq", "fp16") or any(k in facts for k in ("quantized_nodes", "quantized_ops", "nodes_kept_float32", "kept_float32_ops"))


def _count_table(counts: Mapping[str, Any], what: str) -> Markup:
    rows = sorted(((str(k), v) for k, v in counts.items()), key=lambda kv: (-(kv[1] if isinstance(kv[1], (int, float)) else 0), kv[0]))
    return table(["op", what], [list(r) for r in rows], numeric=[1])


def kept_float(refused: list[Any]) -> Markup:
    """The nodes left in float: first grouped by reason (how many, which ops, examples), then every node."""
    split = [split_refusal(r) for r in refused]
    groups: dict[str, list[tuple[str, str]]] = {}
    for node, op, reason in split:
        groups.setdefault(reason, []).append((node, op))
    rows = []
    for reason, nodes in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        ops = sorted({op for _, op in nodes if op})
        examples = ", ".join(n for n, _ in nodes[:MAX_REASON_EXAMPLES] if n) + (f" … (+{len(nodes) - MAX_REASON_EXAMPLES})" if len(nodes) > MAX_REASON_EXAMPLES else "")
        rows.append([len(nodes), ", ".join(ops), reason, examples])
    out = [table(["nodes", "op", "why it stays float", "e.g."], rows, numeric=[0], classes="reasons")]
    if len(split) > len(groups) and any(node for node, _, _ in split):  # one node per reason: the table above names them all
        out.append("<h4>Every node left in float</h4>")
        out.append(table(["node", "op", "reason"], [list(s) for s in split]))
    return join(out)


def lowering_block(record: Mapping[str, Any]) -> Markup:
    """One lowering pass: headline figures, what was quantized by op, what stayed float and why."""
    facts = mapping(record.get("facts"))
    name = str(record.get("name", "?"))
    refused = items(record.get("refused"))
    figures: list[tuple[str, Any]] = []
    for key, label in (("quantized_nodes", "quantized nodes"), ("nodes_converted", "nodes in fp16"), ("nodes_kept_float32", "kept float32"),
                       ("calibrator", "calibrator"), ("samples", "calibration samples"), ("calibration_seconds", "calibration s")):
        if key in facts and not isinstance(facts[key], (Mapping, list)):
            figures.append((label, facts[key]))
    figures.append(("left in float", len(refused)))
    parts = [f'<h3>pass <code>{esc(name)}</code></h3>', cards(figures)]
    quantized = mapping(facts.get("quantized_ops"))
    kept_ops = mapping(facts.get("kept_float32_ops"))
    sides = []
    if quantized:
        sides.append(join(["<div><h4>Quantized, by op</h4>", _count_table(quantized, "nodes"), "</div>"]))
    if kept_ops:
        sides.append(join(["<div><h4>Kept in float32, by op</h4>", _count_table(kept_ops, "nodes"), "</div>"]))
    if sides:
        parts.append(join(['<div class="sides">', *sides, "</div>"]))
    exclude = items(facts.get("excluded")) or items(mapping(facts.get("budget")).get("excluded"))
    if exclude:
        parts.append(f'<p>excluded by the accuracy budget: {", ".join(str(code(e)) for e in exclude[:40])}</p>')
    if refused:
        parts.append("<h4>Left in float, and why</h4>")
        parts.append(kept_float(refused))
    else:
        parts.append('<p class="note">the pass left no candidate node in float</p>')
    return join(parts)
