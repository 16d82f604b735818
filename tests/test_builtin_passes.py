from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.parser
import pytest

from converter.compare import compare
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext
from converter.passes.cleanup import CleanupOptions, CleanupPass
from converter.passes.infer_shapes import InferShapesOptions, InferShapesPass
from tests.conftest import parse

CTX = PassContext(log=logging.getLogger("test"))


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    return run_session(make_session(model), {"x": x})


def test_cleanup_removes_identity_dead_and_unused(tiny_model: onnx.ModelProto) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    before = _run(tiny_model, x)
    result = CleanupPass(CleanupOptions()).run(tiny_model, CTX)
    m = result.model
    assert result.modified
    assert [n.op_type for n in m.graph.node] == ["MatMul", "Add", "Relu"]
    assert [t.name for t in m.graph.initializer] == ["w", "b"]
    assert result.facts["identities_removed"] == 2 and result.facts["dead_nodes_removed"] == 1
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["y"]
    onnx.checker.check_model(m, full_check=True)
    assert compare(_run(m, x), before, precision="fp32")


def test_cleanup_keeps_identity_between_graph_input_and_output() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y, float[2] z) {
        y = Identity(x)
        z = Neg(x)
    }""")
    result = CleanupPass(CleanupOptions()).run(m, CTX)
    assert [n.op_type for n in result.model.graph.node] == ["Identity", "Neg"]
    assert result.refused and "kept to keep the interface" in result.refused[0]


def test_cleanup_identity_feeding_output_renames_producer() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        t = Relu(x)
        y = Identity(t)
    }""")
    m = CleanupPass(CleanupOptions()).run(m, CTX).model
    assert [(n.op_type, n.output[0]) for n in m.graph.node] == [("Relu", "y")]
    onnx.checker.check_model(m, full_check=True)


def test_cleanup_sorts_topologically_and_keeps_subgraph_uses() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
        t = Relu(x)
        y = If(c) <then_branch = g1 () => (float[2] o1) { o1 = Neg(t) }, else_branch = g2 () => (float[2] o2) { o2 = Abs(t) }>
    }""")
    # put the consumer first: a valid model must be reordered, and Relu (only read inside the If) must survive
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    result = CleanupPass(CleanupOptions()).run(m, CTX)
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "If"]
    assert result.facts["reordered"] == 1
    onnx.checker.check_model(result.model, full_check=True)


def test_cleanup_detects_cycles() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        y = Relu(x)
    }""")
    m.graph.node[0].input[0] = "y"
    with pytest.raises(ValueError, match="cycle"):
        CleanupPass(CleanupOptions()).run(m, CTX)


def test_infer_shapes_annotates_intermediates(tiny_model: onnx.ModelProto) -> None:
    result = InferShapesPass(InferShapesOptions()).run(tiny_model, CTX)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in result.model.graph.value_info}
    assert shapes["m"] == ["N", 3] and shapes["a"] == ["N", 3]
    assert result.modified and result.facts["tensors_without_shape"] == 0


def test_infer_shapes_symbolic_engine_tracks_reshape_arithmetic() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, 3, 4] x) => (float[batch, 12] y) {
        s = Shape(x)
        b = Slice(s, zero, one)
        shape = Concat<axis=0>(b, twelve)
        y = Reshape(x, shape)
    }""".replace("{\n", "<int64[1] zero = {0}, int64[1] one = {1}, int64[1] twelve = {12}> {\n", 1))
    result = InferShapesPass(InferShapesOptions(engine="symbolic")).run(m, CTX)
    out = result.model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["batch", 12]


def test_infer_shapes_errors_are_not_swallowed() -> None:
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, float[4, 5] w) => (float[2, 5] y) {
        y = MatMul(x, w)
    }""")  # 2x3 @ 4x5: incompatible
    with pytest.raises(Exception, match="shape inference failed"):
        InferShapesPass(InferShapesOptions()).run(m, CTX)
    result = InferShapesPass(InferShapesOptions(strict=False)).run(m, CTX)
    assert not result.modified and "shape inference failed" in result.refused[0]
