"""qdq on old models: opsets below 13 are upgraded first, IR 3 models get an IR that allows the scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests.test_pass_qdq import _calib, _run, net_model


def test_old_opsets_are_upgraded_before_quantizing(tmp_path: Path) -> None:
    """Per-channel Q/DQ needs opset 13: an opset-12 model is converted first, and the facts say so."""
    res = _run(net_model(opset=12), _calib(tmp_path))
    assert res.facts["opset_upgraded"] == {"from": 12, "to": 13}
    assert next(o.version for o in res.model.opset_import if o.domain in ("", "ai.onnx")) == 13
    onnx.checker.check_model(res.model, full_check=True)


def test_ir3_model_gets_an_ir_that_allows_its_new_scales(tmp_path: Path) -> None:
    """Found by the fuzzer: IR 3 needs every initializer to be a graph input; the scales qdq adds are not."""
    from onnx import helper

    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Constant", [], ["wc"], value=w), helper.make_node("MatMul", ["x", "wc"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 3
    onnx.checker.check_model(model, full_check=True)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(4).standard_normal((8, 4)).astype(np.float32))
    res = _run(model, tmp_path / "c.npz", samples=8)
    assert res.model.ir_version >= 4
    onnx.checker.check_model(res.model, full_check=True)
