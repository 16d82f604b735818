"""Exact rewrites around folded values (option ``simplify``), in the spirit of onnxslim's patterns.

Every rule keeps each output bit for bit (the one caveat: ``x + 0`` turns ``-0.0`` into
``+0.0``, so dropping it keeps a ``-0.0`` that compares equal). Each rule is one function:

- ``duplicate_initializers``: initializers with the same type, shape and bytes become one.
- ``duplicate_nodes``: pure nodes with the same op, attributes and inputs become one (so
  the six ``Shape(x)`` of an attention block, and all that hangs off them, are computed once).
- ``no_op``: nodes that return their input unchanged go: Identity, inference Dropout, Cast to
  the same type, ``+0``/``-0``/``*1``/``/1`` by a constant that does not broadcast, Reshape,
  Expand, Flatten, Slice or Split to the same shape, identity Transpose, single-input Concat,
  zero Pad, Tile by ones.
- ``reshape_shape``: a Reshape whose shape is computed (``Concat`` of ``Shape→Gather`` of its
  own input, with dynamic dims) gets a constant shape: known dims as they are, a dim copied
  from the same position of the input as ``0``, one remaining dim as ``-1``. Also when shape
  inference knows every output dim but one. (On a zero-sized tensor ``-1`` is ambiguous, as
  in onnxslim: such shapes keep their arithmetic only if a known dim is 0.)
- ``concat_chain``: a Concat read only by a Concat on the same axis is spliced into it.
- ``reshape_chain``: ``Reshape(Reshape(x, a), b)`` with a constant ``b`` without copied dims,
  the inner one read by nothing else, becomes ``Reshape(x, b)``.

The interface keeps its names: a no-op whose output is a graph output is removed only when
its input is a node output nothing else reads (that node then produces the graph output).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from converter import lazy_weights
from converter.graph_edit import final_name, rename_all_uses, unique_name
from converter.passes.fold_constants._constants import delete_at, is_default_domain
from converter.passes.fold_constants._graph import constants, drop_dead, is_pure, reader_counts, taken_names
from converter.passes.fold_constants._shapes import TensorType, same_shape
from converter.passes.fold_constants._symbolic import Value, dim_symbol

Types = dict[str, TensorType]


def _resolver(renames: dict[str, str]) -> Callable[[str], str]:
    return functools.partial(final_name, renames)


Touched = tuple[int, list[str]]
"""How many rewrites a rule made, and the names that may have become unread."""


def duplicate_initializers(graph: onnx.GraphProto) -> Touched:
    outputs = {o.name for o in graph.output}
    consts = constants(graph)
    first: dict[tuple, str] = {}
    renames: dict[str, str] = {}
    drop = []
    for i, (name, t) in enumerate((t.name, t) for t in graph.initializer):
        if name not in consts or name in outputs or lazy_weights.unreadable(t) or t.data_type == onnx.TensorProto.STRING:
            continue
        data = lazy_weights.to_array(t)
        key = (t.data_type, tuple(t.dims), hashlib.sha256(np.ascontiguousarray(data).tobytes()).digest())
        if key in first:
            renames[name] = first[key]
            drop.append(i)
        else:
            first[key] = name
    if renames:
        rename_all_uses(graph, renames)
        delete_at(graph.initializer, drop)
    return len(drop), []


def duplicate_nodes(graph: onnx.GraphProto, opset: int) -> Touched:
    outputs = {o.name for o in graph.output}
    renames: dict[str, str] = {}
    final = _resolver(renames)
    seen: dict[tuple, onnx.NodeProto] = {}
    drop = []
    for i, node in enumerate(graph.node):
        if any(o in outputs for o in node.output) or not is_pure(node, opset):
            continue
        attrs = tuple(a.SerializeToString(deterministic=True) for a in sorted(node.attribute, key=lambda a: a.name))
        key = (node.domain, node.op_type, tuple(final(x) if x else "" for x in node.input), attrs, len(node.output))
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        if any(o and not f for o, f in zip(node.output, first.output, strict=True)):
            continue
        renames.update((o, f) for o, f in zip(node.output, first.output, strict=True) if o)
        drop.append(i)
    if renames:
        rename_all_uses(graph, renames)
        delete_at(graph.node, drop)
    return len(drop), []


# ---------------------------------------------------------------- no-ops


def _all_equal(t: onnx.TensorProto | None, value: float) -> bool:
    if t is None or lazy_weights.unreadable(t) or int(np.prod(t.dims)) > 1 << 20:
        return False
    return bool(np.all(lazy_weights.to_array(t) == value))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _arith_source(node: onnx.NodeProto, types: Types, consts: dict[str, onnx.TensorProto]) -> str | None:
    identity = 0 if node.op_type in ("Add", "Sub") else 1
    sides = (1,) if node.op_type in ("Sub", "Div") else (0, 1)
    out = types.get(node.output[0])
    for k in sides:
        var = node.input[1 - k]
        if _all_equal(consts.get(node.input[k]), identity) and same_shape(types.get(var), out) and types[var].elem_type == out.elem_type:
            return var
    return None


def _noop_source(node: onnx.NodeProto, types: Types, consts: dict[str, onnx.TensorProto], opset: int) -> str | None:
    """The input a node returns unchanged, or None."""
    op, ins = node.op_type, node.input
    if not is_default_domain(node) or not ins or not ins[0]:
        return None
    t_in, t_out = types.get(ins[0]), types.get(node.output[0])
    if op == "Identity":
        return ins[0]
    if op == "Dropout" and opset >= 7:
        training = len(ins) > 2 and ins[2]
        return ins[0] if not training or _all_equal(consts.get(ins[2]), 0) else None
    if op == "Cast":
        return ins[0] if t_in is not None and t_in.elem_type and t_in.elem_type == _attr(node, "to") else None
    if op in ("Add", "Sub", "Mul", "Div") and len(ins) == 2:
        return _arith_source(node, types, consts)
    if op in ("Reshape", "Expand", "Flatten") or (op == "Split" and len(node.output) == 1):
        return ins[0] if same_shape(t_in, t_out) else None
    if op == "Transpose":
        perm = _attr(node, "perm")
        return ins[0] if perm is not None and list(perm) == list(range(len(perm))) else None
    if op == "Concat":
        return ins[0] if len(ins) == 1 else None
    if op == "Pad":
        pads = consts.get(ins[1]) if opset >= 11 and len(ins) > 1 else None
        zero = _all_equal(pads, 0) if opset >= 11 else _attr(node, "pads") is not None and not any(_attr(node, "pads"))
        return ins[0] if zero else None
    if op == "Tile":
        return ins[0] if len(ins) > 1 and _all_equal(consts.get(ins[1]), 1) else None
    if op == "Slice" and opset >= 10 and same_shape(t_in, t_out):
        steps_ok = len(ins) < 5 or not ins[4] or _all_equal(consts.get(ins[4]), 1)
        return ins[0] if steps_ok and _all_equal(consts.get(ins[1]), 0) else None
    return None


def no_ops(graph: onnx.GraphProto, types: Types, opset: int) -> Touched:
    outputs = {o.name for o in graph.output}
    consts = constants(graph)
    readers = reader_counts(graph)
    producer = {o: n for n in graph.node for o in n.output if o}
    renames: dict[str, str] = {}
    drop, freed = [], []
    for i, node in enumerate(graph.node):
        if not node.output or any(o and readers[o] for o in node.output[1:]):
            continue
        src = _noop_source(node, types, consts, opset)
        if src is None:
            continue
        if node.output[0] in outputs:  # the producer of src takes the graph output's name instead
            owner = producer.get(src)
            if node.op_type not in ("Identity", "Dropout", "Cast"):
                continue  # a graph output's declared shape is not evidence enough
            if owner is None or any(graph.node[j] is owner for j in drop) or src in outputs or readers[src] != 1 or src in renames.values():
                continue
            owner.output[list(owner.output).index(src)] = node.output[0]
        else:
            renames[node.output[0]] = src
        drop.append(i)
        freed.extend(x for x in node.input if x and x != src)
    rename_all_uses(graph, renames)
    delete_at(graph.node, drop)
    return len(drop), freed


# ---------------------------------------------------------------- Reshape shapes


def _shape_from_value(value: Value, data: str, t_data: TensorType | None, allowzero: bool) -> list[int] | None:
    out: list[int] = []
    for i, e in enumerate(value.elems):
        if e.is_Integer:
            out.append(int(e))
        elif not allowzero and t_data is not None and t_data.sym is not None and i < len(t_data.sym) and e == dim_symbol(data, i, t_data.sym[i]):
            out.append(0)
        elif e.is_nonnegative:
            out.append(-1)
        else:
            return None
    if out.count(-1) > 1 or (allowzero and 0 in out and -1 in out):
        return None
    return out


def _shape_from_type(t_out: TensorType | None) -> list[int] | None:
    if t_out is None or t_out.sym is None:
        return None
    if any(isinstance(d, int) and d <= 0 for d in t_out.sym) or sum(not isinstance(d, int) for d in t_out.sym) > 1:
        return None
    return [d if isinstance(d, int) else -1 for d in t_out.sym]


def _guesses(value: Value | None) -> bool:
    """The value reads a dim shape inference could not tell (a later round may know it):
    an unknown dim, or one ONNX inference named itself (``unk__N``)."""
    return value is not None and any(re.fullmatch(r"\?.*|unk__\d+", str(s)) for e in value.elems for s in e.free_symbols)


def reshape_shapes(graph: onnx.GraphProto, types: Types, values: dict[str, Value], defer: bool) -> Touched:
    """Constant shapes for computed Reshape shapes. Those that read a dim inference did not know
    wait for the next round's inference while anything else changes (``defer``, or another Reshape)."""
    consts = constants(graph)
    taken = taken_names(graph)
    computed = {o for n in graph.node for o in n.output}  # never a shape the user feeds
    outputs = {o.name for o in graph.output}
    found = []
    for node in graph.node:
        if node.op_type != "Reshape" or not is_default_domain(node) or len(node.input) < 2 or node.input[1] in consts or node.input[1] not in computed:
            continue
        allowzero = bool(_attr(node, "allowzero", 0))
        value = values.get(node.input[1])
        target = _shape_from_value(value, node.input[0], types.get(node.input[0]), allowzero) if value is not None and value.rank == 1 else None
        if target is None and node.output[0] not in outputs:  # a graph output's type may be a stale declaration
            target = _shape_from_type(types.get(node.output[0]))
        if target is not None:
            found.append((node, target, _guesses(value)))
    sure = [f for f in found if not f[2]]
    replaced = []
    for node, target, _ in sure if sure or defer else found:
        name = unique_name(f"{node.output[0]}_shape", taken)
        graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        replaced.append(node.input[1])
        node.input[1] = name
    return len(replaced), replaced


# ---------------------------------------------------------------- chains


def concat_chains(graph: onnx.GraphProto) -> Touched:
    outputs = {o.name for o in graph.output}
    readers = reader_counts(graph)
    producer = {n.output[0]: n for n in graph.node if n.output and n.op_type == "Concat" and is_default_domain(n)}
    spliced = []
    for node in graph.node:
        if node.op_type != "Concat" or not is_default_domain(node):
            continue
        new_inputs, changed = [], False
        for x in node.input:
            inner = producer.get(x)
            if inner is not None and inner is not node and readers[x] == 1 and x not in outputs and _attr(inner, "axis") == _attr(node, "axis"):
                new_inputs.extend(inner.input)
                spliced.append(x)
                changed = True
            else:
                new_inputs.append(x)
        if changed:
            del node.input[:]
            node.input.extend(new_inputs)
    return len(spliced), spliced


def reshape_chains(graph: onnx.GraphProto) -> Touched:
    outputs = {o.name for o in graph.output}
    readers = reader_counts(graph)
    consts = constants(graph)
    producer = {n.output[0]: n for n in graph.node if n.output and n.op_type == "Reshape" and is_default_domain(n)}
    merged = []
    for node in graph.node:
        if node.op_type != "Reshape" or not is_default_domain(node) or len(node.input) < 2 or node.input[1] not in consts:
            continue
        inner = producer.get(node.input[0])
        shape = lazy_weights.to_array(consts[node.input[1]])
        if inner is None or readers[node.input[0]] != 1 or node.input[0] in outputs or (0 in shape and not _attr(node, "allowzero", 0)):
            continue
        merged.append(node.input[0])
        node.input[0] = inner.input[0]
    return len(merged), merged


def simplify_graph(model: onnx.ModelProto, types: Types, values: dict[str, Value], opset: int, bake_shapes: bool = True, settled: bool = True) -> Counter[str]:
    """Apply every rule once, in order; returns how many rewrites each made.

    ``bake_shapes=False`` (``fold_shapes=false``) skips ``reshape_shape``, the one rule that writes dims
    into constants; ``settled=False`` (this round folded something) defers its guesses to the next round.
    """
    g = model.graph
    counts: Counter[str] = Counter()
    for name, rule in (
        ("duplicate_initializers", lambda: duplicate_initializers(g)),
        ("duplicate_nodes", lambda: duplicate_nodes(g, opset)),
        ("no_op", lambda: no_ops(g, types, opset)),
        ("reshape_shape", lambda: reshape_shapes(g, types, values, defer=not settled) if bake_shapes else (0, [])),
        ("concat_chain", lambda: concat_chains(g)),
        ("reshape_chain", lambda: reshape_chains(g)),
    ):
        count, freed = rule()
        if count:
            counts[name] += count
            drop_dead(g, freed, opset)
    return counts
