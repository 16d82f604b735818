"""What the fp16 tests share: run the pass and check the result (checker full_check, Cast ``to`` attributes,
topological order), seeded inputs, and ONNX Runtime equivalence within the fp16 tolerance policy
(converter.compare.DEFAULT_TOLERANCES['fp16'])."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from converter.compare import DEFAULT_TOLERANCES, compare
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext
from converter.passes.fp16 import Fp16Options, Fp16Pass

CTX = PassContext(log=logging.getLogger("test.fp16"))
FP16 = DEFAULT_TOLERANCES["fp16"]


def fp16(model: onnx.ModelProto, **options):
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = Fp16Pass(Fp16Options(**options)).run(work, CTX)
    onnx.checker.check_model(result.model, full_check=True)
    assert_casts_right(result.model)
    assert_sorted(result.model.graph)
    return result


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_sorted(graph: onnx.GraphProto) -> None:
    """Every node input is a graph input, an initializer or the output of an earlier node."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        missing = [x for x in node.input if x not in known]
        assert not missing, f"{node.op_type} '{node.name}' reads {missing} before they are produced"
        known.update(node.output)


def assert_casts_right(model: onnx.ModelProto) -> None:
    """Every Cast's ``to`` is the type its output is declared/used with (strict inference agrees)."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            assert types[node.output[0]] == to, f"Cast {node.name} to={to} but {node.output[0]} is {types[node.output[0]]}"


def seeded(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value or 2 for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(dims).astype(dtype) if dtype.kind == "f" else rng.integers(0, 4, dims).astype(dtype)
    return feeds


def assert_close_on_ort(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None) -> None:
    feeds = feeds or seeded(before)
    want = run_session(make_session(before), feeds)
    cast = {i.name: feeds[i.name].astype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in after.graph.input}
    got = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in run_session(make_session(after), cast).items()}
    result = compare(got, want, FP16, "fp16")
    assert result, result.table()
