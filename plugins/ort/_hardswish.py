"""HardSwish in the forms ONNX Runtime runs fastest: written back into the artifact it saved, and written-out
HardSwish collapsed before the lowering.

When ONNX Runtime saves its optimized model it inlines ``HardSwish`` (a function op) as ``HardSigmoid(x)`` and
``Mul(x, .)``. Loaded again, in a quantized model, ``x`` is a ``DequantizeLinear`` output with two readers, and
ORT's ``EnsureUniqueDQForNodeUnit`` gives each reader its own copy: every HardSwish then dequantizes its input
twice (PP-LCNet: 60 DequantizeLinear at run time instead of 32; ORT's own quantizer's model, whose HardSwish is
inlined only after that step, has one per HardSwish). Joined back into one ``HardSwish`` node, the DQ has one
reader and runs once: measured 5-10% on PP-LCNet at batch 1 and 8 (``bench/bench_quant_models.py``).

``HardSwish(x) = x * max(0, min(1, x / 6 + 1/2))``, exactly ``x * HardSigmoid(x; alpha=1/6, beta=1/2)``.

Paddle and older PyTorch exports write HardSwish out: ``Mul(x, Clip(Add(x, 3), 0, 6)) / 6`` (four float ops, each a
pass over the tensor, which ORT does not fuse). :func:`collapse_written_out` turns every
``x * Clip(x + c, 0, h) * k`` (k > 0 the product of positive constant Mul/Div between the Clip and the Mul or after
the Mul, k*h = 1) into ``x * HardSigmoid(x; alpha=k, beta=k*c)`` (``HardSwish(x)`` itself where that is the same
function and the opset has it): two ops, the same values up to float rounding. Measured on PP-OCRv4 det (24 of them).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from converter.activation_floors import GraphView, clip_bounds, positive_factor
from converter.graph_edit import replace_repeated, unique_name
from converter.plugins.ort._graph import GraphIndex, in_default_domain

ALPHA, BETA = 1.0 / 6.0, 0.5


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _is_hard_sigmoid_of_swish(node: onnx.NodeProto) -> bool:
    if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx") or len(node.input) != 1:
        return False
    attrs = {a.name: a.f for a in node.attribute}
    return abs(attrs.get("alpha", 0.2) - ALPHA) < 1e-6 and abs(attrs.get("beta", 0.5) - BETA) < 1e-6


def join_hardswish(graph: onnx.GraphProto, taken: set[str]) -> int:
    """Replace each ``Mul(x, HardSigmoid(x; 1/6, 1/2))`` whose HardSigmoid has no other reader by ``HardSwish(x)`` (in place)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    outputs = {o.name for o in graph.output}
    joined: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for n in graph.node:
        if not _is_hard_sigmoid_of_swish(n) or n.output[0] in outputs:
            continue
        after = readers.get(n.output[0], [])
        if len(after) != 1 or after[0].op_type != "Mul" or after[0].domain not in ("", "ai.onnx"):
            continue
        mul = after[0]
        if sorted(mul.input) != sorted([n.input[0], n.output[0]]) or id(mul) in joined:
            continue
        name = unique_name(f"{mul.name or mul.output[0]}_hardswish", taken)
        joined[id(mul)] = helper.make_node("HardSwish", [n.input[0]], [mul.output[0]], name=name)
        dropped.add(id(n))
    if not joined:
        return 0
    nodes = [joined.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(joined)


def join_hardswish_in_file(path: Path) -> int:
    """Join the HardSwishes of the main graph of the ONNX file at ``path`` (weights, inline or external, untouched)."""
    model = onnx.load(str(path), load_external_data=False)
    if _default_opset(model) < 14:  # HardSwish is an opset-14 op
        return 0
    taken = {n.name for n in model.graph.node}
    count = join_hardswish(model.graph, taken)
    if count:
        onnx.save_model(model, str(path))
    return count


def _only_reader(name: str, index: GraphIndex) -> onnx.NodeProto | None:
    readers = index.readers.get(name, [])
    return readers[0] if len(readers) == 1 and name not in index.outputs else None


def _match(add: onnx.NodeProto, index: GraphIndex, view: GraphView) -> tuple[str, float, float, list[onnx.NodeProto]] | None:
    """(x, c, k, the nodes from the Add to the last scaling) of ``x * Clip(x + c, 0, 1/k) * k`` starting at ``add``."""
    if add.op_type != "Add" or not in_default_domain(add) or len(add.input) != 2:
        return None
    for x, c_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        c = view.scalar(c_name)
        if c is not None and index.value(x) is None:
            break
    else:
        return None
    clip = _only_reader(add.output[0], index)
    if clip is None or clip.op_type != "Clip" or not in_default_domain(clip) or clip.input[0] != add.output[0]:
        return None
    bounds = clip_bounds(clip, view)
    if bounds is None or bounds[0] != 0.0 or not 0.0 < bounds[1] < float("inf") or c <= 0.0:
        return None
    nodes, k, value = [add, clip], 1.0, clip.output[0]
    node = _only_reader(value, index)
    while node is not None and not (node.op_type == "Mul" and sorted(node.input) == sorted([x, value])):  # scalings before the Mul
        factor = positive_factor(node, value, view)
        if factor is None:
            return None
        nodes.append(node)
        k, value, node = k * factor, node.output[0], _only_reader(node.output[0], index)
    if node is None or sorted(node.input) != sorted([x, value]) or not in_default_domain(node):
        return None
    nodes.append(node)
    value = node.output[0]
    while abs(k * bounds[1] - 1.0) > 1e-6:  # scalings after the Mul
        after = _only_reader(value, index)
        factor = positive_factor(after, value, view) if after is not None else None
        if factor is None:
            return None
        nodes.append(after)
        k, value = k * factor, after.output[0]
    return x, c, k, nodes


def collapse_written_out(g: onnx.GraphProto, opset: int) -> int:
    """Rewrite each written-out HardSwish of the main graph as ``x * HardSigmoid(x)`` (or ``HardSwish(x)``); how many."""
    index = GraphIndex.of(g)
    view = index.view()
    taken = {n.name for n in g.node} | {o for n in g.node for o in n.output} | set(index.inits)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    for add in g.node:
        if id(add) in dropped:
            continue
        found = _match(add, index, view)
        if found is None or any(id(n) in dropped for n in found[3]):
            continue
        x, c, k, nodes = found
        y = nodes[-1].output[0]
        if opset >= 14 and abs(k - ALPHA) < 1e-6 and abs(k * c - BETA) < 1e-6:
            new = [helper.make_node("HardSwish", [x], [y], name=unique_name(f"{y}_hardswish", taken))]
        else:
            gate = unique_name(f"{y}_hardsigmoid", taken)
            new = [helper.make_node("HardSigmoid", [x], [gate], name=gate, alpha=float(k), beta=float(k * c)),
                   helper.make_node("Mul", [x, gate], [y], name=unique_name(f"{y}_mul", taken))]
        replaced[id(nodes[-1])] = new
        dropped.update(id(n) for n in nodes)
    if not replaced:
        return 0
    order: list[onnx.NodeProto] = []
    gone: set[str] = set()  # the intermediate tensors: their value_info goes too
    for n in g.node:
        if id(n) in replaced:
            order.extend(replaced[id(n)])
        elif id(n) not in dropped:
            order.append(n)
        else:
            gone.update(n.output)
    replace_repeated(g.node, order)
    replace_repeated(g.value_info, [v for v in g.value_info if v.name not in gone])
    return len(replaced)
