"""dynamic_batch rules for control flow: If (its branches are walked like the graph), Loop and Scan (refused).

An If whose condition is a known constant (shape checks exporters emit, ``x.dim() == 2``,
``state.shape[0]``) runs one branch at every batch: only that branch is walked. A condition
that does not depend on the batch (a sample-rate input) may take either branch: both are
walked and must carry the batch the same way. A condition that depends on the batch size
(``x.shape[0] == 1``) or on the samples' data is refused: batch N could take another branch
than N batch-1 runs.
"""

from __future__ import annotations

import onnx

from converter.passes.dynamic_batch._analysis import Analysis, Refuse
from converter.passes.dynamic_batch._flags import Flag, fmt_flag, label
from converter.passes.dynamic_batch._values import is_static, to_ints


def _branches(node: onnx.NodeProto, a: Analysis) -> list[str]:
    cond = node.input[0]
    if a.batched(cond):
        raise Refuse(f"its condition ('{cond}') is computed from the samples' data: one batch-N run cannot take each sample's branch")
    v = a.value(cond)
    if v is not None and is_static(v) and v.size == 1:
        return ["then_branch" if int(to_ints(v).reshape(-1)[0]) else "else_branch"]
    if a.value_depends(cond):
        raise Refuse(f"its condition ('{cond}') depends on the batch size: batch N would take another branch than batch {a.B}")
    return ["then_branch", "else_branch"]


def _flags_or_none(a: Analysis, name: str) -> tuple[Flag, ...] | None:
    return a.flags[name] if a.batched(name) else None


def if_(node: onnx.NodeProto, a: Analysis) -> None:
    taken = _branches(node, a)
    graphs = {g.name: g.g for g in node.attribute if g.type == onnx.AttributeProto.GRAPH}
    if any(b not in graphs for b in taken):
        raise Refuse("it lacks a branch")
    plans = {b: a.walk(graphs[b]) for b in taken}
    for i, out in enumerate(node.output):
        if not out:
            continue
        names = {b: graphs[b].output[i].name for b in taken}
        a.aliases[out] = list(names.values())
        batched = {b: f for b, x in names.items() if (f := _flags_or_none(a, x)) is not None}
        kinds = set(batched.values())
        if len(kinds) > 1:
            raise Refuse(f"its branches return output {i} with the batch in different places ({'; '.join(', '.join(map(fmt_flag, f)) for f in kinds)})")
        dims = [a.static.get(x) for x in names.values()]
        if out not in a.static or None in a.static[out]:
            known = [d for d in dims if d is not None and None not in d]
            if known and all(d == known[0] for d in known):
                a.static[out] = known[0]
        if len(taken) == 1:
            x = names[taken[0]]
            if x in a.values:
                a.values[out] = a.values[x]
            elif a.value_depends(x):
                a.dependent.add(out)
        if not kinds:
            continue
        flags = kinds.pop()
        pos = next(j for j, f in enumerate(flags) if f is not None)
        k = flags[pos].k  # type: ignore[union-attr]
        for b, x in names.items():
            if b in batched:
                continue
            if k is None:
                raise Refuse(f"its {b} returns output {i} without the batch, the other branch with it as {fmt_flag(flags[pos])}")
            graphs[b].output[i].name = a.broadcast_in(plans[b], x, pos, k, reader=f"{label(node)} ({b})")
        a.set_flags(out, flags)


def loop_or_scan(node: onnx.NodeProto, a: Analysis) -> None:
    raise Refuse("control flow (Loop/Scan) over batch data is not followed by this pass")


CONTROL_RULES = {"If": if_, "Loop": loop_or_scan, "Scan": loop_or_scan}
