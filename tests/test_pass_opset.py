"""The opset pass (ONNX's version converter): numerics, subgraphs, custom domains, failures; qdq's own upgrade."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper, numpy_helper

import converter.passes.opset as opset_module
from converter.errors import PassRefused
from converter.ort_session import make_session, run_session
from converter.pass_api import PassContext
from converter.passes.opset import OpsetConversionFailed, OpsetOptions, OpsetPass, upgrade_opset
from tests.conftest import Cli, save

LOG = logging.getLogger("test.opset")
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="module")
def cls_path() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr_onnxruntime is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def _run(model: onnx.ModelProto, target: int = 17):  # noqa: ANN202
    return OpsetPass(OpsetOptions(target=target)).run(model, PassContext(log=LOG))


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    ra, rb = run_session(make_session(a), feeds), run_session(make_session(b), feeds)
    assert list(ra) == list(rb)
    for name, ref in ra.items():
        np.testing.assert_allclose(rb[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)


def test_real_opset11_classifier_to_17_keeps_outputs(cls_path: Path) -> None:
    model = onnx.load(str(cls_path))
    assert model.opset_import[0].version == 11
    res = _run(model)
    assert res.modified and (res.facts["from"], res.facts["to"]) == (11, 17)
    assert res.facts["change"].versions_changed["Softmax"] == 1 and res.facts["op_delta"]["Reshape"] == 1
    assert model.opset_import[0].version == 11  # the input is not modified
    onnx.checker.check_model(res.model, full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 48, 192)).astype(np.float32)}
    _same_outputs(model, res.model, feeds)


def test_opset9_ir3_model_from_the_onnx_wheel() -> None:
    model = onnx.load(str(LIGHT / "light_squeezenet.onnx"))
    assert (model.ir_version, model.opset_import[0].version) == (3, 9)
    res = _run(model)
    assert res.facts["ir_version"] == {"from": 3, "to": 8}
    onnx.checker.check_model(res.model, full_check=True)
    inits = {t.name for t in model.graph.initializer}
    x = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    _same_outputs(model, res.model, {x.name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)})


IF_TEXT = """
<ir_version: 7, opset_import: ["" : 11, "com.microsoft" : 1]>
g (float[2, 3, 4] x, bool c) => (float[2, 3, 4] y, float[2, 3, 4] z) {
    y = If (c) <then_branch = t () => (float[2, 3, 4] a) {
        u = Unsqueeze <axes = [0]> (x)
        s = Squeeze <axes = [0]> (u)
        a = Softmax <axis = 1> (s)
    }, else_branch = e () => (float[2, 3, 4] b) { b = Relu(x) }>
    z = com.microsoft.Gelu(x)
}
"""


def test_if_branches_are_converted_and_custom_domains_kept() -> None:
    model = onnx.parser.parse_model(IF_TEXT)
    res = _run(model)
    out = res.model
    assert {o.domain: o.version for o in out.opset_import} == {"": 17, "com.microsoft": 1}
    onnx.checker.check_model(out, full_check=True)
    then = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    ops = Counter(n.op_type for n in then.node)
    assert ops["Softmax"] == 1 and ops["Flatten"] == 1 and ops["Reshape"] == 1  # opset-13 Softmax keeps the old 2-D semantics
    assert all(len(n.input) == 2 for n in then.node if n.op_type in ("Squeeze", "Unsqueeze"))  # axes became an input
    assert next(n for n in out.graph.node if n.op_type == "Gelu").domain == "com.microsoft"
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    for c in (True, False):
        _same_outputs(model, out, {"x": x, "c": np.array(c)})


def test_local_functions_and_metadata_survive() -> None:
    model = onnx.parser.parse_model("""
<ir_version: 7, opset_import: ["" : 11, "local" : 1], producer_name: "me">
g (float[2, 3] x) => (float[2, 3] y) { m = local.Foo(x)
    y = Softmax(m) }
<domain: "local", opset_import: ["" : 11]>
Foo (a) => (b) { b = Relu(a) }
""")
    out = _run(model).model
    assert [f.name for f in out.functions] == ["Foo"] and out.producer_name == "me"
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    _same_outputs(model, out, {"x": x})


def test_at_or_above_target_is_unchanged_and_says_so() -> None:
    model = onnx.parser.parse_model(IF_TEXT)
    same = _run(model, target=11)
    assert not same.modified and same.model is model and not same.refused and "opset 11" in same.facts["unchanged"]
    down = _run(model, target=9)
    assert not down.modified and "downgrading is not supported" in down.refused[0]


def test_big_models_convert_with_their_tensors_swapped_out(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Unsqueeze", ["c"], ["u"], axes=[0]), helper.make_node("Squeeze", ["u"], ["y"], axes=[0])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    monkeypatch.setattr(opset_module, "SWAP_LIMIT", 0)
    out, change = upgrade_opset(model, 13)
    assert change.summary() == {"from": 11, "to": 13}
    np.testing.assert_array_equal(numpy_helper.to_array(out.graph.initializer[0]), w)
    assert not out.graph.initializer[0].external_data
    onnx.checker.check_model(out, full_check=True)
    _same_outputs(model, out, {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)})


def _relu_model(opset: int = 11) -> onnx.ModelProto:
    return onnx.parser.parse_model(f"""
<ir_version: 7, opset_import: ["" : {opset}]>
g (float[1, 3, 4, 4] x) => (float[1, 2, 4, 4] y) <float[2, 3, 1, 1] w = {{0.1, 0.2, 0.3, 0.4, 0.5, 0.6}}> {{
    c = Conv (x, w)
    r1 = Relu (c)
    y = Relu (r1)
}}""")


def test_failures_name_the_op_from_the_message_or_by_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = opset_module.version_converter.convert_version

    def no_relu(model: onnx.ModelProto, target: int, message: str) -> onnx.ModelProto:
        if any(n.op_type == "Relu" for n in model.graph.node):
            raise RuntimeError(message)
        return real(model, target)

    for message in ("BaseConverter.h:63: adapter_lookup: No Adapter To Version $13 for Relu", "convert.cc: assertion failed"):
        monkeypatch.setattr(opset_module.version_converter, "convert_version", lambda m, t, msg=message: no_relu(m, t, msg))
        with pytest.raises(OpsetConversionFailed) as err:
            _run(_relu_model())
        assert err.value.culprits == {"Relu": ["Relu#1", "Relu#2"]}, message
        assert "no adapter for op Relu (nodes Relu#1, Relu#2)" in str(err.value)
    with pytest.raises(PassRefused, match=r"converting it failed: no adapter for op Relu .*-p opset\{target=13\},qdq"):
        from converter.passes.qdq import QdqOptions, QdqPass

        QdqPass(QdqOptions(samples=2)).run(_relu_model(), PassContext(log=LOG))


def test_cli_refuses_an_op_without_schema_with_exit_2(cli: Cli, tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("ImageScaler", ["x"], ["s"], name="scale", scale=2.0), helper.make_node("Relu", ["s"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    path = save(model, tmp_path / "old.onnx")
    res = cli(path, "--no-check", "-p", "opset", "-b", "onnx", "-o", tmp_path / "out.onnx")
    assert res.returncode == 2, res.stderr
    assert "op ImageScaler (nodes 'scale')" in res.stderr and not (tmp_path / "out.onnx").exists()


def test_cli_qdq_upgrades_the_real_opset11_classifier(cli: Cli, cls_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    res = cli(cls_path, "-p", "qdq{samples=8}", "--calib-random", "-b", "onnx", "-o", out, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)["passes"][0]["facts"]
    assert facts["opset_upgraded"] == {"from": 11, "to": 13}
    assert facts["quantized_ops"]["Conv"] == 53
    q = onnx.load(str(out))
    assert q.opset_import[0].version == 13
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {t.name: t for t in q.graph.initializer}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        w = inits.get(dq.input[0])
        assert (w.data_type if w is not None else producers[dq.input[0]].attribute[0].t.data_type) == onnx.TensorProto.INT8
