"""fp16: tiny models in ONNX text (torch-exported ones, the real classifier and the conformance corpus:
test_pass_fp16_models.py), checked for op list, checker validity (full_check), Cast ``to`` attributes,
topological order and ONNX Runtime equivalence within the fp16 tolerance policy
(converter.compare.DEFAULT_TOLERANCES['fp16']). Inputs are seeded.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from converter.ort_session import make_session, run_session
from tests.conftest import parse
from tests.fp16_checks import assert_close_on_ort, fp16, ops, seeded

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, -1.0, 1.1, 1.2}, float[3] b = {0.01, 0.02, 0.03}> {
    m = MatMul(x, w)
    a = Add(m, b)
    y = Relu(a)
}
"""


def test_keep_io_types_casts_at_the_boundary() -> None:
    model = parse(MLP)
    result = fp16(model)
    g = result.model.graph
    assert ops(result.model) == ["Cast", "MatMul", "Add", "Relu", "Cast"]
    assert [g.input[0].type.tensor_type.elem_type, g.output[0].type.tensor_type.elem_type] == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert [n.attribute[0].i for n in g.node if n.op_type == "Cast"] == [TensorProto.FLOAT16, TensorProto.FLOAT]
    assert {t.name: t.data_type for t in g.initializer} == {"w": TensorProto.FLOAT16, "b": TensorProto.FLOAT16}
    assert result.facts["nodes_converted"] == 3 and result.facts["casts_inserted"] == 2 and result.facts["initializers_converted"] == 2
    assert result.facts["initializer_bytes_after"] * 2 == result.facts["initializer_bytes_before"]
    assert_close_on_ort(model, result.model)


def test_without_keep_io_types_the_interface_is_float16() -> None:
    model = parse(MLP)
    result = fp16(model, keep_io_types=False)
    g = result.model.graph
    assert ops(result.model) == ["MatMul", "Add", "Relu"]
    assert g.input[0].type.tensor_type.elem_type == g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert result.facts["graph_io_retyped"] == 2
    assert_close_on_ort(model, result.model)


OUT_OF_RANGE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y) <float[1] big = {70000.0}> {
    h = Relu(x)
    s = Mul(h, big)
    t = Sub(s, big)
    y = Div(t, big)
}
"""


def test_initializer_beyond_fp16_range_stays_float32_with_its_consumers() -> None:
    model = parse(OUT_OF_RANGE)
    result = fp16(model)
    g = result.model.graph
    inits = {t.name: t.data_type for t in g.initializer}
    assert inits["big"] == TensorProto.FLOAT
    kept = [r for r in result.refused if "kept in float32" in r]
    assert any("initializer 'big'" in r and "7e+04" in r for r in kept)
    assert sum("reads 'big'" in r for r in kept) == 3  # Mul, Sub, Div
    assert ops(result.model) == ["Cast", "Relu", "Cast", "Mul", "Sub", "Div"]
    assert result.facts["nodes_converted"] == 1 and result.facts["nodes_kept_float32"] == 3
    assert_close_on_ort(model, result.model)
    with np.errstate(over="ignore"):  # the same graph with 'big' in fp16 would compute (relu(x)*inf - inf)/inf = NaN
        assert np.isinf(np.float16(70000.0))


def test_tiny_values_are_clamped_so_epsilons_stay_nonzero() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x) => (float[2, 4] y) <float[1] eps = {1e-12}> {
        z = Sub(x, x)
        v = Add(z, eps)
        r = Sqrt(v)
        y = Div(x, r)
    }
    """)
    result = fp16(model)
    eps = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "eps"))
    assert eps.dtype == np.float16 and eps[0] > 0 and result.facts["values_clamped"] == 1
    out = run_session(make_session(result.model), seeded(model))["y"]
    assert np.all(np.isfinite(out))  # eps flushed to zero would divide by zero


def test_blocked_op_stays_float32_with_its_reason() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 8] x) => (float[2, 3] v, int64[2, 3] i) {
        a = Relu(x)
        k = Constant<value = int64[1] {3}>()
        t, i = TopK(a, k)
        v = Sigmoid(t)
    }
    """)
    result = fp16(model)
    assert ops(result.model) == ["Cast", "Relu", "Constant", "Cast", "TopK", "Cast", "Sigmoid", "Cast"]
    topk = next(n for n in result.model.graph.node if n.op_type == "TopK")
    producer = {o: n for n in result.model.graph.node for o in n.output}
    assert producer[topk.input[0]].op_type == "Cast" and producer[topk.input[0]].attribute[0].i == TensorProto.FLOAT
    assert result.refused == ["node 'TopK->t' (TopK) kept in float32: fp16 rounding makes ties of values that differ in float32, so the returned indices change"]
    assert result.facts["kept_float32_ops"] == {"TopK": 1}
    assert_close_on_ort(model, result.model)
    by_name = fp16(parse(MLP), node_block_list=("",))  # unnamed nodes are matched by 'Op->output'
    assert by_name.facts["nodes_kept_float32"] == 0
    relu_kept = fp16(parse(MLP), node_block_list=("Relu->y",))
    assert ops(relu_kept.model) == ["Cast", "MatMul", "Add", "Cast", "Relu"] and "named in node_block_list" in relu_kept.refused[0]
    custom = fp16(parse(MLP), op_block_list=("Add",))
    assert "listed in op_block_list" in custom.refused[0]


def test_existing_cast_to_float_is_retargeted() -> None:
    """onnxconverter-common 1.16 leaves Cast(to=FLOAT) while typing its output float16: checker error."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x, int64[2, 4] ids) => (float[2, 4] y) {
        c = Cast<to = 1>(ids)
        m = Mul(x, c)
        y = Relu(m)
    }
    """)
    result = fp16(model)
    casts = [(n.input[0], n.attribute[0].i) for n in result.model.graph.node if n.op_type == "Cast"]
    assert casts == [("ids", TensorProto.FLOAT16), ("x", TensorProto.FLOAT16), ("y_fp16", TensorProto.FLOAT)]
    assert result.facts["casts_retargeted"] == 1
    assert_close_on_ort(model, result.model)


def test_resize_scales_stay_float32_by_schema() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 1, 4, 4] x) => (float[1, 1, 8, 8] y) {
        s = Constant<value = float[4] {1, 1, 2, 2}>()
        a = Relu(x)
        r = Resize<mode = "linear">(a, , s)
        y = Sigmoid(r)
    }
    """)
    result = fp16(model)
    const = next(n for n in result.model.graph.node if n.op_type == "Constant")
    assert const.attribute[0].t.data_type == TensorProto.FLOAT
    assert ops(result.model) == ["Constant", "Cast", "Relu", "Resize", "Sigmoid", "Cast"]
    assert_close_on_ort(model, result.model)


def test_control_flow_is_kept_and_its_outer_references_cast() -> None:
    """onnxconverter-common 1.16 puts this If before the Relu it reads: not topologically sorted."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
        a = Relu(x)
        y = If(c) <then_branch = t () => (float[2] o) { o = Neg(a) }, else_branch = e () => (float[2] o2) { o2 = Sigmoid(a) }>
    }
    """)
    result = fp16(model)
    assert ops(result.model) == ["Cast", "Relu", "Cast", "If"]
    branch = result.model.graph.node[3].attribute[0].g
    assert list(branch.node[0].input) == ["a_fp32"]
    assert "control flow" in result.refused[0]
    for cond in (True, False):
        assert_close_on_ort(model, result.model, {"x": np.array([0.5, -2.0], np.float32), "c": np.array(cond)})


def test_unsorted_input_comes_out_sorted() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Sigmoid", ["a"], ["y"]), helper.make_node("Relu", ["x"], ["a"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    result = fp16(model)  # fp16() asserts the order
    assert ops(result.model) == ["Cast", "Relu", "Sigmoid", "Cast"]


def test_shape_arithmetic_stays_float32() -> None:
    """2049 is not a float16 value (it rounds to 2048): computing this reshape target in fp16 breaks it."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4098] x) => (float[2, 2049] y) <float[1] two = {2.0}, int64[1] k = {2}, int64[1] one = {1}> {
        s = Shape(x)
        d = Gather<axis = 0>(s, one)
        f = Cast<to = 1>(d)
        h = Div(f, two)
        n = Cast<to = 7>(h)
        shape = Concat<axis = 0>(k, n)
        r = Reshape(x, shape)
        y = Relu(r)
    }
    """)
    result = fp16(model)
    kept = {r.split("'")[1] for r in result.refused}
    assert kept == {"Cast->f", "Div->h"}
    assert all("shape arithmetic" in r for r in result.refused)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 4098)).astype(np.float32)}
    assert run_session(make_session(result.model), feeds)["y"].shape == (2, 2049)


def test_constant_nodes_are_converted_and_sequences_refused() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        w = Constant<value = float[3, 3] {1, 0, 0, 0, 2, 0, 0, 0, 3}>()
        b = Constant<value_floats = [0.5, -1, 2]>()
        m = MatMul(x, w)
        y = Add(m, b)
    }
    """)
    result = fp16(model)
    consts = [n for n in result.model.graph.node if n.op_type == "Constant"]
    assert [c.attribute[0].t.data_type for c in consts] == [TensorProto.FLOAT16] * 2
    assert result.facts["constants_converted"] == 2
    assert_close_on_ort(model, result.model)


def test_graph_output_read_by_another_node_and_constant_of_shape() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] a, float[2, 3] y) <int64[2] shape = {2, 3}> {
        c = ConstantOfShape<value = float[1] {0.5}>(shape)
        a = Add(x, c)
        y = Relu(a)
    }
    """)
    result = fp16(model)
    g = result.model.graph
    assert [(n.op_type, list(n.input), list(n.output)) for n in g.node] == [
        ("ConstantOfShape", ["shape"], ["c"]), ("Cast", ["x"], ["x_fp16"]), ("Add", ["x_fp16", "c"], ["a_fp16"]),
        ("Cast", ["a_fp16"], ["a"]), ("Relu", ["a_fp16"], ["y_fp16"]), ("Cast", ["y_fp16"], ["y"]),
    ]
    assert g.node[0].attribute[0].t.data_type == TensorProto.FLOAT16 and result.facts["constants_converted"] == 1
    assert [o.name for o in g.output] == ["a", "y"]
    assert_close_on_ort(model, result.model)
