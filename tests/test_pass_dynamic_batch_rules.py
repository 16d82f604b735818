"""dynamic_batch on tiny ONNX-text models, one rule each, proved by stacking at batch 1, 2 and 7 (or the
old batch's multiples), and the linear batch arithmetic behind them."""

from __future__ import annotations

import numpy as np
import pytest

from converter.batch_verify import check_batch_stacking
from converter.onnx_calls import check_model
from converter.passes.dynamic_batch import BatchDependenceError
from converter.passes.dynamic_batch._values import Lin, NotLinear
from tests.conftest import parse
from tests.dynamic_batch_models import dim_param, run_pass


def convert_and_prove(text: str, batches=(1, 2, 7), **options):
    original = parse(text)
    result = run_pass(original, **options)
    check_model(result.model)
    check = check_batch_stacking(original, result.model, batches)
    assert check, check.table()
    return result


def test_slice_of_a_concatenation_along_the_batch() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,4] x) => (float[1,4] y) {
            n = Neg(x)
            both = Concat <axis=0> (x, n)
            st = Constant <value = int64[1] {1}> ()
            en = Constant <value = int64[1] {2}> ()
            ax = Constant <value = int64[1] {0}> ()
            second = Slice (both, st, en, ax)
            y = Mul(second, x)
        }""")
    assert any(r.op == "Slice" and "batch:end" in r.change for r in result.facts["rewritten"]), result.facts


def test_split_sizes_along_the_batch() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,4] x) => (float[1,4] y) {
            e = Exp(x)
            both = Concat <axis=0> (x, e)
            sizes = Constant <value = int64[2] {1, 1}> ()
            a, b = Split <axis=0> (both, sizes)
            y = Sub(a, b)
        }""")
    assert any(r.op == "Split" and "[batch, batch]" in r.change for r in result.facts["rewritten"]), result.facts


def test_constant_of_shape_takes_the_runtime_batch() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,7] y) {
            s = Constant <value = int64[2] {1, 3}> ()
            z = ConstantOfShape <value = float[1] {0.5}> (s)
            y = Concat <axis=1> (z, x)
        }""")
    assert any(r.op == "ConstantOfShape" and "[batch, 3]" in r.change for r in result.facts["rewritten"]), result.facts


def test_old_batch_2_expand_shapes() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,8] y) {
            s = Constant <value = int64[2] {2, 4}> ()
            tok = Constant <value = float[1,4] {1, 2, 3, 4}> ()
            xe = Expand(x, s)
            te = Expand(tok, s)
            y = Concat <axis=1> (xe, te)
        }""", batches=(2, 4, 6))
    text = "\n".join(map(str, result.facts["rewritten"]))
    assert "[1, 4]" in text and "[batch, 4]" in text, text


def test_squeeze_without_axes_gets_explicit_axes() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,1] x) => (float[2,3] y) {
            y = Squeeze(x)
        }""", batches=(2, 4))
    assert any("axes made explicit [2]" in r.change for r in result.facts["rewritten"]), result.facts


def test_graph_output_from_a_batch_1_constant_is_broadcast() -> None:
    result = convert_and_prove("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y, float[1,3] c, float[1,3] d) {
            y = Relu(x)
            k = Constant <value = float[1,3] {1, 2, 3}> ()
            c = Identity(k)
            d = Mul(c, c)
        }""")
    assert result.facts["outputs"]["c"] == result.facts["outputs"]["d"] == {"axis": 0, "dim": "batch"}


def test_reshapes_that_interleave_samples_are_refused() -> None:
    inside = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,3] x) => (float[6] y) {
            t = Transpose <perm = [1, 0, 2]> (x)
            s = Constant <value = int64[1] {6}> ()
            y = Reshape(t, s)
        }""")
    with pytest.raises(BatchDependenceError, match=r"graph output 'y': it holds the batch as 2 x \(3\*batch\), batch inside"):
        run_pass(inside)
    across = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,2] x) => (float[2,3] y) {
            t = Transpose <perm = [1, 0, 2]> (x)
            s = Constant <value = int64[2] {2, 3}> ()
            y = Reshape(t, s)
        }""")
    with pytest.raises(BatchDependenceError, match=r"Reshape 'y': it moves the batch"):
        run_pass(across)


def test_every_refused_node_is_named() -> None:
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] a, float[4] b) {
            ax = Constant <value = int64[1] {0}> ()
            a = ReduceSum <keepdims = 1> (x, ax)
            i = Constant <value = int64 {0}> ()
            b = Gather <axis = 0> (x, i)
        }""")
    with pytest.raises(BatchDependenceError) as err:
        run_pass(model)
    assert "ReduceSum 'a'" in str(err.value) and "Gather 'b'" in str(err.value)


def test_options_name_inputs_and_dim() -> None:
    text = """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x, float[3,4] w) => (float[1,3] y) {
            wt = Transpose(w)
            y = MatMul(x, wt)
        }"""
    auto = run_pass(parse(text))  # w [3, 4] meets no batch: a batch-free input, left alone
    assert {(ax.tensor, ax.axis) for ax in auto.facts["axes"] if ax.tensor in ("x", "w")} == {("x", 0), ("w", None)}
    result = convert_and_prove(text, inputs=("x",), name="N")
    assert dim_param(result.model.graph.input[0]) == "N" and result.model.graph.input[1].type.tensor_type.shape.dim[0].dim_value == 3
    assert dim_param(result.model.graph.output[0]) == "N"
    with pytest.raises(BatchDependenceError, match="batch 2"):
        run_pass(parse(text), inputs=("x",), dim=2)


def test_lin_arithmetic() -> None:
    b = Lin(0, 1)
    assert (b * 4 + 1).div(2) == Lin(0, 2)  # (4b + 1) / 2 == 2b for every b >= 1
    with pytest.raises(NotLinear):
        _ = b * b
    with pytest.raises(NotLinear):
        (b + 1).div(2)
    assert repr(Lin(3, 2)) == "2*batch+3"
    assert np.array_equal(np.array([Lin(1), b], dtype=object) * 3, np.array([Lin(3), Lin(0, 3)], dtype=object))


def test_flatten_axis_out_of_range_is_refused_not_a_crash() -> None:
    """Found by the fuzzer: an out-of-range Flatten axis (the checker does not look) was an IndexError, exit 4."""
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,4] x) => (float[1,12] y) { y = Flatten <axis: int = 1> (x) }""")
    model.graph.node[0].attribute[0].i = 9
    with pytest.raises(BatchDependenceError, match="axis 9 is out of range for rank 3"):
        run_pass(model)
